"""What a run will cost before it is paid: device latency from the network's size, and the
training time from the first epochs (then the epoch budget is cut to fit a time budget).

The Raspberry Pi figures are ESTIMATES scaled from published TensorFlow Lite benchmarks
(sources in benchmarks/pi_estimate.py, which uses `pi_estimate` below); nobody has run these
models on a Pi for this project yet.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

PI4_GMACS_4T = 19.0
"""Pi 4, int8, 4 threads, G multiply-accumulates per second (Q-engineering MobileNet V1)."""
PI4_GMACS_1T = PI4_GMACS_4T / 4
"""Pi 4, one thread (linear scaling assumed: optimistic for tiny models)."""
PI5_SPEEDUP = 4.8
"""Pi 5 over Pi 4 for TFLite (Allan: 82.7/16.9 and 112.6/23.5 ms)."""
PI4_MEM_GBS = 2.0
"""Effective bandwidth for streaming weights on a Pi 4 (LPDDR4; a conservative figure)."""
INVOKE_OVERHEAD_MS = 0.1
"""Fixed cost per invoke (set input, invoke, read output) from Python."""
PI4_LIMIT_MS = 5.0
"""A crop must grade within this on one Pi 4 core (estimate), or the run warns."""


@dataclass
class PiEstimate:
    """Estimated int8 latency per crop, in ms."""

    pi4_1t: float
    """Pi 4, 1 thread."""
    pi4_4t: float
    """Pi 4, 4 threads."""
    pi5_1t: float
    """Pi 5, 1 thread."""
    pi5_4t: float
    """Pi 5, 4 threads."""


def pi_estimate(macs: float, weight_bytes: float) -> PiEstimate:
    """Latency estimate for a model with `macs` MACs and `weight_bytes` of int8 weights."""
    mem_ms = weight_bytes / (PI4_MEM_GBS * 1e9) * 1e3

    def pi4(gmacs: float) -> float:
        return INVOKE_OVERHEAD_MS + mem_ms + macs / (gmacs * 1e9) * 1e3

    def pi5(p4: float) -> float:
        # The Python-side invoke overhead shrinks less than the arithmetic does.
        return INVOKE_OVERHEAD_MS / 2 + (p4 - INVOKE_OVERHEAD_MS) / PI5_SPEEDUP

    p4_1, p4_4 = pi4(PI4_GMACS_1T), pi4(PI4_GMACS_4T)
    return PiEstimate(p4_1, p4_4, pi5(p4_1), pi5(p4_4))


def _shape(t: Any) -> tuple[int, ...]:
    return tuple(int(d) if d is not None else 1 for d in t.shape)


def count_macs(model: Any) -> int:
    """Multiply-accumulates of one inference (batch 1) of a Keras functional model."""
    import keras
    from keras import layers

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += count_macs(layer)
            continue
        try:
            out = _shape(layer.output)
            inp = _shape(layer.input)
        except (AttributeError, ValueError):
            continue
        spatial = math.prod(out[1:-1]) if len(out) > 2 else 1
        if isinstance(layer, layers.DepthwiseConv2D):
            kh, kw = layer.kernel_size
            total += spatial * kh * kw * inp[-1] * layer.depth_multiplier
        elif isinstance(layer, layers.SeparableConv2D):
            kh, kw = layer.kernel_size
            mid = inp[-1] * layer.depth_multiplier
            total += spatial * (kh * kw * mid + mid * out[-1])
        elif isinstance(layer, layers.Conv2D):
            kh, kw = layer.kernel_size
            total += spatial * kh * kw * (inp[-1] // layer.groups) * out[-1]
        elif isinstance(layer, layers.Dense):
            total += math.prod(inp[1:-1] or (1,)) * inp[-1] * out[-1]
    return int(total)


def device_estimate(model: Any, views: int = 1) -> tuple[int, PiEstimate]:
    """(MACs, Pi estimate) of an inference model run `views` times per crop (test-time
    averaging multiplies the arithmetic, not the weights)."""
    macs = count_macs(model) * views
    return macs, pi_estimate(macs, float(model.count_params()))


def check_device(model: Any, views: int = 1) -> dict[str, float]:
    """Estimate the device latency; warn when one Pi 4 core would take over PI4_LIMIT_MS."""
    macs, est = device_estimate(model, views)
    if est.pi4_1t > PI4_LIMIT_MS:
        log.warning(
            "this network needs %.0f M multiply-accumulates per crop: about %.1f ms on one "
            "Raspberry Pi 4 core (estimate; limit %.0f ms). Use a smaller --input-size or "
            "another --arch for the sorter",
            macs / 1e6,
            est.pi4_1t,
            PI4_LIMIT_MS,
        )
    return {
        "macs": float(macs),
        "pi4_1t_ms": round(est.pi4_1t, 3),
        "pi5_1t_ms": round(est.pi5_1t, 3),
    }


class EpochBudget:
    """Shared state of the epoch plan: the planned number of epochs, cut when the measured
    epoch time says the run would not finish within `budget_s` (None: no budget)."""

    def __init__(self, epochs: int, budget_s: float | None, spent_s: float = 0.0) -> None:
        self.epochs = epochs
        """Planned epochs (the learning-rate schedule decays over these)."""
        self.requested = epochs
        """Epochs asked for."""
        self.budget_s = budget_s
        """Seconds allowed for the fit."""
        self.spent_s = spent_s
        """Seconds already spent before the fit (data loading, rendering)."""
        self.epoch_s: list[float] = []
        """Measured seconds per finished epoch."""
        self._t: float | None = None

    def start_epoch(self) -> None:
        self._t = time.monotonic()

    def end_epoch(self) -> bool:
        """Record an epoch; True when the plan's last epoch is done."""
        if self._t is not None:
            self.epoch_s.append(time.monotonic() - self._t)
        done = len(self.epoch_s)
        if done in (2, 5) and self.budget_s is not None:
            self._replan()
        return done >= self.epochs

    def per_epoch(self) -> float:
        """Seconds per epoch after the first (which also builds the graph)."""
        steady = self.epoch_s[1:] or self.epoch_s
        return float(sorted(steady)[len(steady) // 2]) if steady else 0.0

    def _replan(self) -> None:
        assert self.budget_s is not None
        per = self.per_epoch()
        done = len(self.epoch_s)
        left = self.budget_s - self.spent_s - sum(self.epoch_s)
        fit = done + int(max(0.0, left) // max(per, 1e-6))
        if fit < self.epochs:
            log.warning(
                "%.1f s per epoch: %d epochs would take %.0f min, over the %.0f-min time budget; "
                "training %d epochs instead (--time-budget-min to change it)",
                per,
                self.requested,
                (self.spent_s + self.epoch_s[0] + per * (self.requested - 1)) / 60,
                self.budget_s / 60,
                max(fit, done),
            )
            self.epochs = max(fit, done)
