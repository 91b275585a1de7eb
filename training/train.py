"""Fit a grading model on a folder-per-grade dataset and write the run folder.

Run folder contract: docs/INTERFACES.md ("Run folder").
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import platform
import shutil
import tempfile
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
from training.background import write_background
from training.budget import EpochBudget, check_device
from training.camera_augment import CameraAugmentConfig, build_pool, describe, pool_dataset
from training.defaults import DEFAULTS
from training.folds import make_split
from training.model import (
    ARCHS,
    DEFAULT_ARCH,
    DEFAULT_LEARNING_RATE,
    AugmentConfig,
    build_model,
    inference_model,
    scoring_model,
)

log = logging.getLogger(__name__)

RENDER_SHARE = 0.15
"""Most of the time budget the camera renders may take (the rest is for the epochs)."""
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
    """(h, w) model input; None -> `training.inputs.default_input_size` of the images."""
    epochs: int = DEFAULTS.epochs
    """Planned epochs (early stopping or the time budget may end sooner)."""
    batch_size: int = DEFAULTS.batch_size
    """Images per training step (per replica group under --multi-gpu)."""
    learning_rate: float | None = None
    """Adam learning rate; None -> the arch's default (DEFAULT_LEARNING_RATE)."""
    seed: int = 0
    """Seeds the split, the weights, the shuffle and the augmentation."""
    split_seed: int | None = None
    """Seeds the split instead of `seed` (ensemble members share their student's split)."""
    val_fraction: float = DEFAULTS.val_fraction
    """Fraction of each grade held out for validation when the tree has no val/ (0: none,
    train on everything; nothing is then chosen by validation)."""
    test_fraction: float = 0.0
    """Fraction of each grade held out as a test split (only evaluated) when not given."""
    folds: int = 0
    """k-fold cross-validation: with folds >= 2, fold `fold` is the test split."""
    fold: int = 0
    """Which fold is held out (0 .. folds-1)."""
    augment: AugmentConfig = field(default_factory=AugmentConfig.with_camera_pool)
    """Training-only augmentation layers in the model (AugmentConfig.off() for none)."""
    camera: CameraAugmentConfig | None = field(default_factory=CameraAugmentConfig)
    """Render training images through a randomised camera path (training.camera_augment);
    None for none."""
    early_stopping: bool = DEFAULTS.early_stopping
    """Stop after `patience` epochs without a better validation loss and keep the best
    weights. False: train the planned epochs and keep the last weights."""
    patience: int = 20
    """Early stopping: epochs without a better validation loss before stopping."""
    label_smoothing: float = 0.0
    """Cross-entropy label smoothing (0 = plain one-hot targets)."""
    schedule: str = DEFAULTS.schedule
    """Learning-rate schedule: "plateau" (halve when the loss stalls) or "cosine" (cosine
    decay over the planned epochs to 1% of the start rate)."""
    time_budget_min: float | None = None
    """Minutes the whole run may take; the planned epochs are cut to fit, measured on the
    first epochs (None: no budget)."""
    widths: tuple[int, ...] = DEFAULTS.widths
    """pi-cnn stage widths."""
    test_views: tuple[str, ...] = DEFAULTS.test_views
    """Test-time flip views averaged inside the model (training.model.FLIP_VIEWS names; empty
    for none): the run scores itself with them, and `sorter-export` builds them in."""
    ema: float = 0.0
    """Keep an exponential moving average of the weights with this momentum (e.g. 0.99) and
    end with it (0: off)."""
    weight_decay: float = DEFAULTS.weight_decay
    """Decoupled weight decay (AdamW style: each step shrinks the conv and dense kernels by
    weight_decay x the current rate; batch norm and biases are left alone). 0: plain Adam."""
    consistency: float = 0.0
    """Weight of a Jensen-Shannon term between two camera renders of each picture
    (training.consistency; needs the camera renders; each step then shows every picture
    twice). 0: off."""
    teachers: tuple[Path, ...] = ()
    """Run folders whose averaged predictions are soft targets (distillation)."""
    distill_weight: float = 0.7
    """Weight of the teachers' probabilities in the targets (the rest is the true label)."""
    class_weight_power: float = DEFAULTS.class_weight_power
    """Class weights (n / (k n_c)) ** power: 1 balances grades fully, 0 ignores imbalance."""
    mixed_precision: bool = False
    """Compute in float16 (output layer stays float32); for GPUs."""
    multi_gpu: bool = False
    """Train under tf.distribute.MirroredStrategy across all visible GPUs."""
    multi_worker: bool = False
    """Train on several machines at once under tf.distribute.MultiWorkerMirroredStrategy
    (TF_CONFIG names the cluster; training.multiworker)."""
    field_of_view_mm: tuple[float, float] = (250.0, 250.0)
    """(width, height) of belt, in mm, that one training image shows; the device crops this."""
    min_per_grade: int = D.MIN_IMAGES_PER_GRADE
    """Fewer readable images than this in a grade is an error."""
    reports: bool = True
    """Draw the report pictures (confusion matrix, curves, gallery, filters, feature maps)."""
    robustness: bool = True
    """Write the robustness report (training.robustness) on the validation (else test) split."""
    verbose: int = 1
    """Keras fit verbosity: 1 progress bar, 2 one line per epoch, 0 silent."""


@dataclass
class RunResult:
    """What a finished run reports."""

    run_dir: Path
    """Where the run was written."""
    val_accuracy: float | None
    """Accuracy on the validation split, in [0, 1] (None without one)."""
    test_accuracy: float | None
    """Accuracy on the test split when there is one."""
    confused: list[tuple[str, str, int]]
    """Most confused (true, predicted, count) pairs of the scored split, largest first."""
    epochs_run: int
    """Epochs actually trained."""
    seconds: float
    """Wall time of the whole run."""
    params: int
    """Model parameters."""
    balanced_accuracy: float | None = None
    """Mean per-grade recall of the scored split (validation, else test)."""
    mean_corruption: float | None = None
    """Mean accuracy under the corruption suite (robustness report), when written."""


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
    if cfg.time_budget_min is not None and cfg.time_budget_min <= 0:
        raise ConfigError(f"--time-budget-min {cfg.time_budget_min}: must be positive")
    if not (math.isfinite(cfg.weight_decay) and 0 <= cfg.weight_decay < 1):
        raise ConfigError(f"--weight-decay {cfg.weight_decay}: must be in [0, 1)")
    if not (math.isfinite(cfg.consistency) and cfg.consistency >= 0):
        raise ConfigError(f"--consistency {cfg.consistency}: must be 0 or more")
    if cfg.consistency > 0 and (cfg.camera is None or cfg.camera.variants < 1):
        raise ConfigError(
            f"--consistency {cfg.consistency}: needs the camera renders (drop --no-camera-augment)"
        )
    if not 0 <= cfg.distill_weight <= 1:
        raise ConfigError(f"distill_weight {cfg.distill_weight}: must be in [0, 1]")


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
) -> tuple[tf.data.Dataset, tf.data.Dataset | None]:
    """tf.data pipelines over the decoded uint8 arrays: cache, shuffle, batch, prefetch.

    With `n_classes`, labels are one-hot (for label smoothing), else integer indices.
    The validation pipeline is None when there are no validation images.
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
    if len(x_val) == 0:
        return train, None
    val = (
        tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(batch_size).cache().prefetch(auto)
    )
    return train, val


class _Plan(keras.callbacks.Callback):
    """Times epochs against the budget, stops at the planned epoch, sets a cosine rate."""

    def __init__(self, budget: EpochBudget, lr: float | None) -> None:
        super().__init__()
        self.budget = budget
        self.lr = lr

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.budget.start_epoch()
        if self.lr is not None:
            t = min(1.0, epoch / max(1, self.budget.epochs))
            rate = self.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))
            self.model.optimizer.learning_rate.assign(rate)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.budget.end_epoch():
            self.model.stop_training = True


def _callbacks(
    run_dir: Path, cfg: TrainConfig, best: Path, has_val: bool, plan: _Plan
) -> list[keras.callbacks.Callback]:
    monitor = "val_loss" if has_val else "loss"
    cbs: list[keras.callbacks.Callback] = [plan]
    if cfg.early_stopping and has_val:
        cbs.append(
            keras.callbacks.ModelCheckpoint(
                str(best), monitor=monitor, save_best_only=True, save_weights_only=True
            )
        )
        cbs.append(
            keras.callbacks.EarlyStopping(
                monitor=monitor, patience=cfg.patience, restore_best_weights=True
            )
        )
    if cfg.schedule == "plateau":
        cbs.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=monitor, factor=0.5, patience=max(2, cfg.patience // 2), min_lr=1e-5
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


@dataclass
class _Prepared:
    """The data side of a run, ready to fit."""

    scan: D.DatasetScan
    split: D.Split
    labels: list[str]
    input_size: tuple[int, int]
    arrays: dict[str, tuple[np.ndarray, np.ndarray]]
    weights: dict[int, float]
    run_dir: Path


def _prepare(cfg: TrainConfig) -> _Prepared:
    from training.inputs import class_weights, default_input_size

    scan = D.scan_dataset(cfg.data_dir, min_per_grade=cfg.min_per_grade)
    split = make_split(
        scan,
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction,
        seed=cfg.seed if cfg.split_seed is None else cfg.split_seed,
        folds=cfg.folds,
        fold=cfg.fold,
    )
    input_size = cfg.input_size or default_input_size(scan)
    ratio = D.imbalance_ratio(split["train"])
    weights = class_weights(split["train"], scan.labels, cfg.class_weight_power)
    if ratio > 1.5:
        log.warning(
            "classes are imbalanced (largest/smallest = %.1f); compensating with class weights",
            ratio,
        )
    arrays = {
        k: D.load_arrays(scan.root, split[k], scan.labels, input_size, scan.decoded)
        for k in D.SPLITS
    }
    scan.decoded.clear()
    run_dir = _run_dir(cfg)
    log.info(
        "%d grades, %d train / %d val / %d test images at %dx%d; run folder %s",
        len(scan.labels),
        *(len(split[k]) for k in D.SPLITS),
        *input_size,
        run_dir,
    )
    (run_dir / "labels.txt").write_text("".join(f"{g}\n" for g in scan.labels))
    D.write_split(run_dir / "split.json", scan.root, split)
    write_background(run_dir, arrays["train"][0])  # for [locate] surround = "model"
    return _Prepared(scan, split, scan.labels, input_size, arrays, weights, run_dir)


def _teacher_probs(teachers: tuple[Path, ...], pool: np.ndarray) -> np.ndarray:
    """Mean class probabilities of the teacher runs on every pool image: (K+1, N, C), each
    teacher averaged over its own test-time views (as it scores itself)."""
    from training.evaluate import load_run_model

    total: np.ndarray | None = None
    for run in teachers:
        conf = Path(run) / "config.json"
        views = tuple(json.loads(conf.read_text()).get("test_views", ())) if conf.is_file() else ()
        infer = scoring_model(load_run_model(Path(run)), views)
        probs = predict(infer, pool.reshape(-1, *pool.shape[2:])).reshape(*pool.shape[:2], -1)
        total = probs if total is None else total + probs
    assert total is not None
    return np.asarray(total / len(teachers), np.float32)


def _train_data(
    cfg: TrainConfig, p: _Prepared, t0: float
) -> tuple[tf.data.Dataset, tf.data.Dataset | None, bool]:
    """(train pipeline, val pipeline or None, one-hot targets?)."""
    x, y = p.arrays["train"]
    xv, yv = p.arrays["val"]
    n = len(p.labels)
    soft = cfg.label_smoothing > 0 or bool(cfg.teachers)
    if cfg.camera is None and not cfg.teachers:
        return (*make_datasets(x, y, xv, yv, cfg.batch_size, cfg.seed, n if soft else None), soft)
    cam = cfg.camera or CameraAugmentConfig(variants=0)
    log.info("%s", describe(cam))
    limit = None if cfg.time_budget_min is None else RENDER_SHARE * 60 * cfg.time_budget_min
    pool = build_pool(x, cam, cfg.seed, limit)
    log.info("rendered %d camera views per image in %.0f s", len(pool) - 1, time.monotonic() - t0)
    targets: np.ndarray = y
    if cfg.teachers:
        onehot = np.eye(n, dtype=np.float32)[y][None]
        w = cfg.distill_weight
        targets = w * _teacher_probs(cfg.teachers, pool) + (1 - w) * onehot
    elif soft:
        targets = np.eye(n, dtype=np.float32)[y]
    train_ds = pool_dataset(
        pool, targets, cam.clean_fraction, cfg.batch_size, cfg.seed, pairs=cfg.consistency > 0
    )
    val_ds = make_datasets(x[:1], y[:1], xv, yv, cfg.batch_size, cfg.seed, n if soft else None)[1]
    return train_ds, val_ds, soft


def _model(cfg: TrainConfig, p: _Prepared, lr: float, soft: bool) -> keras.Model:
    model = build_model(
        cfg.arch, p.input_size, len(p.labels), augment=cfg.augment, seed=cfg.seed, widths=cfg.widths
    )
    loss = (
        keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
        if soft
        else keras.losses.SparseCategoricalCrossentropy()
    )
    if cfg.consistency > 0:
        from training.consistency import PairConsistency

        loss = PairConsistency(loss, cfg.consistency)
    model.compile(
        optimizer=make_optimizer(lr, cfg.ema, cfg.weight_decay), loss=loss, metrics=["accuracy"]
    )
    return model


def make_optimizer(lr: float, ema: float = 0.0, weight_decay: float = 0.0) -> Any:
    """Adam, with a moving average of the weights when `ema` > 0 and decoupled weight decay
    of the kernels (not batch norm, not biases) when `weight_decay` > 0."""
    kw: dict[str, Any] = {"use_ema": True, "ema_momentum": ema} if ema > 0 else {}
    if weight_decay > 0:
        kw["weight_decay"] = weight_decay
    opt = keras.optimizers.Adam(lr, **kw)
    if weight_decay > 0:
        opt.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return opt


def _score(
    cfg: TrainConfig, p: _Prepared, model: keras.Model
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any] | None]:
    """metrics.json, the probabilities per split, and the robustness report (or None),
    all with the run's test-time views averaged, as the exported model will be."""
    infer = scoring_model(model, cfg.test_views)
    metrics: dict[str, Any] = {"labels": p.labels}
    probs: dict[str, np.ndarray] = {}
    for k in ("val", "test"):
        x, y = p.arrays[k]
        if len(x):
            probs[k] = predict(infer, x)
            metrics[k] = compute_metrics(y, probs[k].argmax(axis=1), p.labels)
            metrics[k]["balanced_accuracy"] = balanced_accuracy(metrics[k])
    (p.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    which = "val" if "val" in probs else "test" if "test" in probs else None
    if not cfg.robustness or which is None:
        return metrics, probs, None
    from training import robustness as R

    x, y = p.arrays[which]
    doc = R.robustness(lambda b: predict(infer, b), x, y, seed=0)
    doc["split"] = which
    doc["model"] = "float (Keras)"
    R.write_report(doc, p.run_dir, pictures=cfg.reports)
    return metrics, probs, doc


def balanced_accuracy(split_metrics: dict[str, Any]) -> float:
    """Mean recall over the grades present in a split's metrics."""
    recalls = [c["recall"] for c in split_metrics["per_class"].values() if c["support"] > 0]
    return float(np.mean(recalls)) if recalls else 0.0


def train(cfg: TrainConfig) -> RunResult:
    """Check the data, fit, and write the run folder. Returns the run's summary."""
    t0 = time.monotonic()
    _validate(cfg)
    cfg, worker = _multi_worker(cfg)  # the strategy comes before any other TensorFlow op
    p = _prepare(cfg)
    keras.utils.set_random_seed(cfg.seed)
    lr = cfg.learning_rate or DEFAULT_LEARNING_RATE[cfg.arch]
    best = p.run_dir / "best.weights.h5"
    budget_s = None if cfg.time_budget_min is None else 60 * cfg.time_budget_min
    with _precision(cfg.mixed_precision):
        train_ds, val_ds, soft = _train_data(cfg, p, t0)
        strategy = worker[0] if worker else _strategy(cfg.multi_gpu)
        with strategy.scope():
            model = _model(cfg, p, lr, soft)
        device = check_device(inference_model(model, batch_size=1), len(cfg.test_views) or 1)
        # Budget: what is left after loading and rendering, minus ~10% for the reports.
        budget = EpochBudget(cfg.epochs, budget_s and 0.9 * budget_s, time.monotonic() - t0)
        plan = _Plan(budget, lr if cfg.schedule == "cosine" else None)
        if worker:
            history = _fit_multi_worker(cfg, p, model, train_ds, lr, soft, strategy)
        else:
            hist = model.fit(
                train_ds,
                validation_data=val_ds,
                epochs=cfg.epochs,
                class_weight=p.weights if not cfg.teachers else None,
                shuffle=False,  # the tf.data pipelines shuffle (seeded) themselves
                callbacks=_callbacks(p.run_dir, cfg, best, val_ds is not None, plan),
                verbose=cfg.verbose,
            )
            history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
        if best.exists():
            model.load_weights(str(best))
            best.unlink()
    model.save(p.run_dir / "model.keras")
    (p.run_dir / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    metrics, probs, robust = _score(cfg, p, model)
    epochs_run = len(history.get("loss", []))
    doc = _config_doc(cfg, p, model, lr, epochs_run, budget, device)
    (p.run_dir / "config.json").write_text(json.dumps(doc, indent=1) + "\n")
    scored = "val" if "val" in metrics else "test" if "test" in metrics else None
    if cfg.reports:
        _reports(p, model, history, metrics, probs, scored)
    sm = metrics.get(scored, {}) if scored else {}
    result = RunResult(
        run_dir=p.run_dir,
        val_accuracy=float(metrics["val"]["accuracy"]) if "val" in metrics else None,
        test_accuracy=float(metrics["test"]["accuracy"]) if "test" in metrics else None,
        confused=most_confused_pairs(sm["confusion"], p.labels, 3) if sm else [],
        epochs_run=epochs_run,
        seconds=time.monotonic() - t0,
        params=int(model.count_params()),
        balanced_accuracy=sm.get("balanced_accuracy"),
        mean_corruption=None if robust is None else float(robust["mean_corruption"]),
    )
    if worker:
        from training.multiworker import barrier

        barrier(worker[0])  # every worker waits for the chief's run folder
        if not worker[1]:  # a worker's copy of the run is not kept
            shutil.rmtree(p.run_dir.parent, ignore_errors=True)
    return result


def _multi_worker(cfg: TrainConfig) -> tuple[TrainConfig, tuple[Any, bool] | None]:
    """For --multi-worker: the config this worker runs (a worker that is not the chief
    writes to a temporary folder, without reports; no time budget or early stopping on any:
    every worker must run the same epochs) and (strategy, is_chief); else (cfg, None)."""
    if not cfg.multi_worker:
        return cfg, None
    from dataclasses import replace

    from training import multiworker

    if cfg.multi_gpu:
        raise ConfigError("--multi-worker and --multi-gpu exclude each other (it uses all GPUs)")
    if cfg.early_stopping or cfg.teachers:
        raise ConfigError(
            "--multi-worker trains a fixed number of epochs on one network: drop "
            "--early-stopping and --teacher/--ensemble"
        )
    if cfg.consistency > 0:
        raise ConfigError(
            "--multi-worker does not train with --consistency yet (its loop has its own "
            "loss): drop one of them"
        )
    cluster = multiworker.cluster_from_env()
    strategy = multiworker.make_strategy()
    if cfg.time_budget_min is not None:
        log.info("--multi-worker: no time budget (every worker runs all %d epochs)", cfg.epochs)
    cfg = replace(cfg, time_budget_min=None)
    if not cluster.is_chief:
        tmp = Path(tempfile.mkdtemp(prefix=f"sorter-train-worker{cluster.index}-"))
        cfg = replace(cfg, out=tmp / "run", reports=False, robustness=False)
    log.info("--multi-worker: %s %d of %d tasks", cluster.task, cluster.index, cluster.workers)
    return cfg, (strategy, cluster.is_chief)


def _fit_multi_worker(
    cfg: TrainConfig,
    p: _Prepared,
    model: keras.Model,
    train_ds: tf.data.Dataset,
    lr: float,
    soft: bool,
    strategy: Any,
) -> dict[str, list[float]]:
    from training import multiworker

    return multiworker.fit(
        strategy,
        model,
        train_ds,
        epochs=cfg.epochs,
        global_batch=cfg.batch_size,
        learning_rate=lr,
        cosine=cfg.schedule == "cosine",
        class_weight=p.weights,
        soft=soft,
        label_smoothing=cfg.label_smoothing,
    )


def _reports(
    p: _Prepared,
    model: keras.Model,
    history: dict[str, list[float]],
    metrics: dict[str, Any],
    probs: dict[str, np.ndarray],
    scored: str | None,
) -> None:
    """The report pictures; without a scored split only curves, filters and params.txt."""
    from training import reports

    infer = inference_model(model, batch_size=None)
    if scored is not None:
        x_s, y_s = p.arrays[scored]
        reports.write_all(
            p.run_dir, model, infer, history, metrics, p.labels, x_s, y_s, probs, scored
        )
        return
    reports.plot_curves(history, p.run_dir / "curves.png")
    reports.plot_filters(infer, p.run_dir / "filters.png")
    (p.run_dir / "params.txt").write_text(reports.params_table(model))


def _config_doc(
    cfg: TrainConfig,
    p: _Prepared,
    model: keras.Model,
    lr: float,
    epochs_run: int,
    budget: EpochBudget,
    device: dict[str, float],
) -> dict[str, Any]:
    """The resolved config.json of a finished run."""
    return {
        "arch": cfg.arch,
        "input_size": list(p.input_size),
        "seed": cfg.seed,
        "split_seed": cfg.split_seed,
        "epochs": cfg.epochs,
        "epochs_planned": budget.epochs,
        "epochs_run": epochs_run,
        "seconds_per_epoch": round(budget.per_epoch(), 2),
        "time_budget_min": cfg.time_budget_min,
        "batch": cfg.batch_size,
        "learning_rate": lr,
        "early_stopping": cfg.early_stopping,
        "patience": cfg.patience,
        "label_smoothing": cfg.label_smoothing,
        "schedule": cfg.schedule,
        "widths": list(cfg.widths),
        "test_views": list(cfg.test_views),
        "ema": cfg.ema,
        "weight_decay": cfg.weight_decay,
        "augment": cfg.augment.as_dict(),
        "camera_augment": None if cfg.camera is None else cfg.camera.as_dict(),
        "consistency": cfg.consistency,
        "teachers": [Path(t).name for t in cfg.teachers],
        "distill_weight": cfg.distill_weight if cfg.teachers else None,
        "field_of_view_mm": list(cfg.field_of_view_mm),
        "data_dir": str(p.scan.root),
        "dataset_fingerprint": p.scan.fingerprint(),
        "val_fraction": cfg.val_fraction,
        "test_fraction": cfg.test_fraction,
        "folds": cfg.folds,
        "fold": cfg.fold if cfg.folds else None,
        "presplit": p.scan.presplit,
        "counts": {k: dict(sorted(_count(p.split[k]).items())) for k in D.SPLITS},
        "class_weight_power": cfg.class_weight_power,
        "class_weights": {p.labels[i]: w for i, w in p.weights.items()},
        "corrupt_skipped": [str(q) for q in p.scan.corrupt],
        "non_image_ignored": len(p.scan.ignored),
        "mixed_precision": cfg.mixed_precision,
        "multi_gpu": cfg.multi_gpu,
        "multi_worker": cfg.multi_worker,
        "params": int(model.count_params()),
        "device_estimate": device,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "created": datetime.now().isoformat(timespec="seconds"),
    }


def _count(items: list[tuple[str, str]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for _, lab in items:
        out[lab] = out.get(lab, 0) + 1
    return out


def train_ensemble(cfg: TrainConfig, members: int) -> RunResult:
    """Train `members` teachers (seeds seed+1.., the student's split) into RUN/teachers/,
    then distil their averaged predictions into one student in the run folder: an ensemble's
    knowledge at one network's cost on the device. The time budget is shared out."""
    from dataclasses import replace

    if members < 2:
        raise ConfigError(f"--ensemble {members}: need at least 2 teachers (or 0 for none)")
    run_dir = cfg.out or Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{cfg.arch}"
    share = None if cfg.time_budget_min is None else cfg.time_budget_min / (members + 1)
    teachers = []
    for i in range(members):
        log.info("ensemble: teacher %d of %d", i + 1, members)
        t = replace(
            cfg,
            out=run_dir / "teachers" / f"t{i + 1}",
            seed=cfg.seed + 1 + i,
            split_seed=cfg.seed if cfg.split_seed is None else cfg.split_seed,
            time_budget_min=share,
            teachers=(),
            reports=False,
            robustness=False,
        )
        teachers.append(train(t).run_dir)
    log.info("ensemble: distilling %d teachers into one student", members)
    return train(replace(cfg, out=run_dir, teachers=tuple(teachers), time_budget_min=share))
