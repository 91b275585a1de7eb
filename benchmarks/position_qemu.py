"""POSITION-mode fire error under QEMU: the TEST_ENCODER=2 firmware build (its encoder
runs 2000 ticks/s, slowing by 20% over 1 s and back every 10 s), the link and scheduler
as `sorter run` wires them with [belt] encoder_ticks_per_mm = 10, items every 0.25 s to
gates 0..3; each FIRED (counted on the controller's side of a fault-free proxy) against
the item's true arrival (tests/position_qemu.py, tests/encoder_belt.py). Prints a Markdown
table per speed phase; --out records it with the machine.

    nice -n 19 python -m benchmarks.position_qemu                 # 3 runs of 44 items
    python -m benchmarks.position_qemu --runs 1 --out benchmarks/results/position.md

Exit status 1 when a promise was broken (fired twice, at another gate, for an unknown
item, or outside its window of the true arrival).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from benchmarks import machine
from firmware_bridge import protocol as p
from firmware_bridge.emulator import tools_available
from tests.position_qemu import PositionRun, run_position_qemu
from tests.test_position_firmware import Item, belt_config, judge, phase, window_ticks

PHASES = ("constant", "changing", "slow")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def table(runs: list[PositionRun]) -> str:
    """One row per speed phase (where the item reached its gate), over all runs."""
    lines = [
        "| phase | items | fired | \\|error\\| ticks median / p90 / max "
        "| \\|error\\| ms median / p90 / max | configured speed: \\|error\\| ms max |",
        "|---|---|---|---|---|---|",
    ]
    for name in PHASES:
        group: list[Item] = [
            it for run in runs for it in run.items if phase(run.belt, it.true_arrival_us) == name
        ]
        fired = [it for it in group if it.fired]
        ticks = [float(abs(it.fired[0].position - it.true_target)) for it in fired]
        ms = [abs(p.time_diff(it.fired[0].time, round(it.true_arrival_us))) / 1e3 for it in fired]
        conf = [abs(it.configured_arrival_us - it.true_arrival_us) / 1e3 for it in group]
        if not fired:
            lines.append(f"| {name} | {len(group)} | 0 | - | - | - |")
            continue
        lines.append(
            f"| {name} | {len(group)} | {len(fired)} "
            f"| {statistics.median(ticks):.0f} / {_pct(ticks, 0.9):.0f} / {max(ticks):.0f} "
            f"| {statistics.median(ms):.2f} / {_pct(ms, 0.9):.2f} / {max(ms):.2f} "
            f"| {max(conf):.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of the profile (3)")
    parser.add_argument("--items", type=int, default=44, help="items per run (44: ~11 s)")
    parser.add_argument("--out", type=Path, help="also write the table (Markdown) here")
    args = parser.parse_args(argv)
    if not tools_available():
        print("error: avr-gcc / qemu-system-avr missing; run `make sysdeps`", file=sys.stderr)
        return 2
    config = belt_config()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = os.getloadavg()
    runs = [run_position_qemu(config, n_items=args.items) for _ in range(args.runs)]
    load_after = os.getloadavg()
    problems = {k: v for run in runs for k, v in judge(run.items, run.fired, config).items() if v}
    statuses: dict[str, int] = {}
    for run in runs:
        for status, n in run.statuses.items():
            statuses[status] = statuses.get(status, 0) + n
    info = machine.describe()
    text = "\n".join(
        [
            f"# POSITION mode under QEMU (TEST_ENCODER=2), {started}",
            "",
            f"`python -m benchmarks.position_qemu --runs {args.runs} --items {args.items}`: "
            f"window {window_ticks(config)} ticks = {config.serial.window_ms:g} ms at "
            "2000 ticks/s; error = FIRED (controller) - the item's true arrival.",
            "",
            table(runs),
            "",
            f"Host fates: {statuses} ({sum(len(r.unsent) for r in runs)} of them not sent: no "
            f"belt position within 0.1 s). Machine: {info['cpu']}, {info['cores']} cores, "
            f"{info['os']}, {info['qemu-system-avr']}; load average {load_before[0]:.1f} "
            f"before, {load_after[0]:.1f} after.",
            "",
            f"Problems: {problems or 'none'}",
            "",
        ]
    )
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
