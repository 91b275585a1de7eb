"""Following items across frames: stable ids, views per item, and the decision line.

Pure code: detections and times in, tracks out. Items ride the belt, so every item moves the
same way at (nearly) the belt speed: each track is predicted forward along the belt
direction with the belt speed estimated from all matches, and matched to the nearest
detection within a gate. The belt direction is the configured one (left-to-right, ...)
turned by the belt's measured tilt in the image (`angle_deg`, `sorter calibrate-camera`'s
[lens] belt_angle_deg): positions along the belt, speeds and the odometer are the motion
projected on that axis (a camera turned 5 degrees would otherwise read the belt 0.4% slow),
and the decision line runs across the belt, square to it, through its point on the frame's
centre line. An item entering or leaving the frame is only partly visible, so
its bounding-box centre lags; such views are matched on the edge of the item that IS
visible (its leading edge when entering, its trailing edge when leaving).

Decide-once: a track is reported in `Tracker.crossings` in exactly the update in which its
centre passes the decision line (with the crossing time interpolated), and never again.
"""

from __future__ import annotations

import logging
import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from sorter.errors import ConfigError
from sorter.fields import check_fields, rng
from sorter.perception.vision import Detection

log = logging.getLogger(__name__)

# direction -> (axis index: 0 = x, 1 = y; sign along the motion)
DIRECTIONS: dict[str, tuple[int, int]] = {
    "left-to-right": (0, 1),
    "right-to-left": (0, -1),
    "top-to-bottom": (1, 1),
    "bottom-to-top": (1, -1),
}
# The frame edge an item enters through / leaves through, per direction.
_ENTRY_EXIT = {
    "left-to-right": ("left", "right"),
    "right-to-left": ("right", "left"),
    "top-to-bottom": ("top", "bottom"),
    "bottom-to-top": ("bottom", "top"),
}


@dataclass
class TrackerConfig:
    """Following items across frames (the config file's [track])."""

    max_jump_px: float = field(default=60.0, metadata=rng(0.0, 10000.0, lo_open=True))
    """Largest distance between where a track was predicted and a detection it takes."""
    max_cross_px: float = field(default=40.0, metadata=rng(0.0, 10000.0, lo_open=True))
    """Largest sideways (across the belt) movement between two views of one item."""
    max_missed: int = field(default=5, metadata=rng(0, 1000))
    """Frames an item may go unseen before its track ends."""
    speed_smoothing: float = field(default=0.3, metadata=rng(0.0, 1.0))
    """Weight of each new observation in the running belt-speed estimate."""

    def __post_init__(self) -> None:
        check_fields(self, "track")


@dataclass
class View:
    """One sighting of a tracked item."""

    frame_index: int
    """Index of the frame it was seen in (-1 when not given)."""
    t: float
    """Time of that frame (seconds)."""
    detection: Detection
    """Where it was."""
    data: Any = None
    """Free slot for the caller (the pipeline keeps the crop here)."""

    @property
    def full(self) -> bool:
        """True when the item was entirely in the frame (only full views are graded)."""
        return not self.detection.touches_edge


@dataclass
class Track:
    """One item followed across frames."""

    id: int
    """Stable id, unique for the tracker's life, from 1."""
    views: list[View] = field(default_factory=list)
    """Every sighting, oldest first."""
    missed: int = 0
    """Consecutive updates without a sighting."""
    t_line: float | None = None
    """When the centre crossed the decision line (interpolated), once it has."""
    ended: bool = False
    """True once the tracker has given up on it (left the frame or lost)."""

    @property
    def last(self) -> View:
        """The latest sighting."""
        return self.views[-1]

    @property
    def positions(self) -> list[tuple[float, float, float]]:
        """(t, cx, cy) for every sighting."""
        return [(v.t, v.detection.cx, v.detection.cy) for v in self.views]

    @property
    def full_views(self) -> list[View]:
        """Sightings with the whole item in frame."""
        return [v for v in self.views if v.full]

    def crossed(self, line: float, direction: str = "left-to-right") -> bool:
        """True when the latest sighting's centre is at or past `line` along `direction`."""
        axis, sign = DIRECTIONS[direction]
        d = self.last.detection
        c = d.cx if axis == 0 else d.cy
        return sign * (c - line) >= 0


def belt_axis(direction: str, angle_deg: float = 0.0) -> tuple[float, float]:
    """Unit vector of the belt's motion in the image (x right, y down): the direction's
    image axis turned by the belt's tilt, `angle_deg` (the belt direction's angle from the
    image x axis as measured) reduced to within 45 degrees of that axis (a measured angle
    may be of the motion, 180 degrees from it, or of a board's axis across the belt)."""
    axis, sign = DIRECTIONS[direction]
    nominal = 90.0 * axis
    tilt = math.radians((angle_deg - nominal + 45.0) % 90.0 - 45.0)
    ux, uy = (float(sign), 0.0) if axis == 0 else (0.0, float(sign))
    c, s = math.cos(tilt), math.sin(tilt)
    return c * ux - s * uy, s * ux + c * uy


class Tracker:
    """Assigns detections to tracks frame by frame; see the module docstring.

    `frame_size` (width, height) places the default decision line at the frame centre and
    lets partial views be recognised. The belt's geometry (from the config's [belt]):
    `direction` of travel in the frame (left-to-right, right-to-left, top-to-bottom,
    bottom-to-top) and the belt's measured angle in the image, `angle_deg` (0: along the
    image axis); the decision `line` in pixels along the image axis (None: the centre),
    the line across the belt through that point of the frame's centre line; the expected
    belt speed `speed_px_s` (None: learned from the matches).
    """

    def __init__(
        self,
        config: TrackerConfig | None = None,
        frame_size: tuple[int, int] = (640, 480),
        *,
        direction: str = "left-to-right",
        line: float | None = None,
        speed_px_s: float | None = None,
        angle_deg: float = 0.0,
    ) -> None:
        if direction not in DIRECTIONS:
            raise ConfigError(
                f"belt direction {direction!r} unknown; use one of {', '.join(DIRECTIONS)}"
            )
        self.config = config or TrackerConfig()
        self.frame_size = frame_size
        self.direction = direction
        self.axis, self.sign = DIRECTIONS[direction]
        self.entry_edge, self.exit_edge = _ENTRY_EXIT[direction]
        extent = frame_size[self.axis]
        self.line = float(line) if line is not None else extent / 2
        self.e = belt_axis(direction, angle_deg)
        """Unit vector of the belt's motion in the image."""
        mid = frame_size[1 - self.axis] / 2
        self.line_u = self.along(*((self.line, mid) if self.axis == 0 else (mid, self.line)))
        """The decision line's position along the belt (px)."""
        self.speed_px_s: float | None = speed_px_s
        """Current belt speed estimate along the direction (px/s, positive)."""
        self.travel_px = 0.0
        """How far the belt has moved since the first update (px along the direction): the
        median velocity of the items matched in each update times the time since the one
        before (the speed estimate while nothing is matched). Differences of it are the
        belt's own odometer (gates timed by the measured belt, sorter.actuation.scheduling)."""
        self.active: list[Track] = []
        """Tracks still being followed."""
        self.crossings: list[Track] = []
        """Tracks whose centre crossed the decision line in the latest update (once each)."""
        self.ended: list[Track] = []
        """Tracks ended in the latest update."""
        self._next_id = 1
        self._last_t: float | None = None

    # --- geometry along the belt (u grows in the direction of motion) ---
    def along(self, x: float, y: float) -> float:
        """A point's position along the belt's motion (px)."""
        return self.e[0] * x + self.e[1] * y

    def _u(self, d: Detection, anchor: str) -> float:
        if anchor == "centre":
            return self.along(d.cx, d.cy)
        # the box's extreme along the motion: its lead (or trail) corner
        ex, ey = self.e
        xs = (d.x + d.w, d.x) if ex >= 0 else (d.x, d.x + d.w)
        ys = (d.y + d.h, d.y) if ey >= 0 else (d.y, d.y + d.h)
        k = 0 if anchor == "lead" else 1
        return ex * xs[k] + ey * ys[k]

    def _across(self, d: Detection) -> float:
        return self.e[0] * d.cy - self.e[1] * d.cx

    def _anchor(self, a: Detection, b: Detection) -> str:
        """Which part of the item to compare two views by (the part both see whole)."""
        if self.entry_edge in a.edges or self.entry_edge in b.edges:
            return "lead"
        if self.exit_edge in a.edges or self.exit_edge in b.edges:
            return "trail"
        return "centre"

    def update(self, detections: list[Detection], t: float, frame_index: int = -1) -> list[Track]:
        """Take one frame's detections at time `t`; return the active tracks.

        Afterwards `crossings` lists the tracks that crossed the decision line in this
        update and `ended` the tracks given up on.
        """
        dt = 0.0 if self._last_t is None else max(0.0, t - self._last_t)
        self._last_t = t
        self.crossings = []
        self.ended = []
        cfg = self.config
        speed = self.speed_px_s or 0.0
        jump = cfg.max_jump_px if self.speed_px_s else max(cfg.max_jump_px, 2 * cfg.max_jump_px)

        # Candidate pairs (cost, track index, detection index), cheapest matched first.
        pairs: list[tuple[float, int, int]] = []
        for ti, track in enumerate(self.active):
            prev = track.last.detection
            gap = t - track.last.t
            for di, det in enumerate(detections):
                anchor = self._anchor(prev, det)
                predicted = self._u(prev, anchor) + speed * gap
                along = self._u(det, anchor) - predicted
                across = abs(self._across(det) - self._across(prev))
                if abs(along) <= jump and across <= cfg.max_cross_px:
                    pairs.append((abs(along) + across, ti, di))
        pairs.sort()
        taken_t: set[int] = set()
        taken_d: set[int] = set()
        observed: list[float] = []
        for _, ti, di in pairs:
            if ti in taken_t or di in taken_d:
                continue
            taken_t.add(ti)
            taken_d.add(di)
            track = self.active[ti]
            prev_view = track.last
            det = detections[di]
            gap = t - prev_view.t
            if gap > 0:
                anchor = self._anchor(prev_view.detection, det)
                observed.append((self._u(det, anchor) - self._u(prev_view.detection, anchor)) / gap)
            track.views.append(View(frame_index, t, det))
            track.missed = 0
            self._check_crossing(track, prev_view)

        if observed and dt > 0:
            obs = statistics.median(observed)  # the mean of the middle two for an even count
            self.travel_px += obs * dt
            if obs > 0:
                a = cfg.speed_smoothing
                self.speed_px_s = (
                    obs if self.speed_px_s is None else (1 - a) * self.speed_px_s + a * obs
                )

        elif dt > 0:
            self.travel_px += (self.speed_px_s or 0.0) * dt

        still: list[Track] = []
        for ti, track in enumerate(self.active):
            if ti not in taken_t:
                track.missed += 1
                if track.missed > cfg.max_missed or self._gone(track, t):
                    track.ended = True
                    self.ended.append(track)
                    continue
            still.append(track)
        for di, det in enumerate(detections):
            if di not in taken_d:
                track = Track(id=self._next_id, views=[View(frame_index, t, det)])
                self._next_id += 1
                still.append(track)
                log.debug("track %d starts at (%.0f, %.0f) t=%.3f", track.id, det.cx, det.cy, t)
        self.active = still
        return list(self.active)

    def _gone(self, track: Track, t: float) -> bool:
        """Predicted to have left the frame entirely (its box moved along the belt past the
        exit edge)."""
        d = track.last.detection
        lo = d.x if self.axis == 0 else d.y
        trail = lo if self.sign > 0 else lo + (d.w if self.axis == 0 else d.h)
        moved = (self.speed_px_s or 0.0) * (t - track.last.t) * self.e[self.axis]
        exit_at = self.frame_size[self.axis] if self.sign > 0 else 0
        return self.sign * (trail + moved) > self.sign * exit_at

    def _check_crossing(self, track: Track, prev: View) -> None:
        if track.t_line is not None:
            return
        u0 = self._u(prev.detection, "centre")
        u1 = self._u(track.last.detection, "centre")
        line_u = self.line_u
        if u0 < line_u <= u1:
            frac = (line_u - u0) / (u1 - u0)
            track.t_line = prev.t + frac * (track.last.t - prev.t)
            self.crossings.append(track)

    def flush(self) -> list[Track]:
        """End every active track (end of stream); returns them."""
        ended = list(self.active)
        for track in ended:
            track.ended = True
        self.active = []
        self.ended = ended
        self.crossings = []
        return ended


class BeltTravel:
    """The belt's odometer from items' sub-pixel centres (sorter.perception.measure).

    `update(t, centres, fallback_px)` takes this frame's refined centres by track id (px
    along the belt, growing with the motion); the belt moved the median velocity of the
    items also measured in an earlier frame (within `keep_s`) times the time since the
    last update; when no item was measured twice, `fallback_px` (the caller's estimate:
    its belt speed times the time since the last update). One item followed frame after
    frame gives its exact displacement (the errors do not add up); a hand-over from one
    item to the next adds its centres' errors once.
    """

    def __init__(self, keep_s: float = 0.5) -> None:
        self.travel_px = 0.0
        """Belt travel since the first update, px."""
        self.keep_s = keep_s
        self._prev: dict[int, tuple[float, float]] = {}
        self._t: float | None = None

    def update(self, t: float, centres: dict[int, float], fallback_px: float) -> float:
        """Advance to time `t`; returns travel_px."""
        dt = 0.0 if self._t is None else t - self._t
        if dt <= 0 and self._t is not None:
            return self.travel_px
        velocities = [
            (u - self._prev[i][1]) / (t - self._prev[i][0])
            for i, u in centres.items()
            if i in self._prev and t > self._prev[i][0]
        ]
        if velocities:
            self.travel_px += statistics.median(velocities) * dt
        else:
            self.travel_px += fallback_px
        self._t = t
        self._prev.update({i: (t, u) for i, u in centres.items()})
        self._prev = {i: p for i, p in self._prev.items() if p[0] >= t - self.keep_s}
        return self.travel_px
