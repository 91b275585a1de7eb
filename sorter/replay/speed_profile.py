"""A simulated belt whose speed changes over time (`sorter simulate-belt --speed-profile`).

A profile is a piecewise-linear factor of the belt's base speed over the video's time:
`"0:1,4:1,5:0.8,8:0.8,9:1"` runs at full speed for 4 s, slows to 80% over the next second,
holds, and is back at full speed at 9 s (before the first point and after the last the
factor is held). `travel_px(t)` is the belt's travel since t = 0 (the speed integrated);
`time_at(px)` inverts it. `belt_sim` moves items and the belt texture by `travel_px`
instead of `speed * t`, and the truth gives each item's true arrival time at gates
`distance_mm` past the decision line (`arrivals`), which is what a gate timed by the
configured speed gets wrong.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from sorter.errors import ConfigError


@dataclass(frozen=True)
class SpeedProfile:
    """Speed factor over time, linear between points; see the module docstring."""

    points: tuple[tuple[float, float], ...] = ()
    """(t in seconds, factor of the base speed), t increasing; empty: constant speed."""

    @classmethod
    def parse(cls, text: str) -> SpeedProfile:
        """`"T:F,T:F,..."`; ConfigError (one line, naming the option) otherwise."""
        text = text.strip()
        if not text:
            return cls()
        points: list[tuple[float, float]] = []
        for part in text.split(","):
            try:
                t_s, f_s = part.split(":")
                t, f = float(t_s), float(f_s)
            except ValueError as err:
                raise ConfigError(
                    f"--speed-profile {text!r}: {part!r} is not TIME:FACTOR; e.g. "
                    "0:1,4:1,5:0.8,8:0.8,9:1 (20% slower from 5 s to 8 s)"
                ) from err
            if not (math.isfinite(t) and math.isfinite(f)) or f <= 0.05 or f > 20:
                raise ConfigError(
                    f"--speed-profile: factor {f_s.strip()} at {t_s.strip()} s must be a "
                    "number above 0.05 and at most 20 (the belt never stops here)"
                )
            if points and t <= points[-1][0]:
                raise ConfigError(f"--speed-profile: times must increase ({t_s.strip()} s)")
            points.append((t, f))
        return cls(tuple(points))

    def factor(self, t: float) -> float:
        """The speed factor at time t."""
        p = self.points
        if not p:
            return 1.0
        if t <= p[0][0]:
            return p[0][1]
        for (t0, f0), (t1, f1) in itertools.pairwise(p):
            if t <= t1:
                return f0 + (f1 - f0) * (t - t0) / (t1 - t0)
        return p[-1][1]

    def integral(self, t: float) -> float:
        """The factor integrated from 0 to t (seconds at base speed); t may be negative."""
        p = self.points
        if not p:
            return t
        knots = [(k, f) for k, f in p if 0.0 < k < t] if t > 0 else []
        xs = [0.0, *[k for k, _ in knots], t] if t > 0 else [t, 0.0]
        total = 0.0
        for a, b in itertools.pairwise(xs):
            total += (b - a) * (self.factor(a) + self.factor(b)) / 2
        return total if t > 0 else -total

    def time_at(self, seconds_at_base: float) -> float:
        """The time t at which `integral(t)` equals the given value (bisection)."""
        if not self.points:
            return seconds_at_base
        lo, hi = seconds_at_base / 20 - 1.0, seconds_at_base / 0.05 + 1.0
        lo, hi = min(lo, hi), max(lo, hi)
        for _ in range(100):
            mid = (lo + hi) / 2
            if self.integral(mid) < seconds_at_base:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    def as_list(self) -> list[list[float]]:
        """For the truth JSON."""
        return [[t, f] for t, f in self.points]


def arrivals(
    profile: SpeedProfile,
    speed_px_s: float,
    x0: float,
    line_x: float,
    px_per_mm: float,
    distances_mm: Sequence[float],
) -> dict[str, float]:
    """An item's true arrival time at each gate distance past the line: {"200": t, ...}
    (its centre was at x0 at t = 0)."""
    out: dict[str, float] = {}
    for d in distances_mm:
        travel = line_x + d * px_per_mm - x0
        out[f"{d:g}"] = round(profile.time_at(travel / speed_px_s), 6)
    return out
