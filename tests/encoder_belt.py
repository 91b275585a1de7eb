"""The firmware's test encoder (firmware_bridge/firmware/test_encoder.h) in Python: the
same speed profiles and the same integer arithmetic, so a test knows the belt's true
position at any controller time and the true time it reaches any position.

A profile is a tuple of segments (len in 16 us units, r0, r1 in ticks/s), repeated.
`BUILTIN[1]` is constant 2000 ticks/s, `BUILTIN[2]` the same slowing by 20% and back every
10 s; tests/test_position_firmware.py checks both against the C (`enc_builtin_profile`).
"""

from __future__ import annotations

from dataclasses import dataclass

UNIT_US = 16
UNITS_PER_S = 62500
S = UNITS_PER_S


@dataclass(frozen=True)
class Segment:
    """One stretch of the profile: `len` units of 16 us, speed r0 -> r1 ticks/s."""

    len: int
    r0: int
    r1: int

    def ticks(self, e: int) -> int:
        """Whole ticks `e` units into the segment (test_encoder.c seg_ticks)."""
        num = self.r0 * e
        if self.r1 != self.r0:
            num += (self.r1 - self.r0) * ((e * e) // (2 * self.len))
        return num // UNITS_PER_S


BUILTIN: dict[int, tuple[Segment, ...]] = {
    1: (Segment(S, 2000, 2000),),
    2: (
        Segment(3 * S, 2000, 2000),
        Segment(S, 2000, 1600),
        Segment(3 * S, 1600, 1600),
        Segment(S, 1600, 2000),
        Segment(2 * S, 2000, 2000),
    ),
}
"""What a TEST_ENCODER=1 / =2 firmware build runs."""


class EncoderBelt:
    """Position (ticks) of a profile at controller time (us since boot), and back."""

    def __init__(self, segments: tuple[Segment, ...]) -> None:
        self.segments = segments
        self.period = sum(s.len for s in segments)
        self.period_ticks = sum(s.ticks(s.len) for s in segments)

    def position(self, t_us: int) -> int:
        """Ticks at controller time `t_us` (unwrapped: no i32 wrap in a test's minutes)."""
        t = t_us // UNIT_US
        rounds, e = divmod(t, self.period)
        pos = rounds * self.period_ticks
        for s in self.segments:
            if e <= s.len:
                return pos + s.ticks(e)
            pos += s.ticks(s.len)
            e -= s.len
        return pos

    def time_of(self, position: float) -> float:
        """The first controller time (us) at which the belt is at `position` ticks (the
        count reaches ceil(position)), to the 16 us unit."""
        lo, hi = 0, UNIT_US
        while self.position(hi) < position:
            lo, hi = hi, hi * 2
        while hi - lo > UNIT_US:
            mid = (lo + hi) // 2 // UNIT_US * UNIT_US
            if self.position(mid) >= position:
                hi = mid
            else:
                lo = mid
        return float(hi)

    def speed(self, t_us: float) -> float:
        """Ticks per second at controller time `t_us`."""
        e = (t_us / UNIT_US) % self.period
        for s in self.segments:
            if e <= s.len:
                return s.r0 + (s.r1 - s.r0) * e / s.len
            e -= s.len
        return float(self.segments[-1].r1)
