"""When each decided item reaches its gate, and the SORT command that fires it.

Times here are on two timelines:
- the *source* timeline: each frame's `t` (monotonic capture time for a camera, index/fps
  in replay); the decision log records `t_line` and `fire_at` on it;
- the *host* timeline: the link's clock (`firmware_bridge.clock`), which the link maps to
  controller microseconds with SYNC. `Timeline` converts between the two (a camera's frames
  are already on the host clock: offset 0; a realtime replay starts the video at a host time).

Fire time = t_line + distance_mm / speed_mm_s + the gate's offset_ms. With an encoder
(belt.encoder_ticks_per_mm) and a link that maps time to belt position, the SORT is sent
in POSITION mode instead: position at t_line + distance_mm * ticks_per_mm. A command whose fire
time is less than the safety margin ahead of the clock now is NOT sent: the item is logged
`late` and rides to the reject lane, never fired late in silence.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from firmware_bridge.command import Fate
from firmware_bridge.errors import BridgeError
from sorter.actuation.link import ClockLike, PositionLink, SortLink
from sorter.config import Config

log = logging.getLogger(__name__)


def travel_s(config: Config, gate: int) -> float:
    """Seconds from the decision line to `gate`: distance / belt speed + its offset_ms."""
    g = config.gates[str(gate)]
    return g.distance_mm / config.belt.speed_mm_s + g.offset_ms / 1000.0


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

    def travel_s(self, gate: int) -> float:
        """Seconds from the decision line to `gate` (its calibration offset included)."""
        return travel_s(self.config, gate)

    def fire_time(self, gate: int, t_line: float) -> float:
        """When an item that crossed the line at `t_line` reaches `gate` (source timeline)."""
        return t_line + self.travel_s(gate)

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
            log.warning(
                "item %d: gate %d fire time is %.1f ms ahead, under the %.0f ms margin: "
                "not sent (late)",
                item,
                gate,
                ahead * 1000.0,
                self.margin_s * 1000.0,
            )
            return Scheduled(item, gate, fire_at, Fate.LATE)
        assert self.link is not None
        try:
            target = self.position_target(gate, t_line)
            if target is not None:
                cmd = self.link.sort(item, gate, position=target[0], window_ticks=target[1])
            else:
                cmd = self.link.sort(item, gate, fire_at=fire_host, window_s=self.window_s)
        except BridgeError as err:  # link lost or not synced: the item rides to reject
            log.error("item %d: SORT not sent: %s", item, err)
            return Scheduled(item, gate, fire_at, Fate.TIMEOUT)
        if on_done is not None:
            cmd.add_done_callback(on_done)
        return Scheduled(item, gate, fire_at, Fate.PENDING, cmd)
