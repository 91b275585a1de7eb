"""`python -m firmware_bridge`: bench tools for a gate controller, without the sorter.

    python -m firmware_bridge ping /dev/ttyACM0
    python -m firmware_bridge fire /dev/ttyACM0 3 --pulse-ms 60
    python -m firmware_bridge monitor socket://127.0.0.1:5678
    python -m firmware_bridge sim-server --port 5678 --gates 9   # the simulator over TCP

A bad port gives one line `error: ...` naming it, and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import threading

from firmware_bridge import bench
from firmware_bridge.errors import BridgeError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m firmware_bridge", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log link details")
    sub = parser.add_subparsers(dest="command", required=True)
    ping = sub.add_parser("ping", help="HELLO and SYNC round trips; show the controller")
    ping.add_argument("url", help="device path, socket://host:port or sim://")
    ping.add_argument("--count", type=int, default=5, help="SYNC round trips (default 5)")
    fire = sub.add_parser("fire", help="configure and fire one gate now")
    fire.add_argument("url")
    fire.add_argument("gate", type=int, help="gate number, from 0")
    fire.add_argument("--pulse-ms", type=int, default=40, help="pulse length (default 40)")
    mon = sub.add_parser("monitor", help="show controller events until Ctrl-C")
    mon.add_argument("url")
    mon.add_argument("--all", action="store_true", help="show replies too")
    srv = sub.add_parser("sim-server", help="serve the Python simulator on a TCP port")
    srv.add_argument("--port", type=int, default=5678)
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--sim", default="sim://?gates=9", help="simulator URL with options")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "ping":
            for line in bench.ping(args.url, count=args.count).lines():
                print(line)
        elif args.command == "fire":
            result = bench.fire(args.url, args.gate, pulse_ms=args.pulse_ms)
            print(f"gate {result.gate}: {result.status} {result.detail}".rstrip())
            return 0 if result.status == "fired" else 1
        elif args.command == "monitor":
            stop = threading.Event()
            try:
                bench.monitor(args.url, print, stop, replies=args.all)
            except KeyboardInterrupt:
                stop.set()
        elif args.command == "sim-server":
            return _serve(args.sim, args.host, args.port)
    except BridgeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _serve(sim_url: str, host: str, port: int) -> int:
    from firmware_bridge.simulator import SimulatorServer

    with SimulatorServer(sim_url, host, port) as server:
        print(f"simulator ({sim_url}) on {server.url}; Ctrl-C to stop", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
