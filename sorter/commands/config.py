"""`sorter config init [PATH]` and `sorter config check PATH`."""

from __future__ import annotations

from pathlib import Path

import typer

from sorter.config import DEFAULT_PATH, example_toml, load_config
from sorter.errors import SorterError

app = typer.Typer(help="Write or check the sorter's TOML config file.", no_args_is_help=True)


@app.command("init")
def init(
    path: Path | None = typer.Argument(
        None, help="Where to write the example (default: print it to stdout)."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Write a fully commented example config (every key, its default and what it means)."""
    text = example_toml()
    if path is None:
        typer.echo(text, nl=False)
        return
    try:
        if path.exists() and not force:
            raise SorterError(f"{path}: already exists; use --force to overwrite it")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except SorterError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    except OSError as err:
        typer.echo(f"error: {path}: cannot write ({err.strerror}); check the folder", err=True)
        raise typer.Exit(2) from err
    typer.echo(f"wrote {path}")


@app.command("check")
def check(
    path: Path = typer.Argument(DEFAULT_PATH, help="The config file to validate."),
) -> None:
    """Validate a config file: unknown keys, wrong types and out-of-range values."""
    try:
        config = load_config(path)
    except SorterError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    typer.echo(
        f"{path}: ok ({len(config.gates)} gates, reject bin {config.bins.reject!r}, "
        f"serial {config.serial.url})"
    )
