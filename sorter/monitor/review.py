"""Reviewing saved crops: what waits for a person's check, and filing the grade they give.

`sorter run --save-crops DIR` keeps crops as DIR/<grade>/<run>_<item>.png, or under
DIR/_review/<grade>/ when the model was unsure. `ReviewQueue(DIR, db)` lists the crops in
_review/ plus a sample of the confident ones (so mistakes the model is sure about surface
too), each with the model's top grades from the decision log, and files a person's answer:

    a grade          the crop moves to DIR/<grade>/ (the folder-per-grade tree sorter-train reads)
    "_not_produce"   the crop moves to DIR/_not_produce/ (a '_' folder: sorter-train skips it)
    "_skip"          the crop stays where it is; it comes back later (after the others)

Every answer is appended to DIR/_review_log.jsonl (one JSON object a line, fsync'ed):
``{"t", "who", "addr", "crop", "run", "item", "from", "to", "answer", "model_grade",
"model_confidence"}`` with `crop` the file name, `from`/`to` paths relative to DIR. A
confident crop that was confirmed (or skipped) is not sampled again.

Crops are named by an opaque id (a hash of the path relative to DIR); requests carry ids
only, and an id resolves only to a crop in the current listing, so no request can name a
path. The dashboard (sorter.monitor.dashboard) serves this as the /review page.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sorter.errors import SorterError
from sorter.perception.preprocess import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

__all__ = ["NOT_PRODUCE", "REVIEW_LOG", "SKIP", "ReviewError", "ReviewItem", "ReviewQueue"]

REVIEW_DIR = "_review"
NOT_PRODUCE = "_not_produce"
"""The answer (and the folder under the crops folder) for a crop that is not produce."""
SKIP = "_skip"
"""The answer that leaves a crop where it is."""
REVIEW_LOG = "_review_log.jsonl"
"""The append-only review log, in the crops folder."""
TOP_GRADES = 3
"""How many of the model's grades each crop shows."""


class ReviewError(SorterError):
    """A review answer that cannot be filed; `code` is the HTTP status that fits."""

    def __init__(self, message: str, code: int = 400) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ReviewItem:
    """One crop waiting for a person."""

    id: str
    """Opaque id (hash of the path relative to the crops folder)."""
    rel: str
    """Path relative to the crops folder (never sent to the page)."""
    kind: str
    """'review' (the model was unsure) or 'confident' (a sample of the sure ones)."""
    grade: str
    """The grade folder it sits in (the model's grade)."""
    top: list[tuple[str, float]] = field(default_factory=list)
    """The model's top grades and scores from the decision log (empty when not found)."""
    run: str | None = None
    item: int | None = None

    def public(self) -> dict[str, Any]:
        """What the page gets (no paths)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "grade": self.grade,
            "top": [[g, round(s, 4)] for g, s in self.top],
            "run": self.run,
            "item": self.item,
        }


def crop_id(rel: str) -> str:
    """The id of the crop at `rel` (relative to the crops folder)."""
    return hashlib.sha256(rel.encode()).hexdigest()[:20]


class ReviewQueue:
    """The crops folder seen by the review page; thread-safe (one lock around moves)."""

    def __init__(
        self,
        crops_dir: str | Path,
        db: str | Path | None = None,
        grades: list[str] | None = None,
        *,
        confident_share: float = 0.25,
        min_confident: int = 5,
        limit: int = 200,
    ) -> None:
        self.root = Path(crops_dir)
        self.db = Path(db) if db else None
        self._grades = list(grades or [])
        self.confident_share = confident_share
        self.min_confident = min_confident
        self.limit = limit
        self._lock = threading.Lock()

    # -- reading ---------------------------------------------------------------------------
    def grades(self) -> list[str]:
        """The grades a person can choose: the configured ones, then any other grade folder."""
        out = list(self._grades)
        if self.root.is_dir():
            for d in sorted(self.root.iterdir()):
                if d.is_dir() and not d.name.startswith(("_", ".")) and d.name not in out:
                    out.append(d.name)
        return out

    def items(self) -> list[ReviewItem]:
        """The crops in _review/ (skipped ones last), then a sample of confident crops, each
        with the model's top grades."""
        return self._with_scores(self._listing())

    def _listing(self) -> list[ReviewItem]:
        seen = self._answered()
        unsure = self._scan(self.root / REVIEW_DIR, "review")
        unsure.sort(key=lambda it: (seen.get(it.rel) == SKIP, _natural(Path(it.rel).name)))
        sure = [it for it in self._scan(self.root, "confident") if it.rel not in seen]
        sure.sort(key=lambda it: it.id)  # a stable pseudo-random sample
        n_sure = max(self.min_confident, round(self.confident_share * len(unsure)))
        return (unsure + sure[:n_sure])[: self.limit]

    def find(self, item_id: str) -> ReviewItem:
        """The listed crop with this id; ReviewError(404) when there is none."""
        if not (len(item_id) == 20 and all(c in "0123456789abcdef" for c in item_id)):
            raise ReviewError(f"bad crop id {item_id[:40]!r}", 404)
        for it in self._listing():
            if it.id == item_id:
                return self._with_scores([it])[0]
        raise ReviewError("no such crop to review (already reviewed? reload the page)", 404)

    def path(self, item: ReviewItem) -> Path:
        """The crop's file."""
        return self.root / item.rel

    def _scan(self, folder: Path, kind: str) -> list[ReviewItem]:
        out: list[ReviewItem] = []
        if not folder.is_dir():
            return out
        for grade_dir in sorted(folder.iterdir()):
            if not grade_dir.is_dir() or grade_dir.name.startswith(("_", ".")):
                continue
            with os.scandir(grade_dir) as entries:
                for e in entries:
                    if e.is_file() and Path(e.name).suffix.lower() in IMAGE_SUFFIXES:
                        rel = (grade_dir / e.name).relative_to(self.root).as_posix()
                        out.append(ReviewItem(crop_id(rel), rel, kind, grade_dir.name))
        return out

    def _answered(self) -> dict[str, str]:
        """Crop path (relative, where it was when answered) -> the last answer given."""
        out: dict[str, str] = {}
        for entry in read_review_log(self.root):
            answer = str(entry.get("answer", ""))
            out[str(entry.get("from", ""))] = answer
            if answer != SKIP:
                out[str(entry.get("to", ""))] = answer
        return out

    def _with_scores(self, items: list[ReviewItem]) -> list[ReviewItem]:
        if self.db is None or not self.db.is_file() or not items:
            return items
        try:
            db = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=1.0)
        except sqlite3.Error as err:
            log.warning("review: cannot read %s (%s); crops shown without scores", self.db, err)
            return items
        labels: dict[str, list[str]] = {}
        out = []
        try:
            for it in items:
                out.append(_scored(db, it, labels))
        except sqlite3.Error as err:
            log.warning("review: cannot read %s (%s); crops shown without scores", self.db, err)
            return items
        finally:
            db.close()
        return out

    # -- writing ---------------------------------------------------------------------------
    def answer(self, item_id: str, answer: str, who: str, addr: str = "") -> dict[str, Any]:
        """File a person's answer for one crop (see the module doc); returns the log entry."""
        who = "".join(c for c in who if c.isprintable()).strip()[:40] or "anonymous"
        with self._lock:
            item = self.find(item_id)
            if answer == SKIP:
                dest_rel = item.rel
            elif answer == NOT_PRODUCE:
                dest_rel = f"{NOT_PRODUCE}/{Path(item.rel).name}"
            elif answer in self.grades():
                dest_rel = f"{answer}/{Path(item.rel).name}"
            else:
                raise ReviewError(f"unknown grade {answer[:40]!r}: choose one of the buttons")
            entry = {
                "t": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "who": who,
                "addr": addr,
                "crop": Path(item.rel).name,
                "run": item.run,
                "item": item.item,
                "from": item.rel,
                "to": dest_rel,
                "answer": answer,
                "model_grade": item.grade,
                "model_confidence": item.top[0][1] if item.top else None,
            }
            self._move(item.rel, dest_rel)
            try:
                self._append(entry)
            except OSError as err:
                self._move(dest_rel, item.rel)  # undo: an answer is filed with its log line
                raise ReviewError(f"{self.root / REVIEW_LOG}: cannot write ({err})", 500) from err
        log.info("review: %s -> %s by %s", item.rel, dest_rel, who)
        return entry

    def _move(self, rel: str, dest_rel: str) -> None:
        if rel == dest_rel:
            return
        src, dest = self.root / rel, self.root / dest_rel
        if dest.exists():
            raise ReviewError(f"{dest_rel} already exists; move it by hand", 409)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
        except OSError as err:
            raise ReviewError(f"cannot move {rel} to {dest_rel} ({err})", 500) from err

    def _append(self, entry: dict[str, Any]) -> None:
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        fd = os.open(self.root / REVIEW_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)


def read_review_log(crops_dir: str | Path) -> list[dict[str, Any]]:
    """The entries of crops_dir/_review_log.jsonl, oldest first (a torn last line is ignored)."""
    path = Path(crops_dir) / REVIEW_LOG
    out: list[dict[str, Any]] = []
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    out.append(entry)
    return out


def _natural(name: str) -> list[Any]:
    """Sort key putting run_2 before run_10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _run_item_candidates(name: str) -> list[tuple[str, int]]:
    """(run, item) pairs a crop name [<lane>_]<run>_<item>.png may stand for."""
    stem = Path(name).stem
    prefix, _, item_text = stem.rpartition("_")
    if not item_text.isdigit() or not prefix:
        return []
    out = [(prefix, int(item_text))]
    while "_" in prefix:  # a lane prefix (lane ids may hold '_')
        prefix = prefix.split("_", 1)[1]
        out.append((prefix, int(item_text)))
    return out


def _scored(db: sqlite3.Connection, it: ReviewItem, labels: dict[str, list[str]]) -> ReviewItem:
    for run, item in _run_item_candidates(Path(it.rel).name):
        row = db.execute(
            "SELECT scores FROM decisions WHERE run = ? AND item = ?", (run, item)
        ).fetchone()
        if row is None:
            continue
        if run not in labels:
            lab = db.execute("SELECT labels FROM runs WHERE run = ?", (run,)).fetchone()
            labels[run] = [str(x) for x in json.loads(lab[0])] if lab else []
        try:
            scores = [float(s) for s in json.loads(row[0])]
        except (TypeError, ValueError):
            scores = []
        names = labels[run]
        pairs = sorted(zip(names, scores, strict=False), key=lambda p: -p[1])[:TOP_GRADES]
        return ReviewItem(it.id, it.rel, it.kind, it.grade, pairs, run, item)
    return it
