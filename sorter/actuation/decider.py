"""The per-item path of the sorting loop: decide an item, schedule its SORT, log it, and
apply the fate the controller reports later.

`Decider.decide(item, views, t_line, received)` runs on the loop's thread when an item
crosses the decision line: policy (mean of its views' scores) -> scheduler (SORT via the
link, or late/dry-run/rejected) -> decision log + status. The SORT's fate (fired, late, nak,
timeout, cancelled; a timeout may be corrected later) arrives on the link's thread through
`Decider.fate`; a fate that comes back before the record is written is held and applied
right after it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from firmware_bridge.command import Fate
from sorter.actuation.scheduling import Scheduler
from sorter.config import Config
from sorter.grading.policy import Policy, Verdict
from sorter.monitor.audit import DecisionLog, DecisionRecord
from sorter.monitor.status import Status
from sorter.perception.measure import Measurement

log = logging.getLogger(__name__)

KEEP_DECIDED = 4096
"""Decided items remembered for overlays and late fate corrections."""


@dataclass
class ItemViews:
    """What the loop keeps per tracked item until it is decided."""

    scores: list[np.ndarray] = field(default_factory=list)
    """Score vector of each full view."""
    crops: list[np.ndarray] = field(default_factory=list)
    """The crop of each full view (same order)."""
    measures: list[Measurement] = field(default_factory=list)
    """Each full view's sub-pixel centre and size in pixels ([locate] refine on)."""


class Decider:
    """Decides items, sends their SORTs and keeps their records up to date with their fates.

    `decide` is called from the loop's thread, `fate` from the link's thread.
    """

    def __init__(
        self,
        config: Config,
        labels: Sequence[str],
        scheduler: Scheduler,
        decisions: DecisionLog,
        status: Status,
        *,
        keep_crops: bool = False,
    ) -> None:
        self.policy = Policy(config, labels)
        self.scheduler = scheduler
        self.decisions = decisions
        self.status = status
        self.keep_crops = keep_crops
        self._lock = threading.Lock()
        self._decided: dict[int, DecisionRecord] = {}
        """Recent decisions by item (bounded by KEEP_DECIDED)."""
        self._bins: dict[int, str] = {}
        """The bin each recent item goes to if its gate fires."""
        self._in_flight: set[int] = set()
        """Items whose record is being written right now."""
        self._early_fates: dict[int, Any] = {}
        """Fates that arrived while their item was in flight."""

    def decided(self, item: int) -> DecisionRecord | None:
        """The record of a recently decided item, or None."""
        return self._decided.get(item)

    def decide(
        self,
        item: int,
        views: ItemViews,
        t_line: float,
        received: float,
        extra: Callable[[str], dict[str, Any]] | None = None,
    ) -> DecisionRecord:
        """Decide one item from its views; `received` is perf_counter when its frame was read.
        `extra(label)` gives more fields for the record (a shadow verdict), asked for after
        the SORT went out, so it never delays the command."""
        t0 = time.perf_counter()
        verdict = self.policy.decide(
            np.array(views.scores) if views.scores else np.zeros((0, len(self.policy.labels)))
        )

        def on_done(cmd: Any) -> None:
            self.fate(item, cmd)

        with self._lock:
            self._in_flight.add(item)
        sched = self.scheduler.schedule(item, verdict.gate, t_line, on_done=on_done)
        t1 = time.perf_counter()
        latency = t1 - received
        sent = sched.status in (Fate.PENDING, Fate.DRY_RUN)
        bin_name = verdict.bin if sent else self.policy.reject_bin
        rec = DecisionRecord(
            item=item,
            t_line=t_line,
            label=verdict.label,
            confidence=verdict.confidence,
            scores=list(verdict.scores),
            bin=bin_name,
            gate=verdict.gate,
            fire_at=sched.fire_at,
            status=sched.status,
            margin=verdict.margin,
            views=verdict.views,
            reason=verdict.reason,
            latency_ms=latency * 1000.0,
        )
        if extra is not None:
            rec.extra.update(extra(verdict.label))
        crop = best_crop(views, verdict, self.policy.labels) if self.keep_crops else None
        self.decisions.record(rec, crop)
        self.status.decided(rec.as_dict(), latency, crop)
        if sched.status != Fate.PENDING:
            self.status.fate(item, sched.status)
        with self._lock:
            self._decided[item] = rec
            self._bins[item] = verdict.bin
            self._in_flight.discard(item)
            early = self._early_fates.pop(item, None)
            while len(self._decided) > KEEP_DECIDED:  # bounded over a season-long run
                oldest = next(iter(self._decided))
                del self._decided[oldest]
                self._bins.pop(oldest, None)
        if early is not None:  # the fate came back before the record was written
            self._apply_fate(item, early)
        t2 = time.perf_counter()
        self.status.add_stages({"decide": t1 - t0, "log": t2 - t1})
        log.debug(
            "item %d: %s %.2f -> %s gate %s (%s)",
            item,
            verdict.label,
            verdict.confidence,
            bin_name,
            verdict.gate,
            sched.status,
        )
        return rec

    def fate(self, item: int, cmd: Any) -> None:
        """A SORT's fate arrived (link thread); again when the link corrects a timeout."""
        with self._lock:
            if item in self._in_flight:
                self._early_fates[item] = cmd  # the record is being written right now
                return
        self._apply_fate(item, cmd)

    def _apply_fate(self, item: int, cmd: Any) -> None:
        status = str(getattr(cmd, "status", Fate.TIMEOUT))
        fired_host = getattr(cmd, "fired_at", None)
        fired_at = (
            self.scheduler.timeline.to_source(float(fired_host)) if fired_host is not None else None
        )
        bin_name = self._bins.get(item) if status == Fate.FIRED else self.policy.reject_bin
        self.decisions.update_fate(item, status, fired_at=fired_at, bin_name=bin_name)
        self.status.fate(item, status)
        # FIRED and LATE reach the status as the controller's own events (link.on_event);
        # the other fates (and corrections) only come this way
        if status not in (Fate.FIRED, Fate.LATE) or getattr(cmd, "corrected", False):
            self.status.event(status.upper(), f"item {item}: {status}")


def best_crop(views: ItemViews, verdict: Verdict, labels: Sequence[str]) -> np.ndarray | None:
    """The view that scored the final grade highest."""
    if not views.crops:
        return None
    k = list(labels).index(verdict.label)
    best = int(np.argmax([s[k] for s in views.scores]))
    return views.crops[best]
