"""A decision-log failure does not stop the sorter.

A full disk, a locked database or an unwritable JSON-lines file must not escape into the
loop (the item still goes to its bin), must not block the thread that reports fates (the
link's reader thread), must be counted where the operator sees it (/metrics, the status
snapshot the dashboard shows, an alarm) and must be retried: nothing is lost while the
backlog fits, and what an overflow drops is counted too.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import generate_latest

from sorter.actuation.decider import Decider, ItemViews
from sorter.actuation.scheduling import Scheduler
from sorter.config import GRADES, Config
from sorter.monitor.audit import DecisionLog, LogHealth, read_decisions
from sorter.monitor.status import Status
from tests.test_audit import rec
from tests.test_pipeline_decider import _Clock, _Command, _Link


def _lock_db(db: Path) -> sqlite3.Connection:
    """Another writer holding the database's write lock (BEGIN IMMEDIATE)."""
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    return other


def _fill_disk(log: DecisionLog) -> None:
    """SQLITE_FULL ("database or disk is full") on the next page the log needs."""
    db = log._db
    assert db is not None
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages + 1}")
    with pytest.raises(sqlite3.OperationalError, match="full"):
        for i in range(10000):  # use up the free space of the table's pages (another run)
            db.execute(
                "INSERT INTO decisions (run, item, t_line, label, confidence, margin, scores,"
                " views, reason, bin, status, decided_wall) VALUES"
                " ('filler', ?, 0, 'x', 0, 0, '[]', 0, 'x', 'x', 'x', 'x')",
                (i,),
            )


def _free_disk(log: DecisionLog) -> None:
    assert log._db is not None
    log._db.execute("PRAGMA max_page_count = 1073741823")


def _metric(status: Status, name: str) -> float:
    for line in generate_latest(status.registry).decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not on /metrics")


def test_disk_full_is_counted_alarmed_and_retried(tmp_path: Path) -> None:
    db, jsonl = tmp_path / "d.db", tmp_path / "d.jsonl"
    status = Status()
    log = DecisionLog(db, jsonl_path=jsonl, retry_s=(0.01, 0.05))
    log.open()
    log.watch(status.decision_log)
    _fill_disk(log)
    for i in range(1, 31):  # enough rows to need new pages
        log.record(rec(i, status="dry-run"))
    assert not log.flush(timeout=1.0)  # cannot: the disk is full
    health = log.health()
    assert health.errors >= 1 and health.backlog == 30 and health.dropped == 0
    assert "full" in (health.last_error or "")
    snap = status.snapshot()
    assert snap["decision_log"]["errors"] >= 1 and snap["decision_log"]["backlog"] == 30
    assert any(a["kind"] == "decision_log" for a in snap["alarms"])
    assert _metric(status, "sorter_decision_log_errors_total") >= 1
    assert _metric(status, "sorter_decision_log_backlog") == 30
    _free_disk(log)  # space again: the backlog is written, the alarm clears
    assert log.flush(timeout=5.0)
    assert [r["item"] for r in read_decisions(db)] == list(range(1, 31))
    snap = status.snapshot()
    assert snap["decision_log"]["backlog"] == 0
    assert not any(a["kind"] == "decision_log" for a in snap["alarms"])
    log.close()
    assert len(jsonl.read_text().splitlines()) == 30  # JSON lines were never affected


def test_a_locked_database_does_not_block_the_fate_thread(tmp_path: Path) -> None:
    """The link's reader thread calls update_fate (command callback -> decider -> audit);
    with another writer holding the lock it must return at once, not after the 5 s busy
    timeout, and the fate reaches the database once the lock is released."""
    db = tmp_path / "d.db"
    log = DecisionLog(db, retry_s=(0.01, 0.05), busy_s=5.0)
    log.open()
    log.record(rec(1))
    assert log.flush(timeout=5.0)
    other = _lock_db(db)
    done = threading.Event()

    def link_thread() -> None:
        log.update_fate(1, "fired", fired_at=1.5)
        done.set()

    t = threading.Thread(target=link_thread)
    t.start()
    try:
        assert done.wait(2.0), "update_fate waited for the database lock"
        assert log.records()[0].status == "fired"  # memory is current at once
        assert read_decisions(db)[0]["status"] == "pending"  # the row is not yet
    finally:
        other.execute("ROLLBACK")
        other.close()
        t.join()
    assert log.flush(timeout=10.0)
    assert read_decisions(db)[0]["status"] == "fired"
    log.close()


def test_overflow_drops_the_oldest_writes_and_counts_them(tmp_path: Path) -> None:
    """A bounded backlog: past `max_backlog` queued rows the oldest is dropped (counted,
    logged with its item); the records in memory keep every item."""
    db = tmp_path / "d.db"
    status = Status()
    log = DecisionLog(db, max_backlog=5, retry_s=(0.01, 0.05))
    log.open()
    log.watch(status.decision_log)
    _fill_disk(log)
    for i in range(1, 9):
        log.record(rec(i, status="dry-run"))
    health = log.health()
    assert (health.backlog, health.dropped) == (5, 3)
    _free_disk(log)
    assert log.flush(timeout=5.0)
    assert [r["item"] for r in read_decisions(db)] == [4, 5, 6, 7, 8]
    assert _metric(status, "sorter_decision_log_dropped_total") == 3
    assert [r.item for r in log.records()] == list(range(1, 9))
    log.close()


def test_an_unwritable_jsonl_is_retried_without_losing_or_cutting_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC on the JSON lines: the lines stay queued and go out whole once it works."""
    import os

    import sorter.monitor.audit as audit

    jsonl = tmp_path / "d.jsonl"
    log = DecisionLog(None, jsonl_path=jsonl, retry_s=(0.01, 0.05))
    log.open()
    real_write = os.write
    broken = threading.Event()
    broken.set()

    def write(fd: int, data: bytes) -> int:
        if broken.is_set():
            raise OSError(28, "No space left on device")
        return real_write(fd, data[:7])  # short writes too

    monkeypatch.setattr(audit.os, "write", write)
    for i in range(1, 4):
        log.record(rec(i, status="dry-run"))
    assert not log.flush(timeout=0.5)
    assert log.health().errors >= 1 and "No space" in (log.health().last_error or "")
    broken.clear()
    assert log.flush(timeout=5.0)
    log.close()
    items = [json.loads(x)["item"] for x in jsonl.read_text().splitlines()]
    assert items == [1, 2, 3]


def test_the_sorter_keeps_sorting_when_the_log_fails(tmp_path: Path) -> None:
    """decide() with a full disk: the SORT is sent, the item goes to its bin, the fate that
    comes back is applied; nothing escapes into the loop."""
    config = Config()
    log = DecisionLog(tmp_path / "d.db", retry_s=(0.01, 0.05))
    log.open(labels=list(GRADES))
    status = Status()
    log.watch(status.decision_log)
    _fill_disk(log)
    cmds = [_Command() for _ in range(40)]
    decider = Decider(config, GRADES, Scheduler(config, _Clock(), _Link(list(cmds))), log, status)
    scores = np.full(len(GRADES), 0.01, np.float32)
    scores[GRADES.index("M")] = 0.92
    for item in range(1, 41):
        r = decider.decide(item, ItemViews([scores, scores]), t_line=1.0, received=0.0)
        assert (r.bin, r.gate, r.status) == ("M", 3, "pending")
    for c in cmds:
        c.finish("fired")
    assert all(r.status == "fired" for r in log.records())
    assert status.snapshot()["statuses"] == {"fired": 40}
    assert not log.flush(timeout=0.5)
    assert status.snapshot()["decision_log"]["errors"] >= 1
    _free_disk(log)
    assert log.flush(timeout=5.0)
    rows = read_decisions(tmp_path / "d.db")
    assert len(rows) == 40 and {r["status"] for r in rows} == {"fired"}
    log.close()


def test_health_is_a_plain_snapshot() -> None:
    h = LogHealth(errors=2, backlog=1, dropped=0, last_error="disk full")
    assert (h.errors, h.backlog, h.dropped, h.last_error) == (2, 1, 0, "disk full")


def test_a_replay_with_a_locked_log_sorts_every_item_and_writes_them_after(
    tmp_path: Path,
) -> None:
    """End to end (fast replay, the simulator as controller): another writer holds the
    database for the first half of the run. Every item still fires at its gate (the
    scorecard is exact), the errors are counted, and the rows are all there at the end."""
    from sorter.config import apply_overrides
    from sorter.replay.truth import score_run
    from sorter.runtime.runner import Runner, RunOptions
    from tests.test_pipeline_standins import ColourClassifier, make_belt

    video, truth = make_belt(tmp_path, per_grade=2, count=12, speed_px_s=1500.0)
    config = apply_overrides(Config(), {"serial.url": "sim://?gates=9"})
    db = tmp_path / "d.db"
    log = DecisionLog(db, jsonl_path=tmp_path / "d.jsonl", retry_s=(0.01, 0.05), busy_s=0.05)
    status = Status()
    opts = RunOptions(video=video, classifier=ColourClassifier(), handle_signals=False)
    other: sqlite3.Connection | None = None
    with Runner(config, opts, log, status) as runner:
        other = _lock_db(db)
        steps = 0
        while runner.step():
            steps += 1
            if other is not None and status.snapshot()["items"] >= 6:
                assert log.health().backlog >= 1
                other.execute("ROLLBACK")
                other.close()
                other = None
        assert other is None, "the belt ended before half of its items"
        result = runner.stop()
    card = score_run(result.records, json.loads(truth.read_text()), config)
    assert card.items == 12 and (card.missed, card.duplicated, card.spurious) == (0, 0, 0)
    assert result.summary["statuses"] == {"fired": 12}
    assert result.summary["decision_log"]["errors"] >= 1
    assert result.summary["decision_log"]["dropped"] == 0
    rows = read_decisions(db)
    assert len(rows) == 12 and {r["status"] for r in rows} == {"fired"}
    assert len((tmp_path / "d.jsonl").read_text().splitlines()) == 12


def test_sqlite_is_synchronous_full(tmp_path: Path) -> None:
    """synchronous=FULL (2): a committed decision is on disk, not only in the OS cache."""
    log = DecisionLog(tmp_path / "d.db")
    log.open()
    assert log._db is not None
    assert log._db.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert log._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    log.close()


def test_jsonl_is_fsynced_at_a_bounded_rate_and_at_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lines written over ~1.2 s with fsync_s=0.3: a handful of fsyncs (not one per line,
    and none more often than fsync_s apart), each written line synced within fsync_s of
    being written, and one at close after the last line."""
    import os
    import time

    import sorter.monitor.audit as audit

    syncs: list[float] = []
    writes: list[float] = []
    real_fsync, real_write = os.fsync, os.write

    def fsync(fd: int) -> None:
        syncs.append(time.monotonic())
        real_fsync(fd)

    def write(fd: int, data: bytes) -> int:
        writes.append(time.monotonic())
        return real_write(fd, data)

    monkeypatch.setattr(audit.os, "fsync", fsync)
    monkeypatch.setattr(audit.os, "write", write)
    jsonl = tmp_path / "d.jsonl"
    log = DecisionLog(None, jsonl_path=jsonl, fsync_s=0.3)
    log.open()
    t0 = time.monotonic()
    for i in range(60):
        log.record(rec(i, status="dry-run"))
        time.sleep(0.02)
    n_before_close = len(syncs)
    elapsed = time.monotonic() - t0
    log.close()
    assert len(writes) >= 10  # the lines went out as they came, not all at close
    assert 2 <= n_before_close <= elapsed / 0.3 + 1, syncs  # ~1.2 s / 0.3 s, not 60
    gaps = [b - a for a, b in itertools.pairwise(syncs[:n_before_close])]
    assert all(g >= 0.3 - 0.01 for g in gaps), gaps
    assert syncs[-1] >= writes[-1]  # close synced the last lines
    assert len(jsonl.read_text().splitlines()) == 60


def test_a_row_sqlite_refuses_is_dropped_and_does_not_hold_up_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A value SQLite cannot bind (a feature's column given an odd object) fails every
    retry: that one row is dropped and counted, the rows around it are written, and numpy
    scalars (common in extras) are stored as numbers in both logs."""
    import sorter.monitor.audit as audit

    monkeypatch.setattr(audit, "EXTRA_COLUMNS", {"probe": "REAL"})
    db, jsonl = tmp_path / "d.db", tmp_path / "d.jsonl"
    log = DecisionLog(db, jsonl_path=jsonl, retry_s=(0.01, 0.05))
    log.open()
    for i in range(1, 6):
        r = rec(i, status="dry-run")
        r.extra["probe"] = object() if i == 3 else np.float32(i / 2)
        log.record(r)
    assert log.flush(timeout=10.0)
    rows = read_decisions(db)
    assert [r["item"] for r in rows] == [1, 2, 4, 5]
    assert [r["probe"] for r in rows] == [0.5, 1.0, 2.0, 2.5]
    h = log.health()
    assert (h.dropped, h.backlog) == (1, 0) and h.errors >= 1
    log.close()
    lines = [json.loads(x) for x in jsonl.read_text().splitlines()]
    assert [d["item"] for d in lines] == [1, 2, 3, 4, 5] and lines[0]["probe"] == 0.5


def test_a_real_enospc_from_the_os_on_the_json_lines(tmp_path: Path) -> None:
    """/dev/full answers every write with ENOSPC, like a full SD card: the log counts it,
    keeps the lines queued, and closing (bounded) reports the loss instead of raising."""
    full = Path("/dev/full")
    assert full.exists()
    link = tmp_path / "d.jsonl"
    link.symlink_to(full)
    log = DecisionLog(tmp_path / "d.db", jsonl_path=link, retry_s=(0.01, 0.05))
    log.open()
    for i in range(1, 4):
        log.record(rec(i, status="dry-run"))
    assert not log.flush(timeout=0.5)
    h = log.health()
    assert h.errors >= 1 and "No space left" in (h.last_error or "") and h.backlog >= 3
    log.close(timeout=0.5)  # does not raise; the SQLite rows were written all the same
    assert [r["item"] for r in read_decisions(tmp_path / "d.db")] == [1, 2, 3]
