"""Figure 2: training throughput of sorter-train's input pipeline against NumPy in memory.

The default architecture is fitted for a few epochs twice from the same initial weights:
once fed by `training.train.make_datasets` (the tf.data pipeline sorter-train uses: cache,
shuffle, batch, prefetch) and once by `model.fit` on the whole training set held in memory
as NumPy arrays. Images/s is over the epochs after the first; the first epoch (tracing,
cache fill) is reported separately. The time sorter-train spends reading and decoding the
dataset (scan + decode via sorter.perception.preprocess) is reported too.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from benchmarks import models
from benchmarks.core import Context, Row, ratio

NUMBER = 2
TITLE = "Training throughput"

log = logging.getLogger(__name__)


def missing() -> str | None:
    return models.training_missing()


class EpochTimer:
    """A Keras callback recording each epoch's wall time."""

    def __new__(cls) -> Any:
        import keras

        class _Timer(keras.callbacks.Callback):
            def __init__(self) -> None:
                super().__init__()
                self.times: list[float] = []
                self._t0 = 0.0

            def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
                self._t0 = time.perf_counter()

            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                self.times.append(time.perf_counter() - self._t0)

        return _Timer()


def load_train_arrays(ctx: Context) -> tuple[np.ndarray, np.ndarray, int, float]:
    """The training split decoded as sorter-train does; returns x, y, n_classes, seconds."""
    from training import data as D

    t0 = time.perf_counter()
    scan = D.scan_dataset(models.split_tree(ctx))
    split = D.make_split(scan, val_fraction=0.1, test_fraction=0.0, seed=ctx.seed)
    x, y = D.load_arrays(scan.root, split["train"], scan.labels, scan.native_size(), scan.decoded)
    return x, y, len(scan.labels), time.perf_counter() - t0


def fit_times(
    arch: str,
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    epochs: int,
    *,
    pipeline: bool,
    seed: int,
    augment: bool = True,
) -> list[float]:
    """Per-epoch wall times of fitting `arch` on (x, y) by the pipeline or from NumPy."""
    import keras

    from training.model import DEFAULT_LEARNING_RATE, build_model
    from training.train import make_datasets

    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = build_model(
        arch, (int(x.shape[1]), int(x.shape[2])), n_classes, augment=augment, seed=seed
    )
    model.compile(
        optimizer=keras.optimizers.Adam(DEFAULT_LEARNING_RATE[arch]),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    timer = EpochTimer()
    batch = 64
    if pipeline:
        train_ds, _val = make_datasets(x, y, x[:1], y[:1], batch_size=batch, seed=seed)
        model.fit(train_ds, epochs=epochs, callbacks=[timer], verbose=0)
    else:
        model.fit(x, y, batch_size=batch, epochs=epochs, shuffle=True, callbacks=[timer], verbose=0)
    times: list[float] = timer.times
    return times


def run(ctx: Context) -> list[Row]:
    arch = "softmax" if ctx.smoke else models.archs()[0]  # smoke: the cheapest to trace
    epochs = 2 if ctx.smoke else 4
    x, y, n_classes, load_s = load_train_arrays(ctx)
    n = len(x)
    aug = not ctx.smoke  # smoke: skip tracing the augmentation
    pipe = fit_times(arch, x, y, n_classes, epochs, pipeline=True, seed=ctx.seed, augment=aug)
    mem = fit_times(arch, x, y, n_classes, epochs, pipeline=False, seed=ctx.seed, augment=aug)
    pipe_ips = n / float(np.median(pipe[1:]))
    mem_ips = n / float(np.median(mem[1:]))
    return [
        Row(
            measure=f"{arch}, tf.data pipeline (sorter-train), epochs 2-{epochs}",
            value=f"{pipe_ips:.0f} images/s",
            baseline="model.fit on NumPy arrays in memory",
            baseline_value=f"{mem_ips:.0f} images/s",
            ratio=ratio(pipe_ips, mem_ips),
            note=f"{n} training images 32x32, batch 64, augmentation {'on' if aug else 'off'}",
        ),
        Row(
            measure="first epoch (tracing, cache fill), pipeline",
            value=f"{pipe[0]:.1f} s",
            baseline="first epoch, NumPy",
            baseline_value=f"{mem[0]:.1f} s",
            ratio=ratio(pipe[0], mem[0]),
        ),
        Row(
            measure="reading + decoding the dataset (scan, sorter.perception.preprocess)",
            value=f"{load_s:.1f} s",
            baseline="one steady pipeline epoch",
            baseline_value=f"{float(np.median(pipe[1:])):.1f} s",
            ratio=ratio(load_s, float(np.median(pipe[1:]))),
            note="done once per run; the pipeline caches decoded arrays",
        ),
    ]
