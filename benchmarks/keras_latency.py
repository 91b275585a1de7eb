"""Keras `predict` latency at batch 1 in a fresh process, so the thread count can be set.

    python -m benchmarks.keras_latency RUN_DIR/model.keras --threads 2 --runs 100

TensorFlow fixes its thread pools at first use, so each thread count needs its own process.
Prints one JSON object: {"threads", "times": [seconds per predict call, ...], "direct":
[seconds per direct `model(x)` call, ...]}.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import json
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    args = ap.parse_args()

    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    from training.model import inference_model

    model = inference_model(keras.models.load_model(args.model, compile=False), batch_size=1)
    h, w = (int(d) for d in model.inputs[0].shape[1:3])
    x = np.random.default_rng(0).integers(0, 256, size=(1, h, w, 3), dtype=np.uint8)
    times = []
    for i in range(args.warmup + args.runs):
        t0 = time.perf_counter()
        model.predict(x, verbose=0)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    # The same network called directly (no predict() loop machinery), for context.
    direct = []
    for i in range(args.warmup + args.runs):
        t0 = time.perf_counter()
        model(x, training=False)
        if i >= args.warmup:
            direct.append(time.perf_counter() - t0)
    print(json.dumps({"threads": args.threads, "times": times, "direct": direct}))


if __name__ == "__main__":
    main()
