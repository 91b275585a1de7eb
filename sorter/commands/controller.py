"""`sorter controller ping|fire|monitor URL`: bench tools for the gate controller.

Thin: the work is in `firmware_bridge.bench`. URL is a device path (/dev/ttyACM0,
/dev/sorter-controller), `socket://host:port` (the firmware under QEMU) or `sim://`.
"""

from __future__ import annotations

import threading

import typer

from firmware_bridge import bench
from firmware_bridge.command import Fate
from firmware_bridge.errors import BridgeError
from sorter.errors import SorterError

app = typer.Typer(
    help="Talk to the gate controller directly: ping it, fire a gate, watch its events.",
    no_args_is_help=True,
)

URL_HELP = "Serial port (/dev/ttyACM0), socket://HOST:PORT or sim://"


def _fail(err: Exception) -> typer.Exit:
    typer.echo(f"error: {err}", err=True)
    return typer.Exit(2)


@app.command("ping")
def ping_command(
    url: str = typer.Argument(..., help=URL_HELP),
    count: int = typer.Option(5, "--count", min=1, help="SYNC round trips to time."),
) -> None:
    """HELLO the controller, time round trips and show what it is (changes nothing)."""
    try:
        result = bench.ping(url, count=count)
    except (BridgeError, SorterError) as err:
        raise _fail(err) from err
    for line in result.lines():
        typer.echo(line)


@app.command("fire")
def fire_command(
    url: str = typer.Argument(..., help=URL_HELP),
    gate: int = typer.Argument(..., min=0, help="Gate number, from 0."),
    pulse_ms: int = typer.Option(40, "--pulse-ms", min=1, max=255, help="Pulse length."),
) -> None:
    """Configure the controller and fire one gate now (bench test of the wiring)."""
    try:
        result = bench.fire(url, gate, pulse_ms=pulse_ms)
    except (BridgeError, SorterError) as err:
        raise _fail(err) from err
    typer.echo(f"gate {result.gate}: {result.status} {result.detail}".rstrip())
    if result.status != Fate.FIRED:
        raise typer.Exit(1)


@app.command("monitor")
def monitor_command(
    url: str = typer.Argument(..., help=URL_HELP),
    all_messages: bool = typer.Option(False, "--all", help="Show replies too."),
) -> None:
    """Show the controller's events live (FIRED, LATE, SAFE_STATE, FAULT, STATUS) until
    Ctrl-C."""
    stop = threading.Event()
    try:
        bench.monitor(url, typer.echo, stop, replies=all_messages)
    except KeyboardInterrupt:
        stop.set()
    except (BridgeError, SorterError) as err:
        raise _fail(err) from err
