"""Sub-pixel centres, sizes and crops from the full-resolution mask (sorter.perception.measure),
and the crop centre measured against the simulated belt's per-frame truth."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from sorter.fields import FieldError
from sorter.perception.measure import (
    MeasureConfig,
    centre_of,
    coverage,
    crop_at,
    fill_rim,
    item_view,
    measure,
    shape_of,
)
from sorter.perception.sources import VideoSource
from sorter.perception.vision import Locator, LocatorConfig, crop_window
from sorter.replay.belt_sim import BeltSimConfig, prepare, render_frame, simulate_belt, true_centre
from sorter.replay.realism import Realism
from sorter.replay.truth import load_truth
from tests.fakes.belt_data import make_grade_tree

BELT = (190, 104, 48)
"""The simulator's orange belt (the colour locator's default range)."""


def supersampled(draw, size: tuple[int, int], k: int = 8) -> np.ndarray:
    """An RGB frame whose edge pixels are area-mixed: draw at k times, shrink with INTER_AREA.

    `draw(big, k)` paints on the big orange canvas in big-pixel units."""
    w, h = size
    big = np.empty((h * k, w * k, 3), np.uint8)
    big[:] = BELT
    draw(big, k)
    return cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA)


def test_centre_of_uses_pixel_edges() -> None:
    mask = np.zeros((40, 50), np.uint8)
    mask[5:15, 10:20] = 255  # columns 10..19 cover [10, 20): centre 15
    assert centre_of(mask) == pytest.approx((15.0, 10.0))
    assert centre_of(np.zeros((4, 4), np.uint8)) is None


def test_crop_at_matches_whole_pixel_crop_and_interpolates_between() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    # Window 10x8 centred on (30, 20): columns [25, 35), rows [16, 24): as crop_window.
    assert np.array_equal(crop_at(image, 30.0, 20.0, (10, 8)), crop_window(image, 30, 20, (10, 8)))
    half = crop_at(image, 30.5, 20.0, (10, 8)).astype(np.float32)
    mean = (image[16:24, 25:35].astype(np.float32) + image[16:24, 26:36]) / 2
    assert np.abs(half - mean).max() <= 1.0
    edge = crop_at(image, 1.0, 1.0, (6, 4))  # leaves the frame: border replicated
    assert edge.shape == (4, 6, 3) and np.array_equal(edge[0, 0], image[0, 0])


def test_shape_of_a_rotated_bar_and_a_bent_one() -> None:
    k = 8  # drawn at 8x and shrunk: a pixel is in the bar when it is half covered
    big = np.zeros((200 * k, 200 * k), np.uint8)
    box = cv2.boxPoints(((100.0 * k, 100.0 * k), (80.0 * k, 12.0 * k), 30.0))
    cv2.fillPoly(big, [np.round(box).astype(np.int32)], 255)
    bar = (cv2.resize(big, (200, 200), interpolation=cv2.INTER_AREA) >= 128).astype(np.uint8)
    s = shape_of(bar)
    assert s.length_px == pytest.approx(80.0, abs=2.0)
    assert s.width_px == pytest.approx(12.0, abs=2.0)
    assert s.angle_deg == pytest.approx(30.0, abs=1.0)
    assert s.bend_px < 1.0
    # A 12-px thick band along a circular arc: chord 100 px, sagitta 15 px.
    arc = np.zeros((200, 200), np.uint8)
    chord, sagitta = 100.0, 15.0
    radius = (chord**2 / 4 + sagitta**2) / (2 * sagitta)
    half_angle = math.asin(chord / 2 / radius)
    angles = np.linspace(-half_angle, half_angle, 200)
    pts = np.stack([100 + radius * np.sin(angles), 120 + radius * np.cos(angles) - radius])
    cv2.polylines(arc, [np.round(pts.T).astype(np.int32)], False, 255, 12)
    s = shape_of(arc)
    assert s.bend_px == pytest.approx(sagitta * 0.95, abs=2.5)  # chord at 5%-95%
    assert s.length_px == pytest.approx(chord + 12, abs=4.0)


def test_coverage_reads_partial_pixels_from_their_colour() -> None:
    def draw(big: np.ndarray, k: int) -> None:
        big[10 * k : 30 * k, int(10.25 * k) : int(30.25 * k)] = (200, 205, 225)

    frame = supersampled(draw, (40, 40))
    blob = np.zeros((40, 40), np.uint8)
    blob[10:30, 10:31] = 255
    cov = coverage(frame, blob, 2)
    assert cov[20, 10] == pytest.approx(0.75, abs=0.05)
    assert cov[20, 30] == pytest.approx(0.25, abs=0.05)
    cx, _ = centre_of(cov) or (0.0, 0.0)
    assert cx == pytest.approx(20.25, abs=0.05)


@pytest.mark.parametrize("scale", [0.5, 1.0])
def test_measure_finds_a_tray_and_its_cucumber_to_a_fraction_of_a_pixel(scale: float) -> None:
    cx, cy = 150.37, 101.81  # a light tray, dark at the bottom, holding a green cucumber

    def draw(big: np.ndarray, k: int) -> None:
        x0, y0 = round((cx - 50) * k), round((cy - 50) * k)
        big[y0 : y0 + 70 * k, x0 : x0 + 100 * k] = (200, 205, 225)
        big[y0 + 70 * k : y0 + 100 * k, x0 : x0 + 100 * k] = (95, 98, 105)
        centre = (round(cx * k), round(cy * k))
        cv2.ellipse(big, centre, (35 * k, 6 * k), 20.0, 0, 360, (40, 110, 35), -1)

    frame = supersampled(draw, (320, 240))
    locator = Locator(LocatorConfig(scale=scale, min_area_px=2000))
    (det,) = locator.locate(frame)
    m = measure(frame, det, locator)
    assert m.refined and m.shape_from == "produce"
    assert math.hypot(m.cx - cx, m.cy - cy) < 0.1
    assert m.area_px == pytest.approx(100 * 100, rel=0.03)
    assert m.length_px == pytest.approx(70.0, abs=2.5)
    assert m.width_px == pytest.approx(12.0, abs=2.0)
    assert m.shape.angle_deg == pytest.approx(20.0, abs=2.0)
    assert m.bend_px < 1.0


def test_measure_without_a_blob_keeps_the_detection_centre() -> None:
    frame = np.empty((100, 100, 3), np.uint8)
    frame[:] = BELT
    frame[40:60, 40:60] = (200, 205, 225)
    locator = Locator(LocatorConfig(min_area_px=100))
    (det,) = locator.locate(frame)
    frame[:] = BELT  # the item is gone from the frame measured
    m = measure(frame, det, locator, MeasureConfig(margin_px=2))
    assert not m.refined and (m.cx, m.cy) == (det.cx, det.cy)


def crop_centre_errors(video: Path, truth: dict, *, refine: bool) -> np.ndarray:
    """Distance (px) of each full view's crop centre from the truth centre in that frame."""
    win_w, win_h = truth["window_px"]
    locator = Locator(LocatorConfig(min_area_px=0.3 * win_w * win_h, refine=refine))
    by_frame: dict[int, list[tuple[float, float]]] = {}
    for item in truth["items"]:
        for k, x, y in item["centres"]:
            by_frame.setdefault(int(k), []).append((x, y))
    errors = []
    with VideoSource(video) as src:
        for frame in src:
            for d in locator.locate(frame.image):
                if d.touches_edge or frame.index not in by_frame:
                    continue
                near = by_frame[frame.index]
                tx, ty = min(near, key=lambda c: math.hypot(c[0] - d.cx, c[1] - d.cy))
                if refine:
                    m = measure(frame.image, d, locator)
                    x, y = m.cx, m.cy
                else:  # crop_window's whole-pixel window [x0, x0 + w) has centre x0 + w / 2
                    x = math.floor(d.cx - win_w / 2 + 0.5) + win_w / 2
                    y = math.floor(d.cy - win_h / 2 + 0.5) + win_h / 2
                errors.append(math.hypot(x - tx, y - ty))
    return np.array(errors)


def test_crop_centre_on_a_simulated_belt_within_half_a_pixel(tmp_path: Path) -> None:
    tree = make_grade_tree(tmp_path / "grades", per_grade=3)
    cfg = BeltSimConfig(count=8, seed=7, subpixel=True, speed_px_s=430.0, lead_in_s=0.3)
    result = simulate_belt(tree, tmp_path / "belt.mp4", cfg)
    truth = load_truth(result.truth)
    assert all(len(it["centres"]) > 10 for it in truth["items"])
    refined = crop_centre_errors(result.video, truth, refine=True)
    box = crop_centre_errors(result.video, truth, refine=False)
    assert len(refined) == len(box) > 8 * 10
    assert refined.mean() <= 0.5, refined.mean()
    assert refined.mean() < box.mean()


def _cup_frame(rim_colour: tuple[int, int, int], half_length: int) -> np.ndarray:
    """A 320x240 frame: a cup (100 px opening, 5 px rim of `rim_colour`, light inside) at
    (160, 120) holding a cucumber `2 * half_length` px long."""
    cx, cy, opening, rim = 160.0, 120.0, 50.0, 5.0

    def draw(big: np.ndarray, k: int) -> None:
        centre = (round(cx * k), round(cy * k))
        cv2.circle(big, centre, round((opening + rim) * k), rim_colour, -1)
        cv2.circle(big, centre, round(opening * k), (200, 205, 225), -1)
        cv2.ellipse(big, centre, (half_length * k, 6 * k), 0.0, 0, 360, (40, 110, 35), -1)

    return supersampled(draw, (320, 240))


def test_item_view_fills_a_cups_rim_and_the_belt_but_not_the_produce() -> None:
    rim = 5.0  # a 100 px cup opening, 5 px dark rim
    frame = _cup_frame((30, 30, 32), 48)
    locator = Locator(LocatorConfig(min_area_px=2000))
    (det,) = locator.locate(frame)
    plain, m = item_view(frame, det, locator, (100, 100))
    filled, m2 = item_view(frame, det, locator, (100, 100), rim_px=rim)
    assert m == m2 and np.array_equal(plain, crop_at(frame, m.cx, m.cy, (100, 100)))
    tray = np.array([200, 205, 225], np.float32)
    corner = filled[:6, :6].reshape(-1, 3).astype(np.float32)
    assert np.abs(corner - tray).max() < 30  # belt and rim there became tray
    assert np.abs(plain[:6, :6].astype(np.float32) - tray).max() > 100
    # The cucumber's tips reach the rim: they are kept (as are the window's middle rows).
    assert np.array_equal(filled[45:55, 3:97], plain[45:55, 3:97])
    with pytest.raises(FieldError):
        LocatorConfig(rim_mm=-1.0)


def test_item_view_fills_a_green_cups_rim_too() -> None:
    """A green cup's rim is as green as produce by the excess-green rule (2G - R - B = 120):
    it is filled like any rim, and only produce connected to the cucumber is kept."""
    opening, rim = 50.0, 5.0
    tray = np.array([200, 205, 225], np.float32)
    frame = _cup_frame((46, 120, 74), 30)
    locator = Locator(LocatorConfig(min_area_px=2000))
    (det,) = locator.locate(frame)
    plain, _ = item_view(frame, det, locator, (100, 100))
    filled, _ = item_view(frame, det, locator, (100, 100), rim_px=rim)
    yy, xx = np.mgrid[0:100, 0:100] + 0.5 - 50.0
    outside = np.hypot(xx, yy) > opening + 1.0  # the rim and the belt in the corners
    assert np.abs(plain[outside].astype(np.float32) - tray).max() > 100
    # Near the cup's own inside (the opening's edge pixels, part rim, tint the fill a
    # little), and no longer green: the unfilled rim is all excess green 120.
    assert np.abs(filled[outside].astype(np.float32) - tray).mean() < 15
    f = filled.astype(np.int32)
    exg = 2 * f[:, :, 1] - f[:, :, 0] - f[:, :, 2]
    assert (exg[outside] > 20).mean() < 0.02
    assert np.array_equal(filled[45:55, 25:75], plain[45:55, 25:75])  # the cucumber


def test_the_shape_of_produce_in_a_green_cup_is_the_produce_not_the_rim() -> None:
    """A green cup's rim is excess green too; filled, that ring would be the whole cup."""
    cx, cy = 160.0, 120.0

    def draw(big: np.ndarray, k: int) -> None:
        centre = (round(cx * k), round(cy * k))
        cv2.circle(big, centre, 55 * k, (46, 120, 74), -1)
        cv2.circle(big, centre, 50 * k, (200, 205, 225), -1)
        cv2.ellipse(big, centre, (30 * k, 6 * k), 0.0, 0, 360, (40, 110, 35), -1)

    frame = supersampled(draw, (320, 240))
    locator = Locator(LocatorConfig(min_area_px=2000))
    (det,) = locator.locate(frame)
    m = measure(frame, det, locator)
    assert m.shape_from == "produce"
    assert m.length_px == pytest.approx(60.0, abs=2.0)  # not the cup's 110
    assert m.width_px == pytest.approx(12.0, abs=2.0)


def test_fill_rim_keeps_a_tip_reaching_over_the_rim_and_drops_green_not_connected() -> None:
    crop = np.empty((40, 40, 3), np.uint8)
    crop[:] = (200, 205, 225)
    interior = np.zeros((40, 40), bool)
    interior[6:34, 6:34] = True
    crop[:6, :] = (46, 120, 74)  # a green rim along the top, outside the interior
    crop[18:22, 2:30] = (40, 110, 35)  # a cucumber whose tip reaches over the left rim
    crop[:2, 30:40] = (40, 110, 35)
    filled = fill_rim(crop, interior)
    assert np.array_equal(filled[19:21, 2:6], crop[19:21, 2:6])  # the tip stays
    top = filled[:4, 10:30].reshape(-1, 3).astype(np.float32)
    assert np.abs(top - np.array([200, 205, 225], np.float32)).max() < 30  # rim filled


@pytest.mark.parametrize("carrier", ["cup", "tray"])
def test_centre_of_a_black_carrier_round_a_light_and_dark_picture_is_unbiased(
    carrier: str, tmp_path: Path
) -> None:
    """The rim is black, the picture inside light at the top and dark at the bottom: the
    item colour next to the edge must come from the rim, not from the picture."""
    tree = make_grade_tree(tmp_path / "grades", per_grade=2)
    realism = Realism(carrier=carrier, rim_px=5.0, carrier_colours=("black",))
    cfg = BeltSimConfig(count=6, seed=5, subpixel=True, noise=0.0, realism=realism)
    texture, tiles, items, _ = prepare(tree, cfg)
    locator = Locator(LocatorConfig(min_area_px=3000))
    offsets = []
    for item in items:
        frame = render_frame(item.t_line, texture, tiles, items, cfg, None)
        cx, cy = true_centre(item, item.t_line, cfg)
        d = min(locator.locate(frame), key=lambda d: abs(d.cx - cx))
        m = measure(frame, d, locator)
        offsets.append((m.cx - cx, m.cy - cy))
    mean = np.abs(np.mean(offsets, axis=0))
    assert mean.max() < 0.1, mean
