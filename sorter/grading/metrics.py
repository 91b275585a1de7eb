"""Classification metrics, numpy only: the one place confusion matrices are built.

Training (`training.train`, `training.evaluate`), `sorter classify` and the belt scorecard
(`sorter.replay.scorecard`) all count with this module, so "accuracy" means one thing
everywhere. Rows are true classes, columns predicted classes, in label order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """C[i, j] = number of items of true class i predicted as class j."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def accuracy(cm: np.ndarray) -> float:
    """Fraction on the diagonal (0.0 for an empty matrix)."""
    cm = np.asarray(cm)
    total = int(cm.sum())
    return float(np.trace(cm) / total) if total else 0.0


def per_class(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, f1, support) per class. Precision of a never-predicted class and
    recall of an absent class are 0.0."""
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    actual = cm.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1, actual


def balanced_accuracy(cm: np.ndarray) -> float:
    """Mean recall over the classes present (0.0 when none is)."""
    _, recall, _, support = per_class(cm)
    present = support > 0
    return float(recall[present].mean()) if present.any() else 0.0


def metrics_from_confusion(cm: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro F1, per-class precision/recall/F1/support and the
    matrix, as JSON-ready values."""
    cm = np.asarray(cm, dtype=np.int64)
    precision, recall, f1, support = per_class(cm)
    classes = {
        g: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, g in enumerate(labels)
    }
    present = support > 0
    return {
        "accuracy": accuracy(cm),
        "n": int(cm.sum()),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "balanced_accuracy": balanced_accuracy(cm),
        "per_class": classes,
        "confusion": cm.tolist(),
    }


def compute_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]
) -> dict[str, Any]:
    """`metrics_from_confusion` of the confusion matrix of (y_true, y_pred)."""
    return metrics_from_confusion(confusion_matrix(y_true, y_pred, len(labels)), labels)


def most_confused_pairs(
    cm: np.ndarray | list[list[int]], labels: Sequence[str], k: int = 3
) -> list[tuple[str, str, int]]:
    """The k largest off-diagonal cells as (true grade, predicted grade, count), count > 0."""
    a = np.array(cm, dtype=np.int64)
    np.fill_diagonal(a, 0)
    order = np.argsort(-a, axis=None, kind="stable")
    out: list[tuple[str, str, int]] = []
    for flat in order[:k]:
        i, j = np.unravel_index(flat, a.shape)
        if a[i, j] > 0:
            out.append((labels[i], labels[j], int(a[i, j])))
    return out


@dataclass
class Confusion:
    """Confusion counts kept by label name (rows true, columns predicted, label order)."""

    labels: tuple[str, ...]
    """Class names, row/column order."""
    matrix: np.ndarray
    """(C, C) int64 counts."""

    @classmethod
    def empty(cls, labels: Sequence[str]) -> Confusion:
        """No counts yet for these labels."""
        n = len(labels)
        return cls(tuple(labels), np.zeros((n, n), dtype=np.int64))

    def add(self, truth: str, predicted: str) -> None:
        """Count one item (both labels must be among `labels`)."""
        self.matrix[self.labels.index(truth), self.labels.index(predicted)] += 1

    @property
    def total(self) -> int:
        """Items counted."""
        return int(self.matrix.sum())

    @property
    def accuracy(self) -> float:
        """Fraction predicted right (0.0 with nothing counted)."""
        return accuracy(self.matrix)

    def metrics(self) -> dict[str, Any]:
        """`metrics_from_confusion` of these counts."""
        return metrics_from_confusion(self.matrix, self.labels)

    def as_nested(self) -> dict[str, dict[str, int]]:
        """{true: {predicted: count}} with only the non-zero cells (JSON-ready)."""
        out: dict[str, dict[str, int]] = {}
        for i, j in zip(*np.nonzero(self.matrix), strict=True):
            out.setdefault(self.labels[i], {})[self.labels[j]] = int(self.matrix[i, j])
        return out
