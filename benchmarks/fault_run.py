"""Fault-injection run at scale: the link against the real firmware under QEMU through a
proxy that damages 1% of the bytes each way, with cable pulls and controller restarts,
firings counted on the controller's side of the proxy (tests/fault_run.py says what each
check means). Prints a Markdown table and, with --out, records it with the machine.

    nice -n 19 python -m benchmarks.fault_run                       # 10,000 SORTs, ~8 min
    nice -n 19 python -m benchmarks.fault_run --sorts 2000 --resets 2 --disconnects 2
    python -m benchmarks.fault_run --out benchmarks/results/fault-run.md

Exit status 1 when any promise was broken (a double or wrong firing, a stale target, a
fate reported wrong).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from benchmarks import machine
from firmware_bridge.emulator import tools_available
from tests import fault_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sorts", type=int, default=10_000, help="SORTs to send (10000)")
    parser.add_argument("--rate", type=float, default=22.0, help="SORTs per second (22)")
    parser.add_argument("--damage", type=float, default=0.01, help="byte fault rate (0.01)")
    parser.add_argument("--resets", type=int, default=10, help="controller restarts (10)")
    parser.add_argument("--disconnects", type=int, default=10, help="cable pulls (10)")
    parser.add_argument("--seed", type=int, default=20261201, help="fault seed")
    parser.add_argument("--out", type=Path, help="also write the table (Markdown) here")
    args = parser.parse_args(argv)
    if not tools_available():
        print("error: avr-gcc / qemu-system-avr missing; run `make sysdeps`", file=sys.stderr)
        return 2
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = os.getloadavg()
    result = fault_run.run(
        n_sorts=args.sorts,
        rate_hz=args.rate,
        fault_rate=args.damage,
        resets=args.resets,
        disconnects=args.disconnects,
        seed=args.seed,
    )
    load_after = os.getloadavg()
    info = machine.describe()
    text = "\n".join(
        [
            f"# Fault-injection run, {started}",
            "",
            f"`python -m benchmarks.fault_run --sorts {args.sorts} --rate {args.rate} "
            f"--damage {args.damage} --resets {args.resets} --disconnects {args.disconnects} "
            f"--seed {args.seed}`",
            "",
            result.table(),
            "",
            f"Machine: {info['cpu']}, {info['cores']} cores, {info['os']}, "
            f"{info['qemu-system-avr']}; load average {load_before[0]:.1f} before, "
            f"{load_after[0]:.1f} after.",
            "",
            f"Problems: {result.problems() or 'none'}",
            "",
        ]
    )
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 1 if result.problems() else 0


if __name__ == "__main__":
    sys.exit(main())
