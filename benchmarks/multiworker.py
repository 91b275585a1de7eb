"""Does a two-worker `sorter-train --multi-worker` run match a one-machine run of the same
recipe? For each seed: one single-worker run and one two-worker run (two CPU workers on
loopback), same data, split, recipe and epochs; prints each run's validation accuracy, the
paired difference, and the seed-to-seed spread of the single-worker runs (the noise the
difference is judged against), as a markdown table with the machine.

    nice -n 19 python -m benchmarks.multiworker DATA_DIR --seeds 0 1 2 --epochs 15

DATA_DIR is a folder-per-grade tree (e.g. `sorter-train import-cucumber9` output); with
--per-grade N only the first N images of each grade are used (copied to a temporary tree).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import machine
from firmware_bridge.emulator import free_port

REPO = Path(__file__).resolve().parents[1]


def _subset(data: Path, per_grade: int | None, dest: Path) -> Path:
    if per_grade is None:
        return data
    for grade in sorted(p for p in data.iterdir() if p.is_dir() and p.name[0] not in "_."):
        (dest / grade.name).mkdir(parents=True)
        for f in sorted(grade.iterdir())[:per_grade]:
            shutil.copy(f, dest / grade.name / f.name)
    return dest


def _cmd(data: Path, out: Path, seed: int, epochs: int, batch: int) -> list[str]:
    return [
        sys.executable, "-m", "training.cli", str(data), "--out", str(out), "--seed", str(seed),
        "--epochs", str(epochs), "--batch-size", str(batch), "--time-budget-min", "0",
        "--no-reports", "--quiet",
    ]  # fmt: skip


def _val_accuracy(run: Path) -> float:
    return float(json.loads((run / "metrics.json").read_text())["val"]["accuracy"])


def _eval_accuracy(run: Path, data: Path | None) -> float | None:
    """Accuracy on a separate folder-per-grade tree (`sorter-train evaluate`), or None."""
    if data is None:
        return None
    cmd = [sys.executable, "-m", "training.cli", "evaluate", str(run), str(data),
           "--out", str(run / "eval")]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=REPO, timeout=1800, capture_output=True)
    return float(json.loads((run / "eval" / "metrics.json").read_text())["test"]["accuracy"])


def _single(data: Path, out: Path, seed: int, epochs: int, batch: int) -> tuple[float, float]:
    t0 = time.monotonic()
    subprocess.run(_cmd(data, out, seed, epochs, batch), check=True, cwd=REPO, timeout=3600,
                   capture_output=True)  # fmt: skip
    return _val_accuracy(out), time.monotonic() - t0


def _two_workers(data: Path, out: Path, seed: int, epochs: int, batch: int) -> tuple[float, float]:
    ports = [free_port(), free_port()]
    t0 = time.monotonic()
    procs = []
    for index in (0, 1):
        tf_config = {
            "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
            "task": {"type": "worker", "index": index},
        }
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "CUDA_VISIBLE_DEVICES": ""}
        cmd = [*_cmd(data, out, seed, epochs, batch), "--multi-worker"]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))  # fmt: skip
    errs = [p.communicate(timeout=3600)[1] for p in procs]
    for p, err in zip(procs, errs, strict=True):
        if p.returncode != 0:
            raise SystemExit(f"error: a worker failed:\n{err[-2000:]}")
    return _val_accuracy(out), time.monotonic() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.multiworker", description=__doc__)
    ap.add_argument("data", type=Path)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--per-grade", type=int, default=None)
    ap.add_argument("--eval", type=Path, default=None, help="also score every run on this tree")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mw-bench-") as tmp:
        data = _subset(a.data, a.per_grade, Path(tmp) / "data")
        rows = []
        for seed in a.seeds:
            one, t1 = _single(data, Path(tmp) / f"single-{seed}", seed, a.epochs, a.batch_size)
            two, t2 = _two_workers(data, Path(tmp) / f"multi-{seed}", seed, a.epochs, a.batch_size)
            e1 = _eval_accuracy(Path(tmp) / f"single-{seed}", a.eval)
            e2 = _eval_accuracy(Path(tmp) / f"multi-{seed}", a.eval)
            rows.append((seed, one, two, t1, t2, e1, e2))
            print(f"seed {seed}: single {one:.3f} ({t1:.0f} s), two workers {two:.3f} ({t2:.0f} s)"
                  f", on --eval: {e1} / {e2}", flush=True)  # fmt: skip
    singles = [r[1] for r in rows]
    diffs = [r[2] - r[1] for r in rows]
    m = machine.describe()
    print(f"\nmachine: {m.get('cpu', '')}; load average {os.getloadavg()[0]:.1f}")
    print(f"data: {a.data} ({a.per_grade or 'all'} per grade), {a.epochs} epochs, "
          f"batch {a.batch_size} (global), val split 10% seeded per run\n")  # fmt: skip
    print("| seed | single-worker val acc | two-worker val acc | two - single | s (1w) | s (2w) "
          "| --eval acc (1w) | --eval acc (2w) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for seed, one, two, t1, t2, e1, e2 in rows:
        ev = "| - | - |" if e1 is None or e2 is None else f"| {e1:.3f} | {e2:.3f} |"
        print(f"| {seed} | {one:.3f} | {two:.3f} | {two - one:+.3f} | {t1:.0f} | {t2:.0f} {ev}")
    sd = statistics.stdev(singles) if len(singles) > 1 else float("nan")
    sd_diff = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
    print(f"\nmean difference {statistics.mean(diffs):+.3f} (sd {sd_diff:.3f}); "
          f"seed-to-seed sd of single-worker runs {sd:.3f}")  # fmt: skip
    evals = [(r[5], r[6]) for r in rows if r[5] is not None and r[6] is not None]
    if len(evals) > 1:
        d = [e2 - e1 for e1, e2 in evals]
        s1 = statistics.stdev([e1 for e1, _ in evals])
        sd_d = statistics.stdev(d)
        print(f"on --eval: mean difference {statistics.mean(d):+.3f} (sd {sd_d:.3f}); "
              f"seed-to-seed sd of single-worker runs {s1:.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
