"""The decision log survives kill -9 mid-run, and SIGTERM stops the loop cleanly.

What a power cut adds to a kill -9 (the OS cache lost) cannot be made here; what can be
checked is the part the sorter controls: SQLite commits each pass with synchronous=FULL
(tests/test_audit_failures.py), the JSON lines are appended whole and fsync'ed at a bounded
rate, and a kill -9 at any moment leaves no cut line and no row without its line's order.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sorter.monitor.audit import FINAL_STATUSES, read_decisions
from tests.test_pipeline_standins import make_belt

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = ("item", "t_line", "label", "confidence", "scores", "bin", "status")


@pytest.fixture(scope="module")
def belt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    video, _ = make_belt(tmp_path_factory.mktemp("killbelt"), per_grade=2)
    return video


def start_child(video: Path, db: Path, jsonl: Path) -> subprocess.Popen[str]:
    code = "from tests.test_pipeline_standins import child_main; child_main()"
    return subprocess.Popen(
        [sys.executable, "-c", code, str(video), str(db), "realtime", str(jsonl)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_rows(db: Path, n: int, proc: subprocess.Popen[str], timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        if db.exists():
            try:
                rows = len(read_decisions(db))
            except sqlite3.OperationalError:
                rows = 0  # tables not created yet
            if rows >= n:
                return rows
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} decisions after {timeout} s")


def test_kill_9_leaves_a_consistent_log(belt: Path, tmp_path: Path) -> None:
    db, jsonl = tmp_path / "d.db", tmp_path / "d.jsonl"
    proc = start_child(belt, db, jsonl)
    try:
        wait_for_rows(db, 3, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    rows = read_decisions(db)
    assert 3 <= len(rows) < 18  # killed mid-run
    assert [r["item"] for r in rows] == sorted({r["item"] for r in rows})  # no duplicates
    for r in rows:
        assert all(r[k] is not None for k in CONTRACT), r
        assert r["status"] in FINAL_STATUSES
        assert len(r["scores"]) == 9 and abs(sum(r["scores"]) - 1.0) < 1e-3
    # whole-line appends: no line is cut by the kill (the old log could lose its last line),
    # and no item twice; rows and lines come from two writer threads, so at the instant of
    # the kill either may be a pass ahead of the other
    text = jsonl.read_text()
    assert text.endswith("\n")
    parsed = [json.loads(x) for x in text.splitlines()]
    assert len(parsed) >= 1 and len({d["item"] for d in parsed}) == len(parsed)
    assert all(d["status"] in FINAL_STATUSES for d in parsed)
    # the same log takes the next run (WAL recovered), as a new run
    proc = start_child(belt, db, jsonl)
    try:
        deadline = time.monotonic() + 60
        runs = 1
        while runs < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            con = sqlite3.connect(db)
            runs = con.execute("SELECT COUNT(DISTINCT run) FROM decisions").fetchone()[0]
            con.close()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    assert runs == 2


def test_sigterm_flushes_and_summarises(belt: Path, tmp_path: Path) -> None:
    db, jsonl = tmp_path / "d.db", tmp_path / "d.jsonl"
    proc = start_child(belt, db, jsonl)
    try:
        wait_for_rows(db, 2, proc)
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["stopped"] is True
    rows = read_decisions(db)
    assert summary["items"] == len(rows) and 2 <= len(rows) < 18
    assert {r["status"] for r in rows} == {"dry-run"}


def test_kill_9_while_the_database_is_locked_keeps_the_json_lines(
    belt: Path, tmp_path: Path
) -> None:
    """Another writer holds the database mid-run: the sorter keeps going and its JSON lines
    keep coming (their own writer); a kill -9 then loses the rows still queued, but the JSON
    lines have those items, whole, and the database is consistent."""
    db, jsonl = tmp_path / "d.db", tmp_path / "d.jsonl"
    proc = start_child(belt, db, jsonl)
    other = None
    try:
        wait_for_rows(db, 2, proc)
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        locked_rows = len(read_decisions(db))
        deadline = time.monotonic() + 60
        lines: list[str] = []
        while time.monotonic() < deadline and proc.poll() is None:
            lines = jsonl.read_text().splitlines() if jsonl.exists() else []
            if len(lines) >= locked_rows + 3:
                break
            time.sleep(0.05)
        assert len(lines) >= locked_rows + 3, "JSON lines stopped while the database was locked"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        if other is not None:
            other.execute("ROLLBACK")
            other.close()
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    rows = read_decisions(db)
    assert len(rows) == locked_rows  # nothing committed while locked; the queue died with -9
    text = jsonl.read_text()
    assert text.endswith("\n")
    items = [json.loads(x)["item"] for x in text.splitlines()]
    assert {r["item"] for r in rows} <= set(items) and len(items) > len(rows)
