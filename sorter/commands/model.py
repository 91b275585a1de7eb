"""`sorter model promote FILE` and `sorter model rollback` (sorter.ops.model_install)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import typer

from sorter.config import DEFAULT_PATH, load_config
from sorter.errors import SorterError
from sorter.ops.model_install import Installed, promote, rollback, tell_sorter

app = typer.Typer(
    help="Switch the farm's model: promote a checked one, or roll back.", no_args_is_help=True
)

ConfigOpt = typer.Option(None, "--config", help=f"Config TOML (default {DEFAULT_PATH}).")
PidOpt = typer.Option(None, "--pid", help="Send SIGHUP to this running sorter to switch now.")
ServiceOpt = typer.Option(
    None, "--service", help="Run `systemctl reload SERVICE` to switch now (e.g. produce-sorter)."
)
JsonOpt = typer.Option(False, "--json", help="Print what was done as JSON.")


def _config_path(path: Path | None) -> Path:
    if path is not None:
        return path
    if DEFAULT_PATH.exists():
        return DEFAULT_PATH
    raise SorterError(
        f"no --config and no {DEFAULT_PATH}: the config names the model path to install into"
    )


def _finish(
    what: str, done: Installed, pid: int | None, service: str | None, as_json: bool
) -> None:
    told = tell_sorter(pid, service)
    if as_json:
        typer.echo(json.dumps({"action": what, **asdict(done), "reload": told}))
        return
    kept = f"; previous kept as {done.previous} ({done.previous_id})" if done.previous else ""
    typer.echo(f"{what}: {done.model} is now model {done.model_id}{kept}")
    if told:
        typer.echo(f"{told}: the running sorter switches between two frames")
    else:
        typer.echo(
            "a running sorter keeps its model until reloaded: systemctl reload produce-sorter "
            "(or kill -HUP its PID, or --pid/--service here)"
        )


@app.command("promote")
def promote_command(
    file: Path = typer.Argument(..., help="The exported .tflite to install."),
    config_path: Path | None = ConfigOpt,
    pid: int | None = PidOpt,
    service: str | None = ServiceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Check a model (metadata, labels match the bins, one inference) and install it
    atomically as [model] path, keeping the one it replaces for `sorter model rollback`."""
    try:
        config = load_config(_config_path(config_path))
        done = promote(file, config)
        _finish("promoted", done, pid, service, as_json)
    except SorterError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err


@app.command("rollback")
def rollback_command(
    config_path: Path | None = ConfigOpt,
    pid: int | None = PidOpt,
    service: str | None = ServiceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Go back to the model the last promotion replaced (checked first); again to undo."""
    try:
        config = load_config(_config_path(config_path))
        done = rollback(config)
        _finish("rolled back", done, pid, service, as_json)
    except SorterError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
