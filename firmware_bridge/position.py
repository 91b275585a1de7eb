"""The belt's position against the controller's clock, for POSITION-mode SORTs.

Every SYNC reply and every STATUS carries the controller's time and its encoder count
taken at the same instant (`SyncReply.time`, `.position`), so the pairs need no
round-trip correction; with an encoder the link asks for one every
`LinkOptions.position_interval_s` (50 ms). `PositionEstimator` keeps the pairs of the
last `window_s`, unwraps the u32 microsecond clock and the i32 count, and answers
`at(ctrl_us)`: between two pairs, the straight line through them (a belt that slows or
speeds up is followed pair by pair: a 20% change over a second bends the position by
under a tick between pairs 50 ms apart); after the newest,
the newest pair moved on at the speed of the last `slope_s` (least squares, so whole-tick
counts do not make it jumpy). It will not guess: more than `max_ahead_s` (0.1 s) from
every pair - past the newest, or in a gap in the replies - or without pairs spanning
40 ms to take a speed from, it answers None, and the link raises `LinkError` (the
scheduler then sends nothing: the item rides to the reject lane). The link maps a host
time to controller time (`SyncEstimator`) and then to a belt position
(`ControllerLink.position_at`), which is what the sorter's scheduler needs to send a SORT
in POSITION mode: the gate fires when the belt has moved the gate's distance, however the
belt's speed changes.

The first version fitted one line through the pairs of the last two seconds, which came
only from the clock's SYNCs and STATUS (one every 1-2 s): through a slow-down of 20% that
took 18 of 40 gates out of their windows on the firmware's host build
(tests/test_position_firmware.py, which also shows the fix).
"""

from __future__ import annotations

import bisect
import threading

from firmware_bridge import protocol as p

JUMP_BACK_US = 500_000.0
"""A pair this much older than the newest is a controller clock that jumped back (reset,
or QEMU losing a Timer1 overflow): the pairs start over from it. Less is a reordered
reply, dropped."""
MIN_SLOPE_SPAN_US = 40_000.0
"""Pairs must span this much time for a speed to extrapolate with (a tick's rounding over
40 ms at 2000 ticks/s is 1.25%)."""


class PositionEstimator:
    """(controller time, belt position) pairs -> position at any controller time."""

    def __init__(
        self,
        window_s: float = 2.0,
        min_samples: int = 2,
        slope_s: float = 0.2,
        max_ahead_s: float = 0.1,
    ) -> None:
        self.window_us = window_s * 1e6
        self.min_samples = min_samples
        self.slope_us = slope_s * 1e6
        self.max_ahead_us = max_ahead_s * 1e6
        """`at` answers None this far past the newest pair: the controller has not said
        where the belt is for too long (a stalled line) and a belt that changed speed
        meanwhile would put the gate off by the change times the gap."""
        self._t: list[float] = []  # unwrapped us, increasing
        self._x: list[float] = []  # unwrapped ticks
        self._last_raw: tuple[int, int] | None = None
        self._lock = threading.Lock()

    def reset(self) -> None:
        """Forget every pair (a controller reset starts its clock and count again)."""
        with self._lock:
            self._t.clear()
            self._x.clear()
            self._last_raw = None

    def add(self, ctrl_us: int, position: int) -> None:
        """One (time, position) pair from a SYNC reply or a STATUS."""
        with self._lock:
            if self._last_raw is None or not self._t:
                t, x = float(ctrl_us), float(position)
            else:
                t = self._t[-1] + p.time_diff(ctrl_us & 0xFFFFFFFF, self._last_raw[0])
                x = self._x[-1] + p.time_diff(position & 0xFFFFFFFF, self._last_raw[1] & 0xFFFFFFFF)
                if t < self._t[-1] - JUMP_BACK_US:  # a clock that jumped back: start over
                    self._t.clear()
                    self._x.clear()
                    t, x = float(ctrl_us), float(position)
                elif t <= self._t[-1]:  # not newer: a reordered or repeated reply
                    return
            self._last_raw = (ctrl_us & 0xFFFFFFFF, position)
            self._t.append(t)
            self._x.append(x)
            drop = 0
            while len(self._t) - drop > self.min_samples and self._t[drop] < t - self.window_us:
                drop += 1
            if drop:
                del self._t[:drop], self._x[:drop]

    @property
    def samples(self) -> int:
        """Pairs kept (the last `window_s`)."""
        with self._lock:
            return len(self._t)

    @property
    def ready(self) -> bool:
        """Enough pairs, over some time, to extrapolate."""
        with self._lock:
            return self._ready()

    def _ready(self) -> bool:
        return len(self._t) >= self.min_samples and self._t[-1] > self._t[0]

    @property
    def ticks_per_s(self) -> float | None:
        """The belt's speed now (the last `slope_s`) in encoder ticks per second, or None."""
        with self._lock:
            if not self._ready():
                return None
            slope = self._slope(len(self._t) - 1, -1)
            return None if slope is None else slope * 1e6

    def _slope(self, end: int, direction: int) -> float | None:
        """Least-squares ticks/us of the pairs within slope_s of pair `end`, taken towards
        the older pairs (direction -1) or the newer (+1); None unless they span at least
        MIN_SLOPE_SPAN_US (pairs closer than that, or far apart, give no speed worth
        extrapolating with)."""
        t_end = self._t[end]
        k = end
        while (
            0 <= k + direction < len(self._t)
            and abs(self._t[k + direction] - t_end) <= self.slope_us
        ):
            k += direction
        lo, hi = min(k, end), max(k, end)
        if self._t[hi] - self._t[lo] < MIN_SLOPE_SPAN_US:
            return None
        ts, xs = self._t[lo : hi + 1], self._x[lo : hi + 1]
        mt = sum(ts) / len(ts)
        mx = sum(xs) / len(xs)
        var = sum((t - mt) ** 2 for t in ts)
        cov = sum((t - mt) * (x - mx) for t, x in zip(ts, xs, strict=True))
        return cov / var

    def _from(self, i: int, direction: int, t: float) -> float | None:
        """Pair i moved to time t at the speed of its neighbours towards `direction`."""
        slope = self._slope(i, direction)
        return None if slope is None else self._x[i] + slope * (t - self._t[i])

    def ahead_us(self, ctrl_us: int) -> float | None:
        """How far controller time `ctrl_us` is past the newest pair (us), or None."""
        with self._lock:
            if self._last_raw is None:
                return None
            return float(p.time_diff(ctrl_us & 0xFFFFFFFF, self._last_raw[0]))

    def at(self, ctrl_us: int) -> float | None:
        """The belt position (ticks, unwrapped i32 scale) at controller time `ctrl_us`;
        None before two pairs or more than `max_ahead_s` from every pair (past the
        newest, or in a gap between replies)."""
        with self._lock:
            if not self._ready() or self._last_raw is None:
                return None
            t = self._t[-1] + p.time_diff(ctrl_us & 0xFFFFFFFF, self._last_raw[0])
            if t - self._t[-1] > self.max_ahead_us:
                return None
            if t >= self._t[-1]:
                return self._from(len(self._t) - 1, -1, t)
            if t <= self._t[0]:
                return None if self._t[0] - t > self.max_ahead_us else self._from(0, 1, t)
            i = bisect.bisect_right(self._t, t)  # _t[i-1] <= t < _t[i]
            t0, t1, x0, x1 = self._t[i - 1], self._t[i], self._x[i - 1], self._x[i]
            if t1 - t0 <= 2 * self.max_ahead_us:
                return x0 + (x1 - x0) * (t - t0) / (t1 - t0)
            # pairs far apart (a gap in the replies): only near one of them
            if t - t0 <= self.max_ahead_us:
                return self._from(i - 1, -1, t)
            if t1 - t <= self.max_ahead_us:
                return self._from(i, 1, t)
            return None
