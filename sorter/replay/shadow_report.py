"""`sorter shadow-report DB`: how a candidate run in shadow mode compares with the active model.

From a decision log written by `sorter run --shadow CANDIDATE.tflite` (rows carrying the
shadow_* columns, `sorter.grading.shadow`): how often the two models chose the same grade
and the same bin, every item where they disagree (with its crop), and, for the items whose
true grade is known, each model's accuracy. The true grade comes from, in order:

- a belt truth file (`--truth belt.json`, a replay of a simulated belt): decisions are matched
  to its items by line-crossing time, as the scorecard does (`sorter.replay.scorecard`);
- the review log DIR/_review_log.jsonl the dashboard's review page appends to (one JSON
  object a line: crop, run, item, answer, ...; the last answer for an item wins): an answer
  that is a grade is the true grade (a confirmation counts too); "_not_produce" is counted
  apart (neither model can be right) and "_skip" tells nothing;
- the crops tree (`--crops DIR`, default the folder the log's crops were saved in), for
  items the review log does not name: a crop a person moved by hand is reviewed. The sorter
  saved each crop as DIR/<grade>/<run>_<item>.png, or DIR/_review/<grade>/... when unsure; a
  crop that now sits in a grade folder DIR/<g>/ after being saved in _review/, or in another
  grade's folder than the one it was saved in, has the true grade g. A crop still where the
  sorter put it tells nothing (nobody looked).

Only items in the selected run (default: the latest) with a shadow verdict are counted.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from sorter.errors import SorterError
from sorter.monitor.audit import read_decisions
from sorter.replay.scorecard import match_to_truth
from sorter.replay.truth import load_truth

REVIEW_LOG = "_review_log.jsonl"
"""The review page's log in the crops folder (sorter.monitor.review)."""
REVIEW_DIR = "_review"
NOT_PRODUCE = "_not_produce"
"""A reviewer's answer for a crop that is not produce."""
SKIP = "_skip"
"""A reviewer's answer that leaves the crop unreviewed."""


@dataclass
class ModelScore:
    """One model's accuracy on the items whose true grade is known."""

    correct: int = 0
    """Items it graded right."""
    correct_bin: int = 0
    """Items it would send to the true grade's bin (a reject is never right)."""

    def pct(self, n: int) -> float | None:
        return 100.0 * self.correct / n if n else None


@dataclass
class ShadowReport:
    """The comparison (what `--json` prints)."""

    run: str
    """The run compared."""
    db: str
    """The decision log."""
    shadow_model: str
    """The candidate's file."""
    items: int = 0
    """Decisions in the run."""
    shadowed: int = 0
    """... of which carry a shadow verdict."""
    same_grade: int = 0
    """Both models chose the same grade."""
    same_bin: int = 0
    """Both would send the item to the same bin."""
    disagreements: list[dict[str, Any]] = field(default_factory=list)
    """One entry per item graded differently: item, both grades, confidences, bins, crop."""
    truth_source: str = ""
    """Where the true grades came from: a truth file, the review log and/or the crops tree,
    or "" (none)."""
    not_produce: int = 0
    """Shadowed items a reviewer marked as not produce (not in the accuracies)."""
    known: int = 0
    """Shadowed items whose true grade is known."""
    active: ModelScore = field(default_factory=ModelScore)
    """The active model on those items."""
    shadow: ModelScore = field(default_factory=ModelScore)
    """The candidate on those items."""
    only_active_right: int = 0
    """Known items the active model got right and the candidate wrong."""
    only_shadow_right: int = 0
    """... and the other way round."""

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["agreement"] = self.same_grade / self.shadowed if self.shadowed else None
        d["bin_agreement"] = self.same_bin / self.shadowed if self.shadowed else None
        d["active"]["accuracy_pct"] = self.active.pct(self.known)
        d["shadow"]["accuracy_pct"] = self.shadow.pct(self.known)
        return d


def shadow_report(
    db: str | Path,
    *,
    run: str | None = None,
    crops: str | Path | None = None,
    truth: str | Path | None = None,
) -> ShadowReport:
    """Compare the two models over one run of the log at `db` (see the module docstring)."""
    rows = _rows(Path(db), run)
    shadowed = [r for r in rows if r.get("shadow_label") is not None]
    if not shadowed:
        raise SorterError(
            f"{db}: run {rows[0]['run']} has no shadow verdicts; run the sorter with "
            "--shadow CANDIDATE.tflite (or [model] shadow) first"
        )
    rep = ShadowReport(
        run=str(rows[0]["run"]),
        db=str(db),
        shadow_model=str(shadowed[0].get("shadow_model") or ""),
        items=len(rows),
        shadowed=len(shadowed),
    )
    for r in shadowed:
        rep.same_grade += int(r["shadow_label"] == r["label"])
        rep.same_bin += int(r.get("shadow_bin") == r["bin"])
        if r["shadow_label"] != r["label"]:
            rep.disagreements.append(_disagreement(r, crops))
    if truth is not None:
        known, rep.truth_source = _truth_from_file(shadowed, Path(truth)), f"truth {truth}"
    else:
        known, rep.truth_source = _truth_from_crops(shadowed, crops)
        reviewed, logs = _truth_from_review_logs(shadowed, crops)
        rep.not_produce = sum(1 for g in reviewed.values() if g == NOT_PRODUCE)
        known.update({i: g for i, g in reviewed.items() if g != NOT_PRODUCE})
        for i in reviewed:
            if reviewed[i] == NOT_PRODUCE:
                known.pop(i, None)
        if logs:
            rep.truth_source = ", ".join([*logs, *([rep.truth_source] if rep.truth_source else [])])
    _score(rep, shadowed, known, _bins_of(rows))
    return rep


def _rows(db: Path, run: str | None) -> list[dict[str, Any]]:
    if not db.is_file():
        raise SorterError(f"{db}: no such decision log; give the --db the sorter wrote")
    try:
        rows = read_decisions(db, run)
    except Exception as err:  # sqlite3.Error, a JSON column that is not JSON
        raise SorterError(f"{db}: not a readable decision log ({err})") from err
    if not rows:
        which = f"run {run}" if run else "any run"
        raise SorterError(f"{db}: no decisions for {which}; check --run (or the file)")
    return rows


def _disagreement(r: dict[str, Any], crops: str | Path | None) -> dict[str, Any]:
    crop = r.get("crop")
    if crop and crops is not None:
        found = _find_crop(Path(crops), Path(crop).name)
        crop = str(found) if found is not None else crop
    return {
        "item": r["item"],
        "label": r["label"],
        "confidence": round(float(r["confidence"]), 4),
        "bin": r["bin"],
        "shadow_label": r["shadow_label"],
        "shadow_confidence": round(float(r.get("shadow_confidence") or 0.0), 4),
        "shadow_bin": r.get("shadow_bin"),
        "crop": crop,
    }


def _find_crop(root: Path, name: str) -> Path | None:
    """Where the crop file `name` sits now under `root` (a grade folder or _review/<g>/)."""
    for p in sorted(root.glob(f"*/{name}")) + sorted(root.glob(f"_review/*/{name}")):
        if p.is_file():
            return p
    return None


def _truth_from_file(rows: list[dict[str, Any]], path: Path) -> dict[int, str]:
    """item -> true grade, matching the decisions to the truth file's items."""
    truth = load_truth(path)
    items = truth["items"]
    return {
        int(rows[di]["item"]): str(items[ti]["label"])
        for ti, di in match_to_truth(rows, truth).items()
    }


def _truth_from_crops(
    rows: list[dict[str, Any]], crops: str | Path | None
) -> tuple[dict[int, str], str]:
    """item -> true grade from crops a person moved (see the module docstring)."""
    known: dict[int, str] = {}
    root: Path | None = Path(crops) if crops is not None else None
    for r in rows:
        saved = r.get("crop")
        if not saved:
            continue
        saved_p = Path(saved)
        base = root if root is not None else _crops_root(saved_p)
        graded = sorted(base.glob(f"*/{saved_p.name}"))
        now = next((p for p in graded if not p.parent.name.startswith("_")), None)
        if now is None:
            continue
        was_review = saved_p.parent.parent.name == REVIEW_DIR
        if was_review or now.parent.name != saved_p.parent.name:
            known[int(r["item"])] = now.parent.name
    if root is None and not known:
        return known, ""
    return known, f"crops {root if root is not None else 'tree of the log'}"


def _crops_root(saved: Path) -> Path:
    """The crops folder a crop was saved in: DIR/<g>/x.png or DIR/_review/<g>/x.png -> DIR."""
    parent = saved.parent.parent
    return parent.parent if parent.name == REVIEW_DIR else parent


def _truth_from_review_logs(
    rows: list[dict[str, Any]], crops: str | Path | None
) -> tuple[dict[int, str], list[str]]:
    """item -> the reviewer's last answer (a grade or NOT_PRODUCE; skips left out), from the
    review log of the crops folder(s); and the logs read."""
    roots = {Path(crops)} if crops is not None else set()
    if crops is None:
        roots = {_crops_root(Path(r["crop"])) for r in rows if r.get("crop")}
    by_name = {Path(r["crop"]).name: int(r["item"]) for r in rows if r.get("crop")}
    by_run_item = {(str(r["run"]), int(r["item"])) for r in rows}
    out: dict[int, str] = {}
    used: list[str] = []
    for root in sorted(roots):
        entries = _read_review_log(root / REVIEW_LOG)
        if entries:
            used.append(f"review log {root / REVIEW_LOG}")
        for e in entries:
            item = _entry_item(e, by_name, by_run_item)
            answer = e.get("answer")
            if item is None or not isinstance(answer, str) or answer == SKIP:
                continue
            out[item] = answer
    return out, used


def _entry_item(
    e: dict[str, Any], by_name: dict[str, int], by_run_item: set[tuple[str, int]]
) -> int | None:
    run, item = e.get("run"), e.get("item")
    if isinstance(item, int) and (str(run), item) in by_run_item:
        return item
    name = e.get("crop")
    return by_name.get(name) if isinstance(name, str) else None


def _read_review_log(path: Path) -> list[dict[str, Any]]:
    """The review log's entries, oldest first (a torn or foreign line is skipped)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    except OSError as err:
        raise SorterError(f"{path}: cannot read the review log ({err})") from err
    out = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out


def _bins_of(rows: list[dict[str, Any]]) -> dict[str, str]:
    """grade -> bin as the run sent items (learned from the graded decisions)."""
    out: dict[str, str] = {}
    for r in rows:
        if r.get("reason") == "graded":
            out.setdefault(str(r["label"]), str(r["bin"]))
    return out


def _score(
    rep: ShadowReport, rows: list[dict[str, Any]], known: dict[int, str], bins: dict[str, str]
) -> None:
    for r in rows:
        grade = known.get(int(r["item"]))
        if grade is None:
            continue
        rep.known += 1
        a_ok, s_ok = r["label"] == grade, r["shadow_label"] == grade
        rep.active.correct += int(a_ok)
        rep.shadow.correct += int(s_ok)
        want = bins.get(grade, grade)
        rep.active.correct_bin += int(r["bin"] == want)
        rep.shadow.correct_bin += int(r.get("shadow_bin") == want)
        rep.only_active_right += int(a_ok and not s_ok)
        rep.only_shadow_right += int(s_ok and not a_ok)


def render_report(rep: ShadowReport, limit: int = 20) -> list[Table]:
    """The report as tables: the summary, then the first `limit` disagreements."""
    d = rep.as_dict()
    t = Table(title=f"Shadow report: run {rep.run}", show_header=False)
    t.add_row("candidate", rep.shadow_model)
    t.add_row("items (with a shadow verdict)", f"{rep.items} ({rep.shadowed})")
    t.add_row("same grade", f"{rep.same_grade} ({_pct(d['agreement'])})")
    t.add_row("same bin", f"{rep.same_bin} ({_pct(d['bin_agreement'])})")
    t.add_row("graded differently", str(len(rep.disagreements)))
    if rep.known:
        t.add_row("true grade known", f"{rep.known} ({rep.truth_source})")
        for name, score in (("active", rep.active), ("candidate", rep.shadow)):
            t.add_row(
                f"{name} correct grade / bin",
                f"{score.correct} ({score.pct(rep.known):.1f}%) / {score.correct_bin}",
            )
        t.add_row("only active right / only candidate right",
                  f"{rep.only_active_right} / {rep.only_shadow_right}")  # fmt: skip
    else:
        t.add_row("true grade known", "none (review crops, or give --truth for a replay)")
    if rep.not_produce:
        t.add_row("marked not produce", str(rep.not_produce))
    out = [t]
    if rep.disagreements:
        dt = Table(title="Where they disagree")
        for col in ("item", "active", "candidate", "bins", "crop"):
            dt.add_column(col)
        for x in rep.disagreements[:limit]:
            dt.add_row(
                str(x["item"]),
                f"{x['label']} {x['confidence']:.2f}",
                f"{x['shadow_label']} {x['shadow_confidence']:.2f}",
                f"{x['bin']} / {x['shadow_bin']}",
                str(x["crop"] or ""),
            )
        out.append(dt)
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100.0 * x:.1f}%"


def report_json(rep: ShadowReport) -> str:
    return json.dumps(rep.as_dict(), default=str)
