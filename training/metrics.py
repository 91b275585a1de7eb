"""Classification metrics from labels and predictions (pure numpy, no TensorFlow)."""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """C[i, j] = number of items of true class i predicted as class j."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def metrics_from_confusion(cm: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support and the matrix, as JSON-ready values.

    Precision of a never-predicted class and recall of an absent class are 0.0.
    """
    cm = np.asarray(cm, dtype=np.int64)
    total = int(cm.sum())
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    actual = cm.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    per_class = {
        g: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(actual[i]),
        }
        for i, g in enumerate(labels)
    }
    present = actual > 0
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "n": total,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": per_class,
        "confusion": cm.tolist(),
    }


def compute_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """`metrics_from_confusion` of the confusion matrix of (y_true, y_pred)."""
    return metrics_from_confusion(confusion_matrix(y_true, y_pred, len(labels)), labels)


def most_confused_pairs(
    cm: np.ndarray | list[list[int]], labels: list[str], k: int = 3
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
