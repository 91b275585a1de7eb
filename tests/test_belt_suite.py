"""benchmarks.belt_suite's paired count: which items the belt changed against their clean
pictures (lost / won), matched to the truth the scorecard's way, and the table's columns."""

from __future__ import annotations

from pathlib import Path

from benchmarks.belt_suite import Result, paired_changes, table
from sorter.monitor.audit import DecisionLog, DecisionRecord, read_decisions

TRUTH = {
    "items": [
        {"id": 1, "label": "L", "t_line": 1.0, "source": "L/a.png"},
        {"id": 2, "label": "S", "t_line": 2.0, "source": "S/b.png"},
        {"id": 3, "label": "C", "t_line": 3.0, "source": "C/c.png"},
        {"id": 4, "label": "M", "t_line": 4.0, "source": "M/d.png"},
        {"id": 5, "label": "BL", "t_line": 5.0, "source": "BL/e.png"},
    ]
}


def _log(path: Path, rows: list[tuple[float, str]], run: str) -> None:
    with DecisionLog(path, run=run) as log:
        for item, (t, bin_) in enumerate(rows):
            log.record(
                DecisionRecord(
                    item=item, t_line=t, label=bin_, confidence=0.9, scores=[0.9], bin=bin_,
                    gate=None, fire_at=None, status="fired",
                )
            )  # fmt: skip


def test_lost_and_won_count_the_items_the_belt_changed_against_their_pictures(
    tmp_path: Path,
) -> None:
    clean = {"L/a.png": True, "S/b.png": True, "C/c.png": False, "M/d.png": True, "BL/e.png": False}
    db = tmp_path / "belt.db"
    _log(
        db,
        [(1.0, "L"), (2.0, "L"), (3.0, "reject"), (4.0, "M"), (5.0, "BL")],
        run="20261203-101500-11",
    )
    # the latest run is the replay: item 2 (S) sent to L, item 4 (M) missed, item 5 (BL)
    # right on the belt though wrong as a picture, a spurious decision far from any item
    _log(
        db,
        [(1.02, "L"), (1.98, "L"), (3.01, "reject"), (5.0, "BL"), (9.0, "S")],
        run="20261203-101530-12",
    )
    lost, won = paired_changes(read_decisions(db), TRUTH, clean)
    assert (lost, won) == (2, 1)  # S to the wrong bin and M missed; BL won


def test_the_table_shows_the_paired_count_and_its_spread() -> None:
    r = Result(
        belt="plain", rate=10, model="m.tflite", items=100, correct_bin=0.88,
        correct_grade=0.88, missed=0, duplicated=0, spurious=0, clean=0.9, seconds=1.0,
        lost=12, won=4,
    )  # fmt: skip
    text = table([r], {"m.tflite": "no"})
    assert "| lost / won | ±1 sd |" in text.splitlines()[0]
    row = text.splitlines()[2]
    assert "| 88.0% | -2.0 | 12 / 4 | 4.0 |" in row  # sqrt(16) / 100 items
