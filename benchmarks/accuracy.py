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


def bundled_row(ctx: Context, softmax: list[float]) -> Row | None:
    """The shipped model (full training recipe), int8, on this run's validation split.

    sorter-train's default split (seed 0, 10% val, no test) draws the same validation
    images per grade as this run's split with seed 0, so these are images the shipped model
    did not train on (its early stopping saw them). The export recorded its own figure on
    its validation split; agreement of the two confirms the split is the same.
    """
    from sorter.grading.classifier import Classifier
    from sorter.perception.preprocess import load_image, to_model_input

    bundled = sorted(REPO.glob("models/*int8*.tflite"))
    if not bundled or ctx.smoke:
        return None
    clf = Classifier(model_path=bundled[0], num_threads=2)
    files = sorted(models.split_tree(ctx).glob("val/*/*"))
    index = {g: i for i, g in enumerate(clf.labels)}
    x = np.stack([to_model_input(load_image(f), clf.input_size) for f in files])
    y = np.array([index[f.parent.name] for f in files])
    probs = np.concatenate([clf.classify(x[i : i + 64]) for i in range(0, len(x), 64)])
    acc = float(np.mean(np.argmax(probs, axis=1) == y))
    own = clf.metadata.metrics.get("val", {}) if isinstance(clf.metadata.metrics, dict) else {}
    own_acc = own.get("exported_accuracy")
    same = (
        own_acc is not None
        and int(own.get("images", -1)) == len(files)
        and abs(float(own_acc) - acc) < 1e-6
    )
    check = (
        f"equals its export check ({100 * float(own_acc):.1f}% on {own.get('images')} images)"
        if same
        else f"its export check said {100 * float(own_acc):.1f}% on {own.get('images')} images"
        if own_acc is not None
        else "no export check in its metadata"
    )
    return Row(
        measure=f"shipped {bundled[0].name} int8, full recipe",
        value=f"{100 * acc:.1f}% on {len(files)} val images",
        baseline="softmax regression, float (held-out test)",
        baseline_value=spread(softmax),
        ratio=ratio(acc, float(np.mean(softmax))),
        note=f"validation split (seed {ctx.seed}), not the held-out test split; {check}",
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
    try:
        extra = bundled_row(ctx, float_acc["softmax"])
    except Exception as err:  # the shipped model is informative, not this figure's core
        log.warning("shipped model row failed: %s", err)
        extra = Row("shipped model int8", f"not available: {err}")
    if extra is not None:
        rows.append(extra)
    ctx.note(
        f"Accuracy: {n_seeds} training seed(s) per network, epoch budget {models.epochs(ctx)} "
        "per run (early stopping on val loss, best weights restored), recipe of "
        "training.train (sorter-train) with its default augmentation (none for softmax); "
        "int8 = the sorter-export full-integer model run by sorter.grading.classifier."
    )
    ctx.cache["accuracy"] = {"float": float_acc, "int8": int8_acc}
    return rows


def run_dir(ctx: Context, arch: str, seed: int = 0) -> Path:
    return Path(models.trained(ctx, arch, seed).run_dir)
