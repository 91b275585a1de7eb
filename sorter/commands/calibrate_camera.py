"""`sorter calibrate-camera`: lens and belt-plane calibration with a printed ChArUco board.

Parses and delegates to `sorter.ops.camera_calibration` (its docstring explains the
procedure); the result goes into the config's [lens] and belt.px_per_mm with
`sorter.ops.config_edit` (every other line and comment kept).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import typer

from sorter.config import DEFAULT_PATH, load_config
from sorter.errors import SorterError
from sorter.ops import camera_calibration as cc
from sorter.ops.config_edit import write_keys


def calibrate_camera(
    images: Path | None = typer.Option(
        None, "--images", help="Folder of board views at several angles (for the lens)."
    ),
    camera: int | None = typer.Option(
        None, "--camera", help="Capture the lens views from camera N instead of --images."
    ),
    belt: list[Path] = typer.Option(
        [], "--belt", help="Pictures of the board lying flat on the belt (repeat the flag)."
    ),
    extra_belt: list[Path] = typer.Argument(None, hidden=True),
    squares: str = typer.Option("7x5", "--squares", help="Board squares across x rows."),
    square_mm: float = typer.Option(30.0, "--square-mm", help="Printed square side, mm."),
    marker_mm: float = typer.Option(22.0, "--marker-mm", help="Printed marker side, mm."),
    dictionary: str = typer.Option("DICT_5X5_100", "--dictionary", help="ArUco dictionary."),
    views: int = typer.Option(12, "--views", min=4, max=100, help="Views to capture (--camera)."),
    config_path: Path | None = typer.Option(
        None, "--config", "-c", help=f"Config file to update (default {DEFAULT_PATH} if it exists)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Measure and print; write nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
) -> None:
    """Calibrate the camera's lens and the belt's scale and direction; store them in the config."""
    try:
        _run(
            images,
            camera,
            [*belt, *(extra_belt or [])],
            cc.BoardSpec(cc.parse_squares(squares), square_mm, marker_mm, dictionary),
            views,
            config_path,
            dry_run,
            as_json,
        )
    except SorterError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err


def _run(
    images: Path | None,
    camera: int | None,
    belt: list[Path],
    board: cc.BoardSpec,
    views: int,
    config_path: Path | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    target = config_path or (DEFAULT_PATH if DEFAULT_PATH.exists() else None)
    config = load_config(target) if target is not None else load_config(None)
    if images is not None:
        lens_files = cc.image_files(images)
    elif camera is not None:
        typer.echo(f"capturing {views} views: move the board between them", err=True)
        tmp = Path(tempfile.mkdtemp(prefix="sorter-calibrate-"))
        from sorter.runtime.wiring import camera_settings

        lens_files = cc.capture_views(camera, camera_settings(config), views, tmp)
    else:
        lens_files = []
    result = cc.calibrate(board, lens_files, belt, lens=config.lens)
    written = None
    if target is not None and not dry_run:
        write_keys(target, cc.config_edits(result))
        written = str(target)
    if as_json:
        typer.echo(json.dumps({**result.as_json(), "config": written}))
    else:
        _report(result, written)
    if target is None and not dry_run:
        typer.echo(
            f"not written: no config file ({DEFAULT_PATH} does not exist); pass --config PATH",
            err=True,
        )


def _report(r: cc.Result, written: str | None) -> None:
    c = r.lens
    typer.echo(
        f"lens: {c.views} views at {c.width}x{c.height}, reprojection {c.reprojection_px:.3f} px; "
        f"fx {c.fx:.1f} fy {c.fy:.1f} cx {c.cx:.1f} cy {c.cy:.1f}; "
        f"dist {' '.join(f'{d:+.4f}' for d in c.dist)}"
    )
    for s in r.skipped:
        typer.echo(f"  not used: {s}")
    if r.px_per_mm is not None:
        typer.echo(
            f"belt: {r.px_per_mm:.4f} px/mm (views agree to {100 * r.scale_spread:.2f}%), "
            f"direction {r.belt_angle_deg:+.2f} deg from the image x axis (from the {r.angle_from})"
        )
    if written:
        typer.echo(f"{written}: [lens] and belt.px_per_mm written ({c.date})")


def register(app: typer.Typer) -> None:
    """Add `sorter calibrate-camera` to the CLI."""
    app.command("calibrate-camera")(calibrate_camera)
