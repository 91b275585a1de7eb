"""When each decided item reaches its gate, and the SORT command that fires it.

Times here are on two timelines:
- the *source* timeline: each frame's `t` (monotonic capture time for a camera, index/fps
  in replay); the decision log records `t_line` and `fire_at` on it;
- the *host* timeline: the link's clock (`firmware_bridge.clock`), which the link maps to
  controller microseconds with SYNC. `Timeline` converts between the two (a camera's frames
  are already on the host clock: offset 0; a realtime replay starts the video at a host time).

Fire time = t_line + distance_mm / speed_mm_s + the gate's offset_ms (`[belt] timing =
"configured"`). With `timing = "measured"` the belt itself times the gates: the loop feeds
the tracker's belt odometer every frame (`observe_travel`: the matched items' median
velocity integrated, `Tracker.travel_px`), a `BeltOdometer` fits the belt's position and
speed to the latest readings, an item's gate is `distance_mm` of travel past where the
belt was when it crossed the line, and its SORT is held back (`tick`) until its predicted
arrival is `send_ahead_ms` away, so a belt that slows down or speeds up after the item
was decided is still followed; the record's `fire_at` is the estimate at decision time,
the command carries the final one. With an encoder
(belt.encoder_ticks_per_mm) and a link that maps time to belt position, the SORT is sent
in POSITION mode instead: position at t_line + distance_mm * ticks_per_mm. A command whose fire
time is less than the safety margin ahead of the clock now is NOT sent: the item is logged
`late` and rides to the reject lane, never fired late in silence.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from firmware_bridge.command import Fate
from firmware_bridge.errors import BridgeError
from sorter.actuation.link import ClockLike, PositionLink, SortLink
from sorter.config import Config

log = logging.getLogger(__name__)


def travel_s(config: Config, gate: int) -> float:
    """Seconds from the decision line to `gate`: distance / belt speed + its offset_ms."""
    g = config.gates[str(gate)]
    return g.distance_mm / config.belt.speed_mm_s + g.offset_ms / 1000.0


class BeltOdometer:
    """Belt travel in mm on the source timeline, from the tracker's odometer readings.

    `observe(t, travel_mm)` takes one reading a frame; the belt's speed is the slope at the
    latest reading of a least-squares parabola (constant acceleration) through the readings
    of the last `window_s` (a straight line's slope is the speed half a window earlier: on
    a belt slowing 20% in a second that fired gates up to 6 ms off), its position at any
    time the latest reading extrapolated at that speed (the reading itself is sub-pixel;
    a fitted position would lag a belt that speeds up or slows down); before any reading,
    the configured speed from t = 0."""

    def __init__(self, speed_mm_s: float, window_s: float = 0.3) -> None:
        self.speed_mm_s = speed_mm_s
        """The belt speed: the configured one until measured, then the latest fit's slope."""
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque()
        self._fit: tuple[float, float] | None = None  # (t, reading) of the latest reading

    def observe(self, t: float, travel_mm: float) -> None:
        """The odometer read `travel_mm` at time `t` (times increasing)."""
        q = self._samples
        if q and t <= q[-1][0]:
            return
        q.append((t, travel_mm))
        while len(q) > 2 and q[0][0] < t - self.window_s:
            q.popleft()
        if len(q) < 3 or q[-1][0] - q[0][0] < self.window_s / 3:
            self._fit = (t, travel_mm)
            return
        ts = np.array([p[0] for p in q]) - t
        xs = np.array([p[1] for p in q])
        # The speed now: the slope at t of a line fitted with a constant acceleration (a
        # straight line's slope is the speed half a window ago: it lags a ramp).
        slope = float(np.polyfit(ts, xs, 2)[1]) if len(q) >= 5 else float(np.polyfit(ts, xs, 1)[0])
        if slope > 0:
            self.speed_mm_s = slope
        self._fit = (t, travel_mm)

    def at(self, t: float) -> float:
        """Belt travel at time `t`."""
        if self._fit is None:
            return self.speed_mm_s * t
        t_ref, pos = self._fit
        return pos + self.speed_mm_s * (t - t_ref)

    def arrival(self, target_mm: float, t_now: float) -> float:
        """When the belt will have travelled to `target_mm`, seen from `t_now`."""
        return t_now + (target_mm - self.at(t_now)) / self.speed_mm_s


@dataclass
class _Held:
    """A SORT held back until its item is send_ahead_ms from its gate (timing measured)."""

    item: int
    gate: int
    target_mm: float
    """Belt travel at which the item reaches the gate."""
    offset_s: float
    """The gate's offset_ms, in s."""
    on_done: Callable[[Any], None] | None


@dataclass
class NotSent:
    """The fate of a held SORT that could not be sent in time (what on_done receives)."""

    status: Fate
    fired_at: float | None = None
    fire_at: float | None = None


@dataclass
class Timeline:
    """Maps the source timeline onto the host clock: host = source + offset."""

    offset: float = 0.0
    """Seconds to add to a source time to get the host clock time."""

    def to_host(self, t_source: float) -> float:
        """A source-timeline time on the host clock."""
        return t_source + self.offset

    def to_source(self, t_host: float) -> float:
        """A host-clock time on the source timeline."""
        return t_host - self.offset


@dataclass
class Scheduled:
    """What the scheduler did with one item."""

    item: int
    """The item (track) id, also the SORT item number."""
    gate: int | None
    """The gate commanded, or None when no gate fires."""
    fire_at: float | None
    """Ideal fire time on the source timeline, or None."""
    status: Fate
    """PENDING (sent, fate to come), LATE (not sent: too late), TIMEOUT (the link could not
    take it), DRY_RUN or REJECTED (no gate)."""
    command: Any | None = None
    """The link's Command when a SORT was sent."""


class Scheduler:
    """Turns decisions into SORT commands on a link (or into dry-run records)."""

    def __init__(
        self,
        config: Config,
        clock: ClockLike,
        link: SortLink | None,
        *,
        timeline: Timeline | None = None,
        dry_run: bool = False,
    ) -> None:
        self.config = config
        self.clock = clock
        self.link = link
        self.timeline = timeline or Timeline()
        self.dry_run = dry_run or link is None
        self.margin_s = config.serial.safety_margin_ms / 1000.0
        self.window_s = config.serial.window_ms / 1000.0
        self._warned_position = False
        self.measured = config.belt.timing == "measured"
        """Gates timed from the measured belt speed (`observe_speed`, `tick`)."""
        self.ahead_s = config.belt.send_ahead_ms / 1000.0
        self.odometer = BeltOdometer(config.belt.speed_mm_s)
        """Belt travel from the measured speed (configured speed until one is measured)."""
        self.held: list[_Held] = []
        """SORTs held back until their item nears its gate (timing measured)."""
        self.last_fire_host: float | None = None
        """Host time of the latest fire time commanded (for waiting at the end of a run)."""

    def travel_s(self, gate: int) -> float:
        """Seconds from the decision line to `gate` (its calibration offset included)."""
        return travel_s(self.config, gate)

    def fire_time(self, gate: int, t_line: float) -> float:
        """When an item that crossed the line at `t_line` reaches `gate` (source timeline):
        from the configured speed, or (timing measured) from the belt travel so far and the
        latest measured speed."""
        if not self.measured:
            return t_line + self.travel_s(gate)
        target, offset = self._target_mm(gate, t_line)
        return self.odometer.arrival(target, t_line) + offset

    def _target_mm(self, gate: int, t_line: float) -> tuple[float, float]:
        g = self.config.gates[str(gate)]
        return self.odometer.at(t_line) + g.distance_mm, g.offset_ms / 1000.0

    def observe_travel(self, t: float, travel_mm: float) -> None:
        """The tracker's belt odometer at source time `t`, in mm (the loop, every frame)."""
        self.odometer.observe(t, travel_mm)

    def position_target(self, gate: int, t_line: float) -> tuple[int, int] | None:
        """(target ticks, window ticks) for POSITION mode, or None to schedule by time.

        Needs an encoder (belt.encoder_ticks_per_mm > 0) and a link that maps a host time
        to the belt position (`position_at(t_host) -> ticks`). The late check above still
        uses the time estimate from the belt speed.
        """
        ticks_per_mm = self.config.belt.encoder_ticks_per_mm
        if ticks_per_mm <= 0 or self.link is None:
            return None
        if not isinstance(self.link, PositionLink):
            if not self._warned_position:
                self._warned_position = True
                log.warning(
                    "belt.encoder_ticks_per_mm is set but this link cannot map time to belt "
                    "position; gates are timed from belt.speed_mm_s"
                )
            return None
        g = self.config.gates[str(gate)]
        speed_ticks_s = self.config.belt.speed_mm_s * ticks_per_mm
        line_pos = float(self.link.position_at(self.timeline.to_host(t_line)))
        target = line_pos + g.distance_mm * ticks_per_mm + g.offset_ms / 1000.0 * speed_ticks_s
        return round(target), max(1, round(self.window_s * speed_ticks_s))

    def schedule(
        self,
        item: int,
        gate: int | None,
        t_line: float,
        on_done: Callable[[Any], None] | None = None,
    ) -> Scheduled:
        """Send (or not) the SORT for one decided item; never blocks on the controller.

        `on_done(command)` is called from the link's thread when the command's fate is known.
        """
        if gate is None:
            return Scheduled(item, None, None, Fate.REJECTED)
        fire_at = self.fire_time(gate, t_line)
        if self.dry_run:
            return Scheduled(item, gate, fire_at, Fate.DRY_RUN)
        fire_host = self.timeline.to_host(fire_at)
        ahead = fire_host - self.clock.now()
        if ahead < self.margin_s:
            self._log_late(item, gate, ahead)
            return Scheduled(item, gate, fire_at, Fate.LATE)
        if self.measured and self._by_time() and ahead > self.ahead_s:
            target, offset = self._target_mm(gate, t_line)
            self.held.append(_Held(item, gate, target, offset, on_done))
            return Scheduled(item, gate, fire_at, Fate.PENDING)
        return self._send(item, gate, t_line, fire_at, on_done)

    def _by_time(self) -> bool:
        """True when SORTs go out by time (no encoder, or a link without positions)."""
        no_encoder = self.config.belt.encoder_ticks_per_mm <= 0
        return no_encoder or not isinstance(self.link, PositionLink)

    def _log_late(self, item: int, gate: int, ahead: float) -> None:
        log.warning(
            "item %d: gate %d fire time is %.1f ms ahead, under the %.0f ms margin: "
            "not sent (late)",
            item,
            gate,
            ahead * 1000.0,
            self.margin_s * 1000.0,
        )

    def _send(
        self,
        item: int,
        gate: int,
        t_line: float,
        fire_at: float,
        on_done: Callable[[Any], None] | None,
    ) -> Scheduled:
        """Send the SORT (by position with an encoder, else by time) now."""
        assert self.link is not None
        fire_host = self.timeline.to_host(fire_at)
        try:
            target = self.position_target(gate, t_line)
            if target is not None:
                cmd = self.link.sort(item, gate, position=target[0], window_ticks=target[1])
            else:
                cmd = self.link.sort(item, gate, fire_at=fire_host, window_s=self.window_s)
        except BridgeError as err:  # link lost or not synced: the item rides to reject
            log.error("item %d: SORT not sent: %s", item, err)
            return Scheduled(item, gate, fire_at, Fate.TIMEOUT)
        last = self.last_fire_host
        self.last_fire_host = fire_host if last is None else max(last, fire_host)
        if on_done is not None:
            cmd.add_done_callback(on_done)
        return Scheduled(item, gate, fire_at, Fate.PENDING, cmd)

    def tick(self, t: float) -> None:
        """Send each held SORT whose item is now send_ahead_ms or less from its gate, from
        the belt travel and speed measured up to source time `t` (the loop, every frame)."""
        if not self.held:
            return
        now = self.clock.now()
        keep: list[_Held] = []
        for held in self.held:
            fire_at = self.odometer.arrival(held.target_mm, t) + held.offset_s
            ahead = self.timeline.to_host(fire_at) - now
            if ahead > self.ahead_s:
                keep.append(held)
            else:
                self._release(held, fire_at, ahead)
        self.held = keep

    def release_all(self) -> None:
        """Send every held SORT now, at the latest measured speed (the end of a stream: no
        more speed will be measured)."""
        t = self.timeline.to_source(self.clock.now())
        now = self.clock.now()
        held, self.held = self.held, []
        for h in held:
            fire_at = self.odometer.arrival(h.target_mm, t) + h.offset_s
            self._release(h, fire_at, self.timeline.to_host(fire_at) - now)

    def _release(self, held: _Held, fire_at: float, ahead: float) -> None:
        if ahead < self.margin_s:  # the belt sped up more than a frame could tell
            self._log_late(held.item, held.gate, ahead)
            if held.on_done is not None:
                held.on_done(NotSent(Fate.LATE, fire_at=fire_at))
            return
        sent = self._send(held.item, held.gate, 0.0, fire_at, held.on_done)
        if sent.status != Fate.PENDING and held.on_done is not None:
            held.on_done(NotSent(sent.status, fire_at=fire_at))
