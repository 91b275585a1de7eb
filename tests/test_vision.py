"""Locating items against the belt, and the fixed crop window."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from sorter.errors import ConfigError
from sorter.perception.preprocess import load_image, to_model_input
from sorter.perception.vision import BackgroundModel, Locator, LocatorConfig, crop_window, window_px
from sorter.replay.belt_sim import BeltSimConfig, SimItem, prepare, render_frame
from tests.fakes.belt_data import make_grade_tree

CLEAN = {"noise": 0.0, "lighting_drift": 0.0}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_grade_tree(tmp_path_factory.mktemp("grades"), per_grade=3)


def scene(
    tree: Path, xs: list[float], ys: list[float] | None = None, **overrides: object
) -> tuple[np.ndarray, list[SimItem], BeltSimConfig, np.ndarray]:
    """A 640x480 belt frame at t=0 with items centred at xs (and ys); also the empty belt."""
    cfg = BeltSimConfig(count=len(xs), seed=3, **{**CLEAN, **overrides})  # type: ignore[arg-type]
    texture, tiles, items, _ = prepare(tree, cfg)
    for item, x, y in zip(items, xs, ys or [240.0] * len(xs), strict=True):
        item.x0, item.y = x, y
    frame = render_frame(0.0, texture, tiles, items, cfg, None)
    empty = render_frame(0.0, texture, tiles, [], cfg, None)
    return frame, items, cfg, empty


@pytest.fixture(scope="module")
def model(tree: Path) -> BackgroundModel:
    """Learned from 20 frames of the empty belt moving past, with camera noise."""
    cfg = BeltSimConfig(count=1, seed=3)
    texture, tiles, _, rng = prepare(tree, cfg)
    return BackgroundModel.learn(
        render_frame(k / 30, texture, tiles, [], cfg, rng) for k in range(20)
    )


@pytest.mark.parametrize("method", ["background", "color"])
def test_several_items_found_once_each_at_their_centres(
    tree: Path, model: BackgroundModel, method: str
) -> None:
    frame, items, cfg, _ = scene(tree, [130.0, 320.0, 500.0], [200.0, 250.0, 300.0])
    background = model if method == "background" else None
    found = Locator(LocatorConfig(method=method), background).locate(frame)
    assert len(found) == 3
    for det, item in zip(found, items, strict=True):
        assert abs(det.cx - item.x0) <= 2 and abs(det.cy - item.y) <= 2
        assert abs(det.w - cfg.window_px[0]) <= 4 and abs(det.h - cfg.window_px[1]) <= 4
        assert not det.touches_edge


def test_items_touching_the_frame_edge_are_flagged(tree: Path) -> None:
    frame, _, _, _ = scene(tree, [20.0, 320.0, 630.0])
    found = Locator(LocatorConfig(method="color")).locate(frame)
    assert [d.edges for d in found] == [("left",), (), ("right",)]
    assert found[0].x == 0 and found[2].x + found[2].w == 640


def test_blobs_too_small_or_too_large_are_ignored(tree: Path) -> None:
    frame, _, _, _ = scene(tree, [320.0])
    frame[20:30, 20:30] = 230  # a speck of dirt: 100 px
    frame[300:479, 0:100] = 230  # not an item but still a blob...
    frame[:, 560:] = 230  # ...and a sheet across the whole belt: 80x480 px
    cfg = LocatorConfig(method="color", min_area_px=2000, max_area_px=30000)
    found = Locator(cfg).locate(frame)
    assert [round(d.cx) for d in found] == [50, 320]  # sorted by x
    assert found[0].edges == ("left", "bottom")


def test_background_follows_lighting_drift(tree: Path, model: BackgroundModel) -> None:
    frame, _, _, _ = scene(tree, [200.0, 450.0])
    brighter = np.clip(frame.astype(np.float32) * 1.35, 0, 255).astype(np.uint8)
    assert len(Locator(LocatorConfig(method="background"), model).locate(brighter)) == 2
    # Without gain compensation the whole belt turns "item": one huge blob, dropped.
    off = LocatorConfig(method="background", compensate_gain=False)
    assert Locator(off, model).locate(brighter) == []


def test_background_model_round_trip_and_bad_files(tmp_path: Path, model: BackgroundModel) -> None:
    path = model.save(tmp_path / "belt")
    assert path.suffix == ".npz"
    back = BackgroundModel.load(path)
    assert back.frames == 20 and back.size == (640, 480)
    assert np.abs(back.mean - model.mean).max() < 0.25  # float16 storage
    bad = tmp_path / "bad.npz"
    bad.write_text("nope")
    with pytest.raises(ConfigError, match=r"bad\.npz: not a belt calibration"):
        BackgroundModel.load(bad)
    with pytest.raises(ConfigError, match=r"missing\.npz: belt calibration not found"):
        BackgroundModel.load(tmp_path / "missing.npz")
    with pytest.raises(ConfigError, match="at least 2 frames"):
        BackgroundModel.learn([model.mean.astype(np.uint8)])


def test_locator_config_errors_name_the_setting() -> None:
    with pytest.raises(ConfigError, match="calibrate-belt"):
        Locator(LocatorConfig(method="background"))
    with pytest.raises(ConfigError, match="'blob'"):
        LocatorConfig(method="blob")
    with pytest.raises(ConfigError, match="min_area_px"):
        LocatorConfig(min_area_px=10, max_area_px=5)


def test_crop_window_is_fixed_size_and_edge_replicated() -> None:
    image = np.arange(40 * 60 * 3, dtype=np.uint32).reshape(40, 60, 3).astype(np.uint8)
    inside = crop_window(image, 30, 20, (10, 8))
    assert inside.shape == (8, 10, 3)
    assert np.array_equal(inside, image[16:24, 25:35])
    corner = crop_window(image, 2, 1, (10, 8))
    assert corner.shape == (8, 10, 3)
    assert np.array_equal(corner[3:, 3:], image[0:5, 0:7])
    assert np.array_equal(corner[0, 3:], image[0, 0:7])  # rows above replicate row 0
    assert np.array_equal(corner[3:, 0], image[0:5, 0])  # columns left replicate column 0
    far = crop_window(image, 500, -300, (6, 4))
    assert far.shape == (4, 6, 3) and np.all(far == image[0, 59])
    assert window_px((250.0, 250.0), 0.48) == (120, 120)


def test_belt_crop_gives_the_training_image_model_input(tree: Path) -> None:
    """Same image, same model input, through the training path and the device path.

    Training path: load_image(png) -> to_model_input. Device path: the image as the camera
    sees it on the belt (scaled up to the 120 px window with smooth interpolation, mild
    blur), located, cropped with the fixed window, -> to_model_input. Resampling 32 -> 120
    -> 32 cannot be exact, so the device path is allowed what that round trip alone costs
    plus 3 grey levels (mean absolute difference) for locating the item. Measured on these
    synthetic trays: 2.0-2.9 levels in all, about 0.5 level beyond the 1.6-2.4 of the round
    trip (the bounding box is found at half scale: up to ~1.5 px centre error).
    """
    xs = [140.0, 320.0, 490.0]
    frame, items, cfg, _ = scene(tree, xs, [230.0, 251.0, 244.0])
    found = Locator(LocatorConfig(method="color")).locate(frame)
    assert len(found) == 3
    for det, item in zip(found, items, strict=True):
        image = load_image(tree / item.source)
        train = to_model_input(image, (32, 32)).astype(int)
        device = to_model_input(crop_window(frame, det.cx, det.cy, cfg.window_px), (32, 32))
        up = cv2.resize(image, cfg.window_px, interpolation=cv2.INTER_LINEAR)
        up = cv2.GaussianBlur(up, (0, 0), cfg.blur_sigma)
        round_trip = np.abs(to_model_input(up, (32, 32)).astype(int) - train).mean()
        diff = np.abs(device.astype(int) - train).mean()
        assert diff <= round_trip + 3.0, (item.source, diff, round_trip)
        assert diff < 6.0


@pytest.fixture(scope="module")
def real_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real CUCUMBER-9 trays (tests/data/cucumber9_mini: 12 per grade) as a grade tree."""
    from training.cucumber9 import import_cucumber9

    dest = tmp_path_factory.mktemp("c9") / "tree"
    import_cucumber9(Path(__file__).parent / "data" / "cucumber9_mini", dest)
    return dest


@pytest.mark.parametrize("method", ["background", "color"])
def test_real_trays_same_model_input_on_the_belt(real_tree: Path, method: str) -> None:
    """The same check on real CUCUMBER-9 images (some trays are dark grey at the bottom).

    Measured over all 108 images: background locator 2.2-3.8 levels mean absolute
    difference, at most 1.1 beyond the round trip; colour locator 2.2-5.6, up to 2.3 beyond
    (its box is found at half scale and can be off by 1.5 px). Allowed: round trip + 3
    levels, and under 6 in all: close, not identical.
    """
    cfg = BeltSimConfig(seed=5, noise=0.0, lighting_drift=0.0)  # every image once
    texture, tiles, items, _ = prepare(real_tree, cfg)
    model = None
    if method == "background":
        rng = np.random.default_rng(0)
        model = BackgroundModel.learn(
            render_frame(k / 30, texture, tiles, [], cfg, rng) for k in range(10)
        )
    locator = Locator(LocatorConfig(method=method), model)
    assert len(items) == 108
    for item in items[::4]:  # 27 items, every grade represented
        frame = render_frame(item.t_line, texture, tiles, items, cfg, None)
        det = min(locator.locate(frame), key=lambda d: abs(d.cx - 320))
        assert abs(det.cx - 320) <= 2 and abs(det.cy - item.y) <= 2
        image = load_image(real_tree / item.source)
        train = to_model_input(image, (32, 32)).astype(int)
        device = to_model_input(crop_window(frame, det.cx, det.cy, cfg.window_px), (32, 32))
        up = cv2.GaussianBlur(
            cv2.resize(image, cfg.window_px, interpolation=cv2.INTER_LINEAR), (0, 0), 0.7
        )
        round_trip = np.abs(to_model_input(up, (32, 32)).astype(int) - train).mean()
        diff = np.abs(device.astype(int) - train).mean()
        assert diff <= round_trip + 3.0 and diff < 6.0, (item.source, diff, round_trip)
