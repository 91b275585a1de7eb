"""From an item's scores to its bin: grade -> bin, and uncertain means reject.

An item is seen in several frames; each full view gives one score vector. The item's scores
are the MEAN of its views' scores (averaging is steadier than the single best view, whose
"best" is judged by the same scores it would pick). Then:

0. any score not finite (NaN or inf: a broken model or input) -> reject (`bad-scores`;
   its logged scores have the non-finite values as 0, so the log stays valid JSON);
1. fewer than `min_views` views -> reject (`too-few-views`);
2. top score below the confidence threshold (per grade, else global) -> reject;
3. top score minus second score below the margin (per grade, else global) -> reject;
4. otherwise the grade's bin from `[bins.grades]` (a grade not listed -> reject).

Pure: arrays in, a Verdict out.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sorter.config import Config
from sorter.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    """The decision for one item."""

    label: str
    """The top grade (even when the item is rejected)."""
    confidence: float
    """The top grade's mean score, 0..1."""
    margin: float
    """Top score minus the second score."""
    scores: tuple[float, ...]
    """Mean score per grade, in the model's label order."""
    bin: str
    """The bin the item goes to."""
    gate: int | None
    """The gate that diverts it there, or None (reject bin: no gate fires)."""
    reason: str
    """Why: "graded", "low-confidence", "low-margin", "too-few-views", "no-bin" or
    "bad-scores" (a score was NaN or inf)."""
    views: int
    """How many views the scores are the mean of."""

    @property
    def rejected(self) -> bool:
        """True when the item goes to the reject bin."""
        return self.reason != "graded"


class Policy:
    """Decides bins for a model's labels under a config's bins, gates and thresholds."""

    def __init__(self, config: Config, labels: Sequence[str]) -> None:
        self.labels = list(labels)
        self.config = config
        th = config.thresholds
        for grade in th.per_grade:
            if grade not in self.labels:
                raise ConfigError(
                    f"thresholds.per_grade.{grade}: not a grade of the model "
                    f"(labels: {', '.join(self.labels)}); fix the config"
                )
        unmapped = [g for g in self.labels if g not in config.bins.grades]
        if unmapped:
            log.warning(
                "grades %s of the model are not in [bins.grades]: they go to the %r bin",
                ", ".join(unmapped),
                config.bins.reject,
            )
        self.reject_bin = config.bins.reject
        self.reject_gate = config.gate_for_bin(self.reject_bin)

    def thresholds(self, grade: str) -> tuple[float, float]:
        """(confidence, margin) thresholds that apply to `grade`."""
        th = self.config.thresholds
        over = th.per_grade.get(grade)
        conf = over.confidence if over and over.confidence is not None else th.confidence
        margin = over.margin if over and over.margin is not None else th.margin
        return conf, margin

    def decide(self, view_scores: np.ndarray | Sequence[Sequence[float]]) -> Verdict:
        """The verdict for one item from its views' scores, shape (views, n_labels)."""
        arr = np.asarray(view_scores, dtype=np.float64).reshape(-1, len(self.labels))
        views = int(arr.shape[0])
        scores = np.zeros(len(self.labels)) if views == 0 else arr.mean(axis=0)
        finite = bool(np.isfinite(scores).all())
        if not finite:  # NaN fails every comparison below: it would pass the thresholds
            scores = np.nan_to_num(scores, nan=0.0, posinf=0.0, neginf=0.0)
        order = np.argsort(scores)[::-1]
        top = int(order[0])
        confidence = float(scores[top])
        second = float(scores[order[1]]) if len(order) > 1 else 0.0
        margin = confidence - second
        label = self.labels[top]
        need_conf, need_margin = self.thresholds(label)
        if not finite:
            reason = "bad-scores"
        elif views < self.config.thresholds.min_views:
            reason = "too-few-views"
        elif confidence < need_conf:
            reason = "low-confidence"
        elif margin < need_margin:
            reason = "low-margin"
        elif label not in self.config.bins.grades or (
            self.config.bins.grades[label] == self.reject_bin
        ):
            reason = "no-bin"
        else:
            reason = "graded"
        bin_name = self.config.bins.grades[label] if reason == "graded" else self.reject_bin
        gate = self.config.gate_for_bin(bin_name) if reason == "graded" else self.reject_gate
        return Verdict(
            label=label,
            confidence=confidence,
            margin=margin,
            scores=tuple(float(s) for s in scores),
            bin=bin_name,
            gate=gate,
            reason=reason,
            views=views,
        )
