"""Regenerate tests/data/corruption_golden.json: golden values of the camera-path corruption
suite (training.corruptions) and of the robustness report (training.robustness) on a tiny
fixture, the first 4 images of each grade of tests/data/cucumber9_mini (36 images).

    .venv/bin/python tests/data/make_corruption_golden.py

Per corruption: the mean and standard deviation of the corrupted images (0-255 levels) and
their mean absolute difference from the clean images; and the robustness report of a fixed
numpy classifier (nearest grade centroid of 8x8 thumbnails, centroids from all 108 mini
images), so the report's arithmetic is pinned too. Re-run it only when the suite changes on
purpose (and bump training.robustness.SUITE_VERSION).
CUCUMBER-9 dataset (c) Workpiles, CC BY 4.0.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from training import corruptions as C
from training import robustness as R
from training.cucumber9 import decode_batch, safe_load

HERE = Path(__file__).parent
PER_GRADE = 4


def fixture() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(images, labels) of the tiny fixture and (all images, labels) of the mini batch."""
    src = HERE / "cucumber9_mini" / "data_batch_1"
    batch = decode_batch(safe_load(src), src)
    keep = np.concatenate(
        [np.flatnonzero(batch.labels == g)[:PER_GRADE] for g in np.unique(batch.labels)]
    )
    return batch.images[keep], batch.labels[keep], batch.images, batch.labels


def centroid_classifier(x_all: np.ndarray, y_all: np.ndarray):  # type: ignore[no-untyped-def]
    """A fixed, deterministic predictor: softmax of minus the distance to grade centroids."""

    def thumbs(x: np.ndarray) -> np.ndarray:
        return (
            np.stack([cv2.resize(i, (8, 8), interpolation=cv2.INTER_AREA) for i in x])
            .reshape(len(x), -1)
            .astype(np.float64)
        )

    t = thumbs(x_all)
    centroids = np.stack([t[y_all == g].mean(axis=0) for g in np.unique(y_all)])

    def predict(x: np.ndarray) -> np.ndarray:
        d = ((thumbs(x)[:, None, :] - centroids[None]) ** 2).sum(axis=2) / 1e4
        e = np.exp(-(d - d.min(axis=1, keepdims=True)))
        return e / e.sum(axis=1, keepdims=True)

    return predict


def golden() -> dict[str, object]:
    x, y, x_all, y_all = fixture()
    cells = {}
    for c in (C.CAMERA_CLEAN, *C.SUITE, *C.SCALE_SUITE):
        out = C.apply(c, x, seed=0)
        cells[c.name] = {
            "label": c.label,
            "mean": round(float(out.mean()), 3),
            "std": round(float(out.std()), 3),
            "mad": round(float(np.abs(out.astype(np.int16) - x).mean()), 3),
        }
    doc = R.robustness(centroid_classifier(x_all, y_all), x, y, seed=0)
    return {
        "suite_version": R.SUITE_VERSION,
        "images": len(x),
        "cells": cells,
        "report": R.summary(doc),
    }


if __name__ == "__main__":
    path = HERE / "corruption_golden.json"
    path.write_text(json.dumps(golden(), indent=1) + "\n")
    print(f"wrote {path}")
