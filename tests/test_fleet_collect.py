"""`sorter collect`: each lane's reviewed crops and decision log gathered into one training
tree whose names keep lane and run apart; collecting again follows the reviewer's moves."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sorter.cli import app
from sorter.errors import SorterError
from sorter.monitor.audit import DecisionLog, DecisionRecord
from sorter.ops.collect import collect
from training.data import scan_dataset


def _lane_run(state: Path, lane: str, run: str, items: list[tuple[int, str, float]]) -> None:
    """A lane's state folder after a run: decisions.db and crops/ (low confidence: _review/)."""
    log = DecisionLog(
        state / "decisions.db", crops_dir=state / "crops", run=run, lane=lane, review_below=0.6
    )
    log.open()
    for item, label, conf in items:
        crop = np.full((16, 16, 3), (item * 37) % 256, np.uint8)
        crop[0, 0] = (ord(lane[0]) if lane else 0, item % 256, 7)  # each lane its own bytes
        rec = DecisionRecord(
            item=item, t_line=float(item), label=label, confidence=conf, scores=[conf],
            bin=label, gate=None, fire_at=None, status="fired",
        )  # fmt: skip
        log.record(rec, crop)
    log.close()


def _review(state: Path, name: str, grade: str) -> None:
    """What a person does: move a crop from _review/ (or another grade) to `grade`."""
    src = next((state / "crops").rglob(name))
    dest = state / "crops" / grade / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    src.replace(dest)


@pytest.fixture
def lanes(tmp_path: Path) -> tuple[Path, Path, Path]:
    one, two, old = tmp_path / "lanes" / "1", tmp_path / "lanes" / "2", tmp_path / "lanes" / "3"
    # same run id on two lanes (two Pis started the same second with the same pid)
    _lane_run(one, "1", "20261201-080000-77", [(1, "M", 0.9), (2, "L", 0.9), (3, "M", 0.3)])
    _lane_run(two, "2", "20261201-080000-77", [(1, "M", 0.95), (2, "S", 0.4)])
    _lane_run(two, "2", "20261201-120000-81", [(1, "L", 0.8)])
    # a single-lane farm's log (no [lane] id): crops named RUN_ITEM, lane from the folder
    _lane_run(old, "", "20261130-090000-5", [(4, "S", 0.99)])
    return one, two, old


def test_collect_builds_one_training_tree_with_lane_and_run_in_every_name(
    tmp_path: Path, lanes: tuple[Path, Path, Path]
) -> None:
    one, two, old = lanes
    _review(one, "1_20261201-080000-77_3.png", "L")  # the reviewer: item 3 was an L
    out = tmp_path / "train"
    reports = collect([one, two, old], out)
    by_lane = {r.lane: r for r in reports}
    assert (by_lane["1"].copied, by_lane["1"].unreviewed, by_lane["1"].decisions) == (3, 0, 3)
    assert (by_lane["2"].copied, by_lane["2"].unreviewed, by_lane["2"].decisions) == (2, 1, 3)
    assert (by_lane["3"].copied, by_lane["3"].decisions) == (1, 1)
    assert by_lane["2"].runs == ["20261201-080000-77", "20261201-120000-81"]
    tree = {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
    assert tree - {"_review/S/2_20261201-080000-77_2.png"} == {
        "M/1_20261201-080000-77_1.png",
        "L/1_20261201-080000-77_2.png",
        "L/1_20261201-080000-77_3.png",
        "M/2_20261201-080000-77_1.png",
        "L/2_20261201-120000-81_1.png",
        "S/3_20261130-090000-5_4.png",
    }
    # the same run id and item on lanes 1 and 2 stay two files, each with its own bytes
    a = (out / "M/1_20261201-080000-77_1.png").read_bytes()
    b = (out / "M/2_20261201-080000-77_1.png").read_bytes()
    assert a != b
    rows = list(csv.DictReader((out / "_lanes" / "crops.csv").open()))
    assert len(rows) == 6
    regraded = next(r for r in rows if r["file"] == "L/1_20261201-080000-77_3.png")
    assert (regraded["grade"], regraded["decided"], regraded["confidence"]) == ("L", "M", "0.3000")
    for lane in ("1", "2", "3"):
        assert (out / "_lanes" / lane / "decisions.db").is_file()
    # sorter-train reads the tree: grades are the folders, _lanes/ is not one
    scan = scan_dataset(out, min_per_grade=1)
    assert scan.labels == ["L", "M", "S"] and len(scan.samples) == 6


def test_collecting_again_follows_the_reviewer(
    tmp_path: Path, lanes: tuple[Path, Path, Path]
) -> None:
    one, two, _ = lanes
    out = tmp_path / "train"
    collect([one, two], out)
    _review(two, "2_20261201-080000-77_2.png", "S")  # reviewed since: an S
    _review(one, "1_20261201-080000-77_2.png", "M")  # the reviewer changed their mind
    again = {r.lane: r for r in collect([one, two], out)}
    assert (again["1"].copied, again["1"].regraded, again["1"].unchanged) == (0, 1, 1)
    assert (again["2"].copied, again["2"].unreviewed, again["2"].unchanged) == (1, 0, 2)
    assert (out / "M/1_20261201-080000-77_2.png").is_file()
    assert not (out / "L/1_20261201-080000-77_2.png").exists()
    assert (out / "S/2_20261201-080000-77_2.png").is_file()
    history = json.loads((out / "_lanes" / "collected.json").read_text())
    assert len(history) == 2
    rows = list(csv.DictReader((out / "_lanes" / "crops.csv").open()))
    assert len(rows) == 5 and len({r["file"] for r in rows}) == 5  # lane 1 item 3: _review/
    assert not (out / "_review" / "S" / "2_20261201-080000-77_2.png").exists()
    # reviewed here instead of on the lane: DIR's grade stands on the next collection
    waiting = out / "_review" / "M" / "1_20261201-080000-77_3.png"
    assert waiting.is_file()
    (out / "L").mkdir(exist_ok=True)
    waiting.replace(out / "L" / waiting.name)
    third = {r.lane: r for r in collect([one, two], out)}
    assert third["1"].unreviewed == 0 and not waiting.exists()
    assert (out / "L" / waiting.name).is_file()


def test_collect_cli_and_its_errors(tmp_path: Path, lanes: tuple[Path, Path, Path]) -> None:
    one, two, _ = lanes
    runner = CliRunner()
    r = runner.invoke(app, ["collect", str(one), str(two), "--out", str(tmp_path / "t")])
    assert r.exit_code == 0, r.output
    assert "lane 1: 2 crops copied" in r.stdout and "1 still in _review/" in r.stdout
    r = runner.invoke(app, ["collect", str(tmp_path / "nope"), "--out", str(tmp_path / "t")])
    assert r.exit_code == 2
    assert r.stderr.startswith(f"error: {tmp_path / 'nope'}: not a folder")
    (one / "crops" / "M" / "holiday.png").write_bytes(b"x")
    with pytest.raises(SorterError, match=r"holiday\.png: not a sorter crop name"):
        collect([one], tmp_path / "t2")
    (one / "crops" / "M" / "holiday.png").unlink()
    with pytest.raises(SorterError, match=r"lane '1' again"):
        collect([one, one.parent / ".." / "lanes" / "1"], tmp_path / "t3")
