"""The training pictures' background and the crop filled with it ([locate] surround =
"model", sorter.perception.surround), on tiny fixtures and on a short bare belt."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from sorter.config import Config, apply_overrides
from sorter.errors import ConfigError, ModelError
from sorter.fields import FieldError
from sorter.monitor.audit import DecisionLog
from sorter.monitor.status import Status
from sorter.perception.measure import item_view
from sorter.perception.preprocess import load_image
from sorter.perception.surround import GRID, Background, fill_surround, model_background
from sorter.perception.vision import Locator, LocatorConfig
from sorter.replay.belt_sim import BeltSimConfig, simulate_belt
from sorter.replay.realism import Realism
from sorter.replay.truth import run_with_truth
from sorter.runtime.runner import RunOptions
from tests.fakes.belt_data import make_grade_tree

TRAY = (180, 185, 200)
ORANGE = (190, 104, 48)
GREEN = (40, 110, 35)


def _picture(top: tuple[int, int, int], bottom: tuple[int, int, int]) -> np.ndarray:
    """A 32x32 picture, `top` colour in its top half and `bottom` below, a green bar."""
    img = np.empty((32, 32, 3), np.uint8)
    img[:16], img[16:] = top, bottom
    img[12:20, 8:24] = GREEN
    return img


def test_background_of_pictures_is_the_median_of_their_non_green_pixels_per_cell() -> None:
    a = _picture((200, 200, 210), (100, 100, 110))
    b = _picture((204, 202, 214), (104, 102, 114))
    c = _picture((202, 201, 212), (102, 101, 112))
    bg = Background.of_images([a, b, c])
    assert bg.images == 3 and bg.grid.shape == (GRID, GRID, 3)
    assert np.array_equal(bg.grid[0, 0], [202, 201, 212])  # top cells: the top colour
    assert np.array_equal(bg.grid[-1, -1], [102, 101, 112])  # bottom cells: the bottom one
    assert np.array_equal(bg.grid[3, 0], [202, 201, 212])  # beside the bar: the tray
    # As many top as bottom pixels are background: the median is half way between.
    assert bg.median == (152.0, 151.0, 162.0)
    # Cells all green (the bar covers cells 2-5 of rows 3-4) take the overall median.
    assert np.array_equal(bg.grid[3, 2], bg.median) and np.array_equal(bg.grid[4, 5], bg.median)
    assert bg.spread == (50.0, 50.0, 50.0)
    back = Background.from_dict(bg.as_dict())
    assert np.allclose(back.grid, bg.grid) and back.images == 3
    with pytest.raises(ModelError, match="background"):
        Background.from_dict({"grid": [[1, 2]], "median": [1, 2, 3], "spread": [0, 0, 0],
                              "images": 1})  # fmt: skip
    with pytest.raises(ModelError, match="malformed"):
        Background.from_dict({"median": [1, 2, 3]})


def _flat(colour: tuple[int, int, int]) -> Background:
    grid = np.empty((GRID, GRID, 3), np.float32)
    grid[:] = colour
    return Background(grid, (float(colour[0]), float(colour[1]), float(colour[2])), (0, 0, 0), 1)


def test_fill_keeps_the_item_replaces_the_rest_and_keeps_the_extent() -> None:
    """Golden behaviour: a green bar (its edges area-mixed with the orange belt) on orange;
    filled with a flat tray colour: item pixels untouched, pixels past the edge band the
    background exactly, the bar's extent (half-covered edge pixels) where it was."""
    k = 8
    big = np.empty((40 * k, 40 * k, 3), np.uint8)
    big[:] = ORANGE
    big[round(17.5 * k) : round(22.5 * k), round(6.75 * k) : round(33.25 * k)] = GREEN
    crop = cv2.resize(big, (40, 40), interpolation=cv2.INTER_AREA)
    x = crop.astype(np.int16)
    mask = (2 * x[:, :, 1] - x[:, :, 0] - x[:, :, 2]) > 20
    out = fill_surround(crop, mask, _flat(TRAY), band_px=2.0)
    assert np.array_equal(out[mask], crop[mask])
    dist = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    assert (out[dist > 2.0] == TRAY).all()

    def share(img: np.ndarray, surround: tuple[int, int, int]) -> np.ndarray:
        """Per pixel of row 20, how much of it is item (0-1), against `surround`."""
        row = img[20].astype(np.float32)
        s, g = np.array(surround, np.float32), np.array(GREEN, np.float32)
        return ((row - s) @ (g - s)) / float((g - s) @ (g - s))

    # Kept pixels are as they were; the quarter-covered end pixels (outside the mask, in
    # the edge band) are still a quarter bar, now against the tray.
    before = share(crop, ORANGE)
    after = np.where(mask[20], before, share(out, TRAY))
    assert not mask[20, 6] and abs(before[6] - 0.25) < 0.03
    assert np.abs(before - after).max() < 0.05
    assert abs(after.sum() - 26.5) < 0.2  # the bar is 26.5 px long, before and after
    with pytest.raises(ValueError, match="mask"):
        fill_surround(crop, mask[:10], _flat(TRAY))


def test_item_view_with_the_model_background_on_a_bare_belt() -> None:
    """A cucumber alone on the belt: with the background the window round it is the tray,
    the cucumber's pixels are as the camera saw them, and the measurement is the same."""
    frame = np.empty((200, 300, 3), np.uint8)
    frame[:] = ORANGE
    cv2.ellipse(frame, (150, 100), (40, 9), 10.0, 0, 360, GREEN, -1)
    frame = cv2.GaussianBlur(frame, (0, 0), 0.8)
    locator = Locator(LocatorConfig(min_area_px=300))
    (det,) = locator.locate(frame)
    plain, m = item_view(frame, det, locator, (120, 120))
    filled, m2 = item_view(frame, det, locator, (120, 120), background=_flat(TRAY))
    assert m == m2
    assert (plain[:10, :10] == ORANGE).all() and (filled[:10, :10] == TRAY).all()
    x = plain.astype(np.int16)
    green = (2 * x[:, :, 1] - x[:, :, 0] - x[:, :, 2]) > 20
    assert green.sum() > 500 and np.array_equal(filled[green], plain[green])


def test_item_view_with_the_model_background_in_a_cup_fills_from_the_cup() -> None:
    """Where the window shows the item's carrier (a tray picture in a cup), the rim and the
    belt are filled from it, as with the rim fill alone: the background is for produce
    with no carrier round it."""
    frame = np.empty((240, 320, 3), np.uint8)
    frame[:] = ORANGE
    cv2.circle(frame, (160, 120), 55, (30, 30, 32), -1)
    cv2.circle(frame, (160, 120), 50, (200, 205, 225), -1)
    cv2.ellipse(frame, (160, 120), (40, 6), 0.0, 0, 360, GREEN, -1)
    locator = Locator(LocatorConfig(min_area_px=2000))
    (det,) = locator.locate(frame)
    rim_only, _ = item_view(frame, det, locator, (100, 100), rim_px=5.0)
    both, _ = item_view(frame, det, locator, (100, 100), rim_px=5.0, background=_flat(TRAY))
    assert np.array_equal(both, rim_only)
    assert np.abs(both[:4, :4].astype(np.float32) - (200, 205, 225)).max() < 30


def test_surround_model_needs_a_recorded_background() -> None:
    assert model_background("keep", object()) is None
    with pytest.raises(ConfigError, match=r'locate\.surround: "model".*re-export'):
        model_background("model", _Recorder(None))
    with pytest.raises(FieldError, match="surround"):
        LocatorConfig(surround="paint")


@dataclass(frozen=True)
class _Crop:
    window_mm: tuple[float, float] = (250.0, 250.0)


@dataclass(frozen=True)
class _Meta:
    extra: dict[str, Any]
    crop: _Crop = field(default_factory=_Crop)


class _Recorder:
    """A stand-in classifier that keeps every batch it grades (always grade "L")."""

    labels = ("L", "M", "S")
    input_size = (32, 32)
    model_path = "recording stand-in"

    def __init__(self, background: dict[str, Any] | None) -> None:
        self.metadata = _Meta({} if background is None else {"background": background})
        self.batches: list[np.ndarray] = []

    def classify(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(batch.copy())
        out = np.zeros((len(batch), 3), np.float32)
        out[:, 0] = 1.0
        return out


def _bare_run(tmp: Path, surround: str) -> tuple[_Recorder, Any, Background]:
    tree = make_grade_tree(tmp / "grades", per_grade=2)
    pictures = [load_image(p) for p in sorted(tree.glob("*/*.png"))]
    bg = Background.of_images(pictures)
    video = tmp / "bare.mp4"
    if not video.is_file():
        cfg = BeltSimConfig(count=6, seed=3, lead_in_s=0.3, realism=Realism(carrier="bare"))
        simulate_belt(tree, video, cfg)
    config = apply_overrides(
        Config(),
        {"serial.url": "sim://?gates=9", "locate.min_area_px": 300.0, "locate.surround": surround},
    )
    clf = _Recorder(bg.as_dict())
    opts = RunOptions(video=video, classifier=clf, handle_signals=False)
    log = DecisionLog(tmp / f"{surround}.db")
    result = run_with_truth(config, opts, log, Status(), video.with_suffix(".json"))
    return clf, result, bg


def test_the_loop_fills_a_bare_belt_with_the_models_background(tmp_path: Path) -> None:
    filled, result, bg = _bare_run(tmp_path, "model")
    kept, result_keep, _ = _bare_run(tmp_path, "keep")
    for r in (result, result_keep):
        card = r.scorecard
        assert card.items == 6 and card.missed == 0 and card.duplicated == 0
    seen = np.concatenate(filled.batches)
    plain = np.concatenate(kept.batches)
    assert len(seen) == len(plain) > 6
    corners = seen[:, :3, :3].reshape(-1, 3).astype(np.float32)
    # The model's input corners are its training pictures' background, not the belt.
    assert np.abs(corners - bg.grid[0, 0]).max() < 4
    assert np.abs(plain[:, :3, :3].reshape(-1, 3).astype(np.float32) - ORANGE).mean() < 25
    hsv = cv2.cvtColor(seen.reshape(-1, 32, 3), cv2.COLOR_RGB2HSV).reshape(-1, 3)
    belt = (hsv[:, 0] >= 5) & (hsv[:, 0] <= 25) & (hsv[:, 1] >= 110)
    assert belt.mean() < 0.01  # no belt-coloured pixels left round the cucumbers


def test_cutout_lays_the_produce_on_another_surround_and_is_off_by_default() -> None:
    """training.camera_augment's cut-out: the produce's pixels stay, the tray round it
    becomes the background or a belt colour; cutout_p = 0 renders exactly as before."""
    from training.camera_augment import CameraAugmentConfig, cut_out, produce_alpha, render_batch

    pictures = np.stack([_picture((200, 200, 210), (100, 100, 110)) for _ in range(4)])
    pictures[:, 0, 0] = GREEN  # a stray green speck on the tray is not produce
    alpha = produce_alpha(pictures[0])
    assert (alpha[13:19, 9:23] == 1.0).all() and alpha[0, 0] < 0.5 and alpha[28, 2] == 0.0
    flat = np.empty((32, 32, 3), np.float32)
    flat[:] = TRAY
    outs = [cut_out(pictures[0], flat, np.random.default_rng(s)) for s in range(8)]
    for out in outs:  # the bar (rows 12-19, columns 8-23) is centred already: kept as is
        assert np.array_equal(out[13:19, 9:23], pictures[0, 13:19, 9:23])
    low = _picture((200, 200, 210), (100, 100, 110))
    low[12:20, 8:24] = low[0, 0]
    low[20:28, 8:24] = GREEN  # the bar 8 px lower: moved up to the centre
    moved = cut_out(low, flat, np.random.default_rng(1))
    assert np.array_equal(moved[12:20, 8:24], low[20:28, 8:24])
    on_tray = [o for o in outs if np.abs(o[26:, :].astype(float) - TRAY).mean() < 6]
    assert 0 < len(on_tray) < len(outs)  # about half on the background, half on a colour
    off = CameraAugmentConfig()
    assert off.cutout_p == 0.0
    a = render_batch(pictures, off, np.random.default_rng(5))
    b = render_batch(pictures, off, np.random.default_rng(5), flat)
    assert np.array_equal(a, b)
    on = render_batch(pictures, CameraAugmentConfig(cutout_p=1.0), np.random.default_rng(5), flat)
    assert not np.array_equal(a, on)
