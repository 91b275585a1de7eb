"""What shadow mode costs: the bundled belt replayed with and without a candidate model.

    .venv/bin/python -m benchmarks.shadow_cost [--belt demo/belt.mp4] [--no-realtime] [--out F]

The candidate is a copy of the bundled model (a fine-tuned candidate has the same network,
so the same cost). Each row is one `sorter run`-equivalent replay against `sim://` through
`sorter.replay.truth.run_with_truth`: a fast replay (virtual clock; the loop waits for every
shadow view, deterministic) and a real-time one (video paced at its fps; the shadow grades on
its own thread, drops views it cannot keep up with). Columns: wall time, the active model's
classify stage per item, the candidate's worker time per view (off the loop's path), the
loop's wait for it per item at decision time (on the loop's path), frame -> SORT latency,
views dropped, correct bin. Prints a markdown table and writes it with the machine to
benchmarks/results/shadow-<machine>-<date>.md (unless --out -).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.machine import describe, machine_slug

ROOT = Path(__file__).resolve().parents[1]


def replay(video: Path, truth: Path, mode: str, shadow: Path | None, db: Path) -> dict[str, Any]:
    """One replay; the figures of its summary."""
    from sorter.config import Config, apply_overrides
    from sorter.monitor.audit import DecisionLog
    from sorter.monitor.status import Status
    from sorter.replay.truth import run_with_truth
    from sorter.runtime.runner import RunOptions

    config = apply_overrides(Config(), {"serial.url": "sim://?gates=9"})
    opts = RunOptions(video=video, mode=mode, shadow=shadow, handle_signals=False)
    t0 = time.perf_counter()
    result = run_with_truth(config, opts, DecisionLog(db), Status(), truth)
    wall = time.perf_counter() - t0
    s = result.summary
    items = max(1, int(s["items"]))
    sh = s.get("shadow") or {}
    lat = s.get("latency_s") or {}
    return {
        "mode": mode,
        "shadow": "yes" if shadow else "no",
        "items": s["items"],
        "wall_s": wall,
        "classify_ms_item": 1000.0 * s["stages"].get("classify", 0.0) / items,
        "shadow_ms_view": sh.get("ms_per_view"),
        "views_item": (sh.get("views", 0) / items) if sh else None,
        "wait_ms_item": sh.get("wait_ms_per_item"),
        "p50_ms": 1000.0 * lat["p50"] if "p50" in lat else None,
        "p99_ms": 1000.0 * lat["p99"] if "p99" in lat else None,
        "dropped": sh.get("dropped") if sh else None,
        "agreement": sh.get("agreement") if sh else None,
        "correct_bin_pct": result.scorecard.correct_bin_pct if result.scorecard else None,
    }


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


COLUMNS = (
    ("mode", "mode"), ("shadow", "shadow"), ("items", "items"), ("wall_s", "wall s"),
    ("classify_ms_item", "active classify ms/item"), ("shadow_ms_view", "shadow ms/view"),
    ("views_item", "views/item"), ("wait_ms_item", "loop wait ms/item"),
    ("p50_ms", "latency p50 ms"), ("p99_ms", "latency p99 ms"), ("dropped", "views dropped"),
    ("agreement", "agreement"), ("correct_bin_pct", "correct bin %"),
)  # fmt: skip


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| " + " | ".join(h for _, h in COLUMNS) + " |"]
    out.append("|" + "---|" * len(COLUMNS))
    for r in rows:
        out.append("| " + " | ".join(_fmt(r[k]) for k, _ in COLUMNS) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--belt", type=Path, default=ROOT / "demo" / "belt.mp4")
    ap.add_argument("--no-realtime", action="store_true", help="Fast replays only.")
    ap.add_argument("--out", default="", help="Results file ('-': print only).")
    args = ap.parse_args(argv)
    video, truth = args.belt, args.belt.with_suffix(".json")
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    load0 = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cand = Path(tmp) / "candidate.tflite"
        shutil.copyfile(ROOT / "models" / "cucumber9-int8.tflite", cand)
        modes = ["fast"] + ([] if args.no_realtime else ["realtime"])
        for mode in modes:
            for shadow in (None, cand):
                db = Path(tmp) / f"{mode}-{'s' if shadow else 'n'}.db"
                rows.append(replay(video, truth, mode, shadow, db))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    text = table(rows)
    print(text)
    if args.out != "-":
        out = Path(args.out) if args.out else (
            ROOT / "benchmarks" / "results" / f"shadow-{machine_slug()}-{started[:10]}.md"
        )  # fmt: skip
        machine = "\n".join(f"- {k}: {v}" for k, v in describe().items())
        out.write_text(
            f"# Shadow mode cost\n\n- started: {started} (UTC)\n- command: `python -m "
            f"benchmarks.shadow_cost{' --no-realtime' if args.no_realtime else ''}`\n"
            f"- belt: {video.name} ({truth.name})\n- load average (1 min) at start / end: "
            f"{load0:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (a shared "
            f"machine: compare rows of one file only)\n\n## Machine\n\n{machine}\n\n"
            f"## Figures\n\n{text}\n"
        )
        print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
