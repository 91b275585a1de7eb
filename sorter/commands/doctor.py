"""`sorter doctor`: check that this machine can run the sorter, each problem with a fix hint.

The checks are `sorter.ops.diagnostics`'; this prints them as a table (or `--json`) and
exits 1 when any check failed, i.e. when something blocks running (warnings do not).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import typer

from sorter.commands.common import VerboseOpt, apply_verbose
from sorter.ops.diagnostics import FAIL, OK, SKIP, WARN, Check, DoctorOptions, run_checks

_STYLE = {OK: "green", WARN: "yellow", FAIL: "bold red", SKIP: "dim"}


def doctor(
    config: Path | None = typer.Option(
        None, "--config", "-c", help="Config file (default /etc/produce-sorter/sorter.toml)."
    ),
    model: Path | None = typer.Option(None, "--model", help="Model to check instead."),
    serial: str | None = typer.Option(
        None, "--serial", help="Controller URL instead of [serial] url (e.g. sim://)."
    ),
    camera: int | None = typer.Option(None, "--camera", help="Camera number instead."),
    video: Path | None = typer.Option(
        None, "--video", help="Check a replay video instead of the camera."
    ),
    no_camera: bool = typer.Option(False, "--no-camera", help="Do not open the camera."),
    no_controller: bool = typer.Option(
        False, "--no-controller", help="Do not talk to the controller."
    ),
    seconds: float = typer.Option(2.0, "--seconds", min=0.2, help="Camera measuring time."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    verbose: VerboseOpt = False,
) -> None:
    """Check this machine can run the sorter; exit 1 if anything blocks running."""
    apply_verbose(verbose)
    opts = DoctorOptions(
        config=config,
        model=model,
        serial=serial,
        camera=camera,
        video=video,
        skip_camera=no_camera,
        skip_controller=no_controller,
        seconds=seconds,
    )
    results = list(run_checks(opts))
    failed = [c for c in results if c.blocking]
    if as_json:
        payload = {"ok": not failed, "checks": [asdict(c) for c in results]}
        typer.echo(json.dumps(payload, indent=2))
    else:
        _print_table(results)
    raise typer.Exit(1 if failed else 0)


def _print_table(results: list[Check]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="sorter doctor", show_lines=False)
    table.add_column("check")
    table.add_column("state")
    table.add_column("found", overflow="fold")
    table.add_column("fix", overflow="fold")
    for c in results:
        table.add_row(c.name, f"[{_STYLE[c.state]}]{c.state}[/]", escape(c.detail), escape(c.hint))
    console = Console()
    console.print(table)
    failed = [c.name for c in results if c.blocking]
    if failed:
        console.print(f"[bold red]{len(failed)} problem(s) block running:[/] {', '.join(failed)}")
    else:
        console.print("[green]nothing blocks running[/]")


def register(app: typer.Typer) -> None:
    """Add `sorter doctor` to the CLI."""
    app.command("doctor")(doctor)
