"""Fit a grading model on a folder-per-grade dataset and write the run folder.

Run folder contract: docs/INTERFACES.md ("Run folder").
"""

from __future__ import annotations

import importlib.util
import json
import logging
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from sorter.errors import ConfigError
from sorter.grading.metrics import compute_metrics, most_confused_pairs
from training import data as D
from training.model import (
    ARCHS,
    DEFAULT_ARCH,
    DEFAULT_LEARNING_RATE,
    AugmentConfig,
    build_model,
    inference_model,
)

log = logging.getLogger(__name__)

SCHEDULES = ("plateau", "cosine")
"""Learning-rate schedules (`TrainConfig.schedule`)."""


@dataclass
class TrainConfig:
    """Everything one training run needs (the resolved version goes into config.json)."""

    data_dir: Path
    """Folder-per-grade dataset root (or one with train/ val/ test/ subtrees)."""
    out: Path | None = None
    """Run folder; None -> runs/<YYYYmmdd-HHMMSS>-<arch>/."""
    arch: str = DEFAULT_ARCH
    """Network: pi-cnn (default), deep-mnist or softmax."""
    input_size: tuple[int, int] | None = None
    """(h, w) model input; None -> the images' native size (most common one if mixed)."""
    epochs: int = 150
    """Maximum epochs (early stopping usually ends sooner)."""
    batch_size: int = 32
    """Images per training step (per replica group under --multi-gpu)."""
    learning_rate: float | None = None
    """Adam learning rate; None -> the arch's default (DEFAULT_LEARNING_RATE)."""
    seed: int = 0
    """Seeds the split, the weights, the shuffle and the augmentation."""
    val_fraction: float = 0.1
    """Fraction of each grade held out for validation when the tree has no val/."""
    test_fraction: float = 0.0
    """Fraction of each grade held out as a test split (only evaluated) when not given."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    """Training-only augmentation (AugmentConfig.off() for none)."""
    patience: int = 20
    """Early stopping: epochs without a better validation loss before stopping."""
    label_smoothing: float = 0.0
    """Cross-entropy label smoothing (0 = plain one-hot targets)."""
    schedule: str = "plateau"
    """Learning-rate schedule: "plateau" (halve when val loss stalls) or "cosine" (cosine
    decay over all epochs to 1% of the start rate)."""
    mixed_precision: bool = False
    """Compute in float16 (output layer stays float32); for GPUs."""
    multi_gpu: bool = False
    """Train under tf.distribute.MirroredStrategy across all visible GPUs."""
    field_of_view_mm: tuple[float, float] = (250.0, 250.0)
    """(width, height) of belt, in mm, that one training image shows; the device crops this."""
    min_per_grade: int = D.MIN_IMAGES_PER_GRADE
    """Fewer readable images than this in a grade is an error."""
    reports: bool = True
    """Draw the report pictures (confusion matrix, curves, gallery, filters, feature maps)."""
    verbose: int = 1
    """Keras fit verbosity: 1 progress bar, 2 one line per epoch, 0 silent."""


@dataclass
class RunResult:
    """What a finished run reports."""

    run_dir: Path
    """Where the run was written."""
    val_accuracy: float
    """Accuracy on the validation split, in [0, 1]."""
    test_accuracy: float | None
    """Accuracy on the test split when there is one."""
    confused: list[tuple[str, str, int]]
    """Most confused (true, predicted, count) validation pairs, largest first."""
    epochs_run: int
    """Epochs actually trained."""
    seconds: float
    """Wall time of the whole run."""
    params: int
    """Model parameters."""


def _validate(cfg: TrainConfig) -> None:
    if cfg.arch not in ARCHS:
        raise ConfigError(f"--arch {cfg.arch}: unknown network; choose one of {', '.join(ARCHS)}")
    if cfg.epochs < 1:
        raise ConfigError(f"--epochs {cfg.epochs}: must be at least 1")
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"--schedule {cfg.schedule}: choose one of {', '.join(SCHEDULES)}")
    if not 0 <= cfg.label_smoothing < 1:
        raise ConfigError(f"--label-smoothing {cfg.label_smoothing}: must be in [0, 1)")
    if cfg.batch_size < 1:
        raise ConfigError(f"--batch-size {cfg.batch_size}: must be at least 1")
    if cfg.input_size is not None and min(cfg.input_size) < 8:
        raise ConfigError(f"--input-size {cfg.input_size}: each side must be at least 8 px")
    if min(cfg.field_of_view_mm) <= 0:
        raise ConfigError(f"--field-of-view-mm {cfg.field_of_view_mm}: must be positive")


def _run_dir(cfg: TrainConfig) -> Path:
    run_dir = cfg.out or Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{cfg.arch}"
    if (run_dir / "model.keras").exists():
        raise ConfigError(
            f"{run_dir}: already holds a trained run; choose another --out or remove it"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{run_dir}: cannot create run folder ({err.strerror})") from err
    return run_dir.resolve()


@contextmanager
def _precision(mixed: bool) -> Iterator[None]:
    before = keras.mixed_precision.global_policy()
    if mixed:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(before)


def _strategy(multi_gpu: bool) -> tf.distribute.Strategy:
    if not multi_gpu:
        return tf.distribute.get_strategy()
    gpus = tf.config.list_logical_devices("GPU")
    if not gpus:
        log.warning("--multi-gpu: no GPU visible; MirroredStrategy will use the CPU")
    strategy = tf.distribute.MirroredStrategy()
    log.info("MirroredStrategy over %d replica(s)", strategy.num_replicas_in_sync)
    return strategy


def make_datasets(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    batch_size: int,
    seed: int,
    n_classes: int | None = None,
) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """tf.data pipelines over the decoded uint8 arrays: cache, shuffle, batch, prefetch.

    With `n_classes`, labels are one-hot (for label smoothing), else integer indices.
    """
    auto = tf.data.AUTOTUNE
    if n_classes is not None:
        y_train = np.eye(n_classes, dtype=np.float32)[y_train]
        y_val = np.eye(n_classes, dtype=np.float32)[y_val]
    train = (
        tf.data.Dataset.from_tensor_slices((x_train, y_train))
        .cache()
        .shuffle(len(x_train), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        .prefetch(auto)
    )
    val = (
        tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(batch_size).cache().prefetch(auto)
    )
    return train, val


def _callbacks(run_dir: Path, cfg: TrainConfig, best: Path) -> list[keras.callbacks.Callback]:
    cbs: list[keras.callbacks.Callback] = [
        keras.callbacks.ModelCheckpoint(
            str(best), monitor="val_loss", save_best_only=True, save_weights_only=True
        ),
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=cfg.patience, restore_best_weights=True
        ),
    ]
    if cfg.schedule == "plateau":
        cbs.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss", factor=0.5, patience=max(2, cfg.patience // 2), min_lr=1e-5
            )
        )
    if importlib.util.find_spec("tensorboard") is not None:
        cbs.append(
            keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard"), write_graph=False)
        )
    else:
        log.warning("tensorboard is not installed; no TensorBoard logs (pip install tensorboard)")
    return cbs


def predict(model: keras.Model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Class probabilities (N, C) for uint8 images, in inference mode."""
    if len(x) == 0:
        return np.zeros((0, model.outputs[0].shape[-1]), dtype=np.float32)
    return np.asarray(model.predict(x, batch_size=batch_size, verbose=0), dtype=np.float32)


def train(cfg: TrainConfig) -> RunResult:
    """Check the data, fit, and write the run folder. Returns the run's summary."""
    t0 = time.monotonic()
    _validate(cfg)
    scan = D.scan_dataset(cfg.data_dir, min_per_grade=cfg.min_per_grade)
    split = D.make_split(
        scan, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=cfg.seed
    )
    input_size = cfg.input_size or scan.native_size()
    labels = scan.labels
    ratio = D.imbalance_ratio(split["train"])
    weights = D.class_weights(split["train"], labels)
    if ratio > 1.5:
        log.warning(
            "classes are imbalanced (largest/smallest = %.1f); compensating with class weights",
            ratio,
        )
    arrays = {
        k: D.load_arrays(scan.root, split[k], labels, input_size, scan.decoded) for k in D.SPLITS
    }
    scan.decoded.clear()
    run_dir = _run_dir(cfg)
    log.info(
        "%d grades, %d train / %d val / %d test images at %dx%d; run folder %s",
        len(labels),
        len(split["train"]),
        len(split["val"]),
        len(split["test"]),
        input_size[0],
        input_size[1],
        run_dir,
    )
    (run_dir / "labels.txt").write_text("".join(f"{g}\n" for g in labels))
    D.write_split(run_dir / "split.json", scan.root, split)

    keras.utils.set_random_seed(cfg.seed)
    lr = cfg.learning_rate or DEFAULT_LEARNING_RATE[cfg.arch]
    best = run_dir / "best.weights.h5"
    with _precision(cfg.mixed_precision):
        strategy = _strategy(cfg.multi_gpu)
        with strategy.scope():
            model = build_model(
                cfg.arch, input_size, len(labels), augment=cfg.augment, seed=cfg.seed
            )
            rate: float | keras.optimizers.schedules.LearningRateSchedule = lr
            if cfg.schedule == "cosine":
                steps = -(-len(split["train"]) // cfg.batch_size) * cfg.epochs
                rate = keras.optimizers.schedules.CosineDecay(lr, steps, alpha=0.01)
            smooth = cfg.label_smoothing > 0
            model.compile(
                optimizer=keras.optimizers.Adam(rate),
                loss=(
                    keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
                    if smooth
                    else keras.losses.SparseCategoricalCrossentropy()
                ),
                metrics=["accuracy"],
            )
        train_ds, val_ds = make_datasets(
            *arrays["train"],
            *arrays["val"],
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            n_classes=len(labels) if smooth else None,
        )
        hist = model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=cfg.epochs,
            class_weight=weights,
            shuffle=False,  # the tf.data pipeline shuffles (seeded) itself
            callbacks=_callbacks(run_dir, cfg, best),
            verbose=cfg.verbose,
        )
        if best.exists():
            model.load_weights(str(best))
            best.unlink()
    model.save(run_dir / "model.keras")
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    (run_dir / "history.json").write_text(json.dumps(history, indent=1) + "\n")

    infer = inference_model(model, batch_size=None)
    metrics: dict[str, Any] = {"labels": labels}
    probs: dict[str, np.ndarray] = {}
    for k in ("val", "test"):
        x, y = arrays[k]
        if len(x):
            probs[k] = predict(infer, x)
            metrics[k] = compute_metrics(y, probs[k].argmax(axis=1), labels)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")

    epochs_run = len(history.get("loss", []))
    config = {
        "arch": cfg.arch,
        "input_size": list(input_size),
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "epochs_run": epochs_run,
        "batch": cfg.batch_size,
        "learning_rate": lr,
        "patience": cfg.patience,
        "label_smoothing": cfg.label_smoothing,
        "schedule": cfg.schedule,
        "augment": cfg.augment.as_dict(),
        "field_of_view_mm": list(cfg.field_of_view_mm),
        "data_dir": str(scan.root),
        "dataset_fingerprint": scan.fingerprint(),
        "val_fraction": cfg.val_fraction,
        "test_fraction": cfg.test_fraction,
        "presplit": scan.presplit,
        "counts": {k: dict(sorted(_count(split[k]).items())) for k in D.SPLITS},
        "class_weights": {labels[i]: w for i, w in weights.items()},
        "corrupt_skipped": [str(p) for p in scan.corrupt],
        "non_image_ignored": len(scan.ignored),
        "mixed_precision": cfg.mixed_precision,
        "multi_gpu": cfg.multi_gpu,
        "params": int(model.count_params()),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "created": datetime.now().isoformat(timespec="seconds"),
    }
    (run_dir / "config.json").write_text(json.dumps(config, indent=1) + "\n")

    if cfg.reports:
        from training import reports

        x_val, y_val = arrays["val"]
        reports.write_all(run_dir, model, infer, history, metrics, labels, x_val, y_val, probs)

    val_cm = metrics["val"]["confusion"]
    return RunResult(
        run_dir=run_dir,
        val_accuracy=float(metrics["val"]["accuracy"]),
        test_accuracy=float(metrics["test"]["accuracy"]) if "test" in metrics else None,
        confused=most_confused_pairs(val_cm, labels, 3),
        epochs_run=epochs_run,
        seconds=time.monotonic() - t0,
        params=int(model.count_params()),
    )


def _count(items: list[tuple[str, str]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for _, lab in items:
        out[lab] = out.get(lab, 0) + 1
    return out
