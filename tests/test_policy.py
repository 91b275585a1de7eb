"""Policy: mean of views, thresholds (global and per grade), too few views, bins and gates."""

from __future__ import annotations

import numpy as np
import pytest

from sorter.config import Config, GradeThreshold, parse_config
from sorter.errors import ConfigError
from sorter.grading.policy import Policy

LABELS = ("2L", "BM", "BL", "M", "S", "L", "2S", "BS", "C")


def scores(**kw: float) -> list[float]:
    rest = (1.0 - sum(kw.values())) / (len(LABELS) - len(kw))
    return [kw.get(lab if lab[0].isalpha() else "x" + lab, rest) for lab in LABELS]


def test_confident_item_goes_to_its_grade_bin_and_gate() -> None:
    v = Policy(Config(), LABELS).decide([scores(M=0.9)])
    assert (v.label, v.bin, v.gate, v.reason) == ("M", "M", 3, "graded")
    assert v.confidence == pytest.approx(0.9)
    assert not v.rejected


def test_views_are_averaged() -> None:
    # view 1 says S strongly, views 2 and 3 say L moderately: the mean picks L
    views = [scores(S=0.9, L=0.05), scores(L=0.7, S=0.2), scores(L=0.7, S=0.2)]
    v = Policy(Config(), LABELS).decide(views)
    assert v.label == "L"
    assert v.confidence == pytest.approx((0.05 + 0.7 + 0.7) / 3)
    assert v.views == 3
    assert sum(v.scores) == pytest.approx(1.0)


def test_low_confidence_and_low_margin_reject() -> None:
    p = Policy(Config(), LABELS)
    low = p.decide([scores(M=0.4, S=0.1)])
    assert (low.reason, low.bin, low.gate, low.label) == ("low-confidence", "reject", None, "M")
    close = p.decide([scores(M=0.52, S=0.45)])
    assert (close.reason, close.bin) == ("low-margin", "reject")


def test_per_grade_threshold_overrides_global() -> None:
    c = Config()
    c.thresholds.per_grade["C"] = GradeThreshold(confidence=0.95)
    p = Policy(c, LABELS)
    assert p.decide([scores(C=0.9)]).reason == "low-confidence"
    assert p.decide([scores(M=0.9)]).reason == "graded"  # other grades keep the global 0.5
    assert p.thresholds("C") == (0.95, c.thresholds.margin)


def test_too_few_views_rejects() -> None:
    c = parse_config("[thresholds]\nmin_views = 3\n")
    p = Policy(c, LABELS)
    assert p.decide([scores(M=0.99)] * 2).reason == "too-few-views"
    assert p.decide([scores(M=0.99)] * 3).reason == "graded"
    none = p.decide(np.zeros((0, len(LABELS))))
    assert (none.reason, none.views, none.bin) == ("too-few-views", 0, "reject")


def test_grade_mapped_to_reject_bin() -> None:
    c = parse_config('[bins.grades]\nM = "reject"\nS = "S"\n')
    p = Policy(c, LABELS)
    assert p.decide([scores(M=0.9)]).reason == "no-bin"
    assert p.decide([scores(L=0.9)]).reason == "no-bin"  # not listed at all
    assert p.decide([scores(S=0.9)]).bin == "S"


def test_per_grade_threshold_for_unknown_grade_is_an_error() -> None:
    c = Config()
    c.thresholds.per_grade["XL"] = GradeThreshold(confidence=0.9)
    with pytest.raises(ConfigError, match=r"thresholds\.per_grade\.XL: not a grade of the model"):
        Policy(c, LABELS)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_scores_go_to_the_reject_lane_with_a_reason(bad: float) -> None:
    """A NaN or inf score (a broken model or input) is never graded: with NaN, every
    threshold comparison is False, so the item would pass confidence and margin."""
    p = Policy(Config(), LABELS)
    one = scores(M=0.9)
    one[LABELS.index("M")] = bad
    for views in ([one], [scores(M=0.9), one]):
        v = p.decide(views)
        assert (v.reason, v.bin, v.gate) == ("bad-scores", "reject", None)
        assert v.rejected
    # a NaN elsewhere than the top grade is caught as well
    other = scores(M=0.9)
    other[LABELS.index("C")] = bad
    assert p.decide([other]).reason == "bad-scores"


def test_non_finite_scores_are_logged_as_finite_numbers() -> None:
    """The verdict's numbers stay finite (the decision log and JSON lines store them)."""
    v = Policy(Config(), LABELS).decide([[float("nan")] * len(LABELS)])
    assert v.reason == "bad-scores"
    assert all(np.isfinite(v.scores)) and np.isfinite(v.confidence) and np.isfinite(v.margin)
