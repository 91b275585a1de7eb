"""benchmarks/geometry.py's accounting: every item of the belt is counted by its fate.

An item whose gate did not fire is there with the reason (a policy reject rides to the
reject lane and says why; an item the loop never decided is "missed"), never left out or
credited with its neighbour's record."""

from __future__ import annotations

from types import SimpleNamespace

from benchmarks.geometry import not_fired, outcomes
from sorter.config import Config


def _rec(
    t_line: float, status: str, gate: int | None, fired_at: float | None, reason: str
) -> SimpleNamespace:
    return SimpleNamespace(
        t_line=t_line, label="A", status=status, gate=gate, fired_at=fired_at, reason=reason
    )


def test_every_item_is_counted_by_its_fate() -> None:
    arrivals = {"200": 0.0}
    truth = {
        "items": [
            {"id": i + 1, "label": "A", "t_line": 1.0 + 0.5 * i, "arrivals": dict(arrivals)}
            for i in range(4)
        ]
    }
    truth["items"][0]["arrivals"]["200"] = 2.0
    records = [
        _rec(1.0, "fired", 0, 2.003, "graded"),
        _rec(1.5, "rejected", None, None, "low-confidence"),
        # the third item was never decided
        _rec(2.5, "late", 0, None, "graded"),
    ]
    errors, fates = outcomes(records, truth, Config())
    assert [round(e, 6) for e in errors] == [3.0]
    assert fates == {"fired": 1, "rejected (low-confidence)": 1, "missed": 1, "late": 1}
    assert sum(fates.values()) == len(truth["items"])
    assert not_fired(fates) == "1 late, 1 missed, 1 rejected (low-confidence)"
    assert not_fired({"fired": 3}) == "none"
