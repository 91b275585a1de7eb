"""The decision log: every item's decision and its fate, in SQLite and JSON lines.

Each run gets an id (its start time); rows are keyed (run, item). A decision is inserted when
it is made and its `status` updated when the controller reports the command's fate.

Writing never stops the sorter. `record()` and `update_fate()` (the latter called from the
link's thread: command callback -> decider -> here) only update memory and queue the write;
two writer threads per log (SQLite; JSON lines) do the I/O, so a locked database or a slow
disk delays the log, never the loop or the link's reader (nor the JSON lines, for the
database). A write that fails (disk full, database
locked past its busy timeout (`busy_s`, 1 s), an I/O error) is kept and retried with backoff (0.5 s
doubling to 5 s); each failed attempt is counted (`health()`, `watch()`: the runner shows
them as `sorter_decision_log_errors_total` on /metrics, in the status snapshot the dashboard
shows and as a `decision_log` alarm, cleared once a write succeeds again). Queued writes are
coalesced per item, so the backlog is at most one row per item; it holds `max_backlog` rows
(and as many JSON lines). Past that the OLDEST queued write is dropped, counted
(`sorter_decision_log_dropped_total`) and logged with its item number; while the backlog
fits nothing is lost. The records in memory (the scorecard, `records()`) are never affected.
`flush()` waits for the backlog; `close()` flushes (bounded) and logs what it could not write.

Durability on a power cut (the usual failure on a Pi): SQLite runs in WAL mode with
`synchronous=FULL` and one transaction per writer pass, so every committed decision
survives a power cut, and the log can be read while the sorter runs. The JSON-lines file
gets whole-line appends, fsync'ed at most every `fsync_s` (0.5 s) and at close, so a power
cut loses at most the last half second of lines (a kill -9 loses none that were written:
they are in the OS). Besides, a kill -9 or a power cut loses what was still queued: the
writer commits within milliseconds of a decision unless the disk is failing.

JSON lines (`--log PATH.jsonl`) get one line per item once its fate is final, with the
fields of `DecisionRecord.as_dict()`. When the controller later corrects a fate (a SORT
reported `timeout` whose FIRED arrives after all), a second line for the item follows with
`"corrected": true`: the last line of an item wins.

`--save-crops DIR` keeps each item's best crop as DIR/<grade>/<run>_<item>.png (the run
prefix keeps runs from overwriting each other; a lane's sorter names it
<lane>_<run>_<item>.png, so crops gathered from many lanes stay apart), or
DIR/_review/<grade>/<run>_<item>.png when its confidence is below the review threshold: a
person checks _review/, moves each crop to the right grade folder, and the folder-per-grade
tree goes to `sorter-train`. A crop that cannot be written (disk full) counts as
a log error and its record keeps no crop path.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import sqlite3
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from firmware_bridge.command import Fate
from sorter.errors import SorterError

log = logging.getLogger(__name__)

FINAL_STATUSES = frozenset(
    {Fate.FIRED, Fate.LATE, Fate.NAK, Fate.TIMEOUT, Fate.CANCELLED, Fate.DRY_RUN, Fate.REJECTED}
)
"""Statuses after which a decision's fate does not change."""

EXTRA_COLUMNS: dict[str, str] = {
    "lane": "TEXT",
    # the model that decided the item (content id; changes when a reload switches models)
    "model_id": "TEXT",
    # shadow mode (sorter.grading.shadow): the candidate model's verdict beside the active one
    "shadow_label": "TEXT",
    "shadow_confidence": "REAL",
    "shadow_scores": "TEXT",
    "shadow_bin": "TEXT",
    "shadow_reason": "TEXT",
    "shadow_views": "INTEGER",
    "shadow_model": "TEXT",
    # the item's size in mm from its full-resolution mask (sorter.perception.sizes)
    "length_mm": "REAL",
    "width_mm": "REAL",
    "bend_mm": "REAL",
}
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


@dataclass(frozen=True)
class LogHealth:
    """How the decision log's writes are going (`DecisionLog.health()`)."""

    errors: int = 0
    """Failed write attempts so far (SQLite, JSON lines, fsync or crop files)."""
    backlog: int = 0
    """Writes queued and not yet done (SQLite rows + JSON lines)."""
    dropped: int = 0
    """Queued writes dropped because the backlog was full (oldest first)."""
    last_error: str | None = None
    """The latest failure, or None once a write succeeded after it."""


@dataclass
class _Op:
    """One queued SQLite write for an item (the latest state wins)."""

    item: int
    rec: DecisionRecord | None
    """Where the values come from at write time; None for an item forgotten in memory."""
    insert: bool
    """A whole row (INSERT OR REPLACE) rather than an UPDATE of its fate."""
    wall: str = ""
    status: str = ""
    fired_at: float | None = None
    bin: str | None = None
    version: int = 0
    """Bumped on every change: a write done from an older version does not retire it."""


HealthCallback = Callable[[LogHealth], None]
_ROWS_PER_PASS = 2000
"""Row writes per transaction (a long backlog is written in several, the lock held briefly)."""


class DecisionLog:
    """SQLite (+ optional JSON lines, + optional crops) writer; thread safe; see the module
    docstring for the writer thread, the retries and the backlog."""

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
        max_backlog: int = 100_000,
        retry_s: tuple[float, float] = (0.5, 5.0),
        fsync_s: float = 0.5,
        busy_s: float = 1.0,
    ) -> None:
        self.lane = lane
        """The lane id ([lane] id): stored in every record's `lane` column and prefixed to every
        crop's name (LANE_RUN_ITEM.png); empty on a single-lane farm."""
        self.db_path = Path(db_path) if db_path else None
        self.jsonl_path = Path(jsonl_path) if jsonl_path else None
        self.crops_dir = Path(crops_dir) if crops_dir else None
        self.review_below = review_below
        self.run = run or f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        self.max_backlog = max_backlog
        """Queued SQLite rows (and, separately, JSON lines) kept before the oldest is dropped."""
        self.retry_s = retry_s
        """(first, longest) wait before retrying a failed write; doubles in between."""
        self.fsync_s = fsync_s
        """Longest time written JSON lines stay un-fsync'ed."""
        self.busy_s = busy_s
        """How long a write waits for another writer's lock before it counts as failed."""
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._db: sqlite3.Connection | None = None
        self._fd: int | None = None
        self._records: dict[int, DecisionRecord] = {}
        self.keep = keep
        """Records kept in memory (None: all, for a replay's scorecard; a live run keeps the
        latest N plus every pending one; the database keeps everything)."""
        self._written: set[int] = set()
        self._opened = False
        self._pending: OrderedDict[int, _Op] = OrderedDict()
        self._lines: deque[tuple[int, bytes]] = deque()
        self._buf = b""
        """JSON-lines bytes the writer has taken and not yet written (a short write's rest)."""
        self._buf_lines = 0
        self._unsynced = False
        self._sync_now = False
        self._last_fsync = 0.0
        self._errors = 0
        self._dropped = 0
        self._problems: dict[str, str | None] = {"rows": None, "lines": None}
        """The latest failure of each writer (None: its last write worked)."""
        self._watchers: list[HealthCallback] = []
        self._writers: list[threading.Thread] = []
        self._stop = threading.Event()

    # -- lifecycle ------------------------------------------------------------------
    def open(self, *, source: str = "", model: str = "", labels: list[str] | None = None) -> None:
        """Open (creating) the database, JSON-lines file and crops folder; start the writer."""
        self._opened = True
        if self.db_path is not None:
            self._db = self._open_db(source, model, labels)
        if self.jsonl_path is not None:
            try:
                self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
                flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
                self._fd = os.open(self.jsonl_path, flags, 0o666)
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
        self._stop.clear()
        for rows, wanted in ((True, self._db is not None), (False, self._fd is not None)):
            if wanted:
                name = "decision-log-" + ("sqlite" if rows else "jsonl")
                t = threading.Thread(target=self._writer_main, args=(rows,), name=name)
                t.daemon = True
                t.start()
                self._writers.append(t)

    def _open_db(self, source: str, model: str, labels: list[str] | None) -> sqlite3.Connection:
        assert self.db_path is not None
        try:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.db_path, check_same_thread=False, isolation_level=None, timeout=self.busy_s
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a committed decision survives a power cut
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
        return db

    @property
    def is_open(self) -> bool:
        """True between open() and close()."""
        return self._db is not None or self._fd is not None or self._opened

    def close(self, summary: dict[str, Any] | None = None, *, timeout: float = 5.0) -> None:
        """Write what is still unwritten (waiting up to `timeout` s for a failing disk),
        store the summary, fsync and close. What could not be written is logged as lost."""
        with self._cond:
            for rec in self._records.values():
                if rec.item not in self._written:
                    self._queue_line(rec)
            self._cond.notify_all()
        done = self.flush(timeout)
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for t in self._writers:
            t.join(timeout=timeout)
        self._writers = []
        if not done:
            h = self.health()
            log.error(
                "decision log: %d writes could not be done before closing (%s); they are lost",
                h.backlog,
                h.last_error,
            )
        with self._lock:
            self._close_files(summary)
            self._opened = False

    def _close_files(self, summary: dict[str, Any] | None) -> None:
        if self._db is not None:
            if summary is not None:
                try:
                    self._db.execute(
                        "UPDATE runs SET summary = ? WHERE run = ?",
                        (json.dumps(summary), self.run),
                    )
                except sqlite3.Error as err:
                    log.error("%s: could not store the run summary: %s", self.db_path, err)
            self._db.close()
            self._db = None
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DecisionLog:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- health -----------------------------------------------------------------------
    def watch(self, callback: HealthCallback) -> None:
        """Call `callback(health)` (from the writer thread) whenever a write fails, a failed
        write succeeds again, the backlog changes or a queued write is dropped."""
        self._watchers.append(callback)
        callback(self.health())

    def health(self) -> LogHealth:
        """Errors, backlog and drops so far."""
        with self._lock:
            return self._health_locked()

    def _health_locked(self) -> LogHealth:
        backlog = len(self._pending) + len(self._lines) + self._buf_lines
        last = "; ".join(p for p in self._problems.values() if p) or None
        return LogHealth(self._errors, backlog, self._dropped, last)

    def _report(self, health: LogHealth) -> None:
        for cb in list(self._watchers):
            try:
                cb(health)
            except Exception:  # a broken watcher must not stop the writer
                log.exception("decision log health callback failed")

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every queued write is done and the JSON lines are fsync'ed; False if
        that did not happen within `timeout` s (the writes stay queued)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            if not self._writers:
                return not (self._pending or self._lines or self._buf)
            self._sync_now = True
            self._cond.notify_all()
            while self._pending or self._lines or self._buf or self._unsynced:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left if left is None else min(left, 0.1))
                self._sync_now = True
            return True

    # -- writing --------------------------------------------------------------------
    def record(self, rec: DecisionRecord, crop: np.ndarray | None = None) -> DecisionRecord:
        """Store a new decision (queued for the writer); save its crop if crops are kept."""
        rec.run = self.run
        if self.lane:
            rec.extra.setdefault("lane", self.lane)
        if crop is not None and self.crops_dir is not None:
            rec.crop = self._save_crop(rec, crop)
        with self._cond:
            self._records[rec.item] = rec
            if self.keep is not None and len(self._records) > self.keep:
                self._trim()
            if self._db is not None:
                self._queue_op(_Op(rec.item, rec, insert=True, wall=_wall()))
            if rec.status in FINAL_STATUSES:
                self._queue_line(rec)
            self._cond.notify_all()
        return rec

    def update_fate(
        self, item: int, status: str, *, fired_at: float | None = None, bin_name: str | None = None
    ) -> DecisionRecord | None:
        """Record a command's fate (called from the link's thread; never waits for I/O)."""
        with self._cond:
            rec = self._records.get(item)
            op = self._pending.get(item)
            if rec is None and op is not None and op.rec is not None:
                rec = op.rec  # forgotten in memory before its row was written
            if rec is None:  # forgotten from memory (keep=N): correct the row only
                if self._db is None:
                    log.warning("fate %s for unknown item %d", status, item)
                    return None
                if op is None:
                    op = self._queue_op(_Op(item, None, insert=False))
                op.status = status
                op.fired_at = fired_at if fired_at is not None else op.fired_at
                op.bin = bin_name if bin_name is not None else op.bin
                op.version += 1
                self._cond.notify_all()
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
                if op is None:
                    self._queue_op(_Op(item, rec, insert=False))
                else:
                    op.rec = rec
                    op.version += 1
            if status in FINAL_STATUSES:
                self._queue_line(rec)
            self._cond.notify_all()
            return rec

    def _queue_op(self, op: _Op) -> _Op:
        """Queue a row write (lock held); past max_backlog the oldest queued one goes."""
        old = self._pending.get(op.item)
        if old is not None and old.rec is not None and op.rec is old.rec:
            old.insert = old.insert or op.insert
            old.wall = old.wall or op.wall
            old.version += 1
            return old
        self._pending[op.item] = op
        while len(self._pending) > self.max_backlog:
            lost, _ = self._pending.popitem(last=False)
            self._drop(f"row of item {lost}")
        return op

    def _queue_line(self, rec: DecisionRecord) -> None:
        """Queue the item's JSON line (lock held), once per final status."""
        if self._fd is None or rec.item in self._written:
            return
        line = json.dumps(rec.as_dict(), default=_json_value) + "\n"
        self._lines.append((rec.item, line.encode()))
        self._written.add(rec.item)
        while len(self._lines) > self.max_backlog:
            lost, _ = self._lines.popleft()
            self._drop(f"JSON line of item {lost}")

    def _drop(self, what: str) -> None:
        self._dropped += 1
        if self._dropped == 1 or self._dropped % 1000 == 0:
            log.error(
                "decision log backlog full (%d): dropped the %s (%d dropped so far)",
                self.max_backlog,
                what,
                self._dropped,
            )

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

    # -- the writer thread ------------------------------------------------------------
    def _writer_main(self, rows: bool) -> None:
        """One writer: SQLite rows (`rows`) or JSON lines; each has its own thread, so a
        locked database does not hold up the JSON lines."""
        backoff = self.retry_s[0]
        sink = "rows" if rows else "lines"
        while True:
            with self._cond:
                while not (self._stop.is_set() or self._has_work(rows)):
                    self._cond.wait(1.0 if rows else self._sync_wait())
                if self._stop.is_set() and not self._has_work(rows):
                    return
                ops = self._take_ops() if rows else []
                if not rows and not self._buf and self._lines:
                    chunk = [self._lines.popleft() for _ in range(min(len(self._lines), 512))]
                    self._buf = b"".join(line for _, line in chunk)
                    self._buf_lines = len(chunk)
            problem = self._write_rows(ops) if rows else self._write_lines() or self._sync_lines()
            with self._cond:
                self._errors += problem is not None
                self._problems[sink] = problem
                health = self._health_locked()
                self._cond.notify_all()
            self._report(health)
            if problem is None:
                backoff = self.retry_s[0]
                continue
            log.error("decision log: %s; retrying in %.2f s", problem, backoff)
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, self.retry_s[1])

    def _has_work(self, rows: bool) -> bool:
        if rows:
            return bool(self._pending)
        if self._lines or self._buf:
            return True
        due = time.monotonic() - self._last_fsync >= self.fsync_s
        return self._unsynced and (due or self._sync_now)

    def _sync_wait(self) -> float:
        if self._unsynced:
            return max(0.001, self.fsync_s - (time.monotonic() - self._last_fsync))
        return 1.0

    def _take_ops(self) -> list[tuple[_Op, int, str, tuple[Any, ...]]]:
        """The queued row writes as (op, version, sql, params), values as of now (lock held)."""
        out = []
        for op in itertools.islice(self._pending.values(), _ROWS_PER_PASS):
            sql, params = self._statement(op)
            out.append((op, op.version, sql, params))
        return out

    def _statement(self, op: _Op) -> tuple[str, tuple[Any, ...]]:
        rec = op.rec
        if rec is None:
            return (
                "UPDATE decisions SET status = ?, fired_at = COALESCE(?, fired_at), "
                "bin = COALESCE(?, bin) WHERE run = ? AND item = ?",
                (op.status, op.fired_at, op.bin, self.run, op.item),
            )
        if not op.insert:
            return (
                "UPDATE decisions SET status = ?, fired_at = ?, bin = ? WHERE run = ? AND item = ?",
                (rec.status, rec.fired_at, rec.bin, self.run, rec.item),
            )
        values: list[Any] = [
            rec.run, rec.item, rec.t_line, rec.label, rec.confidence, rec.margin,
            json.dumps(rec.scores), rec.views, rec.reason, rec.bin, rec.gate, rec.fire_at,
            rec.fired_at, rec.status, rec.latency_ms, rec.crop, op.wall,
        ]  # fmt: skip
        names = list(_CORE_COLUMNS)
        for name in EXTRA_COLUMNS:
            names.append(name)
            values.append(_sql_value(rec.extra.get(name)))
        marks = ", ".join("?" * len(names))
        sql = f"INSERT OR REPLACE INTO decisions ({', '.join(names)}) VALUES ({marks})"
        return sql, tuple(values)

    def _write_rows(self, ops: list[tuple[_Op, int, str, tuple[Any, ...]]]) -> str | None:
        """Write the rows in one transaction; the problem, or None (writer thread).

        A transient failure (locked, disk full, I/O: OperationalError, OSError) keeps every
        row queued. A row SQLite refuses by its content (a value it cannot store) would fail
        every retry and hold up the rest: the rows are then written one by one and each
        refused one is dropped, counted and logged with its item.
        """
        db = self._db
        if not ops or db is None:
            return None
        try:
            self._transaction(db, ops)
        except (sqlite3.OperationalError, OSError) as err:
            return f"{self.db_path}: {err}"
        except sqlite3.Error as err:
            log.error("%s: a row was refused (%s); writing rows one by one", self.db_path, err)
            refused = []
            for one in ops:
                try:
                    self._transaction(db, [one])
                except (sqlite3.OperationalError, OSError) as again:
                    return f"{self.db_path}: {again}"
                except sqlite3.Error as bad:
                    refused.append(one)
                    log.error("decision log: item %d refused by SQLite (%s)", one[0].item, bad)
            self._retire(refused, dropped=True)
            return f"{self.db_path}: {len(refused)} rows refused ({err})" if refused else None
        return None

    def _transaction(self, db: sqlite3.Connection, ops: list[tuple[_Op, int, str, Any]]) -> None:
        """The ops in one transaction (rolled back on any error); retires what it wrote."""
        unknown = []
        try:
            db.execute("BEGIN IMMEDIATE")
            for op, _, sql, params in ops:
                if not db.execute(sql, params).rowcount and op.rec is None:
                    unknown.append(op.item)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        for item in unknown:
            log.warning("fate for unknown item %d", item)
        self._retire(ops)

    def _retire(self, ops: list[tuple[_Op, int, str, Any]], *, dropped: bool = False) -> None:
        """Take written (or refused) ops off the queue unless they changed meanwhile."""
        with self._lock:
            for op, version, _, _ in ops:
                if self._pending.get(op.item) is op and (dropped or op.version == version):
                    del self._pending[op.item]
                    self._dropped += dropped

    def _write_lines(self) -> str | None:
        """Append the taken JSON lines (whole, a short write's rest later); writer thread."""
        while self._buf and self._fd is not None:
            try:
                n = os.write(self._fd, self._buf)
            except OSError as err:
                return f"{self.jsonl_path}: {err.strerror or err}"
            with self._lock:
                self._buf_lines -= self._buf[:n].count(b"\n")
                self._buf = self._buf[n:]
                self._unsynced = True
        return None

    def _sync_lines(self) -> str | None:
        """fsync the JSON lines at most every fsync_s (sooner when flush() asks)."""
        if self._fd is None or not self._unsynced:
            return None
        now = time.monotonic()
        if now - self._last_fsync < self.fsync_s and not self._sync_now:
            return None
        try:
            os.fsync(self._fd)
        except OSError as err:
            return f"{self.jsonl_path}: fsync failed ({err.strerror or err})"
        with self._lock:
            self._last_fsync = now
            self._sync_now = False
            self._unsynced = bool(self._buf)
        return None

    def _save_crop(self, rec: DecisionRecord, crop: np.ndarray) -> str | None:
        assert self.crops_dir is not None
        folder = self.crops_dir
        if rec.confidence < self.review_below or rec.reason != "graded":
            folder = folder / "_review"
        folder = folder / _safe_name(rec.label)
        prefix = f"{self.lane}_" if self.lane else ""
        path = folder / f"{prefix}{self.run}_{rec.item}.png"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            ok = cv2.imwrite(str(path), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
            problem = None if ok else f"{path}: could not write the crop"
        except (OSError, cv2.error) as err:
            problem = f"{path}: could not write the crop ({err})"
        if problem is None:
            return str(path)
        log.warning("%s", problem)
        with self._lock:
            self._errors += 1
            health = self._health_locked()
        self._report(health)
        return None


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
        return json.dumps(value, default=_json_value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _json_value(value: Any) -> Any:
    """JSON for what json cannot write itself (numpy scalars and arrays; else its str)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _wall() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _safe_name(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label) or "_"
