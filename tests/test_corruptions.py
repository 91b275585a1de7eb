"""The camera-path corruption suite and the robustness report: golden values on a tiny
fixture (tests/data/corruption_golden.json, made by tests/data/make_corruption_golden.py)
and the physical behaviour each corruption claims."""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from training import camera_augment as A
from training import corruptions as C
from training import robustness as R

DATA = Path(__file__).parent / "data"
GOLDEN = json.loads((DATA / "corruption_golden.json").read_text())


def _maker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mk", DATA / "make_corruption_golden.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


MK = _maker()
X, Y, X_ALL, Y_ALL = MK.fixture()


def test_suite_is_nine_kinds_at_three_severities_plus_scale() -> None:
    kinds = {c.kind for c in C.SUITE}
    assert kinds == {
        "misalign", "rim", "mp4v", "mjpg", "jpeg", "motion-blur", "defocus", "noise",
        "brightness", "white-balance",
    }  # fmt: skip
    assert all(sum(c.kind == k for c in C.SUITE) == 3 for k in kinds)
    assert [c.label for c in C.SCALE_SUITE] == ["x0.95", "x0.98", "x1.02", "x1.05"]
    assert GOLDEN["suite_version"] == R.SUITE_VERSION
    assert set(GOLDEN["cells"]) == {c.name for c in (C.CAMERA_CLEAN, *C.SUITE, *C.SCALE_SUITE)}


@pytest.mark.parametrize("c", [C.CAMERA_CLEAN, *C.SUITE, *C.SCALE_SUITE], ids=lambda c: c.name)
def test_golden_values(c: C.Corruption) -> None:
    want = GOLDEN["cells"][c.name]
    out = C.apply(c, X, seed=0)
    assert out.shape == X.shape and out.dtype == np.uint8
    # Video codecs may differ by a level between FFmpeg builds; the rest is exact arithmetic.
    tol = 1.0 if c.codec is not None else 0.02
    assert float(out.mean()) == pytest.approx(want["mean"], abs=tol)
    assert float(out.std()) == pytest.approx(want["std"], abs=tol)
    assert float(np.abs(out.astype(np.int16) - X).mean()) == pytest.approx(want["mad"], abs=tol)


def test_same_seed_same_output_other_seed_other_draws() -> None:
    c = C.SUITE[2]  # misalign 2 px: random direction per image
    np.testing.assert_array_equal(C.apply(c, X[:6], seed=0), C.apply(c, X[:6], seed=0))
    assert not np.array_equal(C.apply(c, X[:6], seed=0), C.apply(c, X[:6], seed=1))


def test_clean_camera_path_is_close_to_the_image() -> None:
    out = C.apply(C.CAMERA_CLEAN, X, seed=0)
    assert np.abs(out.astype(np.int16) - X).mean() < 3.0


def test_misalignment_fills_with_belt_colour() -> None:
    img = np.full((32, 32, 3), 200, np.uint8)
    v = C.View(belt=C.BELTS["dark"], belt_texture=0.0, dx_model=2.0)
    out = C.render(img, v)
    # Window 2 px to the right: the last 2 columns show the dark belt, the rest the tray.
    assert out[:, -1].mean() < 60 and out[:, -2].mean() < 60
    assert abs(float(out[:, :-3].mean()) - 200) < 2
    still = C.render(img, C.View(belt=C.BELTS["dark"], belt_texture=0.0))
    assert abs(float(still.mean()) - 200) < 1


def test_rim_and_belt_band_sit_at_the_window_edge() -> None:
    img = np.full((32, 32, 3), 200, np.uint8)
    out = C.render(img, C.View(rim_px=3.0, belt_band_px=3.0, belt_texture=0.0))
    assert tuple(out[0, 16]) == pytest.approx(C.BELTS["orange"], abs=25)
    assert abs(float(out[8:24, 8:24].mean()) - 200) < 1
    assert out[1, 16].mean() < out[4, 16].mean()  # the dark rim between belt and tray


def test_scale_changes_the_item_size_not_the_window() -> None:
    img = np.full((32, 32, 3), 220, np.uint8)
    img[12:20, 8:24] = 20  # an item 16 px long
    big = C.render(img, C.View(scale=1.25, belt_texture=0.0))
    small = C.render(img, C.View(scale=0.8, belt_texture=0.0))
    length = [int((im[16] < 120).all(axis=1).sum()) for im in (small, img, big)]
    assert length[0] < length[1] < length[2] and big.shape == img.shape


def test_motion_blur_is_along_the_belt_only() -> None:
    img = np.full((32, 32, 3), 220, np.uint8)
    img[:, 16:] = 20  # a vertical edge
    img2 = img.transpose(1, 0, 2).copy()  # a horizontal edge
    v, still = C.View(motion_px=12.0, belt_texture=0.0), C.View(belt_texture=0.0)

    def change(im: np.ndarray) -> int:  # inside the tray, away from the belt at its sides
        return int(np.abs(C.render(im, v).astype(int) - C.render(im, still))[6:26, 6:26].sum())

    assert change(img) > 20 * max(1, change(img2))


def test_codec_round_trip_changes_the_images_a_little() -> None:
    out = C.codec_round_trip(X[:6], [C.View()] * 6, "mp4v", 13.0)
    clean = C.apply(C.CAMERA_CLEAN, X[:6], seed=0)
    mad = np.abs(out.astype(np.int16) - clean).mean()
    assert 0.3 < mad < 12


def test_robustness_report_golden_and_files(tmp_path: Path) -> None:
    predict = MK.centroid_classifier(X_ALL, Y_ALL)
    doc = R.robustness(predict, X, Y, seed=0)
    want = GOLDEN["report"]
    got = R.summary(doc)
    assert got["images"] == want["images"] == 36
    for key in ("clean", "camera_clean"):
        assert got[key] == pytest.approx(want[key], abs=1e-4)
    # Codec cells may flip one image between FFmpeg builds (1/36 of a cell, /27 of the mean).
    assert got["mean_corruption"] == pytest.approx(want["mean_corruption"], abs=0.002)
    for kind, acc in want["per_kind"].items():
        tol = 1 / 36 + 1e-4 if kind in ("mp4v", "mjpg") else 1e-4
        assert got["per_kind"][kind] == pytest.approx(acc, abs=tol), kind
    assert got["scale"] == pytest.approx(want["scale"], abs=1e-4)
    assert doc["mean_corruption"] == pytest.approx(
        np.mean([s["accuracy"] for k in doc["kinds"].values() for s in k["severities"]])
    )
    R.write_report(doc, tmp_path)
    for name in ("robustness.json", "robustness.md", "robustness.png"):
        assert (tmp_path / name).is_file()
    md = (tmp_path / "robustness.md").read_text()
    assert "mean corruption" in md and "| misalign |" in md and "x0.95" in md
    assert R.read_report(tmp_path) == json.loads((tmp_path / "robustness.json").read_text())


def test_camera_pool_is_seeded_and_keeps_the_clean_images() -> None:
    cfg = A.CameraAugmentConfig(variants=2, codec_p=0.3)
    pool = A.build_pool(X[:12], cfg, seed=3)
    assert pool.shape == (3, 12, 32, 32, 3)
    np.testing.assert_array_equal(pool[0], X[:12])
    np.testing.assert_array_equal(pool, A.build_pool(X[:12], cfg, seed=3))
    assert not np.array_equal(pool[1], pool[2])
    assert A.pool_variants(10_000, (64, 64, 3), A.CameraAugmentConfig(max_pool_mb=500)) == 3


def test_camera_pool_stops_rendering_at_its_time_limit(caplog: pytest.LogCaptureFixture) -> None:
    cfg = A.CameraAugmentConfig(variants=3, codec_p=0.0)
    with caplog.at_level(logging.WARNING):
        pool = A.build_pool(X[:4], cfg, seed=3, time_limit_s=0.0)
    assert pool.shape == (2, 4, 32, 32, 3)  # the clean images and one render
    np.testing.assert_array_equal(pool, A.build_pool(X[:4], cfg, seed=3)[:2])
    assert "1 renders per image instead of 3" in caplog.text


def test_pool_dataset_mixes_clean_and_rendered_views() -> None:
    import tensorflow as tf

    pool = np.stack([np.zeros((8, 4, 4, 3), np.uint8), np.full((8, 4, 4, 3), 9, np.uint8)])
    ds = A.pool_dataset(pool, np.arange(8), clean_fraction=0.5, batch_size=8, seed=0)
    seen = []
    for _ in range(6):
        for xb, yb in ds:
            assert sorted(yb.numpy().tolist()) == list(range(8))
            seen.extend(int(v) for v in tf.reduce_max(xb, axis=(1, 2, 3)).numpy())
    assert 0.25 < np.mean(np.array(seen) == 0) < 0.75


def test_cup_corners_are_filled_from_the_opening_produce_kept() -> None:
    """A cup's corners (outside the circle of the window's width) are inpainted from the
    opening as the loop's `rim_mm` fill does; the opening is untouched, and produce reaching
    out of it from inside (a cucumber along the diagonal) is kept, not painted over."""
    tray, corner, green = (150, 140, 120), (20, 20, 30), (40, 160, 40)
    win = np.empty((96, 96, 3), np.uint8)
    win[:] = corner
    yy, xx = np.mgrid[:96, :96]
    opening = (xx - 47.5) ** 2 + (yy - 47.5) ** 2 <= 48**2
    win[opening] = tray
    diag = np.abs(xx - yy) <= 3
    win[diag] = green
    out = C.cup_corners_filled(win)
    assert np.array_equal(out[opening], win[opening])
    assert np.array_equal(out[diag], win[diag])
    far = ~opening & ~diag & (np.abs(xx - yy) > 12)
    assert far.sum() > 500
    # The dark corners are gone: filled from what borders them (tray and produce).
    assert np.abs(out[far].astype(int) - corner).sum(axis=1).min() > 100
    # Off-centre (the locator 4 px off): the circle moves with the cup.
    moved = C.cup_corners_filled(win, dx=4.0)
    assert not np.array_equal(moved, out)


def test_cup_views_only_when_asked_and_the_other_draws_unchanged() -> None:
    """cup_p draws last and only when on: a recipe without cups keeps its random stream."""
    off = [A.random_view(np.random.default_rng(5), A.CameraAugmentConfig()) for _ in range(3)]
    on = [
        A.random_view(np.random.default_rng(5), A.CameraAugmentConfig(cup_p=1.0)) for _ in range(3)
    ]
    assert not any(v.cup_fill for v in off) and all(v.cup_fill for v in on)
    assert [replace(v, cup_fill=False) for v in on] == off
    img = np.asarray(X[0])
    assert not np.array_equal(C.render(img, on[0], 3), C.render(img, off[0], 3))
