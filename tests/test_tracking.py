"""Following items: stable ids, one crossing per item, partial views at the frame edges."""

from __future__ import annotations

import pytest

from sorter.errors import ConfigError
from sorter.perception.tracking import Tracker, TrackerConfig
from sorter.perception.vision import Detection

W, H = 640, 480


def detections_at(
    t: float, x0s: list[float], speed: float, size: int = 120, ys: list[float] | None = None
) -> list[tuple[int, Detection]]:
    """(true item index, detection) for items centred at x0 + speed * t, clipped to the frame
    the way the locator clips them (partial views have their visible box and edge flags)."""
    out = []
    for i, x0 in enumerate(x0s):
        cx = x0 + speed * t
        y = (ys or [240.0] * len(x0s))[i]
        left, right = round(cx - size / 2), round(cx + size / 2)
        if right <= 0 or left >= W:
            continue
        vl, vr = max(0, left), min(W, right)
        edges = tuple(n for n, hit in (("left", vl == 0), ("right", vr == W)) if hit)
        top = round(y - size / 2)
        det = Detection((vl + vr) / 2, y, vl, top, vr - vl, size, float((vr - vl) * size), edges)
        out.append((i, det))
    return out


def run(
    tracker: Tracker,
    x0s: list[float],
    speed: float,
    fps: float,
    frames: int,
    drop: set[tuple[int, int]] | None = None,
    ys: list[float] | None = None,
    mirror: bool = False,
) -> tuple[dict[int, set[int]], list[tuple[int, float]]]:
    """Feed the tracker; returns track id -> true items seen, and (true item, t_line) per
    crossing. `drop` holds (frame, item) detections to lose."""
    owners: dict[int, set[int]] = {}
    crossings: list[tuple[int, float]] = []
    lost = drop or set()
    for k in range(frames):
        t = k / fps
        pairs = [p for p in detections_at(t, x0s, speed, ys=ys) if (k, p[0]) not in lost]
        if mirror:  # the same scene seen moving right to left
            pairs = [(i, mirrored(d)) for i, d in pairs]
        by_det = {id(d): i for i, d in pairs}
        tracker.update([d for _, d in pairs], t, k)
        for track in tracker.active:
            if track.last.frame_index == k:
                owners.setdefault(track.id, set()).add(by_det[id(track.last.detection)])
        for track in tracker.crossings:
            assert track.t_line is not None
            crossings.append((next(iter(owners[track.id])), track.t_line))
    return owners, crossings


def mirrored(d: Detection) -> Detection:
    flip = {"left": "right", "right": "left"}
    x = W - (d.x + d.w)
    return Detection(W - d.cx, d.cy, x, d.y, d.w, d.h, d.area, tuple(flip[e] for e in d.edges))


def truth_t_line(x0: float, speed: float, line: float = W / 2) -> float:
    return (line - x0) / speed


@pytest.mark.parametrize(("speed", "spacing"), [(400.0, 160.0), (1500.0, 150.0)])
def test_each_item_one_stable_track_and_one_crossing(speed: float, spacing: float) -> None:
    """Includes 10 items/s at 640x480 (1500 px/s, 150 px spacing, 50 px per frame)."""
    x0s = [-70.0 - i * spacing for i in range(12)]
    frames = int((W + 70 + 12 * spacing) / speed * 30) + 5
    tracker = Tracker(TrackerConfig(), (W, H))
    owners, crossings = run(tracker, x0s, speed, 30.0, frames)
    assert all(len(items) == 1 for items in owners.values()), owners  # ids never swap
    assert len(owners) == 12  # one track per item, none split
    assert sorted(i for i, _ in crossings) == list(range(12))  # each crossed exactly once
    for i, t_line in crossings:
        assert t_line == pytest.approx(truth_t_line(x0s[i], speed), abs=0.002)
    assert tracker.speed_px_s == pytest.approx(speed, rel=0.02)


def test_missed_detections_do_not_split_tracks_or_duplicate_crossings() -> None:
    speed, fps = 600.0, 30.0
    x0s = [-70.0 - i * 200 for i in range(6)]
    # Lose each item in two frames, one of them the frame where it would cross the line.
    drop = set()
    for i, x0 in enumerate(x0s):
        k_line = int(truth_t_line(x0, speed) * fps) + 1
        drop |= {(k_line, i), (k_line - 5, i)}
    owners, crossings = run(Tracker(TrackerConfig(), (W, H)), x0s, speed, fps, 120, drop)
    assert len(owners) == 6 and all(len(v) == 1 for v in owners.values())
    assert sorted(i for i, _ in crossings) == list(range(6))
    for i, t_line in crossings:
        assert t_line == pytest.approx(truth_t_line(x0s[i], speed), abs=0.01)


def test_right_to_left_belt() -> None:
    speed = 500.0
    x0s = [-70.0 - i * 180 for i in range(5)]
    tracker = Tracker(TrackerConfig(), (W, H), direction="right-to-left")
    owners, crossings = run(tracker, x0s, speed, 30.0, 90, mirror=True)
    assert len(owners) == 5 and all(len(v) == 1 for v in owners.values())
    assert sorted(i for i, _ in crossings) == list(range(5))


def test_a_track_first_seen_past_the_line_is_not_reported() -> None:
    tracker = Tracker(TrackerConfig(), (W, H), speed_px_s=300.0)
    for k in range(10):
        t = k / 30
        tracker.update([Detection(400 + 10 * k, 240, 340 + 10 * k, 180, 120, 120, 14400)], t, k)
        assert tracker.crossings == []
    assert len(tracker.active) == 1 and tracker.active[0].t_line is None


def test_tracks_end_after_leaving_or_being_lost() -> None:
    tracker = Tracker(TrackerConfig(max_missed=2), (W, H), speed_px_s=300.0)
    tracker.update([Detection(100, 240, 40, 180, 120, 120, 14400)], 0.0)
    (track,) = tracker.active
    for k in range(1, 4):
        tracker.update([], k / 30)
    assert tracker.active == [] and track.ended
    assert [v.t for v in track.views] == [0.0]


def test_side_by_side_items_keep_their_ids() -> None:
    """Two items level with each other across the belt stay apart."""
    speed = 400.0
    tracker = Tracker(TrackerConfig(), (W, H))
    owners, crossings = run(tracker, [-70.0, -70.0], speed, 30.0, 60, ys=[120.0, 360.0])
    assert len(owners) == 2 and all(len(v) == 1 for v in owners.values())
    assert sorted(i for i, _ in crossings) == [0, 1]


def test_track_views_and_crossed_helper() -> None:
    tracker = Tracker(TrackerConfig(), (W, H))
    run(tracker, [-70.0], 400.0, 30.0, 40)
    (track,) = tracker.active or tracker.ended
    assert track.id == 1 and len(track.views) >= 20
    assert track.views[0].full is False and track.full_views
    assert track.crossed(320.0) and not track.crossed(639.0)
    t, cx, _ = track.positions[-1]
    assert t == track.last.t and cx == track.last.detection.cx


def test_bad_direction_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'sideways'"):
        Tracker(direction="sideways")
    with pytest.raises(ConfigError, match=r"^track\.max_jump_px: must be > 0"):
        TrackerConfig(max_jump_px=0)


def test_belt_axis_is_the_direction_turned_by_the_measured_tilt() -> None:
    import math

    from sorter.perception.tracking import belt_axis

    assert belt_axis("left-to-right") == (1.0, 0.0)
    ex, ey = belt_axis("left-to-right", 5.0)
    assert (ex, ey) == pytest.approx((math.cos(math.radians(5)), math.sin(math.radians(5))))
    # the angle of the motion, of the line (180 degrees off) or of a board's axis across it
    for measured in (185.0, -175.0, 95.0, -85.0):
        assert belt_axis("left-to-right", measured) == pytest.approx((ex, ey))
    assert belt_axis("right-to-left", 5.0) == pytest.approx((-ex, -ey))
    assert belt_axis("top-to-bottom", 95.0) == pytest.approx((-ey, ex))


def test_a_belt_at_an_angle_is_measured_along_itself() -> None:
    """Items moving 400 px/s at 6 degrees in the image: with the angle the belt speed and
    the odometer read the belt's own motion and the line is crossed square to the belt;
    read along the image's x axis they are cos(6 deg) short (0.55%)."""
    import math

    a = math.radians(6.0)
    speed, fps = 400.0, 30.0
    got = {}
    for angle in (6.0, 0.0):
        tr = Tracker(TrackerConfig(), (W, H), speed_px_s=None, angle_deg=angle)
        crossings: dict[int, float] = {}
        for k in range(60):
            t = k / fps
            s = -100.0 + speed * t  # along the belt, from the line's centre point (320, 240)
            cx, cy = 320 + s * math.cos(a), 240 + 20 + s * math.sin(a)
            det = Detection(cx, cy, round(cx - 30), round(cy - 20), 60, 40, 2400.0, ())
            tr.update([det], t, k)
            for track in tr.crossings:
                assert track.t_line is not None
                crossings[track.id] = track.t_line
        got[angle] = (tr.speed_px_s, tr.travel_px, list(crossings.values()))
    speed_a, travel_a, (t_a,) = got[6.0]
    assert speed_a == pytest.approx(speed, rel=1e-6)
    assert travel_a == pytest.approx(speed * 59 / fps, rel=1e-6)
    # square to the belt through (320, 240): the item riding 20 px below it crosses when
    # s = -20 sin(a), not at the image column x = 320
    assert t_a == pytest.approx((100.0 - 20 * math.sin(a)) / speed, abs=1e-6)
    speed_0, _, _ = got[0.0]
    assert speed_0 == pytest.approx(speed * math.cos(a), rel=1e-6)
