"""Figure 1: grading accuracy on CUCUMBER-9, float and int8, over 3 training seeds.

The default architecture and the literal Deep-MNIST, each as the float Keras model and as
the int8 LiteRT export, next to a softmax regression on the pixels trained the same way
(same split, same recipe, same epoch budget). Accuracy is on a held-out split (fixed seed)
that neither training nor early stopping saw; mean and spread (min-max) over the seeds.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from benchmarks import models
from benchmarks.core import REPO, Context, NotAvailable, Row, ratio

NUMBER = 1
TITLE = "Grading accuracy (CUCUMBER-9)"

log = logging.getLogger(__name__)


def missing() -> str | None:
    return models.training_missing()


def seeds(ctx: Context) -> list[int]:
    return [0] if ctx.smoke else [0, 1, 2]


def int8_accuracy(ctx: Context, arch: str, seed: int) -> float:
    """Accuracy of the int8 export, run by the device's Classifier on the held-out split."""
    from sorter.grading.classifier import Classifier

    path = models.exported(ctx, arch, seed, quantize=True)
    run = models.trained(ctx, arch, seed)
    x, y = models.test_arrays(ctx, run)
    clf = Classifier(model_path=path, num_threads=2)
    probs = np.concatenate([clf.classify(x[i : i + 64]) for i in range(0, len(x), 64)])
    return float(np.mean(np.argmax(probs, axis=1) == y))


def int8_robustness(ctx: Context, arch: str, seed: int) -> dict[str, float]:
    """The int8 export under the camera-path corruption suite, on the held-out split."""
    from sorter.grading.classifier import Classifier
    from training.robustness import robustness

    path = models.exported(ctx, arch, seed, quantize=True)
    x, y = models.test_arrays(ctx, models.trained(ctx, arch, seed))
    clf = Classifier(model_path=path, num_threads=2)
    doc = robustness(clf.classify, x, y, seed=0)
    return {k: float(doc[k]) for k in ("clean", "camera_clean", "mean_corruption", "scale_mean")}


def bundled_row(ctx: Context, softmax: list[float]) -> Row | None:
    """The shipped model (full training recipe, trained on all 2475 images): its own 5-fold
    cross-validated int8 figures, from its metadata. Scoring it on this run's split would
    score images it trained on, so it is not re-scored here."""
    from sorter.grading.metadata import ModelMetadata

    bundled = sorted(REPO.glob("models/*int8*.tflite"))
    if not bundled or ctx.smoke:
        return None
    meta = ModelMetadata.load(bundled[0])
    cv = meta.extra.get("cross_validation")
    rob = meta.extra.get("robustness", {})
    if not isinstance(cv, dict):
        return Row(f"shipped {bundled[0].name}", "no cross-validation in its metadata")
    acc, corr = cv["int8"], cv["mean_corruption"]
    return Row(
        measure=f"shipped {bundled[0].name} int8, {cv['folds']}-fold CV of its recipe",
        value=f"{100 * acc['mean']:.1f}% ± {100 * acc['std']:.1f} "
        f"(mean corruption {100 * corr['mean']:.1f}%)",
        baseline="softmax regression, float (held-out test)",
        baseline_value=spread(softmax),
        ratio=ratio(acc["mean"], float(np.mean(softmax))),
        note=f"from the model's metadata (recipe {cv['recipe']}, {rob.get('images', '?')} "
        "held-out images over the folds); not re-measured in this run",
    )


def robustness_row(ctx: Context, arch: str, int8: list[float]) -> Row:
    """Mean accuracy under the camera-path corruption suite next to the clean accuracy."""
    docs = [int8_robustness(ctx, arch, seed) for seed in seeds(ctx)]
    corr = [d["mean_corruption"] for d in docs]
    scale = [d["scale_mean"] for d in docs]
    return Row(
        measure=f"{arch} (default) int8 under camera-path corruptions (mean of 27)",
        value=spread(corr),
        baseline="same models, clean held-out images",
        baseline_value=spread(int8),
        ratio=ratio(float(np.mean(corr)), float(np.mean(int8))),
        note=f"training/robustness.py; scale error ±2/5% (apart): {spread(scale)}",
    )


def spread(values: list[float]) -> str:
    """ "mean% (min-max)" of accuracies in [0, 1]."""
    arr = 100 * np.asarray(values)
    if arr.size == 1:
        return f"{arr[0]:.1f}% (1 seed)"
    return f"{arr.mean():.1f}% ({arr.min():.1f}-{arr.max():.1f})"


def run(ctx: Context) -> list[Row]:
    arch_list = models.archs()
    default = arch_list[0]
    if ctx.smoke:  # two trainings are enough to show the figure is produced
        arch_list = [default, "softmax"]
    float_acc: dict[str, list[float]] = {}
    int8_acc: dict[str, list[float]] = {}
    epochs_run: dict[str, list[int]] = {}
    int8_reason = ""
    for arch in arch_list:
        for seed in seeds(ctx):
            res = models.trained(ctx, arch, seed)
            if res.test_accuracy is None:
                raise RuntimeError(f"{res.run_dir}: no test accuracy; the split has no test/")
            float_acc.setdefault(arch, []).append(float(res.test_accuracy))
            epochs_run.setdefault(arch, []).append(int(res.epochs_run))
            if arch == "softmax" or int8_reason or (ctx.smoke and arch != default):
                continue
            try:
                int8_acc.setdefault(arch, []).append(int8_accuracy(ctx, arch, seed))
            except NotAvailable as err:
                int8_reason = str(err)
    base = float(np.mean(float_acc["softmax"]))
    n_seeds = len(seeds(ctx))
    rows = []
    for arch in arch_list:
        kinds = [("float (Keras)", float_acc)]
        if arch != "softmax":
            kinds.append(("int8 (LiteRT)", int8_acc))
        for kind, table in kinds:
            values = table.get(arch)
            label = f"{arch}{' (default)' if arch == default else ''} {kind}"
            if not values:
                rows.append(Row(label, f"not available: {int8_reason or 'no export'}"))
                continue
            rows.append(
                Row(
                    measure=label,
                    value=spread(values),
                    baseline="softmax regression, float",
                    baseline_value=spread(float_acc["softmax"]),
                    ratio=ratio(float(np.mean(values)), base),
                    note=f"epochs run {epochs_run[arch]}" if kind.startswith("float") else "",
                )
            )
    if int8_acc.get(default):
        rows.append(robustness_row(ctx, default, int8_acc[default]))
    try:
        extra = bundled_row(ctx, float_acc["softmax"])
    except Exception as err:  # the shipped model is informative, not this figure's core
        log.warning("shipped model row failed: %s", err)
        extra = Row("shipped model int8", f"not available: {err}")
    if extra is not None:
        rows.append(extra)
    ctx.note(
        f"Accuracy: {n_seeds} training seed(s) per network, epoch budget {models.epochs(ctx)} "
        "per run, the default recipe of training.train (sorter-train: camera-path renders, "
        "fixed cosine schedule, last weights; no augmentation for softmax); "
        "int8 = the sorter-export full-integer model run by sorter.grading.classifier."
    )
    ctx.cache["accuracy"] = {"float": float_acc, "int8": int8_acc}
    return rows


def run_dir(ctx: Context, arch: str, seed: int = 0) -> Path:
    return Path(models.trained(ctx, arch, seed).run_dir)
