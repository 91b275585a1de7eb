"""`sorter shadow-report DB`: the candidate of a shadow run against the active model."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from sorter.errors import SorterError
from sorter.replay.shadow_report import render_report, report_json, shadow_report


def shadow_report_command(
    db: Path = typer.Argument(..., help="The decision log of a run with --shadow."),
    run: str | None = typer.Option(None, "--run", help="The run id (default: the latest)."),
    crops: Path | None = typer.Option(
        None, "--crops", help="The crops tree (default: where the log saved them)."
    ),
    truth: Path | None = typer.Option(
        None, "--truth", help="Belt truth JSON of a replay: true grades from it."
    ),
    limit: int = typer.Option(20, "--limit", help="Disagreements listed in the table."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Agreement of the shadow model with the active one, where they differ, and (for
    reviewed items, or a replay's truth) each one's accuracy."""
    try:
        rep = shadow_report(db, run=run, crops=crops, truth=truth)
    except SorterError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    if as_json:
        typer.echo(report_json(rep))
        return
    console = Console()
    for table in render_report(rep, limit):
        console.print(table)


def register(app: typer.Typer) -> None:
    app.command("shadow-report")(shadow_report_command)
