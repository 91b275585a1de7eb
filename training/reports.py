"""Pictures and tables a person reads after a run (matplotlib, Agg backend, no screen).

- ``confusion.png``: confusion matrix of the validation split (counts, rows = true grade);
- ``curves.png``: loss and accuracy per epoch, training and validation;
- ``errors.png``: misclassified validation images labelled "true -> predicted";
- ``filters.png``: the learned first-layer convolution filters as colour patches;
- ``feature_maps.png``: one validation image and the activations of the first conv layers;
- ``params.txt``: per-layer parameter table (like ``model.summary()``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import keras
import matplotlib.pyplot as plt
import numpy as np

log = logging.getLogger(__name__)


def plot_confusion(
    cm: np.ndarray | list[list[int]], labels: list[str], path: Path, title: str
) -> None:
    """Counts, rows = true grade, columns = predicted grade, diagonal = correct."""
    a = np.asarray(cm)
    n = len(labels)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.6 * n))
    ax.imshow(a, cmap="Blues")
    ax.set_xticks(range(n), labels, rotation=45)
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    total = a.sum()
    acc = np.trace(a) / total if total else 0.0
    ax.set_title(f"{title} (accuracy {acc:.1%}, n={total})")
    vmax = a.max() if a.size else 0
    for i in range(n):
        for j in range(n):
            if a[i, j]:
                color = "white" if a[i, j] > vmax / 2 else "black"
                ax.text(j, i, str(a[i, j]), ha="center", va="center", color=color, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(history: dict[str, list[float]], path: Path) -> None:
    """Loss and accuracy per epoch for the training and validation splits."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        for prefix, style in (("", "-"), ("val_", "--")):
            vals = history.get(prefix + key)
            if vals:
                ax.plot(range(1, len(vals) + 1), vals, style, label=(prefix or "train_") + key)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_errors(
    images: np.ndarray,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    labels: list[str],
    path: Path,
    limit: int = 100,
) -> int:
    """Gallery of misclassified images, each titled "true -> predicted". Returns the count."""
    wrong = np.flatnonzero(y_true != y_pred)
    shown = wrong[:limit]
    cols = 10
    rows = max(1, int(np.ceil(len(shown) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.2, rows * 1.35), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), shown, strict=False):
        ax.imshow(images[i], interpolation="nearest")
        ax.set_title(f"{labels[y_true[i]]}->{labels[y_pred[i]]}", fontsize=7)
    more = f" (first {len(shown)})" if len(wrong) > len(shown) else ""
    fig.suptitle(f"{len(wrong)} validation errors, true -> predicted{more}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return len(wrong)


def first_conv(model: keras.Model) -> keras.layers.Layer | None:
    """The first Conv2D layer of a model, if any."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            return layer
    return None


def plot_filters(model: keras.Model, path: Path) -> bool:
    """First-layer kernels, each min-max scaled to a colour patch. False when no conv layer."""
    conv = first_conv(model)
    if conv is None:
        return False
    k = np.asarray(conv.get_weights()[0])  # (kh, kw, in, out)
    n = k.shape[-1]
    cols = 8
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9, rows * 0.9), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, ax in zip(range(n), axes.ravel(), strict=False):
        f = k[..., i]
        f = (f - f.min()) / (np.ptp(f) or 1.0)
        ax.imshow(f if f.shape[-1] == 3 else f[..., 0], interpolation="nearest")
    fig.suptitle(f"{conv.name}: {n} learned {k.shape[0]}x{k.shape[1]} filters")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_feature_maps(
    model: keras.Model, image: np.ndarray, title: str, path: Path, max_maps: int = 16
) -> bool:
    """One image and the first `max_maps` activations of each of the first two conv blocks."""
    convs = [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.Conv2D | keras.layers.ReLU)
        and not (
            isinstance(layer, keras.layers.Conv2D) and layer.activation is keras.activations.linear
        )
    ][:2]
    if not convs:
        return False
    probe = keras.Model(model.inputs[0], [layer.output for layer in convs])
    outs = probe(image[None], training=False)
    outs = outs if isinstance(outs, list | tuple) else [outs]
    fig, axes = plt.subplots(
        len(outs) + 1, max_maps, figsize=(max_maps * 0.8, (len(outs) + 1) * 0.95), squeeze=False
    )
    for ax in axes.ravel():
        ax.axis("off")
    axes[0, 0].imshow(image, interpolation="nearest")
    axes[0, 0].set_title(title, fontsize=7, loc="left")
    for r, (layer, out) in enumerate(zip(convs, outs, strict=True), start=1):
        fmap = np.asarray(out)[0]
        for c in range(min(max_maps, fmap.shape[-1])):
            axes[r, c].imshow(fmap[..., c], cmap="viridis", interpolation="nearest")
        axes[r, 0].set_title(layer.name, fontsize=7, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def params_table(model: keras.Model) -> str:
    """Per-layer table: name, type, output shape, parameters; totals at the end."""
    lines = [f"{'layer':<18} {'type':<22} {'output shape':<22} {'params':>10}", "-" * 75]
    for layer in model.layers:
        shape = tuple(layer.output.shape) if hasattr(layer, "output") else ()
        lines.append(
            f"{layer.name:<18} {type(layer).__name__:<22} {shape!s:<22} {layer.count_params():>10,}"
        )
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    total = int(model.count_params())
    lines += [
        "-" * 75,
        f"total params: {total:,}  (trainable {trainable:,}, non-trainable {total - trainable:,})",
        f"float32 size: {total * 4 / 1e6:.2f} MB; int8 estimate: {total / 1e6:.2f} MB",
    ]
    return "\n".join(lines) + "\n"


def write_all(
    run_dir: Path,
    model: keras.Model,
    infer: keras.Model,
    history: dict[str, list[float]],
    metrics: dict[str, Any],
    labels: list[str],
    x_val: np.ndarray,
    y_val: np.ndarray,
    probs: dict[str, np.ndarray],
    split: str = "val",
) -> None:
    """Every report of a finished run into `run_dir` (the gallery from `split`, the one the
    images `x_val`, `y_val` come from)."""
    if "val" in metrics:
        plot_confusion(metrics["val"]["confusion"], labels, run_dir / "confusion.png", "validation")
    if "test" in metrics:
        name = "confusion_test.png" if "val" in metrics else "confusion.png"
        plot_confusion(metrics["test"]["confusion"], labels, run_dir / name, "test")
    plot_curves(history, run_dir / "curves.png")
    y_pred = probs[split].argmax(axis=1)
    plot_errors(x_val, y_val, y_pred, labels, run_dir / "errors.png")
    plot_filters(infer, run_dir / "filters.png")
    if len(x_val):
        plot_feature_maps(
            infer, x_val[0], f"sample: {labels[y_val[0]]}", run_dir / "feature_maps.png"
        )
    (run_dir / "params.txt").write_text(params_table(model))
    log.info("reports written to %s", run_dir)
