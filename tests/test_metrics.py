"""sorter.grading.metrics (shared by training, `sorter classify` and the scorecard) against a
hand-computed confusion matrix."""

from __future__ import annotations

import numpy as np
import pytest

from sorter.grading.metrics import (
    Confusion,
    balanced_accuracy,
    compute_metrics,
    confusion_matrix,
    most_confused_pairs,
)

LABELS = ["L", "M", "S"]
# true L: 5 right, 1 called M;  true M: 2 called L, 3 right, 1 called S;  true S: 4 right
Y_TRUE = np.array([0] * 6 + [1] * 6 + [2] * 4)
Y_PRED = np.array([0] * 5 + [1] + [0, 0, 1, 1, 1, 2] + [2] * 4)


def test_confusion_matrix_counts() -> None:
    cm = confusion_matrix(Y_TRUE, Y_PRED, 3)
    np.testing.assert_array_equal(cm, [[5, 1, 0], [2, 3, 1], [0, 0, 4]])


def test_metrics_from_known_confusion() -> None:
    m = compute_metrics(Y_TRUE, Y_PRED, LABELS)
    assert m["accuracy"] == pytest.approx(12 / 16)
    assert m["n"] == 16
    assert m["confusion"] == [[5, 1, 0], [2, 3, 1], [0, 0, 4]]
    pc = m["per_class"]
    assert pc["L"]["precision"] == pytest.approx(5 / 7)
    assert pc["L"]["recall"] == pytest.approx(5 / 6)
    assert pc["M"]["precision"] == pytest.approx(3 / 4)
    assert pc["M"]["recall"] == pytest.approx(3 / 6)
    assert pc["S"]["precision"] == pytest.approx(4 / 5)
    assert pc["S"]["recall"] == pytest.approx(1.0)
    f1_m = 2 * (3 / 4) * (3 / 6) / (3 / 4 + 3 / 6)
    assert pc["M"]["f1"] == pytest.approx(f1_m)
    assert pc["S"]["support"] == 4


def test_absent_and_never_predicted_classes_score_zero() -> None:
    m = compute_metrics(np.array([0, 0, 1]), np.array([0, 0, 0]), LABELS)
    assert m["per_class"]["M"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["per_class"]["S"]["support"] == 0
    assert m["accuracy"] == pytest.approx(2 / 3)


def test_most_confused_pairs() -> None:
    cm = [[5, 1, 0], [2, 3, 1], [0, 0, 4]]
    assert most_confused_pairs(cm, LABELS, 3) == [("M", "L", 2), ("L", "M", 1), ("M", "S", 1)]
    assert most_confused_pairs([[3, 0], [0, 2]], ["a", "b"]) == []


def test_balanced_accuracy_is_the_mean_recall_of_present_classes() -> None:
    cm = confusion_matrix(Y_TRUE, Y_PRED, 3)
    assert balanced_accuracy(cm) == pytest.approx((5 / 6 + 3 / 6 + 1.0) / 3)
    assert compute_metrics(Y_TRUE, Y_PRED, LABELS)["balanced_accuracy"] == balanced_accuracy(cm)
    # an absent class does not count: only L and M are present here
    assert balanced_accuracy(confusion_matrix([0, 0, 1], [0, 1, 1], 3)) == pytest.approx(0.75)
    assert balanced_accuracy(np.zeros((3, 3), np.int64)) == 0.0


def test_confusion_by_label_matches_the_matrix() -> None:
    c = Confusion.empty(LABELS)
    for t, p in zip(Y_TRUE, Y_PRED, strict=True):
        c.add(LABELS[t], LABELS[p])
    np.testing.assert_array_equal(c.matrix, confusion_matrix(Y_TRUE, Y_PRED, 3))
    assert c.total == 16 and c.accuracy == pytest.approx(12 / 16)
    assert c.metrics() == compute_metrics(Y_TRUE, Y_PRED, LABELS)
    assert c.as_nested() == {"L": {"L": 5, "M": 1}, "M": {"L": 2, "M": 3, "S": 1}, "S": {"S": 4}}
