"""The belt's position against the controller's clock, for POSITION-mode SORTs.

Every SYNC reply carries the controller's time and its encoder count taken at the same
instant (`SyncReply.time`, `.position`), so the pairs need no round-trip correction.
`PositionEstimator` keeps the pairs of the last `window_s`, unwraps the u32 microsecond
clock and the i32 count, and fits position = a + b * time by least squares (b: the belt's
speed in ticks per us); `at(ctrl_us)` extrapolates to any controller time. The link maps a
host time to controller time (`SyncEstimator`) and then to a belt position
(`ControllerLink.position_at`), which is what the sorter's scheduler needs to send a SORT
in POSITION mode: the gate fires when the belt has moved the gate's distance, however the
belt's speed changes.
"""

from __future__ import annotations

from collections import deque

from firmware_bridge import protocol as p


class PositionEstimator:
    """(controller time, belt position) pairs -> position at any controller time."""

    def __init__(self, window_s: float = 2.0, min_samples: int = 2) -> None:
        self.window_us = window_s * 1e6
        self.min_samples = min_samples
        self._pairs: deque[tuple[float, float]] = deque()  # unwrapped (us, ticks)
        self._last_raw: tuple[int, int] | None = None

    def reset(self) -> None:
        """Forget every pair (a controller reset starts its clock and count again)."""
        self._pairs.clear()
        self._last_raw = None

    def add(self, ctrl_us: int, position: int) -> None:
        """One pair from a SYNC reply."""
        if self._last_raw is None or not self._pairs:
            t, x = float(ctrl_us), float(position)
        else:
            t0, x0 = self._pairs[-1]
            t = t0 + p.time_diff(ctrl_us & 0xFFFFFFFF, self._last_raw[0])
            x = x0 + p.time_diff(position & 0xFFFFFFFF, self._last_raw[1] & 0xFFFFFFFF)
            if t <= t0:  # not newer: a reordered or repeated reply
                return
        self._last_raw = (ctrl_us & 0xFFFFFFFF, position)
        self._pairs.append((t, x))
        while len(self._pairs) > self.min_samples and self._pairs[0][0] < t - self.window_us:
            self._pairs.popleft()

    @property
    def ready(self) -> bool:
        """Enough pairs, over some time, to extrapolate."""
        return len(self._pairs) >= self.min_samples and self._pairs[-1][0] > self._pairs[0][0]

    @property
    def ticks_per_s(self) -> float | None:
        """The belt's speed in encoder ticks per second, or None."""
        fit = self._fit()
        return None if fit is None else fit[1] * 1e6

    def _fit(self) -> tuple[float, float] | None:
        if not self.ready:
            return None
        n = len(self._pairs)
        mt = sum(t for t, _ in self._pairs) / n
        mx = sum(x for _, x in self._pairs) / n
        var = sum((t - mt) ** 2 for t, _ in self._pairs)
        cov = sum((t - mt) * (x - mx) for t, x in self._pairs)
        slope = cov / var
        return mx - slope * mt, slope

    def at(self, ctrl_us: int) -> float | None:
        """The belt position (ticks, unwrapped i32 scale) at controller time `ctrl_us`."""
        fit = self._fit()
        if fit is None or self._last_raw is None:
            return None
        t_last = self._pairs[-1][0]
        t = t_last + p.time_diff(ctrl_us & 0xFFFFFFFF, self._last_raw[0])
        return fit[0] + fit[1] * t
