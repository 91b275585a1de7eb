"""k-fold cross-validation of training recipes, judged as the device runs them (int8).

    python -m training.compare data/c9 --folds 5 --recipe camera --out runs/cv
    python -m training.compare data/c9 --folds 5 --fold-list 0 1 2 --recipe camera ...

For every recipe and fold: train on the other folds (`training.train`, folds/fold set, so
every image is held out exactly once over the folds), export full-int8 with `sorter-export`'s
code (`training.export.export_run`, calibrated on the training folds), and score the int8
model through the device classifier on the held-out fold: clean accuracy, balanced accuracy
and the robustness suite (`training.robustness`; mean corruption accuracy and scale). One
JSON line per fold goes to OUT/results.jsonl as it ends; `table` prints mean ± standard
deviation and the range over folds. Distilled recipes take as teachers the same fold's runs
of other recipes (`teachers`), so no fold's held-out images are ever seen by its teachers.
"""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from training.camera_augment import CameraAugmentConfig
from training.model import PI_CNN_WIDE, AugmentConfig

log = logging.getLogger(__name__)

FLIP_ONLY = AugmentConfig.with_camera_pool()
"""Keras layers kept beside the camera renders: the 180-degree turn, mild light/contrast."""


@dataclass(frozen=True)
class Recipe:
    """One way of training a network (what `--recipe` names)."""

    arch: str = "pi-cnn"
    """Network (training.model.ARCHS)."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    """Keras augmentation layers."""
    camera: CameraAugmentConfig | None = None
    """Camera-path renders of the training images (None: none)."""
    early_stopping: bool = True
    """Early stopping on a validation split carved from the training folds."""
    val_fraction: float = 0.1
    """Validation carved from the training images (0 with a fixed epoch budget)."""
    schedule: str = "plateau"
    """Learning-rate schedule."""
    batch_size: int = 32
    """Images per step."""
    learning_rate: float | None = None
    """Adam rate (None: the arch's default)."""
    label_smoothing: float = 0.0
    """Cross-entropy label smoothing."""
    widths: tuple[int, ...] = PI_CNN_WIDE
    """pi-cnn stage widths."""
    flip_views: tuple[str, ...] = ()
    """Test-time flip averaging built into the int8 export."""
    teachers: tuple[str, ...] = ()
    """Recipes whose runs of the same fold are averaged into soft targets."""
    epochs_factor: float = 1.0
    """Epochs = --epochs (training.defaults.BASE_EPOCHS) x this (longer training)."""
    ema: float = 0.0
    """Weight moving average momentum (0: off)."""
    ensemble: int = 0
    """Distil this many teachers of the same recipe, trained on the same fold (0: none)."""
    weight_decay: float = 0.0
    """Decoupled weight decay of the kernels (0: plain Adam)."""
    consistency: float = 0.0
    """Jensen-Shannon weight between two renders of each picture (0: off)."""
    seed_offset: int = 0
    """Weights, shuffle and renders seeded `seed + seed_offset` (the fold split stays on
    `seed`): a student then learns from views its teachers never saw."""


_CAM = CameraAugmentConfig(
    variants=6, clean_fraction=0.25, rim_p=0.35, white_balance=0.12, gain=0.15, rotate_deg=8.0
)
"""The first camera recipe (stronger light/colour changes, more rims, fewer clean views)."""
_MILD = CameraAugmentConfig(
    variants=6, clean_fraction=0.4, rim_p=0.25, white_balance=0.08, gain=0.1, rotate_deg=6.0
)
"""The previous default's renders (six per image)."""
_MILD2 = replace(_MILD, white_balance=0.05, gain=0.08, noise=8.0)
DEFAULT_RECIPE = "camera-narrow18-tta-xxxl-v12-wd"
"""What `sorter-train` does by default (training.defaults, CameraAugmentConfig defaults)."""

_FIXED: dict[str, Any] = {
    "early_stopping": False,
    "val_fraction": 0.0,
    "schedule": "cosine",
    "batch_size": 64,
}

_NARROW_TTA = Recipe(
    augment=FLIP_ONLY,
    camera=replace(_MILD, variants=12),
    epochs_factor=2.0,
    weight_decay=0.05,
    widths=(18, 36, 72),
    flip_views=("id", "hv"),
    **_FIXED,
)
"""Widths 18/36/72 with the 180-degree turn averaged inside the model, 120 epochs."""

CV_RECIPES: dict[str, Recipe] = {
    "baseline": Recipe(),
    "fixed": Recipe(**_FIXED),
    "camera": Recipe(augment=FLIP_ONLY, camera=_CAM, **_FIXED),
    "camera-s2": Recipe(augment=FLIP_ONLY, camera=replace(_CAM, scale=0.02), **_FIXED),
    "camera-s4": Recipe(augment=FLIP_ONLY, camera=replace(_CAM, scale=0.04), **_FIXED),
    "camera-mild": Recipe(augment=FLIP_ONLY, camera=_MILD, **_FIXED),
    "camera-mild-long": Recipe(augment=FLIP_ONLY, camera=_MILD, epochs_factor=2.0, **_FIXED),
    "camera-mild-long-cutout": Recipe(
        augment=FLIP_ONLY, camera=replace(_MILD, cutout_p=0.25), epochs_factor=2.0, **_FIXED
    ),
    "camera-mild-xl": Recipe(augment=FLIP_ONLY, camera=_MILD, epochs_factor=4.0, **_FIXED),
    "camera-mild-long-distill4": Recipe(
        augment=FLIP_ONLY,
        camera=_MILD,
        epochs_factor=2.0,
        teachers=("camera-long", "camera-mild-long", "camera-mild", "fixed"),
        **_FIXED,
    ),
    "camera-mild-xl-v16": Recipe(
        augment=FLIP_ONLY, camera=replace(_MILD, variants=16), epochs_factor=4.0, **_FIXED
    ),
    "camera-mild-long-v12-wd": Recipe(
        augment=FLIP_ONLY,
        camera=replace(_MILD, variants=12),
        epochs_factor=2.0,
        weight_decay=0.05,
        **_FIXED,
    ),
    "camera-narrow18-tta-v12-wd": _NARROW_TTA,
    "camera-narrow18-tta-xl-v12-wd": replace(_NARROW_TTA, epochs_factor=4.0),
    "camera-narrow18-tta-xxl-v12-wd": replace(_NARROW_TTA, epochs_factor=8.0),
    "camera-narrow18-tta-xxxl-v12-wd": replace(_NARROW_TTA, epochs_factor=16.0),
    "camera-narrow18-tta-xxl-v12-wd-js": replace(_NARROW_TTA, epochs_factor=8.0, consistency=12.0),
    "camera-narrow18-tta-xxl-v12-wd-cup": replace(
        _NARROW_TTA, epochs_factor=8.0, camera=replace(_MILD, variants=12, cup_p=0.25)
    ),
    "camera-narrow18-tta-xl-v12-wd-ba": replace(
        _NARROW_TTA,
        epochs_factor=4.0,
        teachers=("camera-narrow18-tta-xl-v12-wd",),
        seed_offset=1,
    ),
    "camera-mild-ens3": Recipe(augment=FLIP_ONLY, camera=_MILD, ensemble=3, **_FIXED),
    "camera-mild2": Recipe(augment=FLIP_ONLY, camera=_MILD2, **_FIXED),
    "camera-wide": Recipe(augment=FLIP_ONLY, camera=_CAM, widths=(32, 48, 96), **_FIXED),
    "camera-narrow-tta": Recipe(
        augment=FLIP_ONLY, camera=_CAM, widths=(16, 32, 64), flip_views=("id", "hv"), **_FIXED
    ),
    "camera-long": Recipe(augment=FLIP_ONLY, camera=_CAM, epochs_factor=2.0, **_FIXED),
    "camera-ema": Recipe(augment=FLIP_ONLY, camera=_CAM, ema=0.99, **_FIXED),
    "camera-c50": Recipe(augment=FLIP_ONLY, camera=replace(_CAM, clean_fraction=0.5), **_FIXED),
    "camera-distill": Recipe(
        augment=FLIP_ONLY, camera=_CAM, teachers=("camera", "camera-wide", "camera-s2"), **_FIXED
    ),
}
"""Recipes for cross-validation (docs/training.md, "Choosing the recipe")."""


def train_fold(
    data_dir: Path, out: Path, name: str, fold: int, folds: int, epochs: int, seed: int
) -> Any:
    """Train recipe `name` on all folds but `fold`; returns training.train.RunResult."""
    from training.train import TrainConfig, train, train_ensemble

    rec = CV_RECIPES[name]
    teachers = tuple(out / f"{t}-f{fold}" for t in rec.teachers)
    missing = [t for t in teachers if not (t / "model.keras").is_file()]
    if missing:
        raise RuntimeError(f"recipe {name}: teacher runs missing: {', '.join(map(str, missing))}")
    cfg = TrainConfig(
        data_dir=data_dir,
        out=out / f"{name}-f{fold}",
        arch=rec.arch,
        epochs=max(1, round(epochs * rec.epochs_factor)),
        batch_size=rec.batch_size,
        learning_rate=rec.learning_rate,
        seed=seed + rec.seed_offset,
        split_seed=seed,
        val_fraction=rec.val_fraction,
        folds=folds,
        fold=fold,
        augment=rec.augment,
        camera=rec.camera,
        early_stopping=rec.early_stopping,
        patience=15,
        label_smoothing=rec.label_smoothing,
        schedule=rec.schedule,
        widths=rec.widths,
        test_views=rec.flip_views,
        ema=rec.ema,
        weight_decay=rec.weight_decay,
        consistency=rec.consistency,
        teachers=teachers,
        reports=False,
        robustness=False,
        verbose=2,
    )
    return train_ensemble(cfg, rec.ensemble) if rec.ensemble else train(cfg)


def score_int8(run_dir: Path, flip_views: tuple[str, ...]) -> dict[str, Any]:
    """Export `run_dir` to int8 and score it on its test split: accuracy and robustness."""
    import numpy as np

    from sorter.grading.classifier import Classifier
    from training import robustness as R
    from training.data import load_split_images
    from training.export import ExportOptions, export_run

    out = run_dir / "model-int8.tflite"
    res = export_run(
        run_dir,
        ExportOptions(quantize=True, out=out, force=True, flip_views=flip_views),
        progress=log.debug,
    )
    x, y = load_split_images(run_dir, "test")
    clf = Classifier(out, num_threads=2)
    doc = R.robustness(clf.classify, x, y, seed=0)
    doc["split"], doc["model"] = "test", "int8 (LiteRT)"
    R.write_report(doc, run_dir, pictures=False)
    pred = clf.classify(x).argmax(axis=1)
    recalls = [float(np.mean(pred[y == c] == c)) for c in np.unique(y)]
    fid = {f.split: f for f in res.fidelity}["test"]
    return {
        "float": fid.float_accuracy,
        "float_tta180": _tta_accuracy(run_dir, x, y),
        "int8": fid.exported_accuracy,
        "int8_balanced": float(np.mean(recalls)),
        "camera_clean": doc["camera_clean"],
        "mean_corruption": doc["mean_corruption"],
        "scale_mean": doc["scale_mean"],
        "per_kind": {k: v["mean"] for k, v in doc["kinds"].items()},
        "scale": doc["scale"],
    }


def _tta_accuracy(run_dir: Path, x: Any, y: Any) -> float:
    """Float accuracy of the run's model averaged with its 180-degree turn (not exported)."""
    import numpy as np

    from training.evaluate import load_run_model
    from training.model import flip_average, inference_model
    from training.train import predict

    tta = flip_average(inference_model(load_run_model(run_dir), batch_size=None), ("id", "hv"))
    return float(np.mean(predict(tta, x).argmax(axis=1) == y))


def run(
    data_dir: Path,
    out: Path,
    recipes: list[str],
    folds: int,
    fold_list: list[int],
    epochs: int,
    seed: int = 0,
) -> None:
    """Train, export and score every recipe on every listed fold (results.jsonl)."""
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    done = {(r["recipe"], r["fold"]) for r in _rows(results)}
    for fold in fold_list:
        for name in recipes:
            if (name, fold) in done:
                log.info("%s fold %d already in %s; skipped", name, fold, results)
                continue
            res = train_fold(data_dir, out, name, fold, folds, epochs, seed)
            row = {
                "recipe": name,
                "fold": fold,
                "folds": folds,
                "params": res.params,
                "epochs": res.epochs_run,
                "seconds": round(res.seconds, 1),
                **score_int8(res.run_dir, CV_RECIPES[name].flip_views),
            }
            with results.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            log.info(
                "%s fold %d: int8 %.1f%%, mean corruption %.1f%%",
                name,
                fold,
                100 * row["int8"],
                100 * row["mean_corruption"],
            )
    table(results)


def summarise(out: Path, recipe: str) -> dict[str, Any]:
    """Mean, standard deviation and range over folds of a recipe's results.jsonl rows."""
    rows = sorted(
        (r for r in _rows(out / "results.jsonl") if r["recipe"] == recipe), key=lambda r: r["fold"]
    )
    if not rows:
        raise RuntimeError(f"{out}/results.jsonl: no folds of recipe {recipe}")
    doc: dict[str, Any] = {"recipe": recipe, "folds": rows[0]["folds"], "folds_run": len(rows)}
    for key in ("float", "int8", "int8_balanced", "mean_corruption", "camera_clean", "scale_mean"):
        vals = [float(r[key]) for r in rows]
        doc[key] = {
            "mean": round(statistics.mean(vals), 4),
            "std": round(statistics.stdev(vals), 4) if len(vals) > 1 else 0.0,
            "min": round(min(vals), 4),
            "max": round(max(vals), 4),
        }
    return doc


def pooled_robustness(out: Path, recipe: str, folds: int = 5) -> dict[str, Any]:
    """One robustness document over every fold's held-out images (each image once): the
    per-cell accuracies of the folds' int8 models, weighted by their images."""
    from training import robustness as R

    docs = []
    for run in sorted(out.glob(f"{recipe}-f*")):
        doc = R.read_report(run)
        if doc is not None:
            docs.append(doc)
    if not docs:
        raise RuntimeError(f"{out}: no robustness reports of recipe {recipe}")
    n = sum(d["images"] for d in docs)

    def mean(get: Any) -> float:
        return float(sum(get(d) * d["images"] for d in docs) / n)

    pooled = json.loads(json.dumps(docs[0]))
    pooled["images"] = n
    pooled["split"] = f"held-out folds ({len(docs)} of {folds}) of a {folds}-fold cross-validation"
    pooled["model"] = "int8 (LiteRT), one model per fold"
    for key in ("clean", "camera_clean", "mean_corruption", "scale_mean"):
        pooled[key] = mean(lambda d, k=key: d[k])
    for kind, k in pooled["kinds"].items():
        for i, sev in enumerate(k["severities"]):
            sev["accuracy"] = mean(
                lambda d, kd=kind, j=i: d["kinds"][kd]["severities"][j]["accuracy"]
            )
        k["mean"] = float(statistics.mean(s["accuracy"] for s in k["severities"]))
    for label in pooled["scale"]:
        pooled["scale"][label] = mean(lambda d, lb=label: d["scale"][lb])
    pooled["worst_kind"] = min(pooled["kinds"].items(), key=lambda kv: kv[1]["mean"])[0]
    return pooled


def attach(out: Path, recipe: str, run_dir: Path) -> None:
    """Put a recipe's cross-validation into a run folder trained with it on all images:
    cross_validation.json (fold statistics) and robustness.json/.md/.png (pooled folds),
    which `sorter-export` records in the model's metadata."""
    from training import robustness as R

    cv = summarise(out, recipe)
    (run_dir / "cross_validation.json").write_text(json.dumps(cv, indent=1) + "\n")
    R.write_report(pooled_robustness(out, recipe, cv["folds"]), run_dir)


def _rows(results: Path) -> list[dict[str, Any]]:
    if not results.is_file():
        return []
    return [json.loads(ln) for ln in results.read_text().splitlines() if ln.strip()]


def _ms(values: list[float]) -> str:
    m = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * m:.1f} ± {100 * sd:.1f} ({100 * min(values):.1f}-{100 * max(values):.1f})"


def table(results: Path) -> None:
    """Markdown table over folds: mean ± standard deviation (min-max), in %."""
    rows = _rows(results)
    print(
        "| recipe | folds | float | float +180° | int8 | int8 balanced | int8 mean corruption "
        "| int8 camera clean | int8 scale ±2/5% | epochs | s/fold |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in dict.fromkeys(r["recipe"] for r in rows):
        rs = sorted((r for r in rows if r["recipe"] == name), key=lambda r: r["fold"])
        cols = [_ms([r[k] for r in rs]) for k in ("float", "int8", "int8_balanced")]
        tta = [r["float_tta180"] for r in rs if "float_tta180" in r]
        cols.insert(1, _ms(tta) if tta else "-")
        cols += [_ms([r[k] for r in rs]) for k in ("mean_corruption", "camera_clean", "scale_mean")]
        folds = ",".join(str(r["fold"]) for r in rs)
        print(
            f"| {name} | {folds} | "
            + " | ".join(cols)
            + f" | {statistics.mean(r['epochs'] for r in rs):.0f} "
            f"| {statistics.mean(r['seconds'] for r in rs):.0f} |"
        )
