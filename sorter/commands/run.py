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

from sorter.commands.common import VerboseOpt, apply_verbose
from sorter.config import DEFAULT_PATH, Config, apply_overrides, load_config
from sorter.errors import SorterError
from sorter.monitor.audit import DecisionLog
from sorter.monitor.status import Status, print_summary, render_status
from sorter.replay.truth import run_with_truth, scorecard_tables
from sorter.runtime.runner import RunOptions, RunResult, run

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
    shadow: Path | None = typer.Option(
        None, "--shadow", help="Candidate .tflite graded beside the model on every item."
    ),
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
    linger: float = typer.Option(
        0.0, "--linger", help="Keep the dashboard and /metrics up this many seconds after the end."
    ),
    verbose: VerboseOpt = False,
) -> None:
    """Run the sorting loop: grade each item and fire its gate in time."""
    err_console = Console(stderr=True)
    try:
        if realtime and fast:
            raise SorterError("--realtime and --fast exclude each other; choose one")
        config = _config(config_path, serial, jsonl, db, save_crops)
        apply_verbose(verbose, configure_logging=False)
        _setup_logging(config, err_console, verbose)
        cam = source_camera(config, camera, given=video is not None or images is not None)
        lane = config.lane.id
        status = Status(url="dry-run" if dry_run else config.serial.url, lane=lane)
        decisions = DecisionLog(
            config.logging.db,
            jsonl_path=config.logging.jsonl or None,
            crops_dir=config.logging.crops_dir or None,
            review_below=config.thresholds.review_below,
            keep=None if cam is None else 4096,  # a camera runs for days: bounded memory
            lane=lane,
        )
        opts = RunOptions(
            camera=cam,
            video=video,
            images=images,
            mode="realtime" if realtime else "fast" if fast else None,
            dry_run=dry_run,
            model=model,
            shadow=shadow,
        )
        server = start_dashboard(config, status, dashboard)
        with LiveView(err_console, status, enabled=not as_json, opts=opts):
            try:
                if truth is not None:
                    result = run_with_truth(config, opts, decisions, status, truth)
                else:
                    result = run(config, opts, decisions, status)
                if server is not None and linger > 0 and not result.summary.get("stopped"):
                    time.sleep(linger)  # a scraper reads the final counts (SIGTERM ends it)
            finally:
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
    _report(result, config, err_console, as_json)


def _config(
    config_path: Path | None,
    serial: str | None,
    jsonl: Path | None,
    db: Path | None,
    save_crops: Path | None,
) -> Config:
    """The config file (or the defaults) with the command line's overrides."""
    config, from_file = _load(config_path)
    return apply_overrides(
        config,
        {
            "serial.url": serial,
            "logging.jsonl": str(jsonl) if jsonl else None,
            "logging.db": str(db) if db else (None if from_file else DEV_DB),
            "logging.crops_dir": str(save_crops) if save_crops else None,
        },
    )


def _setup_logging(config: Config, console: Console, verbose: bool) -> None:
    """Log to the console at the config's level (DEBUG with --verbose)."""
    if console.is_terminal:  # shares the console with the live view
        handler: logging.Handler = RichHandler(console=console, show_path=False)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level="DEBUG" if verbose else config.logging.level, handlers=[handler])


class LiveView:
    """The live status on a terminal while the run lasts (refreshed at most twice a second);
    sets `opts.progress`. Off when not on a terminal or `enabled` is False."""

    def __init__(self, console: Console, status: Status, *, enabled: bool, opts: Any) -> None:
        self.status = status
        self.live: Live | None = None
        if enabled and console.is_terminal:
            self.live = Live(render_status(status.snapshot()), console=console, auto_refresh=False)
        self._last = 0.0
        opts.progress = self.progress

    def progress(self, st: Status) -> None:
        now = time.monotonic()
        if self.live is not None and now - self._last > 0.5:
            self._last = now
            self.live.update(render_status(st.snapshot()), refresh=True)

    def __enter__(self) -> LiveView:
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.update(render_status(self.status.snapshot()), refresh=True)
            self.live.stop()


def _report(result: RunResult, config: Config, console: Console, as_json: bool) -> None:
    """The summary (JSON on stdout, or tables on stderr); exit 1 when the source broke."""
    if as_json:
        typer.echo(json.dumps(result.summary, default=str))
    else:
        print_summary(console, result.summary, *scorecard_tables(result))
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
    review = None
    if config.logging.crops_dir:
        from sorter.monitor.review import ReviewQueue

        review = ReviewQueue(config.logging.crops_dir, config.logging.db, list(config.bins.grades))
    server = dashboard.serve(
        status, host, port, token=config.dashboard.token or None, review=review
    )
    log.info("dashboard at %s", getattr(server, "url", f"http://{host}:{port}/"))
    return server
