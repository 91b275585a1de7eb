"""The host <-> controller clock mapping, from SYNC round trips.

Each SYNC gives a sample: the host's clock before the write and after the reply, and the
controller's clock (u32 us, wrapping) in between. NTP-style, the controller's reading is
taken to belong to the midpoint, so a sample's offset (controller - host) is off by at most
half its round trip, and usually much less: a round trip held up on one leg (a busy host,
a loaded emulator, a USB hub) is what makes an offset wrong. `SyncEstimator` therefore:

- rests on the quick round trips (minimum-RTT filtering): before a drift rate is known the
  offset is the sample with the least error bound, half its round trip plus `drift_bound`
  times its age; after, a line is fitted through the quick samples (round trip up to twice
  the quickest, plus 1 ms), the quickest of each stretch of time, each weighted by its
  round trip, with outliers (damaged, or not this clock) dropped. On the firmware under
  QEMU most round trips are ~45 ms with the controller reading its clock near the end
  (offset +22 ms), a few are ~1.5 ms: only those may count;
- estimates the controller's drift rate (an Uno's ceramic resonator: up to a few 1000 ppm)
  only once the quick samples span `min_baseline_s`: a rate from samples close in time (the
  handshake's burst) is noise divided by a tiny interval, and once made the gates fire
  early or late by up to the rate clamp (10 ms per second) times the lead;
- treats a sample that disagrees with the mapping by more than its round trip allows as
  an outlier, and a run of `step_confirm` such samples that agree with each other as a
  change of drift when they miss by less than `jump_s` (refit on the last baseline's
  samples), else as a new controller clock (a reset nobody reported, a lost timer
  overflow): it starts over from them, keeping the rate. The line weighs recent samples
  most (over a third of `history_s`), so a drift that changes slowly is simply followed.
"""

from __future__ import annotations

import logging
import math
import statistics
import threading
from collections import deque
from dataclasses import dataclass

log = logging.getLogger(__name__)

MASK = 0xFFFFFFFF


@dataclass(frozen=True)
class SyncSample:
    """One SYNC round trip."""

    t_send: float
    """Host clock (s) just before the SYNC was written."""
    t_recv: float
    """Host clock (s) when the SYNC_REPLY was read."""
    ctrl_us: int
    """Controller time in the reply (u32 us)."""

    @property
    def delay(self) -> float:
        """Round-trip time in seconds."""
        return self.t_recv - self.t_send

    @property
    def mid(self) -> float:
        """Host time the controller's reading is assumed to belong to."""
        return (self.t_send + self.t_recv) / 2

    @property
    def offset_us(self) -> int:
        """(ctrl - host) in us, as a signed 32-bit wrap-around difference."""
        return _i32(self.ctrl_us - round(self.mid * 1e6))


@dataclass(frozen=True)
class _Line:
    """offset(t) = off_us + rate * 1e6 * (t - t_ref), relative to the estimator's base."""

    t_ref: float
    off_us: float
    rate: float

    def at(self, t: float) -> float:
        return self.off_us + self.rate * 1e6 * (t - self.t_ref)


class SyncEstimator:
    """Maps host clock seconds <-> controller microseconds (u32, wrapping); see the module
    docstring. Thread safe."""

    def __init__(
        self,
        *,
        min_baseline_s: float = 10.0,
        history_s: float = 60.0,
        max_samples: int = 512,
        drift_bound: float = 0.002,
        bins: int = 16,
        max_rate: float = 0.01,
        step_tol_s: float = 0.005,
        step_confirm: int = 3,
        max_delay_s: float = 0.5,
        quick_slack_s: float = 0.001,
        jump_s: float = 0.05,
    ) -> None:
        self.min_baseline_s = min_baseline_s
        """A drift rate is estimated only from samples spanning at least this (s)."""
        self.history_s = max(history_s, min_baseline_s)
        """Samples older than this (s) before the newest are forgotten."""
        self.drift_bound = drift_bound
        """Before a rate is known, a sample's offset is taken to age by this much per second
        (0.002 = 2000 ppm, a poor resonator) when choosing the one to rest on."""
        self.bins = max(3, bins)
        """The line is fitted through the quickest sample in each of this many stretches."""
        self.max_rate = max_rate
        """Largest believable drift rate (0.01 = 1%); estimates are clamped to it."""
        self.step_tol_s = step_tol_s
        """A sample further than this (s, beyond its round trip) from the mapping is an
        outlier."""
        self.step_confirm = max(2, step_confirm)
        """This many outliers in a row that agree with each other are a new clock."""
        self.max_delay_s = max_delay_s
        """Round trips slower than this (s) are not used at all."""
        self.jump_s = jump_s
        """Outliers that agree with each other and miss the mapping by less than this (s)
        are a change of drift; by more, a clock that jumped."""
        self.quick_slack_s = quick_slack_s
        """The drift line goes through round trips up to twice the quickest plus this (s)
        only, and waits until those span `min_baseline_s`."""
        self._lock = threading.Lock()
        self._hist: deque[SyncSample] = deque(maxlen=max(self.bins, max_samples))
        self._suspects: list[SyncSample] = []
        self._base = 0
        self._line: _Line | None = None
        self._rate_known = False
        self._prior_rate = 0.0
        self.steps = 0
        """Times the controller's clock jumped (an unreported reset) and the estimate
        started over."""
        self.rejected = 0
        """Samples not used (too slow, or disagreeing with the mapping)."""
        self.drift_changes = 0
        """Times the drift changed enough to leave the mapping (refitted on the last
        baseline's samples)."""

    # ------------------------------------------------------------ state
    @property
    def synced(self) -> bool:
        """At least one sample taken."""
        with self._lock:
            return self._line is not None

    @property
    def rate(self) -> float:
        """Estimated controller clock rate error (0.001 = 1000 ppm fast); 0 until the
        samples span `min_baseline_s` (after a clock step: the rate from before it)."""
        with self._lock:
            return 0.0 if self._line is None else self._line.rate

    @property
    def rate_known(self) -> bool:
        """The rate is estimated from this clock's own samples (baseline long enough)."""
        with self._lock:
            return self._rate_known

    @property
    def baseline_s(self) -> float:
        """Host time (s) the samples in use span."""
        with self._lock:
            return self._hist[-1].mid - self._hist[0].mid if self._hist else 0.0

    @property
    def unconfirmed(self) -> bool:
        """The latest sample disagreed with the mapping (an outlier, or the controller's
        clock jumped): a few more SYNCs soon will tell which."""
        with self._lock:
            return bool(self._suspects)

    @property
    def samples(self) -> int:
        """Samples in use."""
        with self._lock:
            return len(self._hist)

    @property
    def best_delay(self) -> float | None:
        """The quickest round trip (s) among the samples in use."""
        with self._lock:
            return min((s.delay for s in self._hist), default=None)

    def reset(self) -> None:
        """Forget everything (the controller may have been reset, or replaced)."""
        with self._lock:
            self._hist.clear()
            self._suspects.clear()
            self._line = None
            self._rate_known = False
            self._prior_rate = 0.0

    # ------------------------------------------------------------ samples
    def add(self, sample: SyncSample) -> bool:
        """Record a round trip and update the estimate; False when it was not used."""
        with self._lock:
            if not 0.0 <= sample.delay <= self.max_delay_s:
                self.rejected += 1
                return False
            if self._line is None:
                self._restart([sample])
                return True
            if self._consistent(sample):
                self._suspects.clear()
                self._hist.append(sample)
                self._refit()
                return True
            self._suspects = [*self._suspects, sample][-self.step_confirm :]
            if len(self._suspects) == self.step_confirm and self._agree(self._suspects):
                self._follow(self._suspects)
                return True
            self.rejected += 1
            return False

    def _follow(self, run: list[SyncSample]) -> None:
        """Samples that agree with each other but not with the mapping: a small miss is
        a change of drift (keep the last baseline's samples and refit), a large one a
        clock that jumped (start over from them, keeping the rate)."""
        assert self._line is not None
        miss_s = statistics.median(self._rel(s) - self._line.at(s.mid) for s in run) / 1e6
        self._prior_rate = self._line.rate
        if abs(miss_s) < self.jump_s:
            log.info("controller clock drift changed (%.1f ms off); refitting", miss_s * 1e3)
            self.drift_changes += 1
            keep = [s for s in self._hist if s.mid >= run[0].mid - self.min_baseline_s]
            self._hist.clear()
            self._hist.extend([*keep, *run])
            self._suspects = []
            self._rate_known = False
            self._refit()
            return
        log.warning("controller clock jumped by %.3f s (reset?); re-estimating", miss_s)
        self.steps += 1
        self._restart(run)

    def _rel(self, s: SyncSample) -> float:
        return float(_i32(s.offset_us - self._base))

    def _consistent(self, s: SyncSample) -> bool:
        assert self._line is not None
        age = max(0.0, s.mid - self._hist[-1].mid)
        slack = (200e-6 if self._rate_known else self.max_rate) * age
        best = min(x.delay for x in self._hist)
        tol_us = 1e6 * ((s.delay + best) / 2 + self.step_tol_s + slack)
        return abs(self._rel(s) - self._line.at(s.mid)) <= tol_us

    def _agree(self, run: list[SyncSample]) -> bool:
        first = run[0]
        for s in run[1:]:
            diff = abs(_i32(s.offset_us - first.offset_us))
            allowed = (s.delay + first.delay) / 2 + self.step_tol_s
            allowed += self.max_rate * abs(s.mid - first.mid)
            if diff > 1e6 * allowed:
                return False
        return True

    def _restart(self, samples: list[SyncSample]) -> None:
        self._base = samples[0].offset_us
        self._hist.clear()
        self._hist.extend(samples)
        self._suspects = []
        self._rate_known = False
        self._refit()

    # ------------------------------------------------------------ the fit
    def _refit(self) -> None:
        newest = self._hist[-1].mid
        while self._hist and self._hist[0].mid < newest - self.history_s:
            self._hist.popleft()
        points = list(self._hist)
        fastest = min(s.delay for s in points)
        quick = [s for s in points if s.delay <= 2 * fastest + self.quick_slack_s]
        if quick[-1].mid - quick[0].mid >= self.min_baseline_s:
            line = self._fit_line(quick, newest)
            if line is not None:
                self._line, self._rate_known = line, True
                return
        self._rate_known = False
        ref = min(points, key=lambda s: s.delay / 2 + self.drift_bound * (newest - s.mid))
        self._line = _Line(ref.mid, self._rel(ref), self._prior_rate)

    def _fit_line(self, points: list[SyncSample], newest: float) -> _Line | None:
        """Weighted least squares through the quickest sample of each stretch of time
        (weight 1 / (0.5 ms + half the round trip)^2, decaying with age over a third of
        `history_s`), dropping outliers; None when too few are left."""
        first = points[0].mid
        width = (newest - first) / self.bins
        tau = self.history_s / 3  # older points count less: a drift that changes is followed
        quickest: dict[int, SyncSample] = {}
        for s in points:
            k = min(self.bins - 1, int((s.mid - first) / width))
            if k not in quickest or s.delay < quickest[k].delay:
                quickest[k] = s
        cands = list(quickest.values())
        fit: tuple[float, float] | None = None
        for _ in range(4):
            if len(cands) < 3:
                return None
            scale = [500.0 + s.delay * 0.5e6 for s in cands]  # us
            fit = _least_squares(
                [
                    (s.mid - newest, self._rel(s), math.exp((s.mid - newest) / tau) / u**2)
                    for s, u in zip(cands, scale, strict=True)
                ]
            )
            slope, icept = fit
            z = [
                abs(self._rel(s) - (icept + slope * (s.mid - newest))) / u
                for s, u in zip(cands, scale, strict=True)
            ]
            limit = max(4 * 1.4826 * statistics.median(z), 2.0)
            keep = [s for s, r in zip(cands, z, strict=True) if r <= limit]
            if len(keep) == len(cands):
                break
            cands = keep
        assert fit is not None
        slope, icept = fit
        rate = slope / 1e6
        if abs(rate) > self.max_rate:
            log.warning("controller clock drift %.0f ppm is beyond belief; clamped", rate * 1e6)
            rate = max(-self.max_rate, min(self.max_rate, rate))
        return _Line(newest, icept, rate)

    # ------------------------------------------------------------ mapping
    def to_controller(self, t: float) -> int:
        """Host time (s) -> controller time (u32 us). Raises RuntimeError before any SYNC."""
        with self._lock:
            line, base = self._line, self._base
        if line is None:
            raise RuntimeError("no SYNC yet: the controller's clock is unknown")
        return (round(t * 1e6 + line.at(t)) + base) & MASK

    def to_host(self, ctrl_us: int, near: float) -> float:
        """Controller time (u32 us) -> host time (s), taking the wrap nearest to `near`."""
        here = self.to_controller(near)
        return near + _i32(ctrl_us - here) / 1e6 / (1.0 + self.rate)


def _least_squares(xyw: list[tuple[float, float, float]]) -> tuple[float, float]:
    """(slope, intercept) of y = intercept + slope * x, points weighted by w."""
    sw = sum(w for _, _, w in xyw)
    mx = sum(x * w for x, _, w in xyw) / sw
    my = sum(y * w for _, y, w in xyw) / sw
    sxx = sum(w * (x - mx) ** 2 for x, _, w in xyw)
    if sxx <= 0:
        return 0.0, my
    slope = sum(w * (x - mx) * (y - my) for x, y, w in xyw) / sxx
    return slope, my - slope * mx


def _i32(x: int) -> int:
    x &= MASK
    return x - (1 << 32) if x & 0x80000000 else x
