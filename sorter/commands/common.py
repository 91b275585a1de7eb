"""Options shared by several `sorter` commands."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from sorter import native

VerboseOpt = Annotated[
    bool,
    typer.Option(
        "--verbose", "-v", help="Debug logging, and LiteRT's own notices (its XNNPACK line)."
    ),
]
"""`--verbose`: what every command that loads a model takes."""


def apply_verbose(verbose: bool, *, configure_logging: bool = True) -> None:
    """Show (or keep silencing) native libraries' notices; with `configure_logging`, debug
    logging to stderr when verbose."""
    native.set_verbose(verbose)
    if verbose and configure_logging:
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
