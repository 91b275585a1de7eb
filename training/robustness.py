"""The robustness report: accuracy under the fixed camera-path corruption suite.

`robustness(predict, x, y)` scores a model (any function from uint8 images to class
probabilities: a Keras model, the device's LiteRT classifier) on clean images, through the
clean camera path, under every corruption of `training.corruptions.SUITE` (9 kinds x 3
severities; their mean is "mean corruption accuracy", the figure recipes are judged by) and
under the scale errors of `SCALE_SUITE` (reported apart as scale sensitivity: the size
grades ARE scale). `write_report` puts robustness.json, robustness.md and robustness.png
in a folder; `summary` is the short form that goes into an exported model's metadata.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from training import corruptions as C

log = logging.getLogger(__name__)

SUITE_VERSION = 1
"""Bumped whenever a corruption or severity changes (figures of different versions differ)."""

Predict = Callable[[np.ndarray], np.ndarray]


def _accuracy(predict: Predict, x: np.ndarray, y: np.ndarray) -> float:
    if len(x) == 0:
        return 0.0
    return float(np.mean(np.asarray(predict(x)).argmax(axis=1) == y))


def robustness(
    predict: Predict,
    x: np.ndarray,
    y: np.ndarray,
    *,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The robustness document for `predict` on labelled uint8 images (N, h, w, 3)."""
    y = np.asarray(y)
    doc: dict[str, Any] = {
        "suite_version": SUITE_VERSION,
        "seed": seed,
        "images": len(x),
        "camera_factor": C.FACTOR,
        "clean": _accuracy(predict, x, y),
        "camera_clean": _accuracy(predict, C.apply(C.CAMERA_CLEAN, x, seed), y),
        "kinds": {},
        "scale": {},
    }
    cells = []
    for c in C.SUITE:
        acc = _accuracy(predict, C.apply(c, x, seed), y)
        cells.append(acc)
        kind = doc["kinds"].setdefault(c.kind, {"severities": []})
        kind["severities"].append({"severity": c.severity, "label": c.label, "accuracy": acc})
        if progress is not None:
            progress(f"{c.name} ({c.label}): {acc:.1%}")
    for kind in doc["kinds"].values():
        kind["mean"] = float(np.mean([s["accuracy"] for s in kind["severities"]]))
    doc["mean_corruption"] = float(np.mean(cells)) if cells else 0.0
    worst = min(doc["kinds"].items(), key=lambda kv: kv[1]["mean"])
    doc["worst_kind"] = worst[0]
    for c in C.SCALE_SUITE:
        doc["scale"][c.label] = _accuracy(predict, C.apply(c, x, seed), y)
    doc["scale_mean"] = float(np.mean(list(doc["scale"].values())))
    return doc


def summary(doc: dict[str, Any]) -> dict[str, Any]:
    """The few figures an exported model carries in its metadata."""
    return {
        "suite_version": doc["suite_version"],
        "images": doc["images"],
        "split": doc.get("split", ""),
        "clean": round(doc["clean"], 4),
        "camera_clean": round(doc["camera_clean"], 4),
        "mean_corruption": round(doc["mean_corruption"], 4),
        "worst_kind": doc["worst_kind"],
        "per_kind": {k: round(v["mean"], 4) for k, v in doc["kinds"].items()},
        "scale": {k: round(v, 4) for k, v in doc["scale"].items()},
    }


def markdown(doc: dict[str, Any]) -> str:
    """robustness.md: one row per kind, one column per severity."""
    where = doc.get("split") or "validation"
    lines = [
        f"# Robustness ({where}, {doc['images']} images, suite v{doc['suite_version']}, "
        f"seed {doc['seed']})",
        "",
        f"clean {doc['clean']:.1%} · clean camera path {doc['camera_clean']:.1%} · "
        f"**mean corruption {doc['mean_corruption']:.1%}** (worst: {doc['worst_kind']})",
        "",
        "| corruption | severity 1 | severity 2 | severity 3 | mean |",
        "|---|---|---|---|---|",
    ]
    for kind, k in doc["kinds"].items():
        cells = " | ".join(f"{s['accuracy']:.1%} ({s['label']})" for s in k["severities"])
        lines.append(f"| {kind} | {cells} | {k['mean']:.1%} |")
    scale = " · ".join(f"{label} {acc:.1%}" for label, acc in doc["scale"].items())
    lines += [
        "",
        f"Scale sensitivity (camera px/mm off; not in the mean): {scale}",
        "",
        "Camera path: each image up-scaled to a window of "
        f"{doc['camera_factor']:g}x its size on a belt, changed, cropped and shrunk back "
        "with sorter.perception.preprocess.to_model_input (training/corruptions.py).",
    ]
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: Path) -> None:
    """robustness.png: accuracy per kind and severity, the clean line, and scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(doc["kinds"])
    fig, (ax, bx) = plt.subplots(
        1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [4, 1]}, sharey=True
    )
    width = 0.27
    for s in range(3):
        vals = [doc["kinds"][k]["severities"][s]["accuracy"] for k in kinds]
        ax.bar(np.arange(len(kinds)) + (s - 1) * width, vals, width, label=f"severity {s + 1}")
    ax.axhline(doc["clean"], color="k", lw=1, label=f"clean {doc['clean']:.1%}")
    ax.axhline(doc["mean_corruption"], color="r", lw=1, ls="--", label="mean corruption")
    ax.set_xticks(range(len(kinds)), kinds, rotation=30, ha="right")
    ax.set_ylabel("accuracy")
    ax.set_ylim(max(0.0, min(0.5, min(doc["scale"].values()) - 0.05)), 1.0)
    ax.legend(fontsize=7, ncol=3, loc="lower left")
    ax.set_title(f"camera-path corruptions ({doc['images']} images)")
    labels = list(doc["scale"])
    bx.bar(range(len(labels)), [doc["scale"][k] for k in labels], color="tab:gray")
    bx.axhline(doc["clean"], color="k", lw=1)
    bx.set_xticks(range(len(labels)), labels, rotation=30)
    bx.set_title("scale error")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(doc: dict[str, Any], folder: Path, *, pictures: bool = True) -> Path:
    """Write robustness.json, robustness.md (and robustness.png) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "robustness.json").write_text(json.dumps(doc, indent=1) + "\n")
    (folder / "robustness.md").write_text(markdown(doc))
    if pictures:
        plot(doc, folder / "robustness.png")
    log.info(
        "robustness: clean %.1f%%, mean corruption %.1f%% -> %s",
        100 * doc["clean"],
        100 * doc["mean_corruption"],
        folder / "robustness.md",
    )
    return folder / "robustness.json"


def read_report(run_dir: Path) -> dict[str, Any] | None:
    """A run folder's robustness.json, or None when it has none."""
    path = run_dir / "robustness.json"
    if not path.is_file():
        return None
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError:
        log.warning("%s: not valid JSON; ignored", path)
        return None
    return doc
