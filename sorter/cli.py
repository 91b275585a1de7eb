"""`sorter`: the device-side command line. Thin: each command parses and delegates.

Each sub-command lives in its own module under sorter/commands/ and is registered here.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="sorter",
    help="Grade and sort produce on the belt (device runtime; LiteRT, never TensorFlow).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# --- registrations (one line per command module) ---


def main() -> None:
    app()


if __name__ == "__main__":
    main()
