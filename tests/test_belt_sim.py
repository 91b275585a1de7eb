"""The simulated belt: truth JSON, determinism, options, CLI, and replay through the
locator and tracker (every item found once, crossing times as in the truth)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from sorter.cli import app
from sorter.errors import ConfigError, DatasetError
from sorter.perception.sources import VideoSource
from sorter.perception.tracking import Tracker, TrackerConfig
from sorter.perception.vision import BackgroundModel, Locator, LocatorConfig
from sorter.replay.belt_sim import (
    BeltSimConfig,
    list_images,
    placement,
    prepare,
    render_frame,
    simulate_belt,
    true_centre,
)
from sorter.replay.realism import Realism, item_sprite
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


def test_default_belt_is_unchanged_by_the_realism_machinery(tree: Path) -> None:
    """Carrier none, no camera effects: each picture is pasted over the belt as it is."""
    cfg = BeltSimConfig(count=3, seed=3, noise=0.0, blur_sigma=0.0, lighting_drift=0.0)
    texture, tiles, items, _ = prepare(tree, cfg)
    item = items[0]
    t = item.t_line  # centred on the decision line
    frame = render_frame(t, texture, tiles, items, cfg, None)
    left, top = (int(v) for v in placement(item, t, cfg))
    picture = tiles[item.source][:, :, :3]
    assert np.array_equal(
        frame[top : top + 120, left : left + 120], np.clip(picture + 0.5, 0, 255).astype(np.uint8)
    )
    cx, cy = true_centre(item, t, cfg)
    assert (cx, cy) == (left + 60, top + 60)


@pytest.mark.parametrize("carrier", ["tray", "cup", "bare"])
def test_carriers_render_around_the_picture_and_the_truth_centre_follows(
    carrier: str, tree: Path, tmp_path: Path
) -> None:
    realism = Realism(carrier=carrier, carrier_colours=("black",), rim_px=6, rim_inside_px=2)
    cfg = BeltSimConfig(
        count=3,
        seed=3,
        noise=0.0,
        blur_sigma=0.0,
        lighting_drift=0.0,
        subpixel=True,
        realism=realism,
    )
    texture, tiles, items, _ = prepare(tree, cfg)
    item = items[0]
    frame = render_frame(item.t_line, texture, tiles, items, cfg, None).astype(np.float32)
    cx, cy = true_centre(item, item.t_line, cfg)
    assert cx == pytest.approx(320 + item.dx, abs=1e-3)  # t_line has 6 decimals
    x, y = math.floor(cx), math.floor(cy)
    if carrier == "tray":  # black rim just outside the field of view and 2 px inside it
        assert frame[y, x - 62].max() < 50 and frame[y, x + 61].max() < 50
        assert frame[y, x - 59].max() < 50 and frame[y, x - 57].max() > 100  # rim, picture
    elif carrier == "cup":  # the window's corner is belt (orange), the centre the picture
        corner = frame[y - 59, x - 59]
        assert corner[0] > 150 and corner[2] < 90
    else:  # bare: the produce alone; its centre is where the green pixels are
        view = frame[y - 60 : y + 60, x - 60 : x + 60]
        ys, xs = np.nonzero(2 * view[:, :, 1] - view[:, :, 0] - view[:, :, 2] > 40)
        assert x - 60 + xs.mean() + 0.5 == pytest.approx(cx, abs=1.0)
        assert y - 60 + ys.mean() + 0.5 == pytest.approx(cy, abs=1.0)


def test_camera_effects_blur_vignette_and_white_balance(tree: Path) -> None:
    base = BeltSimConfig(count=2, seed=1, noise=0.0, blur_sigma=0.0, lighting_drift=0.0)
    cam = BeltSimConfig(
        **{
            **base.__dict__,
            "realism": Realism(exposure_ms=4.0, vignetting=0.3, white_balance_drift=0.1),
        }
    )
    texture, tiles, items, _ = prepare(tree, base)
    t = 23.0 / 4  # a quarter period of the white-balance drift: red up, blue down
    plain = render_frame(t, texture, tiles, items, base, None).astype(np.float32)
    seen = render_frame(t, texture, tiles, items, cam, None).astype(np.float32)
    centre, corner = (slice(230, 250), slice(310, 330)), (slice(0, 10), slice(0, 10))
    ratio = seen[centre].mean(axis=(0, 1)) / plain[centre].mean(axis=(0, 1))
    assert ratio[0] == pytest.approx(1.1, abs=0.02) and ratio[2] == pytest.approx(0.9, abs=0.02)
    assert seen[corner].mean() < 0.8 * plain[corner].mean()
    # 400 px/s x 4 ms = 1.6 px of motion blur: along the belt only.
    assert np.abs(np.diff(seen[240], axis=0)).mean() < np.abs(np.diff(plain[240], axis=0)).mean()


def test_codec_choice_and_its_container(tree: Path, tmp_path: Path) -> None:
    cfg = BeltSimConfig(count=2, seed=1, size=(320, 240), px_per_mm=0.24, codec="MJPG")
    with pytest.raises(ConfigError, match=r"MJPG video needs a \.avi"):
        simulate_belt(tree, tmp_path / "x.mp4", cfg)
    result = simulate_belt(tree, tmp_path / "x.avi", cfg)
    with VideoSource(result.video) as src:
        assert sum(1 for _ in src) == result.frames
    assert json.loads(result.truth.read_text())["settings"]["codec"] == "MJPG"
    with pytest.raises(ConfigError, match="--codec"):
        BeltSimConfig(codec="H264").check()
    with pytest.raises(ConfigError, match="--carrier"):
        BeltSimConfig(realism=Realism(carrier="box")).check()
    args = [
        "simulate-belt",
        str(tree),
        str(tmp_path / "c.mp4"),
        "--carrier",
        "cup",
        "--carrier-colours",
        "pink",
        "-q",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "--carrier-colours pink" in res.output


def test_spacing_leaves_belt_between_trays_rims_included() -> None:
    tray = Realism(carrier="tray", rim_px=10.0)
    with pytest.raises(ConfigError, match="items 140 px wide at 150 px spacing would overlap"):
        BeltSimConfig(spacing_px=150.0, realism=tray).check()
    BeltSimConfig(spacing_px=156.0, realism=tray).check()
    BeltSimConfig(spacing_px=150.0).check()  # no tray: 120 px items


def test_bare_cut_out_keeps_the_produces_dark_edge() -> None:
    """The produce's dark edge (its skin turning from the light: too dark for the excess
    green rule) belongs to it: the bare belt's cut-out keeps it, not the tray."""
    picture = np.empty((120, 120, 3), np.float32)
    picture[:] = (190, 195, 205)  # a light tray
    cv2.ellipse(picture, (60, 60), (40, 12), 0.0, 0, 360, (32, 40, 32), -1)  # dark edge
    cv2.ellipse(picture, (60, 60), (36, 8), 0.0, 0, 360, (60, 140, 50), -1)  # green body
    alpha = item_sprite(picture, Realism(carrier="bare"), "black")[:, :, 3]
    assert alpha[60, 60] > 0.99 and alpha[60, 22] > 0.9 and alpha[49, 60] > 0.9  # the edge
    assert alpha[60, 10] < 0.01 and alpha[40, 60] < 0.01  # the tray is not the produce
