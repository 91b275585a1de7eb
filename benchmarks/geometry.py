"""Gates timed by the belt itself: configured vs measured belt speed on a belt that slows.

A CUCUMBER-9 belt is rendered with `sorter simulate-belt --speed-profile` (the belt runs at
full speed, slows by 20% over one second, runs slow, and is back at full speed one second
later; the truth gives each item's true arrival time at every gate), replayed through the
real loop (bundled int8 model, the Python controller simulator on the replay's virtual
clock) twice: `[belt] timing = "configured"` (fire time = crossing + distance / the
configured speed) and `timing = "measured"` (the belt's own odometer, SORTs held until
send_ahead_ms before the gate). The error of an item is the controller's fire time minus
the item's true arrival at its gate; inside `serial.window_ms` counts as on time.
Reported per belt (items placed at fractional positions, as a camera sees them, and at
whole pixels, the simulator's default; and the fractional belt seen by a camera turned
ANGLE degrees to it, `--belt-angle`, measured timing with `[lens] belt_angle_deg` set to
the angle, as `sorter calibrate-camera` would, and left at 0): p50 / max of |error| of
the items whose gate fired and how many of them were on time, and the fate of every
item whose gate did not fire (a policy reject rides to the reject lane, no gate: its
reason; "missed": no decision at all).

    nice -n 19 python -m benchmarks.geometry [--data DIR] [--count 40] [--out FILE.md]

`--data` is a folder-per-grade tree (`sorter-train import-cucumber9`); by default the
shared CUCUMBER-9 batches are imported into the work folder first.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import machine
from benchmarks.core import REPO

PROFILE = "0:1,4:1,5:0.8,8:0.8,9:1"
"""20% slower from 5 s to 8 s, one-second ramps either side."""
ANGLE = 5.0
"""The turned belt's angle in the image (a camera not square to the belt), degrees."""
C9 = REPO.parent / "shared" / "data" / "cucumber-9" / "prototype_1"


def _data(work: Path, given: Path | None) -> Path:
    if given is not None:
        return given
    from training.cucumber9 import import_cucumber9

    dest = work / "c9"
    import_cucumber9(C9, dest)
    return dest


def _belt(data: Path, work: Path, count: int, subpixel: bool, angle: float = 0.0) -> Path:
    from sorter.replay.belt_sim import BeltSimConfig, simulate_belt

    cfg = BeltSimConfig(
        seed=7,
        lead_in_s=0.5,
        count=count,
        items_per_second=2.0,
        subpixel=subpixel,
        speed_profile=PROFILE,
        limit_per_grade=20,
        belt_angle_deg=angle,
    )
    name = ("dip-subpixel" if subpixel else "dip-whole-px") + (f"-turned{angle:g}" if angle else "")
    name += ".mp4"
    return Path(simulate_belt(data, work / name, cfg).truth)


def outcomes(
    records: list[Any], truth: dict[str, Any], config: Any
) -> tuple[list[float], dict[str, int]]:
    """Each truth item's fate: the gate errors (ms, fired - true arrival) of the items whose
    gate fired, and a tally of every item by what happened to it: "fired", the record's
    status with its policy reason ("rejected (low-confidence)": the reject lane, no gate),
    or "missed" (no decision at all). Records are matched to truth items one to one by the
    scorecard's rule (sorter.replay.scorecard.match_to_truth), so an item without a record
    is counted missed, never credited with a neighbour's fate."""
    from sorter.replay.scorecard import match_to_truth

    rows = [{"t_line": r.t_line, "label": r.label} for r in records]
    match = match_to_truth(rows, truth)
    errors: list[float] = []
    fates: dict[str, int] = {}
    for ti, it in enumerate(truth["items"]):
        ri = match.get(ti)
        rec = None if ri is None else records[ri]
        if rec is None:
            fate = "missed"
        elif str(rec.status) == "fired" and rec.gate is not None and rec.fired_at is not None:
            fate = "fired"
            distance = config.gates[str(rec.gate)].distance_mm
            errors.append(1000.0 * (rec.fired_at - it["arrivals"][f"{distance:g}"]))
        else:
            why = "" if rec.reason in ("", "graded", None) else f" ({rec.reason})"
            fate = f"{rec.status}{why}"
        fates[fate] = fates.get(fate, 0) + 1
    return errors, fates


def _errors_ms(
    truth_path: Path, timing: str, over: dict[str, Any] | None = None
) -> tuple[list[float], dict[str, int]]:
    from sorter.config import Config, apply_overrides
    from sorter.monitor.audit import DecisionLog
    from sorter.monitor.status import Status
    from sorter.replay.truth import load_truth, run_with_truth
    from sorter.runtime.runner import RunOptions

    config = apply_overrides(
        Config(), {"serial.url": "sim://", "belt.timing": timing, **(over or {})}
    )
    opts = RunOptions(video=truth_path.with_suffix(".mp4"), mode="fast", handle_signals=False)
    result = run_with_truth(config, opts, DecisionLog(None), Status(), truth_path)
    return outcomes(result.records, load_truth(truth_path), config)


BELTS: list[tuple[str, bool, float, list[tuple[str, str, float]]]] = [
    # (belt, subpixel, angle in the image, [(row label, timing, [lens] belt_angle_deg)])
    (
        "fractional positions",
        True,
        0.0,
        [("configured", "configured", 0.0), ("measured", "measured", 0.0)],
    ),
    (
        "whole pixels",
        False,
        0.0,
        [("configured", "configured", 0.0), ("measured", "measured", 0.0)],
    ),
    (
        f"turned {ANGLE:g} deg, fractional",
        True,
        ANGLE,
        [
            (f"measured, angle {ANGLE:g} deg", "measured", ANGLE),
            ("measured, angle not used", "measured", 0.0),
        ],
    ),
]


def run(data: Path | None, count: int, work: Path) -> list[dict[str, Any]]:
    """Every belt of BELTS with each of its timings: one row each."""
    from sorter.config import Config

    window = Config().serial.window_ms
    src = _data(work, data)
    rows = []
    for belt, subpixel, angle, timings in BELTS:
        truth = _belt(src, work, count, subpixel, angle)
        for label, timing, use_angle in timings:
            errs, fates = _errors_ms(truth, timing, {"lens.belt_angle_deg": use_angle})
            a = np.abs(np.array(errs))
            rows.append(
                {
                    "belt": belt,
                    "timing": label,
                    "fired": len(errs),
                    "items": count,
                    "p50_ms": float(np.median(a)),
                    "max_ms": float(a.max()),
                    "mean_ms": float(np.mean(errs)),
                    "on_time": int((a <= window).sum()),
                    "window_ms": window,
                    "fates": fates,
                }
            )
    return rows


def not_fired(fates: dict[str, int]) -> str:
    """The items whose gate did not fire, by fate ("2 rejected (low-confidence)")."""
    parts = [f"{n} {fate}" for fate, n in sorted(fates.items()) if fate != "fired"]
    return ", ".join(parts) or "none"


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the rows."""
    out = [
        "| belt | timing | fired | not fired (fate) | \\|error\\| p50 | \\|error\\| max "
        "| signed mean | fired on time (within window_ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['belt']} | {r['timing']} | {r['fired']}/{r['items']} "
            f"| {not_fired(r['fates'])} | {r['p50_ms']:.2f} ms "
            f"| {r['max_ms']:.2f} ms | {r['mean_ms']:+.2f} ms | {r['on_time']}/{r['fired']} "
            f"(window {r['window_ms']:g} ms) |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None, help="Folder-per-grade images.")
    p.add_argument("--count", type=int, default=40, help="Items on each belt.")
    p.add_argument("--out", type=Path, default=None, help="Results file (markdown).")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    started = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="geometry-") as tmp:
        rows = run(args.data, args.count, Path(tmp))
    text = table(rows)
    print(text)
    out = args.out or (
        REPO / "benchmarks" / "results" / f"geometry-{machine.machine_slug()}-{started:%Y-%m-%d}.md"
    )
    info = "\n".join(f"- {k}: {v}" for k, v in machine.describe().items())
    out.write_text(
        f"# Gates timed by the belt (speed profile {PROFILE}) {started:%Y-%m-%d}\n\n"
        f"- started: {started:%Y-%m-%d %H:%M} (UTC); wall time "
        f"{(time.monotonic() - t0) / 60:.1f} min\n"
        f"- command: `nice -n 19 python -m benchmarks.geometry "
        f"{'--data DIR ' if args.data else ''}--count {args.count}` (DIR: a CUCUMBER-9 "
        "folder-per-grade tree)\n\n"
        f"## Machine\n\n{info}\n\n## Gate timing error (fired - true arrival)\n\n{text}\n",
        encoding="utf-8",
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
