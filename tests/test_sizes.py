"""Sizes in millimetres in every decision record (length_mm, width_mm, bend_mm from the
full-resolution mask, through the lens when calibrated), per grade on the status, and the
scale check against a marker fixed in view (alarm and sorter_scale_drift past 1%)."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import cv2
import numpy as np
import pytest
from prometheus_client import generate_latest

from firmware_bridge.clock import VirtualClock
from sorter.actuation.scheduling import Scheduler
from sorter.config import Config, apply_overrides
from sorter.monitor.audit import DecisionLog
from sorter.monitor.status import Status
from sorter.perception.lens import Lens, LensConfig
from sorter.perception.scale_marker import ScaleMarker
from sorter.perception.sources import Frame
from sorter.runtime.loop import SortingLoop
from sorter.runtime.wiring import make_locator, make_scale_marker, make_tracker

BELT_RGB = (230, 120, 30)
GREEN = (40, 170, 60)
PX_PER_MM = 0.8
LENS = LensConfig(
    date="2026-01-01T00:00:00+00:00", width=640, height=480, fx=420.0, fy=420.0,
    cx=319.5, cy=239.5, dist=(-0.3, 0.09, 0.0, 0.0, 0.0),
)  # fmt: skip


class _OneGrade:
    labels = ("A", "B")
    input_size = (32, 32)

    def classify(self, batch: np.ndarray) -> np.ndarray:
        return np.tile(np.array([[0.95, 0.05]], np.float32), (len(batch), 1))


def _config(**over: object) -> Config:
    base = {"belt.px_per_mm": PX_PER_MM, "belt.speed_mm_s": 14 * 30 / PX_PER_MM}
    config = apply_overrides(Config(), {**base, **over})
    config.bins.grades = {"A": "A", "B": "B"}
    return config


def _loop(config: Config, log: DecisionLog, status: Status, lens: Lens | None) -> SortingLoop:
    return SortingLoop(
        config,
        _OneGrade(),
        make_locator(config),
        make_tracker(config, (640, 480)),
        Scheduler(config, VirtualClock(), None, dry_run=True),
        log,
        status,
        window=(200, 200),
        lens=lens,
        scale_marker=make_scale_marker(config),
    )


def _item_frames(length_mm: float, width_mm: float, sag_mm: float) -> list[np.ndarray]:
    """A green item (a thick arc: chord length_mm, thickness width_mm, sagitta sag_mm)
    riding left to right through the frame centre, 14 px a frame."""
    L, W, S = (v * PX_PER_MM for v in (length_mm, width_mm, sag_mm))
    frames = []
    for i in range(36):
        img = np.zeros((480, 640, 3), np.uint8)
        img[:] = BELT_RGB
        x0 = 40 + 14 * i
        xs = np.linspace(-L / 2 + W / 2, L / 2 - W / 2, 200)
        k = 4 * S / (L * L) if S > 0 else 0.0
        for x in xs:  # the medial line y = k (x^2 - (L/2)^2), a disc of the width on it
            y = 240 - k * (x * x - (L / 2) ** 2) - S / 2
            cv2.circle(img, (round((x0 + x) * 8), round(y * 8)), round(W / 2 * 8), GREEN, -1,
                       lineType=cv2.LINE_AA, shift=3)  # fmt: skip
        frames.append(img)
    return frames


def _run(frames: list[np.ndarray], loop: SortingLoop) -> None:
    for i, image in enumerate(frames):
        loop.process(Frame(i, i / 30.0, image), 0.0)


def test_every_record_carries_its_size_in_mm(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path / "d.db")
    log.open(source="test", model="m", labels=["A", "B"])
    status = Status()
    _run(_item_frames(180.0, 36.0, 0.0), _loop(_config(), log, status, None))
    assert log.flush(5.0)
    (rec,) = log.records()
    assert rec.extra["length_mm"] == pytest.approx(180.0, rel=0.03)
    # the largest 1-px slice across the axis: up to about 2 px wider than the item
    assert rec.extra["width_mm"] == pytest.approx(36.0, abs=2.5 / PX_PER_MM)
    assert rec.extra["bend_mm"] < 2.0
    log.close()
    row = (
        sqlite3.connect(tmp_path / "d.db")
        .execute("SELECT length_mm, width_mm, bend_mm FROM decisions")
        .fetchone()
    )
    assert row == (rec.extra["length_mm"], rec.extra["width_mm"], rec.extra["bend_mm"])
    sizes = status.snapshot()["sizes"]
    assert sizes["A"]["items"] == 1
    assert sizes["A"]["length_mm"] == pytest.approx(rec.extra["length_mm"])


def test_a_bent_item_through_a_barrel_lens_measures_true_in_mm() -> None:
    """The camera sees the item through the lens (frames distorted); with the lens the mm
    sizes are those of the item, without they are off."""
    lens = Lens(LENS, (640, 480))
    grid = np.stack(np.meshgrid(np.arange(640) + 0.5, np.arange(480) + 0.5), axis=-1)
    und = lens.undistort_points(grid.reshape(-1, 2)).reshape(480, 640, 2) - 0.5
    mx, my = und[..., 0].astype(np.float32), und[..., 1].astype(np.float32)
    frames = _item_frames(240.0, 40.0, 20.0)
    seen = [cv2.remap(f, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE) for f in frames]
    ideal, with_lens, without = DecisionLog(None), DecisionLog(None), DecisionLog(None)
    _run(frames, _loop(_config(), ideal, Status(), None))  # what a perfect lens would see
    _run(seen, _loop(_config(), with_lens, Status(), lens))
    _run(seen, _loop(_config(), without, Status(), None))
    (ref,), (a,), (b,) = ideal.records(), with_lens.records(), without.records()
    assert ref.extra["length_mm"] == pytest.approx(240.0, rel=0.03)
    assert ref.extra["bend_mm"] > 10.0  # a bent item (the chord at 5-95% of its length)
    for key in ("length_mm", "width_mm", "bend_mm"):
        assert a.extra[key] == pytest.approx(ref.extra[key], abs=2.0), key
    assert abs(b.extra["length_mm"] - 240.0) > abs(a.extra["length_mm"] - 240.0)


def _marker_frame(side_px: float, marker_id: int = 3) -> np.ndarray:
    """An orange belt with a 5x5 ArUco marker (black square `side_px` wide, in a white
    border) 40 px from the frame's corner, rendered at 4x and averaged down."""
    d = cv2.aruco.getPredefinedDictionary(cv2.aruco.DICT_5X5_100)
    big = cv2.aruco.generateImageMarker(d, marker_id, 700)  # 7 cells of 100 px
    padded = cv2.copyMakeBorder(big, 100, 100, 100, 100, cv2.BORDER_CONSTANT, value=255)
    k, off = 4, 40.0
    s = k * side_px / 700.0
    M = np.array([[s, 0, k * off - 100 * s], [0, s, k * off - 100 * s]])
    size = (640 * k, 480 * k)
    warped = cv2.warpAffine(padded, M, size, flags=cv2.INTER_LINEAR, borderValue=0)
    mask = cv2.warpAffine(np.full_like(padded, 255), M, size, flags=cv2.INTER_LINEAR)
    belt = np.zeros((480 * k, 640 * k, 3), np.float32)
    belt[:] = BELT_RGB
    a = (mask.astype(np.float32) / 255.0)[..., None]
    out = a * np.repeat(warped[..., None], 3, axis=2).astype(np.float32) + (1 - a) * belt
    small = cv2.resize(out, (640, 480), interpolation=cv2.INTER_AREA)
    return np.clip(small + 0.5, 0, 255).astype(np.uint8)


def test_scale_marker_measures_the_camera_scale() -> None:
    marker = ScaleMarker("DICT_5X5_100", 3, 50.0)
    assert marker.px_per_mm(_marker_frame(100.0)) == pytest.approx(2.0, rel=0.003)
    assert marker.px_per_mm(_marker_frame(103.0)) == pytest.approx(2.06, rel=0.003)
    assert ScaleMarker("DICT_5X5_100", 4, 50.0).px_per_mm(_marker_frame(100.0)) is None


def test_a_bumped_camera_raises_the_scale_drift_alarm() -> None:
    config = _config(
        **{
            "belt.px_per_mm": 2.0,
            "camera.scale_marker": "DICT_5X5_100",
            "camera.scale_marker_id": 3,
            "camera.scale_marker_mm": 50.0,
            "camera.scale_check_s": 1.0,
        }
    )
    status = Status()
    loop = _loop(config, DecisionLog(None), status, None)
    steady, bumped = _marker_frame(100.0), _marker_frame(101.5)  # 1.5% larger
    for i in range(45):  # 1.5 s at the calibrated scale: two checks, no alarm
        loop.process(Frame(i, i / 30.0, steady), 0.0)
    snap = status.snapshot()
    assert not snap["alarms"] and abs(snap["scale"]["drift"]) < 0.003
    for i in range(45, 90):  # then the camera is bumped
        loop.process(Frame(i, i / 30.0, bumped), 0.0)
    kinds = [a["kind"] for a in status.snapshot()["alarms"]]
    assert kinds == ["scale_drift"]
    text = generate_latest(status.registry).decode()
    line = next(ln for ln in text.splitlines() if ln.startswith("sorter_scale_drift "))
    assert float(line.split()[1]) == pytest.approx(0.015, abs=0.003)
    blank = np.zeros_like(steady)
    blank[:] = BELT_RGB
    for i in range(90, 135):  # the marker covered: said, not guessed
        loop.process(Frame(i, i / 30.0, blank), 0.0)
    assert "scale_marker" in [a["kind"] for a in status.snapshot()["alarms"]]


def test_a_bad_marker_dictionary_is_one_line() -> None:
    config = _config(**{"camera.scale_marker": "DICT_BOGUS"})
    with pytest.raises(Exception, match=r"camera\.scale_marker: unknown ArUco dictionary"):
        make_scale_marker(config)


def test_size_is_none_without_refined_views() -> None:
    from sorter.perception.sizes import item_size

    assert item_size([], 0.5) is None
    assert not math.isnan(0.0)
