"""`sorter collect SRC... --out DIR`: every lane's reviewed crops and decision log in one
training tree (the work is `sorter.ops.collect`)."""

from __future__ import annotations

from pathlib import Path

import typer

from sorter.errors import SorterError
from sorter.ops.collect import collect


def collect_command(
    sources: list[Path] = typer.Argument(
        ..., help="Each lane's state folder (e.g. rsync'd /var/lib/produce-sorter/LANE/)."
    ),
    out: Path = typer.Option(..., "--out", help="The training tree to gather into."),
) -> None:
    """Gather the lanes' reviewed crops (DIR/<grade>/LANE_RUN_ITEM.png) and decision logs
    (DIR/_lanes/) into one folder-per-grade tree for sorter-train."""
    try:
        reports = collect(list(sources), out)
    except SorterError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    for r in reports:
        typer.echo(
            f"lane {r.lane}: {r.copied} crops copied, {r.regraded} regraded, {r.unchanged} "
            f"unchanged, {r.unreviewed} still in _review/, {r.decisions} decisions "
            f"({len(r.runs)} runs) from {r.source}"
        )
    typer.echo(f"training tree: {out} (sorter-train reads it; logs in {out / '_lanes'})")


def register(app: typer.Typer) -> None:
    app.command("collect")(collect_command)
