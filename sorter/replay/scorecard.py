"""How well a run sorted a belt whose truth is known (a simulated belt's JSON).

Matching: a decision belongs to the truth item whose `t_line` (when its centre crossed the
decision line) is closest, within `tolerance_s`. Pairs are taken closest first, each truth
item and each decision at most once. A decision left over that lies within the tolerance of
an already-matched item is a DUPLICATE (the item was decided twice); one near no item is
SPURIOUS (something that is not an item was decided). A truth item with no decision is
MISSED. The default tolerance is 0.45 of the smallest gap between truth items (capped at
0.5 s), so neighbours can never be confused.

Correct bin: the decision's bin equals the bin of the item's true grade (`bin_of`, default
one bin per grade: the grade's own name); a reject, a miss or a wrong bin is not correct.
Percentages are of the items in truth.

Gate timing: the ideal fire time of an item is its true `t_line` plus the travel time from
the line to its gate (`gate_delay_s`); when the truth gives the item's own arrival times
(`arrivals`, {distance_mm: t}, a belt whose speed changes) and `gate_distance_mm` names
the gate's distance, that arrival time is the ideal instead. Without `gate_delay_s` the
planned travel time of the decision (`fire_at - t_line`) is used, so the error is then
that of the line crossing plus that of the controller. The actual time is `fired_at`
(reported by the controller) when present, else the planned `fire_at`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from rich.table import Table

from firmware_bridge.command import Fate
from sorter.errors import DatasetError
from sorter.grading.metrics import Confusion

NOT_FIRED = frozenset({Fate.REJECTED, Fate.LATE, Fate.NAK, Fate.TIMEOUT, Fate.CANCELLED})


@dataclass
class GradeScore:
    """Accuracy for one true grade."""

    items: int = 0
    """Items of this grade in truth."""
    correct: int = 0
    """Decided with this grade."""
    correct_bin: int = 0
    """Sent to this grade's bin."""

    @property
    def accuracy(self) -> float | None:
        """Fraction of this grade's items graded correctly (None without items)."""
        return self.correct / self.items if self.items else None


@dataclass
class Scorecard:
    """Scores of one run against its truth."""

    items: int
    """Items in truth."""
    decided: int
    """Truth items matched by a decision."""
    missed: int
    """Truth items without a decision."""
    duplicated: int
    """Extra decisions for an item already decided."""
    spurious: int
    """Decisions matching no item."""
    correct_bin: int
    """Items sent to their true grade's bin."""
    correct_grade: int
    """Items graded with their true grade (whatever the bin, rejects included)."""
    rejected: int
    """Matched items sent to the reject bin (or with status "rejected")."""
    tolerance_s: float
    """Matching tolerance used."""
    per_grade: dict[str, GradeScore] = field(default_factory=dict)
    """Scores per true grade."""
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)
    """true grade -> predicted label -> count (matched decisions)."""
    line_error_ms: dict[str, float] = field(default_factory=dict)
    """|decided t_line - true t_line| in ms: p50, p99, max, n."""
    gate_error_ms: dict[str, float] = field(default_factory=dict)
    """|fire time - ideal fire time| in ms: p50, p99, max, mean (signed), n; empty when no
    decision carries a fire time."""
    gate_basis: str = ""
    """"geometry" (gate_delay_s given) or "planned" (decision's own travel time)."""

    @property
    def correct_bin_pct(self) -> float:
        """Correct bin, % of items in truth."""
        return 100.0 * self.correct_bin / self.items if self.items else 0.0

    @property
    def correct_grade_pct(self) -> float:
        """Correct grade, % of items in truth."""
        return 100.0 * self.correct_grade / self.items if self.items else 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (for --json)."""
        d = asdict(self)
        d["correct_bin_pct"] = round(self.correct_bin_pct, 3)
        d["correct_grade_pct"] = round(self.correct_grade_pct, 3)
        d["per_grade"] = {
            g: {**asdict(s), "accuracy": s.accuracy} for g, s in sorted(self.per_grade.items())
        }
        return d


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _stats_ms(values: list[float], *, signed: list[float] | None = None) -> dict[str, float]:
    if not values:
        return {}
    a = np.abs(np.asarray(values, dtype=np.float64)) * 1000.0
    out = {
        "p50": round(float(np.percentile(a, 50)), 3),
        "p99": round(float(np.percentile(a, 99)), 3),
        "max": round(float(a.max()), 3),
        "n": len(values),
    }
    if signed is not None:
        out["mean"] = round(float(np.mean(signed)) * 1000.0, 3)
    return out


def default_tolerance(t_lines: list[float]) -> float:
    """0.45 of the smallest gap between consecutive truth items, at most 0.5 s."""
    ts = sorted(t_lines)
    gaps = [b - a for a, b in itertools.pairwise(ts) if b > a]
    return min(0.5, 0.45 * min(gaps)) if gaps else 0.5


def score(
    decisions: Iterable[Any],
    truth: Mapping[str, Any],
    *,
    tolerance_s: float | None = None,
    bin_of: Mapping[str, str] | Callable[[str], str] | None = None,
    gate_delay_s: Mapping[int, float] | Callable[[int], float] | float | None = None,
    reject_bin: str = "reject",
    gate_distance_mm: Mapping[int, float] | None = None,
) -> Scorecard:
    """Score decisions (dicts or objects with `t_line`, `label`, optional `bin`, `status`,
    `gate`, `fire_at`, `fired_at`) against a truth dict (`load_truth`); see module doc."""
    items = _truth_items(truth)
    decs = list(decisions)
    tol = (
        tolerance_s if tolerance_s is not None else default_tolerance([i["t_line"] for i in items])
    )
    match_of_truth, duplicated, spurious = _match(decs, items, tol)
    labels = [it["label"] for it in items] + [str(_get(d, "label")) for d in decs]
    tally = _Tally(
        Confusion.empty(list(dict.fromkeys(labels))),
        _bin_lookup(bin_of),
        None if gate_delay_s is None else _delay_lookup(gate_delay_s),
        reject_bin,
        dict(gate_distance_mm or {}),
    )
    for ti, it in enumerate(items):
        matched = match_of_truth.get(ti)
        tally.add(it, None if matched is None else decs[matched])
    basis = "geometry" if gate_delay_s is not None else "planned"
    return Scorecard(
        items=len(items),
        decided=len(match_of_truth),
        missed=len(items) - len(match_of_truth),
        duplicated=duplicated,
        spurious=spurious,
        correct_bin=tally.correct_bin,
        correct_grade=tally.correct_grade,
        rejected=tally.rejected,
        tolerance_s=round(tol, 6),
        per_grade=tally.per_grade,
        confusion=tally.confusion.as_nested(),
        line_error_ms=_stats_ms(tally.line_err),
        gate_error_ms=_stats_ms(tally.gate_err, signed=tally.gate_err),
        gate_basis=basis if tally.gate_err else "",
    )


def match_to_truth(
    decisions: Iterable[Any], truth: Mapping[str, Any], tolerance_s: float | None = None
) -> dict[int, int]:
    """{truth item index: decision index} by the scorecard's matching (see module doc)."""
    items = _truth_items(truth)
    tol = (
        tolerance_s if tolerance_s is not None else default_tolerance([i["t_line"] for i in items])
    )
    return _match(list(decisions), items, tol)[0]


def _truth_items(truth: Mapping[str, Any]) -> list[dict[str, Any]]:
    try:
        return [
            {
                "id": _get(it, "id"),
                "label": str(it["label"]),
                "t_line": float(it["t_line"]),
                "arrivals": dict(it.get("arrivals") or {}),
            }
            for it in truth["items"]
        ]
    except (KeyError, TypeError, ValueError) as err:
        raise DatasetError(
            f"truth has no valid 'items' list with label and t_line ({err})"
        ) from err


def _bin_lookup(bin_of: Mapping[str, str] | Callable[[str], str] | None) -> Callable[[str], str]:
    """grade -> bin (the grade itself when `bin_of` does not say)."""
    if bin_of is None:
        return lambda label: label
    if callable(bin_of):
        return lambda label: str(bin_of(label))
    return lambda label: str(bin_of.get(label, label))


def _delay_lookup(
    gate_delay_s: Mapping[int, float] | Callable[[int], float] | float,
) -> Callable[[Any], float | None]:
    """gate -> seconds from the line to it (None: unknown gate or no gate)."""

    def delay_for(gate: Any) -> float | None:
        if gate is None:
            return None
        if isinstance(gate_delay_s, int | float):
            return float(gate_delay_s)
        if callable(gate_delay_s):
            return float(gate_delay_s(int(gate)))
        value = gate_delay_s.get(int(gate))
        return None if value is None else float(value)

    return delay_for


def _match(
    decs: list[Any], items: list[dict[str, Any]], tol: float
) -> tuple[dict[int, int], int, int]:
    """Greedy nearest-in-time matching: ({truth index: decision index}, duplicated, spurious)."""
    pairs: list[tuple[float, int, int]] = []
    for di, d in enumerate(decs):
        t = _get(d, "t_line")
        if t is None:
            continue
        for ti, it in enumerate(items):
            dt = abs(float(t) - it["t_line"])
            if dt <= tol:
                pairs.append((dt, di, ti))
    pairs.sort()
    match_of_truth: dict[int, int] = {}
    matched_decs: set[int] = set()
    for _, di, ti in pairs:
        if di in matched_decs or ti in match_of_truth:
            continue
        match_of_truth[ti] = di
        matched_decs.add(di)
    near_item = {di for _, di, _ in pairs}
    duplicated = sum(1 for di in near_item if di not in matched_decs)
    spurious = sum(1 for di in range(len(decs)) if di not in near_item)
    return match_of_truth, duplicated, spurious


@dataclass
class _Tally:
    """Counts over the truth items, each with its matched decision (or None)."""

    confusion: Confusion
    bin_for: Callable[[str], str]
    delay_for: Callable[[Any], float | None] | None
    """Gate geometry (ideal fire times), or None: the planned fire_at is the reference."""
    reject_bin: str
    distance_of: dict[int, float] = field(default_factory=dict)
    """Gate -> distance from the line (mm), to look up the truth's own arrival times."""
    per_grade: dict[str, GradeScore] = field(default_factory=dict)
    correct_bin: int = 0
    correct_grade: int = 0
    rejected: int = 0
    line_err: list[float] = field(default_factory=list)
    gate_err: list[float] = field(default_factory=list)

    def add(self, it: dict[str, Any], d: Any) -> None:
        g = self.per_grade.setdefault(it["label"], GradeScore())
        g.items += 1
        if d is None:
            return
        label = str(_get(d, "label"))
        dbin = _get(d, "bin")
        dbin = label if dbin is None else str(dbin)
        status = _get(d, "status")
        self.confusion.add(it["label"], label)
        if label == it["label"]:
            self.correct_grade += 1
            g.correct += 1
        if dbin == self.reject_bin or status == Fate.REJECTED:
            self.rejected += 1
        elif dbin == self.bin_for(it["label"]):
            self.correct_bin += 1
            g.correct_bin += 1
        t_dec = float(_get(d, "t_line"))
        self.line_err.append(t_dec - it["t_line"])
        self._gate_error(it, d, status, t_dec)

    def _arrival(self, it: dict[str, Any], gate: Any) -> float | None:
        """The truth's own arrival time of the item at this gate, when it has one."""
        if gate is None or not it.get("arrivals"):
            return None
        distance = self.distance_of.get(int(gate))
        value = None if distance is None else it["arrivals"].get(f"{distance:g}")
        return None if value is None else float(value)

    def _gate_error(self, it: dict[str, Any], d: Any, status: Any, t_dec: float) -> None:
        fired_at = _get(d, "fired_at")
        fire_at = _get(d, "fire_at")
        actual = fired_at if fired_at is not None else (None if status in NOT_FIRED else fire_at)
        if actual is None:
            return
        arrival = self._arrival(it, _get(d, "gate"))
        if arrival is not None:
            self.gate_err.append(float(actual) - arrival)
            return
        if self.delay_for is not None:
            delay = self.delay_for(_get(d, "gate"))
        else:
            delay = None if fire_at is None else float(fire_at) - t_dec
        if delay is not None:
            self.gate_err.append(float(actual) - (it["t_line"] + delay))


def render_scorecard(card: Scorecard, title: str = "Scorecard") -> Table:
    """A rich table of the scorecard (print it with a rich Console)."""
    table = Table(title=title, show_header=True)
    table.add_column("measure")
    table.add_column("value", justify="right")
    n = card.items or 1
    table.add_row("items in truth", str(card.items))
    table.add_row("decided", f"{card.decided} ({100 * card.decided / n:.1f}%)")
    table.add_row("missed", str(card.missed))
    table.add_row("duplicated", str(card.duplicated))
    table.add_row("spurious", str(card.spurious))
    table.add_row("rejected", str(card.rejected))
    table.add_row("correct bin", f"{card.correct_bin} ({card.correct_bin_pct:.1f}%)")
    table.add_row("correct grade", f"{card.correct_grade} ({card.correct_grade_pct:.1f}%)")
    if card.line_error_ms:
        e = card.line_error_ms
        table.add_row("line time error p50 / p99", f"{e['p50']:.1f} / {e['p99']:.1f} ms")
    if card.gate_error_ms:
        e = card.gate_error_ms
        table.add_row(
            f"gate timing error p50 / p99 ({card.gate_basis})",
            f"{e['p50']:.1f} / {e['p99']:.1f} ms",
        )
    table.add_section()
    for grade, s in sorted(card.per_grade.items()):
        acc = "-" if s.accuracy is None else f"{100 * s.accuracy:.1f}%"
        table.add_row(f"grade {grade}", f"{s.correct}/{s.items} ({acc})")
    return table
