"""Scorecard on known inputs: matching by t_line, misses, duplicates, bins, timing."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from rich.console import Console

from sorter.errors import DatasetError
from sorter.replay.scorecard import default_tolerance, render_scorecard, score

TRUTH = {
    "fps": 30.0,
    "items": [
        {"id": 1, "label": "L", "t_line": 1.0},
        {"id": 2, "label": "M", "t_line": 1.4},
        {"id": 3, "label": "S", "t_line": 1.8},
        {"id": 4, "label": "L", "t_line": 2.2},
        {"id": 5, "label": "M", "t_line": 2.6},
        {"id": 6, "label": "S", "t_line": 3.0},
    ],
}


def decision(t: float, label: str, **more: object) -> dict[str, object]:
    return {"t_line": t, "label": label, "bin": more.pop("bin", label), **more}


def test_counts_on_a_known_run() -> None:
    decisions = [
        decision(1.01, "L"),  # item 1, right
        decision(1.39, "S"),  # item 2, wrong grade and bin
        decision(1.43, "M"),  # item 2 again: a duplicate
        decision(2.21, "L", bin="reject", status="rejected"),  # item 4, right grade, rejected
        decision(2.60, "M"),  # item 5, right
        decision(3.02, "S"),  # item 6, right
        decision(5.00, "L"),  # nothing there: spurious
    ]  # item 3 (S at 1.8) missed
    card = score(decisions, TRUTH)
    assert card.tolerance_s == pytest.approx(0.18)
    assert (card.items, card.decided, card.missed) == (6, 5, 1)
    assert (card.duplicated, card.spurious, card.rejected) == (1, 1, 1)
    assert card.correct_bin == 3 and card.correct_bin_pct == pytest.approx(50.0)
    assert card.correct_grade == 4  # the rejected L was graded L
    assert card.per_grade["L"].items == 2 and card.per_grade["L"].correct == 2
    assert card.per_grade["M"].accuracy == pytest.approx(0.5)  # the nearer decision (1.39, S)
    assert card.per_grade["S"].accuracy == pytest.approx(0.5)  # one missed
    assert card.confusion["M"] == {"S": 1, "M": 1}
    assert card.line_error_ms["n"] == 5
    assert card.line_error_ms["max"] == pytest.approx(20.0)
    assert card.gate_error_ms == {}  # no fire times given


def test_bins_can_merge_grades() -> None:
    decisions = [decision(1.0, "M", bin="big"), decision(1.4, "M", bin="small")]
    truth = {"items": TRUTH["items"][:2]}
    card = score(decisions, truth, bin_of={"L": "big", "M": "small", "S": "small"})
    assert card.correct_bin == 2 and card.correct_grade == 1


def test_gate_timing_against_geometry_and_against_the_plan() -> None:
    # Gate 1 is 0.5 s after the line, gate 2 is 0.8 s.
    decisions = [
        decision(1.002, "L", gate=1, fire_at=1.502, fired_at=1.503, status="fired"),
        decision(1.400, "M", gate=2, fire_at=2.200, fired_at=2.210, status="fired"),
        decision(1.800, "S", gate=1, fire_at=2.300, status="late"),  # never fired: no timing
        decision(2.200, "L", gate=1, fire_at=2.700, status="dry-run"),  # planned time counts
    ]
    card = score(decisions, TRUTH, gate_delay_s={1: 0.5, 2: 0.8})
    assert card.gate_basis == "geometry"
    assert card.gate_error_ms["n"] == 3
    assert card.gate_error_ms["max"] == pytest.approx(10.0)
    assert card.gate_error_ms["p50"] == pytest.approx(3.0)
    assert card.gate_error_ms["mean"] == pytest.approx((3 + 10 + 0) / 3, abs=0.001)  # rounded
    planned = score(decisions, TRUTH)
    assert planned.gate_basis == "planned"
    # Planned travel time + the line error: 1 ms + 2 ms for item 1, 10 ms for item 2.
    assert planned.gate_error_ms["max"] == pytest.approx(10.0)
    assert planned.gate_error_ms["p50"] == pytest.approx(3.0)


def test_decisions_as_objects_and_an_explicit_tolerance() -> None:
    @dataclass
    class Decision:
        t_line: float
        label: str
        bin: str | None = None

    card = score([Decision(1.1, "L"), Decision(1.55, "M")], TRUTH, tolerance_s=0.12)
    assert card.decided == 1 and card.spurious == 1 and card.correct_bin == 1


def test_default_tolerance_and_bad_truth() -> None:
    assert default_tolerance([1.0, 1.4, 2.4]) == pytest.approx(0.18)
    assert default_tolerance([1.0]) == 0.5
    assert default_tolerance([0.0, 10.0]) == 0.5
    with pytest.raises(DatasetError, match="items"):
        score([], {"items": [{"label": "L"}]})


def test_json_and_table_forms() -> None:
    card = score([decision(1.0, "L"), decision(1.4, "M")], TRUTH)
    d = json.loads(json.dumps(card.as_dict()))
    assert d["items"] == 6 and d["missed"] == 4
    assert d["correct_bin_pct"] == pytest.approx(100 * 2 / 6, abs=0.001)
    assert d["per_grade"]["L"] == {"items": 2, "correct": 1, "correct_bin": 1, "accuracy": 0.5}
    console = Console(width=100, record=True)
    console.print(render_scorecard(card))
    text = console.export_text()
    assert "items in truth" in text and "missed" in text and "grade S" in text
    assert "2 (33.3%)" in text
