"""Shadow mode: a candidate model grades every item beside the active one, which decides.

`ShadowGrader(classifier, config)` takes each frame's batch of crops (the very crops the
active model graded, resized by the one preprocessing function when the candidate's input
size differs) with `submit(items, batch)` and grades them on its own worker thread, so the
active model's path pays only for queueing. When an item is decided, `verdict(item)` waits
(bounded by `wait_s`) for that item's views still in the queue and returns the candidate's
verdict under the same policy (mean of its views' scores, the config's thresholds and
bins) as decision-log fields: shadow_label, shadow_confidence, shadow_scores, shadow_bin,
shadow_reason, shadow_views and shadow_model (`sorter.monitor.audit.EXTRA_COLUMNS`).

Short queue, counted drops: with `block=False` (a camera, a paced replay) a view that finds
the queue full (`queue_views`) is dropped and counted, never waited for; with `block=True`
(a fast replay on the virtual clock) `submit` waits, so the run stays deterministic. What the
candidate costs is measured: worker seconds per view (off the hot path) and the seconds the
loop waited for it at decision time (on the hot path), both in `stats()`.

A candidate whose labels do not match the config's bins is refused at start (ModelError,
one line), exactly as `sorter model promote` would refuse it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from sorter.config import Config
from sorter.errors import ModelError
from sorter.grading.model_check import check_labels
from sorter.grading.policy import Policy
from sorter.perception.preprocess import to_model_input

log = logging.getLogger(__name__)

SHADOW_FIELDS = (
    "shadow_label",
    "shadow_confidence",
    "shadow_scores",
    "shadow_bin",
    "shadow_reason",
    "shadow_views",
    "shadow_model",
)
"""The decision-log fields a shadow verdict fills (see EXTRA_COLUMNS)."""


class ShadowGrader:
    """Grades crops with a candidate model on a worker thread; see the module docstring."""

    def __init__(
        self,
        classifier: Any,
        config: Config,
        *,
        block: bool = False,
        queue_views: int = 64,
        wait_s: float = 0.05,
    ) -> None:
        check_labels(classifier.labels, config, str(getattr(classifier, "model_path", "")))
        self.classifier = classifier
        self.policy = Policy(config, classifier.labels)
        self.model = str(getattr(classifier, "model_path", ""))
        """The candidate's file (shadow_model in the log)."""
        self.block = block
        self.wait_s = wait_s
        """Longest wait for an item's queued views when it is decided (non-blocking mode)."""
        self._q: queue.Queue[tuple[list[int], np.ndarray | list[np.ndarray]] | None] = queue.Queue(
            maxsize=queue_views
        )
        self._cond = threading.Condition()
        self._scores: dict[int, list[np.ndarray]] = {}
        self._queued: dict[int, int] = {}
        """Views of an item submitted and not graded yet."""
        self._thread: threading.Thread | None = None
        self.views = 0
        """Views graded by the candidate."""
        self.dropped = 0
        """Views not graded because the queue was full."""
        self.errors = 0
        """Batches the candidate failed on (logged; the active model is not affected)."""
        self.late = 0
        """Items decided before all their views were graded (verdict from fewer views)."""
        self.items = 0
        """Items given a shadow verdict."""
        self.agree = 0
        """... of which the candidate chose the active model's grade."""
        self.busy_s = 0.0
        """Worker seconds spent grading (off the loop's path)."""
        self.wait_total_s = 0.0
        """Seconds the loop spent waiting for the candidate at decision time."""

    @property
    def input_size(self) -> tuple[int, int]:
        h, w = self.classifier.input_size
        return int(h), int(w)

    # -- lifetime ---------------------------------------------------------------------
    def start(self) -> ShadowGrader:
        """Start the worker thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._main, name="shadow", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Grade what is queued (bounded) and stop the worker."""
        if self._thread is None:
            return
        try:
            self._q.put(None, timeout=timeout)
        except queue.Full:
            log.warning("shadow: worker still busy at close; its queue is abandoned")
        self._thread.join(timeout)
        self._thread = None

    def __enter__(self) -> ShadowGrader:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the loop's side ----------------------------------------------------------------
    def batch_for(
        self, crops: Sequence[np.ndarray], active_batch: np.ndarray
    ) -> np.ndarray | list[np.ndarray]:
        """What to submit for these crops: the active batch when the input sizes agree, else
        the crops themselves (resized on the worker, off the loop's path)."""
        if tuple(active_batch.shape[1:3]) == self.input_size:
            return active_batch
        return list(crops)

    def submit(self, items: Sequence[int], batch: np.ndarray | list[np.ndarray]) -> None:
        """Queue one frame's views (item ids in batch order) for the candidate: a batch at
        its input size, or the crops to resize."""
        ids = list(items)
        with self._cond:
            for i in ids:
                self._queued[i] = self._queued.get(i, 0) + 1
        try:
            if self.block:
                self._q.put((ids, batch))
            else:
                self._q.put_nowait((ids, batch))
        except queue.Full:
            with self._cond:
                self.dropped += len(ids)
                self._done(ids)

    def verdict(self, item: int, active_label: str | None = None) -> dict[str, Any]:
        """The candidate's verdict for a decided item as decision-log fields (its views
        still queued are waited for, bounded); forgets the item."""
        t0 = time.perf_counter()
        deadline = time.monotonic() + (30.0 if self.block else self.wait_s)
        with self._cond:
            while self._queued.get(item, 0) > 0 and self._thread is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.late += 1
                    break
                self._cond.wait(left)
            scores = self._scores.pop(item, [])
            self._queued.pop(item, None)
        self.wait_total_s += time.perf_counter() - t0
        labels = self.policy.labels
        v = self.policy.decide(np.array(scores) if scores else np.zeros((0, len(labels))))
        self.items += 1
        self.agree += int(active_label is not None and v.label == active_label)
        return {
            "shadow_label": v.label,
            "shadow_confidence": v.confidence,
            "shadow_scores": [round(float(s), 6) for s in v.scores],
            "shadow_bin": v.bin,
            "shadow_reason": v.reason,
            "shadow_views": v.views,
            "shadow_model": self.model,
        }

    def forget(self, item: int) -> None:
        """An item that ended undecided: drop its scores."""
        with self._cond:
            self._scores.pop(item, None)
            self._queued.pop(item, None)

    def stats(self) -> dict[str, Any]:
        """What the candidate did and cost (the run summary's `shadow`)."""
        with self._cond:
            views, items = self.views, self.items
            return {
                "model": self.model,
                "items": items,
                "agree": self.agree,
                "agreement": self.agree / items if items else None,
                "views": views,
                "dropped": self.dropped,
                "late": self.late,
                "errors": self.errors,
                "ms_per_view": 1000.0 * self.busy_s / views if views else None,
                "wait_ms_per_item": 1000.0 * self.wait_total_s / items if items else None,
            }

    # -- the worker ---------------------------------------------------------------------
    def _main(self) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            ids, work = job
            t0 = time.perf_counter()
            try:
                batch = work if isinstance(work, np.ndarray) else self._resize(work)
                scores = np.asarray(self.classifier.classify(batch), dtype=np.float32)
                if scores.shape[0] != len(ids):
                    raise ValueError(f"{scores.shape[0]} score rows for {len(ids)} views")
            except Exception as err:  # a broken candidate never stops the sorter
                log.error("shadow model %s failed on a batch: %s", self.model, err)
                with self._cond:
                    self.errors += 1
                    self._done(ids)
                continue
            dt = time.perf_counter() - t0
            with self._cond:
                self.busy_s += dt
                self.views += len(ids)
                for i, s in zip(ids, scores, strict=True):
                    if i in self._queued:  # not forgotten meanwhile
                        self._scores.setdefault(i, []).append(s)
                self._done(ids)

    def _resize(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """The candidate's input for crops (its input size differs from the active's)."""
        return np.stack([to_model_input(c, self.input_size) for c in crops])

    def _done(self, ids: Sequence[int]) -> None:
        """Views of these items are no longer queued (call with the condition held)."""
        for i in ids:
            n = self._queued.get(i)
            if n is not None:
                if n <= 1:
                    self._queued[i] = 0
                else:
                    self._queued[i] = n - 1
        self._cond.notify_all()


def load_shadow(path: str, config: Config, *, block: bool) -> ShadowGrader:
    """The shadow grader for the candidate model file at `path` (ModelError, one line)."""
    from sorter.grading.classifier import Classifier

    try:
        clf = Classifier(path, num_threads=config.model.threads)
    except ModelError as err:
        raise ModelError(f"shadow model: {err}") from err
    return ShadowGrader(clf, config, block=block)
