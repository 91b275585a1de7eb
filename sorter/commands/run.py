"""`sorter run`: the sorting loop on a camera, a video replay or a folder of images."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.live import Live
from rich.logging import RichHandler

from sorter.config import DEFAULT_PATH, Config, apply_overrides, load_config
from sorter.errors import SorterError
from sorter.monitor.audit import DecisionLog
from sorter.monitor.status import Status, print_summary, render_status
from sorter.runtime.runner import RunOptions, run

log = logging.getLogger(__name__)

DEV_DB = "sorter-decisions.db"
"""Decision log used when no config file exists at all (a development checkout)."""


def _load(config_path: Path | None) -> tuple[Config, bool]:
    """(config, from_file). Without --config the default file is used when it exists."""
    if config_path is not None:
        return load_config(config_path), True
    if DEFAULT_PATH.exists():
        return load_config(DEFAULT_PATH), True
    return Config(), False


def run_command(
    camera: str | None = typer.Option(
        None, "--camera", help="Camera number (or /dev/videoN); default: the config's camera.index."
    ),
    video: Path | None = typer.Option(None, "--video", help="Replay a video file."),
    images: Path | None = typer.Option(None, "--images", help="A folder of still images."),
    realtime: bool = typer.Option(False, "--realtime", help="Replay paced at the video's fps."),
    fast: bool = typer.Option(False, "--fast", help="Replay as fast as possible (virtual clock)."),
    serial: str | None = typer.Option(
        None, "--serial", help="Controller: /dev/ttyACM0, socket://HOST:PORT or sim://."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Send nothing to a controller."),
    truth: Path | None = typer.Option(None, "--truth", help="Belt truth JSON: print a scorecard."),
    model: Path | None = typer.Option(None, "--model", help="Model .tflite (default: bundled)."),
    config_path: Path | None = typer.Option(
        None, "--config", help=f"Config TOML (default {DEFAULT_PATH} if it exists)."
    ),
    jsonl: Path | None = typer.Option(None, "--log", help="Also log decisions as JSON lines."),
    db: Path | None = typer.Option(None, "--db", help="SQLite decision log."),
    save_crops: Path | None = typer.Option(
        None, "--save-crops", help="Keep crops as DIR/<grade>/ (+ DIR/_review/)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    dashboard: str | None = typer.Option(
        None, "--dashboard", help="Serve the live dashboard at HOST:PORT."
    ),
) -> None:
    """Run the sorting loop: grade each item and fire its gate in time."""
    err_console = Console(stderr=True)
    try:
        if realtime and fast:
            raise SorterError("--realtime and --fast exclude each other; choose one")
        config, from_file = _load(config_path)
        config = apply_overrides(
            config,
            {
                "serial.url": serial,
                "logging.jsonl": str(jsonl) if jsonl else None,
                "logging.db": str(db) if db else (None if from_file else DEV_DB),
                "logging.crops_dir": str(save_crops) if save_crops else None,
            },
        )
        if err_console.is_terminal:  # shares the console with the live view
            handler: logging.Handler = RichHandler(console=err_console, show_path=False)
            handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        else:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logging.basicConfig(level=config.logging.level, handlers=[handler])
        cam = source_camera(config, camera, given=video is not None or images is not None)
        status = Status(url="dry-run" if dry_run else config.serial.url)
        decisions = DecisionLog(
            config.logging.db,
            jsonl_path=config.logging.jsonl or None,
            crops_dir=config.logging.crops_dir or None,
            review_below=config.thresholds.review_below,
            keep=None if cam is None else 4096,  # a camera runs for days: bounded memory
        )
        server = start_dashboard(config, status, dashboard)
        live: Live | None = None
        if not as_json and err_console.is_terminal:
            live = Live(render_status(status.snapshot()), console=err_console, auto_refresh=False)
        last = [0.0]

        def progress(st: Status) -> None:
            now = time.monotonic()
            if live is not None and now - last[0] > 0.5:
                last[0] = now
                live.update(render_status(st.snapshot()), refresh=True)

        opts = RunOptions(
            camera=cam,
            video=video,
            images=images,
            mode="realtime" if realtime else "fast" if fast else None,
            dry_run=dry_run,
            truth=truth,
            model=model,
            progress=progress,
        )
        try:
            if live is not None:
                live.start()
            result = run(config, opts, decisions, status)
        finally:
            if live is not None:
                live.update(render_status(status.snapshot()), refresh=True)
                live.stop()
            if server is not None:
                server.stop()
    except SorterError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    except Exception as err:
        if type(err).__module__.startswith("firmware_bridge") and hasattr(err, "exit_code"):
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from err
        raise
    if as_json:
        typer.echo(json.dumps(result.summary, default=str))
    else:
        print_summary(err_console, result.summary, result.scorecard)
    if "error" in result.summary:
        typer.echo(
            f"error: {result.summary['error']} ({result.summary['items']} decisions before it "
            f"are kept in {config.logging.db})",
            err=True,
        )
        raise typer.Exit(1)


def source_camera(config: Config, flag: str | None, *, given: bool) -> int | str | None:
    """The camera to open: --camera (a number or a device path) when given, else the
    config's [camera] index when no other source (--video/--images) was asked for."""
    if flag is not None:
        return int(flag) if flag.isdigit() else flag
    if given:
        return None
    log.info("no --camera/--video/--images: camera %d from [camera] index", config.camera.index)
    return config.camera.index


def start_dashboard(config: Config, status: Status, flag: str | None) -> Any:
    """Serve the dashboard for `status` when asked (flag HOST:PORT, or [dashboard] enabled)."""
    if flag is None and not config.dashboard.enabled:
        return None
    try:
        from sorter.monitor import dashboard
    except ImportError as err:
        raise SorterError("the dashboard is not available in this install") from err
    if flag:
        host, port = dashboard.parse_bind(flag, config.dashboard.port)
    else:
        host, port = config.dashboard.host, config.dashboard.port
    server = dashboard.serve(status, host, port, token=config.dashboard.token or None)
    log.info("dashboard at %s", getattr(server, "url", f"http://{host}:{port}/"))
    return server
