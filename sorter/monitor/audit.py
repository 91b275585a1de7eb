"""The decision log: every item's decision and its fate, in SQLite and JSON lines.

SQLite runs in WAL mode with one transaction per write, so a kill -9 loses at most the item
in flight; the log can be read while the sorter runs. Each run gets an id (its start time);
rows are keyed (run, item). A decision is inserted when it is made and its `status` updated
when the controller reports the command's fate.

JSON lines (`--log PATH.jsonl`) get one line per item once its fate is final, with the
fields of `DecisionRecord.as_dict()`. When the controller later corrects a fate (a SORT
reported `timeout` whose FIRED arrives after all), a second line for the item follows with
`"corrected": true`: the last line of an item wins.

`--save-crops DIR` keeps each item's best crop as DIR/<grade>/<run>_<item>.png (the run
prefix keeps runs from overwriting each other; a lane's sorter names it
<lane>_<run>_<item>.png, so crops gathered from many lanes stay apart), or
DIR/_review/<grade>/<run>_<item>.png when its confidence is below the review threshold: a
person checks _review/, moves each crop to the right grade folder, and the folder-per-grade
tree goes to `sorter-train`.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

from firmware_bridge.command import Fate
from sorter.errors import SorterError

log = logging.getLogger(__name__)

FINAL_STATUSES = frozenset(
    {Fate.FIRED, Fate.LATE, Fate.NAK, Fate.TIMEOUT, Fate.CANCELLED, Fate.DRY_RUN, Fate.REJECTED}
)
"""Statuses after which a decision's fate does not change."""

EXTRA_COLUMNS: dict[str, str] = {"lane": "TEXT"}
"""Optional decision columns (name -> SQLite type) beyond the core schema below.

A feature that logs more per item adds its column here and puts the value in the record's
`extra` under the same name; `open()` adds missing columns to an older database
(ALTER TABLE ... ADD COLUMN), so old logs stay readable and new rows carry the value. A
record without the value stores NULL. Values must be SQLite-storable (str, int, float,
None; lists and dicts are stored as JSON text).
"""

_CORE_COLUMNS = (
    "run", "item", "t_line", "label", "confidence", "margin", "scores", "views", "reason",
    "bin", "gate", "fire_at", "fired_at", "status", "latency_ms", "crop", "decided_wall",
)  # fmt: skip

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    run TEXT NOT NULL,
    item INTEGER NOT NULL,
    t_line REAL NOT NULL,
    label TEXT NOT NULL,
    confidence REAL NOT NULL,
    margin REAL NOT NULL,
    scores TEXT NOT NULL,
    views INTEGER NOT NULL,
    reason TEXT NOT NULL,
    bin TEXT NOT NULL,
    gate INTEGER,
    fire_at REAL,
    fired_at REAL,
    status TEXT NOT NULL,
    latency_ms REAL,
    crop TEXT,
    decided_wall TEXT NOT NULL,
    PRIMARY KEY (run, item)
);
CREATE TABLE IF NOT EXISTS runs (
    run TEXT PRIMARY KEY,
    started_wall TEXT NOT NULL,
    source TEXT NOT NULL,
    model TEXT NOT NULL,
    labels TEXT NOT NULL,
    summary TEXT
);
"""


@dataclass
class DecisionRecord:
    """One item's decision (a row of the log; docs/INTERFACES.md lists the core fields)."""

    item: int
    """Item (track) id, unique within a run; also the SORT item number."""
    t_line: float
    """Seconds on the source timeline when the item crossed the decision line."""
    label: str
    """Top grade."""
    confidence: float
    """Top grade's score (mean over views), 0..1."""
    scores: list[float]
    """Mean score per grade, in the model's label order."""
    bin: str
    """The bin it was sent to (the reject bin when uncertain or late)."""
    gate: int | None
    """The gate commanded, or None."""
    fire_at: float | None
    """Ideal fire time on the source timeline, or None."""
    status: str
    """pending, then fired | late | nak | timeout | cancelled | dry-run | rejected."""
    margin: float = 0.0
    """Top score minus second score."""
    views: int = 0
    """Number of views averaged."""
    reason: str = "graded"
    """Policy reason: graded, low-confidence, low-margin, too-few-views, no-bin, bad-scores."""
    fired_at: float | None = None
    """When the controller reports it fired, on the source timeline (None if unknown)."""
    latency_ms: float | None = None
    """Processing latency from the frame that decided it to the command, in ms."""
    crop: str | None = None
    """Path of the saved crop, if any."""
    run: str = ""
    """The run id this record belongs to."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything else worth keeping (not stored in SQLite)."""

    def as_dict(self) -> dict[str, Any]:
        """The JSON-lines form."""
        d = asdict(self)
        d.pop("extra")
        d.update(self.extra)
        return d


class DecisionLog:
    """SQLite (+ optional JSON lines, + optional crops) writer; thread safe."""

    def __init__(
        self,
        db_path: str | Path | None,
        *,
        jsonl_path: str | Path | None = None,
        crops_dir: str | Path | None = None,
        review_below: float = 0.6,
        run: str | None = None,
        keep: int | None = None,
        lane: str = "",
    ) -> None:
        self.lane = lane
        """The lane id ([lane] id): stored in every record's `lane` column and prefixed to every
        crop's name (LANE_RUN_ITEM.png); empty on a single-lane farm."""
        self.db_path = Path(db_path) if db_path else None
        self.jsonl_path = Path(jsonl_path) if jsonl_path else None
        self.crops_dir = Path(crops_dir) if crops_dir else None
        self.review_below = review_below
        self.run = run or f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._jsonl: IO[str] | None = None
        self._records: dict[int, DecisionRecord] = {}
        self.keep = keep
        """Records kept in memory (None: all, for a replay's scorecard; a live run keeps the
        latest N plus every pending one; the database keeps everything)."""
        self._written: set[int] = set()
        self._opened = False

    # -- lifecycle ------------------------------------------------------------------
    def open(self, *, source: str = "", model: str = "", labels: list[str] | None = None) -> None:
        """Open (creating) the database, JSON-lines file and crops folder."""
        self._opened = True
        if self.db_path is not None:
            try:
                self.db_path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(_SCHEMA)
                _add_extra_columns(db)
                db.execute(
                    "INSERT OR REPLACE INTO runs (run, started_wall, source, model, labels) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (self.run, _wall(), source, model, json.dumps(labels or [])),
                )
            except (OSError, sqlite3.Error) as err:
                raise SorterError(
                    f"{self.db_path}: cannot open the decision log ({err}); "
                    "check the path and its permissions (--db / logging.db)"
                ) from err
            self._db = db
        if self.jsonl_path is not None:
            try:
                self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
                self._jsonl = self.jsonl_path.open("a", encoding="utf-8")
            except OSError as err:
                raise SorterError(
                    f"{self.jsonl_path}: cannot write the JSON-lines log ({err.strerror})"
                ) from err
        if self.crops_dir is not None:
            try:
                self.crops_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise SorterError(
                    f"{self.crops_dir}: cannot create the crops folder ({err.strerror})"
                ) from err

    @property
    def is_open(self) -> bool:
        """True between open() and close()."""
        return self._db is not None or self._jsonl is not None or self._opened

    def close(self, summary: dict[str, Any] | None = None) -> None:
        """Write what is still unwritten to the JSON lines, store the summary, close."""
        with self._lock:
            for rec in self._records.values():
                if rec.item not in self._written:
                    self._write_jsonl(rec)
            if self._db is not None:
                if summary is not None:
                    self._db.execute(
                        "UPDATE runs SET summary = ? WHERE run = ?",
                        (json.dumps(summary), self.run),
                    )
                self._db.close()
                self._db = None
            if self._jsonl is not None:
                self._jsonl.close()
                self._jsonl = None
            self._opened = False

    def __enter__(self) -> DecisionLog:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing --------------------------------------------------------------------
    def record(self, rec: DecisionRecord, crop: np.ndarray | None = None) -> DecisionRecord:
        """Store a new decision (one transaction); save its crop if crops are kept."""
        rec.run = self.run
        if self.lane:
            rec.extra.setdefault("lane", self.lane)
        if crop is not None and self.crops_dir is not None:
            rec.crop = str(self._save_crop(rec, crop))
        with self._lock:
            self._records[rec.item] = rec
            if self.keep is not None and len(self._records) > self.keep:
                self._trim()
            if self._db is not None:
                self._insert(rec)
            if rec.status in FINAL_STATUSES:
                self._write_jsonl(rec)
        return rec

    def _insert(self, rec: DecisionRecord) -> None:
        assert self._db is not None
        values: list[Any] = [
            rec.run, rec.item, rec.t_line, rec.label, rec.confidence, rec.margin,
            json.dumps(rec.scores), rec.views, rec.reason, rec.bin, rec.gate, rec.fire_at,
            rec.fired_at, rec.status, rec.latency_ms, rec.crop, _wall(),
        ]  # fmt: skip
        names = list(_CORE_COLUMNS)
        for name in EXTRA_COLUMNS:
            names.append(name)
            values.append(_sql_value(rec.extra.get(name)))
        marks = ", ".join("?" * len(names))
        self._db.execute(
            f"INSERT OR REPLACE INTO decisions ({', '.join(names)}) VALUES ({marks})", values
        )

    def update_fate(
        self, item: int, status: str, *, fired_at: float | None = None, bin_name: str | None = None
    ) -> DecisionRecord | None:
        """Record a command's fate (called from the link's thread)."""
        with self._lock:
            rec = self._records.get(item)
            if rec is None:  # forgotten from memory (keep=N): correct the row only
                if self._db is not None:
                    cur = self._db.execute(
                        "UPDATE decisions SET status = ?, fired_at = COALESCE(?, fired_at), "
                        "bin = COALESCE(?, bin) WHERE run = ? AND item = ?",
                        (status, fired_at, bin_name, self.run, item),
                    )
                    if cur.rowcount:
                        return None
                log.warning("fate %s for unknown item %d", status, item)
                return None
            corrected = rec.status in FINAL_STATUSES and rec.status != status
            rec.status = status
            if fired_at is not None:
                rec.fired_at = fired_at
            if bin_name is not None:
                rec.bin = bin_name
            if corrected and rec.item in self._written:
                # the controller's later word (e.g. timeout -> fired): a new line supersedes
                rec.extra["corrected"] = True
                self._written.discard(rec.item)
            if self._db is not None:
                self._db.execute(
                    "UPDATE decisions SET status = ?, fired_at = ?, bin = ? "
                    "WHERE run = ? AND item = ?",
                    (rec.status, rec.fired_at, rec.bin, self.run, item),
                )
            if status in FINAL_STATUSES:
                self._write_jsonl(rec)
            return rec

    def _trim(self) -> None:
        """Forget the oldest decisions whose fate is final (they stay in the database)."""
        assert self.keep is not None
        excess = len(self._records) - self.keep
        for item in list(self._records):
            if excess <= 0:
                break
            if self._records[item].status in FINAL_STATUSES:
                del self._records[item]
                self._written.discard(item)
                excess -= 1

    def records(self) -> list[DecisionRecord]:
        """Every decision of this run so far, in item order."""
        with self._lock:
            return [self._records[k] for k in sorted(self._records)]

    def pending(self) -> list[DecisionRecord]:
        """Decisions whose fate is not known yet."""
        with self._lock:
            return [r for r in self._records.values() if r.status not in FINAL_STATUSES]

    def _write_jsonl(self, rec: DecisionRecord) -> None:
        if self._jsonl is None or rec.item in self._written:
            return
        self._jsonl.write(json.dumps(rec.as_dict()) + "\n")
        self._jsonl.flush()
        self._written.add(rec.item)

    def _save_crop(self, rec: DecisionRecord, crop: np.ndarray) -> Path:
        assert self.crops_dir is not None
        folder = self.crops_dir
        if rec.confidence < self.review_below or rec.reason != "graded":
            folder = folder / "_review"
        folder = folder / _safe_name(rec.label)
        folder.mkdir(parents=True, exist_ok=True)
        prefix = f"{self.lane}_" if self.lane else ""
        path = folder / f"{prefix}{self.run}_{rec.item}.png"
        if not cv2.imwrite(str(path), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)):
            log.warning("could not write crop %s", path)
        return path


def read_decisions(db_path: str | Path, run: str | None = None) -> list[dict[str, Any]]:
    """The decisions in a log (the latest run, or `run`), as dicts in item order."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        db.row_factory = sqlite3.Row
        if run is None:
            row = db.execute("SELECT run FROM runs ORDER BY started_wall DESC, run DESC").fetchone()
            if row is None:
                return []
            run = str(row["run"])
        rows = db.execute("SELECT * FROM decisions WHERE run = ? ORDER BY item", (run,)).fetchall()
    finally:
        db.close()
    out = []
    for r in rows:
        d = dict(r)
        d["scores"] = json.loads(d["scores"])
        out.append(d)
    return out


def _add_extra_columns(db: sqlite3.Connection) -> None:
    """Add the EXTRA_COLUMNS an older decision log does not have yet."""
    have = {str(row[1]) for row in db.execute("PRAGMA table_info(decisions)")}
    for name, sql_type in EXTRA_COLUMNS.items():
        if name not in have:
            db.execute(f"ALTER TABLE decisions ADD COLUMN {name} {sql_type}")


def _sql_value(value: Any) -> Any:
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return value


def _wall() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _safe_name(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label) or "_"
