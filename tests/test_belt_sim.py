"""The simulated belt: truth JSON, determinism, options, CLI, and replay through the
locator and tracker (every item found once, crossing times as in the truth)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sorter.cli import app
from sorter.errors import ConfigError, DatasetError
from sorter.perception.sources import VideoSource
from sorter.perception.tracking import Tracker, TrackerConfig
from sorter.perception.vision import BackgroundModel, Locator, LocatorConfig
from sorter.replay.belt_sim import BeltSimConfig, list_images, simulate_belt
from sorter.replay.truth import load_truth
from tests.fakes.belt_data import make_grade_tree

runner = CliRunner()


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_grade_tree(tmp_path_factory.mktemp("grades"), per_grade=4)


def replay(video: Path, truth: dict, method: str = "background") -> tuple[list, int]:
    """Locate + track a video; returns (crossings as (t_line, n_views), max items in view)."""
    with VideoSource(video) as src:
        frames = list(src)
    model = None
    if method == "background":
        model = BackgroundModel.learn(f.image for f in frames[: truth["empty_frames"]])
    w, h = truth["size"]
    win = truth["window_px"][0]
    locator = Locator(
        LocatorConfig(method=method, min_area_px=0.3 * win * win, max_area_px=2.0 * win * win),
        model,
    )
    tracker = Tracker(TrackerConfig(), (w, h), line=truth["line_x"])
    crossings = []
    most = 0
    for f in frames:
        found = locator.locate(f.image)
        most = max(most, len(found))
        tracker.update(found, f.t, f.index)
        crossings.extend((tr.t_line, len(tr.views)) for tr in tracker.crossings)
    return crossings, most


def check_against_truth(crossings: list, truth: dict) -> None:
    """Every truth item crossed exactly once, within one frame time of the truth."""
    t_true = [it["t_line"] for it in truth["items"]]
    t_seen = sorted(t for t, _ in crossings)
    assert len(t_seen) == len(t_true)
    tol = 1.0 / truth["fps"]
    assert all(abs(a - b) <= tol for a, b in zip(t_seen, t_true, strict=True)), (t_seen, t_true)


def test_truth_json_describes_the_video(tree: Path, tmp_path: Path) -> None:
    cfg = BeltSimConfig(count=5, seed=4, items_per_second=2.5)
    result = simulate_belt(tree, tmp_path / "belt.mp4", cfg)
    truth = load_truth(result.truth)
    assert result.truth == tmp_path / "belt.json"
    for key in ("fps", "size", "speed_px_s", "line_x", "px_per_mm", "window_px", "items"):
        assert key in truth
    assert truth["size"] == [640, 480] and truth["window_px"] == [120, 120]
    assert truth["line_x"] == 320 and truth["empty_frames"] >= 25
    items = truth["items"]
    assert [it["id"] for it in items] == [1, 2, 3, 4, 5]
    assert [it["t_line"] for it in items] == sorted(it["t_line"] for it in items)
    gaps = np.diff([it["t_line"] for it in items])
    spacing_s = 1 / 2.5
    assert np.all(np.abs(gaps - spacing_s) <= 2 * 12 / 400.0 + 1e-6)  # spacing +- jitter
    for it in items:
        assert (tree / it["source"]).is_file() and it["source"].startswith(it["label"] + "/")
    with VideoSource(result.video) as src:
        n = sum(1 for _ in src)
        assert src.fps == 30.0
    assert n == result.frames == truth["frames"]


def test_same_seed_same_belt(tree: Path, tmp_path: Path) -> None:
    cfg = BeltSimConfig(count=2, seed=9, size=(160, 120), px_per_mm=0.12, speed_px_s=300)
    a = simulate_belt(tree, tmp_path / "a.mp4", cfg)
    b = simulate_belt(tree, tmp_path / "b.mp4", cfg)
    c = simulate_belt(tree, tmp_path / "c.mp4", BeltSimConfig(**{**cfg.__dict__, "seed": 10}))
    ta, tb, tc = (json.loads(r.truth.read_text())["items"] for r in (a, b, c))
    assert ta == tb and ta != tc
    assert a.video.read_bytes() == b.video.read_bytes()


def test_replay_finds_every_item_once_at_its_truth_time(tree: Path, tmp_path: Path) -> None:
    """A small belt (320x240, 60 px items), replayed through the background locator."""
    cfg = BeltSimConfig(
        count=8, seed=1, size=(320, 240), px_per_mm=0.24, speed_px_s=250.0, spacing_px=100.0
    )
    result = simulate_belt(tree, tmp_path / "small.mp4", cfg)
    truth = load_truth(result.truth)
    crossings, most = replay(result.video, truth)
    check_against_truth(crossings, truth)
    assert most >= 3  # several items in view at once
    assert min(n for _, n in crossings) >= 5  # each item seen in several frames


@pytest.mark.slow
def test_ten_items_per_second_at_640x480_no_misses_no_duplicates(
    tree: Path, tmp_path: Path
) -> None:
    cfg = BeltSimConfig(count=14, seed=2, speed_px_s=1500.0, items_per_second=10.0)
    result = simulate_belt(tree, tmp_path / "fast.mp4", cfg)
    truth = load_truth(result.truth)
    for method in ("background", "color"):
        crossings, _ = replay(result.video, truth, method)
        check_against_truth(crossings, truth)


def test_overlapping_spacing_and_bad_sizes_are_errors(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"would overlap.*--items-per-second"):
        simulate_belt(tree, tmp_path / "x.mp4", BeltSimConfig(items_per_second=10.0))
    with pytest.raises(ConfigError, match="does not fit"):
        simulate_belt(tree, tmp_path / "x.mp4", BeltSimConfig(size=(320, 100)))
    with pytest.raises(ConfigError, match="not both"):
        BeltSimConfig(items_per_second=2.0, spacing_px=200.0).resolved_spacing()


def test_image_selection_limit_split_and_repeats(tree: Path, tmp_path: Path) -> None:
    assert len(list_images(tree)) == 12
    limited = list_images(tree, limit_per_grade=1)
    assert [label for _, label in limited] == ["L", "M", "S"]
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"root": str(tree), "test": [["M/M_001.png", "M"]]}))
    assert list_images(tree, split_file=split) == [("M/M_001.png", "M")]
    listing = tmp_path / "list.txt"
    listing.write_text("S/S_000.png\nL/L_003.png\n")
    assert list_images(tree, split_file=listing) == [("L/L_003.png", "L"), ("S/S_000.png", "S")]
    with pytest.raises(DatasetError, match="no images listed"):
        list_images(tree, split_file=listing, limit_per_grade=0)
    with pytest.raises(DatasetError, match="'val' list"):
        list_images(tree, split_file=split, split="val")
    cfg = BeltSimConfig(
        count=5, size=(320, 240), px_per_mm=0.24, speed_px_s=400, split_file=split, blur_sigma=0
    )
    result = simulate_belt(tree, tmp_path / "one.mp4", cfg)
    assert [it.source for it in result.items] == ["M/M_001.png"] * 5


def test_cli_simulate_and_calibrate(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.mp4"
    args = ["simulate-belt", str(tree), str(out), "--count", "3", "--size", "320x240"]
    args += ["--px-per-mm", "0.24", "--speed", "300", "--seed", "5", "--quiet"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "3 items" in res.output and out.is_file() and out.with_suffix(".json").is_file()
    res = runner.invoke(app, ["calibrate-belt", str(tmp_path / "belt.npz"), "--video", str(out)])
    assert res.exit_code == 0, res.output
    model = BackgroundModel.load(tmp_path / "belt.npz")
    assert model.size == (320, 240)
    assert model.frames == json.loads(out.with_suffix(".json").read_text())["empty_frames"]


def test_cli_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    res = runner.invoke(app, ["simulate-belt", str(tmp_path / "none"), str(tmp_path / "o.mp4")])
    assert res.exit_code == 2
    assert "error:" in res.output and "not a folder" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["simulate-belt", str(tmp_path), "o.mp4", "--size", "big"])
    assert res.exit_code == 2 and "WIDTHxHEIGHT" in res.output
    res = runner.invoke(app, ["calibrate-belt", str(tmp_path / "b.npz")])
    assert res.exit_code == 2 and "exactly one frame source" in res.output
