"""`sorter calibrate`: guided gate-timing calibration, written back to the config file.

The command parses and delegates; the maths, the config edit and the guided session are
`sorter.ops.calibration`'s (its docstring explains the procedure).
"""

from __future__ import annotations

from pathlib import Path

import typer

from sorter.config import load_config
from sorter.errors import ConfigError, SorterError
from sorter.ops.calibration import (
    CalibrationResult,
    arrival_errors_ms,
    error_ms_from_report,
    marker_session,
    propose_offset,
    read_arrivals,
    write_gate_offset,
)


def calibrate(
    gate: int = typer.Argument(..., help="Controller gate number to calibrate (its [gates.N])."),
    config_path: Path = typer.Option(
        Path("/etc/produce-sorter/sorter.toml"), "--config", "-c", help="Config file to update."
    ),
    serial: str | None = typer.Option(
        None, "--serial", help="Controller URL instead of [serial] url."
    ),
    trials: int = typer.Option(5, "--trials", min=1, max=50, help="Marker runs."),
    trigger_kind: str = typer.Option(
        "camera", "--trigger", help="camera (detect the marker) or enter (press Enter)."
    ),
    camera: int | None = typer.Option(
        None, "--camera", help="Camera number instead of the config's."
    ),
    errors: str | None = typer.Option(
        None, "--errors", help="Skip the runs: comma-separated reports, e.g. 30mm,25mm,+12ms."
    ),
    arrivals: Path | None = typer.Option(
        None,
        "--arrivals",
        help="Second detection: a file of 'fired_at arrived_at' lines (seconds, same clock).",
    ),
    tolerance_ms: float = typer.Option(10.0, "--tolerance-ms", help="Largest spread trusted."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Write without asking."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the new offset, write nothing."),
) -> None:
    """Calibrate one gate's timing and store its offset_ms in the config file."""
    try:
        _calibrate(
            gate,
            config_path,
            serial,
            trials,
            trigger_kind,
            camera,
            errors,
            arrivals,
            tolerance_ms,
            yes,
            dry_run,
        )
    except SorterError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err


def _calibrate(
    gate: int,
    config_path: Path,
    serial: str | None,
    trials: int,
    trigger_kind: str,
    camera: int | None,
    errors: str | None,
    arrivals: Path | None,
    tolerance_ms: float,
    yes: bool,
    dry_run: bool,
) -> None:
    config = load_config(config_path)
    key = str(gate)
    if key not in config.gates:
        raise ConfigError(
            f"{config_path}: no [gates.{gate}]; known gates: {', '.join(config.gates)}"
        )
    g = config.gates[key]
    speed = config.belt.speed_mm_s
    if errors is not None:
        reports = errors.split(",")
        try:
            values = [error_ms_from_report(r, speed) for r in reports]
        except ValueError as err:
            raise ConfigError(f"--errors: {err}") from err
        errs = [e for e in values if e is not None]
    elif arrivals is not None:
        errs = arrival_errors_ms(read_arrivals(arrivals))
    else:
        errs = marker_session(
            config,
            gate,
            url=serial,
            trials=trials,
            trigger_kind=trigger_kind,
            camera=camera,
            ask=_ask,
            say=typer.echo,
        )
    result = propose_offset(gate, g.offset_ms, errs, tolerance_ms=tolerance_ms)
    _report(result)
    if dry_run or result.n == 0:
        raise typer.Exit(0 if result.n else 1)
    if not result.trusted and not yes:
        typer.echo(f"not written: {result.note}. Run more trials, or pass --yes to write anyway.")
        raise typer.Exit(1)
    if not yes and not typer.confirm(
        f"write offset_ms = {result.new_offset_ms:.1f} to {config_path}?"
    ):
        raise typer.Exit(1)
    write_gate_offset(config_path, gate, result.new_offset_ms)
    typer.echo(f"{config_path}: [gates.{gate}] offset_ms = {result.new_offset_ms:.1f}")


def _ask(prompt: str) -> str:
    return str(typer.prompt(prompt, default="", show_default=False))


def _report(r: CalibrationResult) -> None:
    typer.echo(
        f"gate {r.gate}: {r.n} trial(s), median error {r.correction_ms:+.1f} ms "
        f"(spread {r.spread_ms:.1f} ms); offset_ms {r.old_offset_ms:.1f} -> {r.new_offset_ms:.1f}"
    )
    if r.note:
        typer.echo(f"note: {r.note}")


def register(app: typer.Typer) -> None:
    """Add `sorter calibrate` to the CLI."""
    app.command("calibrate")(calibrate)
