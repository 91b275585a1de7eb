"""Figure 4: inference latency at batch 1: LiteRT int8 vs LiteRT float vs Keras predict.

Both LiteRT models are run by the device's `sorter.grading.classifier.Classifier` (set input,
invoke, read output) at 1 and 2 interpreter threads; Keras `model.predict` on the same
network (inference copy, batch 1) runs in a fresh process per thread count, because
TensorFlow fixes its thread pools at start-up. Median and p99 per call; Keras is the
baseline (ratio = how many times faster LiteRT is at the median).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from benchmarks import models
from benchmarks.core import Context, Row, fmt_ms, percentiles, ratio

NUMBER = 4
TITLE = "Inference latency (batch 1)"

THREADS = (1, 2)


def missing() -> str | None:
    return models.training_missing() or models.export_missing()


def litert_times(path: Path, threads: int, runs: int) -> list[float]:
    from sorter.grading.classifier import Classifier

    clf = Classifier(model_path=path, num_threads=threads)
    times: list[float] = clf.time_invokes(runs, warmup=max(5, runs // 10))
    return times


def keras_times(
    ctx: Context, model_file: Path, threads: int, runs: int
) -> tuple[list[float], list[float]]:
    """(predict times, direct-call times) in a fresh process with `threads` TF threads."""
    cmd = [
        ctx.python,
        "-m",
        "benchmarks.keras_latency",
        str(model_file),
        "--threads",
        str(threads),
        "--runs",
        str(runs),
        "--warmup",
        str(max(3, runs // 10)),
    ]
    from benchmarks.core import REPO

    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"keras latency process failed: {out.stderr.strip()[-300:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return list(result["times"]), list(result.get("direct", []))


def keras_times_here(model_file: Path, runs: int) -> list[float]:
    """Keras predict latency in this process (TensorFlow's default threads; smoke runs)."""
    import time

    import keras
    import numpy as np

    from training.model import inference_model

    model = inference_model(keras.models.load_model(model_file, compile=False), batch_size=1)
    h, w = (int(d) for d in model.inputs[0].shape[1:3])
    x = np.zeros((1, h, w, 3), dtype=np.uint8)
    model.predict(x, verbose=0)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model.predict(x, verbose=0)
        times.append(time.perf_counter() - t0)
    return times


def run(ctx: Context) -> list[Row]:
    arch_list = [a for a in models.archs() if a != "softmax"]
    if ctx.smoke:
        arch_list = arch_list[:1]
    runs_lite = 50 if ctx.smoke else 1000
    runs_keras = 10 if ctx.smoke else 50
    threads = (1,) if ctx.smoke else THREADS
    rows = []
    for arch in arch_list:
        run_dir = Path(models.trained(ctx, arch, 0).run_dir)
        lite = {
            kind: models.exported(ctx, arch, 0, quantize=(kind == "int8"))
            for kind in ("int8", "float")
        }
        for t in threads:
            direct_note = ""
            if ctx.smoke:  # no second TensorFlow start-up: time predict in this process
                k = percentiles(keras_times_here(run_dir / "model.keras", runs_keras))
            else:
                pred, direct = keras_times(ctx, run_dir / "model.keras", t, runs_keras)
                k = percentiles(pred)
                if direct:
                    p50 = fmt_ms(percentiles(direct)["p50"])
                    direct_note = f"; Keras direct model(x) call p50 {p50}"
            for kind, path in lite.items():
                s = percentiles(litert_times(path, t, runs_lite))
                rows.append(
                    Row(
                        measure=f"{arch} LiteRT {kind}, {t} thread{'s' if t > 1 else ''}",
                        value=f"p50 {fmt_ms(s['p50'])}, p99 {fmt_ms(s['p99'])}",
                        baseline=f"Keras predict, {t} thread{'s' if t > 1 else ''}",
                        baseline_value=f"p50 {fmt_ms(k['p50'])}, p99 {fmt_ms(k['p99'])}",
                        ratio=f"{ratio(k['p50'], s['p50'])} faster",
                        note=f"{s['n']} / {k['n']} calls{direct_note}",
                    )
                )
    return rows
