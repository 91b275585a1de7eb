"""`sorter-train finetune RUN_DIR DATA_DIR`: a run's model, taught the belt's own crops.

Starts from RUN_DIR's trained weights and trains on the reviewed belt crops in DATA_DIR (a
folder-per-grade tree: the crops folder of `sorter run --save-crops` after review, or the
tree `sorter collect` builds; `_review/`, `_not_produce/` and other `_` folders are skipped)
mixed with a sample of RUN_DIR's own training images, so the grades it knew are not
forgotten. Belt crops are any size: they go through `sorter.perception.preprocess` like
everything else. A grade may have few crops or none (the sample of the original data keeps
it). Some of each grade's belt crops (`belt_val_fraction`, at least one of a grade with 3 or
more) are held out to score the result on the belt.

The result is a normal run folder (`sorter-export` exports it as usual):

    split.json    train: the belt crops (relative to DATA_DIR) and the original sample
                  (absolute paths); val: RUN_DIR's validation split (else its test split),
                  i.e. the original data; test: the held-out belt crops
    metrics.json  "val" (original validation) and "test" (held-out belt crops) as usual,
                  plus "finetune": what each split is and the base model's accuracy on them
    config.json   the base run's config with data_dir = DATA_DIR, a fingerprint over both
                  sources, and "finetune": base run, both data sources, counts, settings
    robustness.*  the camera-path corruption suite on the original validation split
    model.keras, labels.txt (the base run's grades, same order), history.json, reports
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np

from sorter.errors import DatasetError, ImageError
from sorter.grading.metrics import compute_metrics
from training import data as D
from training.budget import EpochBudget
from training.evaluate import load_run_model
from training.model import inference_model, scoring_model
from training.train import _Plan, balanced_accuracy, predict

log = logging.getLogger(__name__)

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune"]


@dataclass
class FinetuneConfig:
    """One fine-tuning run (recorded in config.json under "finetune")."""

    run_dir: Path
    """The run folder whose weights to start from (written by sorter-train)."""
    data_dir: Path
    """Reviewed belt crops, one folder per grade (grade names must be the run's)."""
    out: Path | None = None
    """Run folder to write; None -> runs/<YYYYmmdd-HHMMSS>-finetune/."""
    epochs: int = 20
    """Planned epochs (the time budget may cut them)."""
    batch_size: int = 32
    """Images per step."""
    learning_rate: float = 3e-4
    """Adam rate at the start (a third of a fresh run's: the weights are already good),
    cosine decay to 1% over the planned epochs."""
    old_per_grade: int = 60
    """Original training images sampled per grade to mix in (0: belt crops only)."""
    belt_share: float = 0.5
    """Share of each epoch's total sample weight carried by the belt crops."""
    belt_val_fraction: float = 0.2
    """Share of each grade's belt crops held out to score the result on the belt."""
    seed: int = 0
    """Seeds the samples, the hold-out and the shuffle."""
    time_budget_min: float | None = 5.0
    """Minutes the whole run may take (epochs are cut to fit; None: no budget)."""
    reports: bool = True
    """Draw the report pictures."""
    robustness: bool = True
    """Write the robustness report on the original validation split."""
    verbose: int = 1
    """Keras fit verbosity: 1 progress bar, 2 one line per epoch, 0 silent."""


@dataclass
class FinetuneResult:
    """What a fine-tuning run measured."""

    run_dir: Path
    belt_train: int
    """Belt crops trained on."""
    belt_held_out: int
    old_sample: int
    """Original training images mixed in."""
    epochs_run: int
    seconds: float
    """Wall time of the whole run (loading, training, scoring, reports)."""
    fit_seconds: float
    """Of which training."""
    accuracy: dict[str, float | None] = field(default_factory=dict)
    """"val" / "test" accuracy after fine-tuning (None when the split is empty)."""
    before: dict[str, float | None] = field(default_factory=dict)
    """The base model's accuracy on the same splits."""


@dataclass
class _Data:
    labels: list[str]
    input_size: tuple[int, int]
    base_root: Path
    belt_root: Path
    belt_fingerprint: str
    split: D.Split
    arrays: dict[str, tuple[np.ndarray, np.ndarray]]
    weights: np.ndarray
    n_old: int
    n_belt: int


def _belt_items(data_dir: Path, labels: list[str]) -> tuple[D.DatasetScan, list[tuple[str, str]]]:
    scan = D.scan_dataset(data_dir, min_per_grade=0, min_grades=1)
    unknown = sorted(set(scan.labels) - set(labels))
    if unknown:
        raise DatasetError(
            f"{data_dir}: grade folder(s) {', '.join(unknown)} are not grades of the run "
            f"({' '.join(labels)}); rename or move them (or start '_' to skip)"
        )
    items = [(s.relpath, s.label) for s in scan.samples]
    if not items:
        raise DatasetError(f"{data_dir}: no readable crops in its grade folders; review some first")
    return scan, items


def _hold_out(
    items: list[tuple[str, str]], fraction: float, seed: int
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, held out): per grade, round(n * fraction) held out (at least 1 from n >= 3)."""
    rng = np.random.default_rng(seed)
    train: list[tuple[str, str]] = []
    held: list[tuple[str, str]] = []
    for label in sorted({lab for _, lab in items}):
        mine = sorted(it for it in items if it[1] == label)
        order = rng.permutation(len(mine))
        k = 0 if len(mine) < 3 or fraction <= 0 else max(1, round(fraction * len(mine)))
        held += [mine[i] for i in order[:k]]
        train += [mine[i] for i in order[k:]]
    return train, held


def _old_sample(
    root: Path, train: list[tuple[str, str]], per_grade: int, seed: int
) -> list[tuple[str, str]]:
    """Up to `per_grade` of the base run's training images per grade, as absolute paths."""
    rng = np.random.default_rng(seed + 1)
    out: list[tuple[str, str]] = []
    for label in sorted({lab for _, lab in train}):
        mine = sorted(it for it in train if it[1] == label)
        for i in sorted(rng.permutation(len(mine))[:per_grade]):
            out.append((str((root / mine[i][0]).resolve()), label))
    return out


def _prepare(cfg: FinetuneConfig) -> _Data:
    run = Path(cfg.run_dir)
    labels = D.read_labels(run)
    input_size = D.read_input_size(run)
    base_root, base = D.read_split(run)
    scan, items = _belt_items(Path(cfg.data_dir), labels)
    belt_train, belt_held = _hold_out(items, cfg.belt_val_fraction, cfg.seed)
    if not belt_train:
        raise DatasetError(f"{cfg.data_dir}: every crop was held out; review more crops")
    old = _old_sample(base_root, base["train"], cfg.old_per_grade, cfg.seed)
    original_val = base["val"] or base["test"]
    original_val = [(str((base_root / r).resolve()), lab) for r, lab in original_val]
    split: D.Split = {"train": belt_train + old, "val": original_val, "test": belt_held}
    try:
        arrays = {
            k: D.load_arrays(scan.root, split[k], labels, input_size, scan.decoded)
            for k in D.SPLITS
        }
    except ImageError as err:
        raise DatasetError(
            f"{err}; the base run's data ({run}/split.json) must still be where it was "
            "trained (or use --old-per-grade 0)"
        ) from err
    weights = np.ones(len(split["train"]), np.float32)
    if old and cfg.belt_share < 1.0:
        share = min(max(cfg.belt_share, 0.0), 1.0)
        weights[: len(belt_train)] = share * len(old) / ((1.0 - share) * len(belt_train))
    weights *= len(weights) / weights.sum()
    return _Data(
        labels,
        input_size,
        base_root,
        scan.root,
        scan.fingerprint(),
        split,
        arrays,
        weights,
        len(old),
        len(belt_train),
    )


def _run_dir(cfg: FinetuneConfig) -> Path:
    out = cfg.out or Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-finetune"
    out = Path(out).expanduser().resolve()
    if out.exists() and any(out.iterdir()):
        raise DatasetError(f"{out}: run folder exists and is not empty; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _fit(
    cfg: FinetuneConfig, d: _Data, model: keras.Model, t0: float
) -> tuple[dict[str, list[float]], EpochBudget, float]:
    x, y = d.arrays["train"]
    xv, yv = d.arrays["val"]
    model.compile(
        optimizer=keras.optimizers.Adam(cfg.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
    )
    budget_s = None if cfg.time_budget_min is None else 60 * cfg.time_budget_min
    # What is left after loading, minus ~25% for scoring, robustness and reports.
    budget = EpochBudget(cfg.epochs, budget_s and 0.75 * budget_s, time.monotonic() - t0)
    keras.utils.set_random_seed(cfg.seed)
    t_fit = time.monotonic()
    hist = model.fit(
        x,
        y,
        sample_weight=d.weights,
        batch_size=cfg.batch_size,
        epochs=cfg.epochs,
        validation_data=(xv, yv) if len(xv) else None,
        shuffle=True,
        callbacks=[_Plan(budget, cfg.learning_rate)],
        verbose=cfg.verbose,
    )
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    return history, budget, time.monotonic() - t_fit


def _accuracies(
    model: keras.Model, d: _Data, views: tuple[str, ...]
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    infer = scoring_model(model, views)
    metrics: dict[str, Any] = {}
    probs: dict[str, np.ndarray] = {}
    for k in ("val", "test"):
        x, y = d.arrays[k]
        if len(x):
            probs[k] = predict(infer, x)
            metrics[k] = compute_metrics(y, probs[k].argmax(axis=1), d.labels)
            metrics[k]["balanced_accuracy"] = balanced_accuracy(metrics[k])
    return metrics, probs


def _config_doc(
    cfg: FinetuneConfig, d: _Data, base_cfg: dict[str, Any], extra: dict[str, Any]
) -> dict[str, Any]:
    base_fp = str(base_cfg.get("dataset_fingerprint", ""))
    both = hashlib.sha256(f"{base_fp}+{d.belt_fingerprint}".encode()).hexdigest()
    counts = {k: dict(sorted(_count(d.split[k]).items())) for k in D.SPLITS}
    return {
        **base_cfg,
        "data_dir": str(d.belt_root),
        "dataset_fingerprint": both,
        "counts": counts,
        "seed": cfg.seed,
        "batch": cfg.batch_size,
        "learning_rate": cfg.learning_rate,
        "epochs": cfg.epochs,
        "time_budget_min": cfg.time_budget_min,
        "created": datetime.now().isoformat(timespec="seconds"),
        "finetune": {
            "base_run": str(Path(cfg.run_dir).resolve()),
            "base_data_dir": str(d.base_root),
            "base_dataset_fingerprint": base_fp,
            "belt_data_dir": str(d.belt_root),
            "belt_dataset_fingerprint": d.belt_fingerprint,
            "belt_train": d.n_belt,
            "belt_held_out": len(d.split["test"]),
            "old_sample": d.n_old,
            "old_per_grade": cfg.old_per_grade,
            "belt_share": cfg.belt_share,
            "belt_val_fraction": cfg.belt_val_fraction,
            **extra,
        },
    }


def _count(items: list[tuple[str, str]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for _, lab in items:
        out[lab] = out.get(lab, 0) + 1
    return out


def _robustness(
    cfg: FinetuneConfig, d: _Data, model: keras.Model, run_dir: Path, views: tuple[str, ...]
) -> None:
    from training import robustness as R

    which = "val" if len(d.arrays["val"][0]) else "test"
    x, y = d.arrays[which]
    if not len(x):
        return
    infer = scoring_model(model, views)
    doc = R.robustness(lambda b: predict(infer, b), x, y, seed=0)
    doc["split"] = which
    doc["model"] = "float (Keras)"
    R.write_report(doc, run_dir, pictures=cfg.reports)


def finetune(cfg: FinetuneConfig) -> FinetuneResult:
    """Fine-tune RUN_DIR's model on the belt crops in DATA_DIR; write a run folder."""
    t0 = time.monotonic()
    run = Path(cfg.run_dir)
    base_cfg = (
        json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else {}
    )
    d = _prepare(cfg)
    model = load_run_model(run)
    views = tuple(base_cfg.get("test_views", ()))  # as the export will build it
    before, _ = _accuracies(model, d, views)
    out = _run_dir(cfg)
    log.info(
        "fine-tuning %s on %d belt crops (+%d held out) and %d original images; run folder %s",
        run,
        d.n_belt,
        len(d.split["test"]),
        d.n_old,
        out,
    )
    (out / "labels.txt").write_text("".join(f"{g}\n" for g in d.labels))
    D.write_split(out / "split.json", d.belt_root, d.split)
    history, budget, fit_s = _fit(cfg, d, model, t0)
    model.save(out / "model.keras")
    (out / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    metrics, probs = _accuracies(model, d, views)
    acc = {k: (float(metrics[k]["accuracy"]) if k in metrics else None) for k in ("val", "test")}
    was = {k: (float(before[k]["accuracy"]) if k in before else None) for k in ("val", "test")}
    doc = {
        "labels": d.labels,
        **metrics,
        "finetune": {
            "val": "the base run's validation split (original data)" if d.split["val"] else "none",
            "test": "belt crops held out from fine-tuning",
            "before": was,
        },
    }
    (out / "metrics.json").write_text(json.dumps(doc, indent=1) + "\n")
    if cfg.robustness:
        _robustness(cfg, d, model, out, views)
    if cfg.reports:
        _reports(out, model, history, metrics, d, probs)
    epochs_run = len(history.get("loss", []))
    extra = {"epochs_run": epochs_run, "fit_seconds": round(fit_s, 1)}
    extra["seconds_per_epoch"] = round(budget.per_epoch(), 2)
    config = _config_doc(cfg, d, base_cfg, extra)
    config["epochs_run"], config["epochs_planned"] = epochs_run, budget.epochs
    (out / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    return FinetuneResult(
        out,
        d.n_belt,
        len(d.split["test"]),
        d.n_old,
        epochs_run,
        time.monotonic() - t0,
        fit_s,
        acc,
        was,
    )


def _reports(
    out: Path,
    model: keras.Model,
    history: dict[str, list[float]],
    metrics: dict[str, Any],
    d: _Data,
    probs: dict[str, np.ndarray],
) -> None:
    from training import reports

    infer = inference_model(model, batch_size=None)
    scored = "val" if "val" in metrics else "test" if "test" in metrics else None
    if scored is None:
        reports.plot_curves(history, out / "curves.png")
        (out / "params.txt").write_text(reports.params_table(model))
        return
    x_s, y_s = d.arrays[scored]
    full = {"labels": d.labels, **metrics}
    reports.write_all(out, model, infer, history, full, d.labels, x_s, y_s, probs, scored)
