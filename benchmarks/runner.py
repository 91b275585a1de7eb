"""Run the figures in order, each isolated: a missing part is "n/a", a failure is "error"."""

from __future__ import annotations

import logging
import time
import traceback
from types import ModuleType

from benchmarks import (
    accuracy,
    decision_latency,
    gate_timing,
    inference_latency,
    loop_throughput,
    memory,
    model_cost,
    sorting_rate,
    training_throughput,
)
from benchmarks.core import Context, FigureResult, NotAvailable

log = logging.getLogger(__name__)

FIGURES: list[ModuleType] = [
    accuracy,
    training_throughput,
    model_cost,
    inference_latency,
    loop_throughput,
    decision_latency,
    sorting_rate,
    gate_timing,
    memory,
]


def run_one(fig: ModuleType, ctx: Context) -> FigureResult:
    """Run one figure module and wrap its outcome."""
    res = FigureResult(number=fig.NUMBER, title=fig.TITLE, status="ok")
    t0 = time.monotonic()
    try:
        missing = fig.missing()
        if missing:
            raise NotAvailable(missing)
        log.info("figure %d: %s", fig.NUMBER, fig.TITLE)
        res.rows = fig.run(ctx)
    except NotAvailable as err:
        res.status, res.reason = "n/a", str(err)
        log.warning("figure %d not available: %s", fig.NUMBER, err)
    except Exception as err:  # a failing part must not hide the other eight figures
        res.status = "error"
        res.reason = f"{type(err).__name__}: {err}".splitlines()[0][:300]
        log.error("figure %d failed:\n%s", fig.NUMBER, traceback.format_exc())
    res.seconds = time.monotonic() - t0
    return res


def run_figures(ctx: Context, wanted: set[int] | None = None) -> list[FigureResult]:
    """All figures (or those in `wanted`), in order, sharing ctx.cache."""
    return [run_one(fig, ctx) for fig in FIGURES if wanted is None or fig.NUMBER in wanted]
