"""benchmarks/belt_learning: the belt halves share no item, and the stand-in reviewer files
each saved crop under its true grade from the belt's truth file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks.belt_learning import halves, review_by_truth
from sorter.monitor.audit import DecisionLog, DecisionRecord


def test_halves_are_disjoint_and_stratified() -> None:
    rels = [f"{g}/{g}_{i:03d}.png" for g in ("2L", "C", "S") for i in range(11)]
    a, b = halves(rels)
    assert not set(a) & set(b) and sorted(a + b) == sorted(rels)
    for g in ("2L", "C", "S"):
        assert sum(r.startswith(g + "/") for r in a) == 5
    assert halves(rels) == (a, b)  # seeded


def test_review_by_truth_files_crops_under_the_true_grade(tmp_path: Path) -> None:
    video = tmp_path / "belt.mp4"
    truth = {
        "items": [
            {"id": i, "label": lab, "t_line": 1.0 + i}
            for i, lab in enumerate(["C", "S", "C", "2L"])
        ]
    }
    video.with_suffix(".json").write_text(json.dumps(truth))
    log = DecisionLog(tmp_path / "d.db", crops_dir=tmp_path / "crops", run="r")
    log.open(labels=["2L", "C", "S"])
    for i, t in enumerate([1.02, 2.01, 3.5, 4.0]):  # 3.5 matches nothing: spurious
        rec = DecisionRecord(
            item=i + 1,
            t_line=t,
            label="S",
            confidence=0.9,
            scores=[0.05, 0.05, 0.9],
            bin="S",
            gate=None,
            fire_at=None,
            status="dry-run",
        )
        log.record(rec, np.full((40, 40, 3), 50 * i, np.uint8))
    log.close()
    counts = review_by_truth(video, tmp_path / "d.db", tmp_path / "reviewed", limit=10)
    assert counts == {"2L": 1, "C": 1, "S": 1}
    assert (tmp_path / "reviewed" / "C" / "r_1.png").is_file()
    assert (tmp_path / "reviewed" / "2L" / "r_4.png").is_file()
    assert review_by_truth(video, tmp_path / "d.db", tmp_path / "reviewed", limit=2) == {
        "C": 1,
        "S": 1,
    }
