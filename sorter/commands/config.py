"""`sorter config init [PATH]` and `sorter config check PATH`."""

from __future__ import annotations

from pathlib import Path

import typer

from sorter.config import DEFAULT_PATH, Config, apply_overrides, example_toml, load_config
from sorter.errors import SorterError

app = typer.Typer(help="Write or check the sorter's TOML config file.", no_args_is_help=True)


@app.command("init")
def init(
    path: Path | None = typer.Argument(
        None, help="Where to write the example (default: print it to stdout)."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
    lane: str | None = typer.Option(
        None, "--lane", help="A packhouse lane's config: lane id, its own log and crops folder."
    ),
    camera: int | None = typer.Option(None, "--camera", help="With --lane: camera.index."),
    port: int | None = typer.Option(None, "--port", help="With --lane: dashboard/metrics port."),
    serial: str | None = typer.Option(None, "--serial", help="With --lane: serial.url."),
) -> None:
    """Write a fully commented example config (every key, its default and what it means)."""
    try:
        config = lane_config(lane, camera=camera, port=port, serial=serial)
    except SorterError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    text = example_toml(config)
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


LANE_STATE = "/var/lib/produce-sorter"
"""Where the lanes' state directories are (the template unit's StateDirectory)."""


def lane_config(
    lane: str | None,
    *,
    camera: int | None = None,
    port: int | None = None,
    serial: str | None = None,
) -> Config:
    """The defaults, or one lane's config: [lane] id, the decision log and crops under
    /var/lib/produce-sorter/LANE/, the dashboard (and /metrics) on `port`, the camera and
    controller given. ConfigError for a bad lane id or value, naming the option."""
    if lane is None:
        if camera is not None or port is not None or serial is not None:
            raise SorterError("--camera, --port and --serial go with --lane ID; add --lane")
        return Config()
    return apply_overrides(
        Config(),
        {
            "lane.id": lane,
            "camera.index": camera,
            "serial.url": serial,
            "logging.db": f"{LANE_STATE}/{lane}/decisions.db",
            "logging.crops_dir": f"{LANE_STATE}/{lane}/crops",
            "dashboard.enabled": True,
            "dashboard.port": port,
        },
    )


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
