"""Decision log: SQLite in WAL mode, JSON lines with the contract fields, fates, crops."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from sorter.errors import SorterError
from sorter.monitor.audit import DecisionLog, DecisionRecord, read_decisions
from sorter.perception.preprocess import load_image

CONTRACT = {"item", "t_line", "label", "confidence", "scores", "bin", "gate", "fire_at", "status"}


def rec(item: int, status: str = "pending", confidence: float = 0.9) -> DecisionRecord:
    return DecisionRecord(
        item=item,
        t_line=item * 0.5,
        label="M",
        confidence=confidence,
        scores=[0.1, confidence],
        bin="M",
        gate=3,
        fire_at=item * 0.5 + 1.0,
        status=status,
    )


def test_sqlite_wal_and_fate_updates(tmp_path: Path) -> None:
    db = tmp_path / "log" / "d.db"
    log = DecisionLog(db, jsonl_path=tmp_path / "d.jsonl")
    log.open(source="belt.mp4", model="m.tflite", labels=["S", "M"])
    log.record(rec(1))
    log.record(rec(2, status="dry-run"))
    # readable by another connection while open, before any fate (written by the log's
    # writer thread: flush() waits for it)
    assert log.flush(timeout=10.0)
    rows = read_decisions(db)
    assert [(r["item"], r["status"]) for r in rows] == [(1, "pending"), (2, "dry-run")]
    log.update_fate(1, "fired", fired_at=1.501)
    assert [r.item for r in log.pending()] == []
    log.close({"items": 2})
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    summary = con.execute("SELECT summary FROM runs").fetchone()[0]
    assert json.loads(summary) == {"items": 2}
    rows = read_decisions(db)
    assert rows[0]["status"] == "fired" and rows[0]["fired_at"] == 1.501
    assert rows[0]["scores"] == [0.1, 0.9]


def test_jsonl_has_contract_fields_once_final(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    log = DecisionLog(None, jsonl_path=path)
    log.open()
    log.record(rec(1))  # pending: not written yet
    log.record(rec(2, status="rejected"))
    assert log.flush(timeout=10.0)  # the writer thread appends the lines
    assert [json.loads(x)["item"] for x in path.read_text().splitlines()] == [2]
    log.update_fate(1, "late", bin_name="reject")
    assert log.flush(timeout=10.0)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [d["item"] for d in lines] == [2, 1]
    assert set(lines[1]) >= CONTRACT
    assert lines[1]["status"] == "late" and lines[1]["bin"] == "reject"
    log.record(rec(3))
    log.close()  # still pending at close: written as it stands
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [(d["item"], d["status"]) for d in lines][-1] == (3, "pending")


def test_runs_do_not_overwrite_each_other(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    for run in ("r1", "r2"):
        log = DecisionLog(db, run=run)
        log.open()
        log.record(rec(1))
        log.close()
    assert len(read_decisions(db, "r1")) == 1 and len(read_decisions(db, "r2")) == 1


def test_crops_folder_per_grade_and_review(tmp_path: Path) -> None:
    crops = tmp_path / "crops"
    log = DecisionLog(None, crops_dir=crops, review_below=0.6, run="r")
    log.open()
    img = np.zeros((20, 30, 3), np.uint8)
    img[:, :, 0] = 200  # red in RGB
    sure = log.record(rec(1, confidence=0.9), img)
    unsure = log.record(rec(2, confidence=0.4), img)
    log.close()
    assert Path(str(sure.crop)) == crops / "M" / "r_1.png"
    assert Path(str(unsure.crop)) == crops / "_review" / "M" / "r_2.png"
    back = load_image(crops / "M" / "r_1.png")
    assert back.shape == img.shape and np.array_equal(back, img)  # RGB kept through BGR files


def test_concurrent_fates_are_all_kept(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    log = DecisionLog(db)
    log.open()
    for i in range(200):
        log.record(rec(i))

    def fates(start: int) -> None:
        for i in range(start, 200, 4):
            log.update_fate(i, "fired", fired_at=float(i))

    threads = [threading.Thread(target=fates, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    rows = read_decisions(db)
    assert len(rows) == 200 and all(r["status"] == "fired" for r in rows)


def test_unwritable_db_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SorterError, match="cannot open the decision log") as info:
        DecisionLog(blocker / "d.db").open()
    assert str(blocker) in str(info.value)


def test_a_corrected_fate_supersedes_in_both_logs(tmp_path: Path) -> None:
    db, path = tmp_path / "d.db", tmp_path / "d.jsonl"
    log = DecisionLog(db, jsonl_path=path)
    log.open()
    log.record(rec(1))
    log.update_fate(1, "timeout", bin_name="reject")
    log.update_fate(1, "fired", fired_at=1.5, bin_name="M")  # the controller's later word
    log.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [(d["status"], d["bin"], d.get("corrected")) for d in lines] == [
        ("timeout", "reject", None),
        ("fired", "M", True),
    ]
    (row,) = read_decisions(db)
    assert (row["status"], row["bin"], row["fired_at"]) == ("fired", "M", 1.5)


def test_bounded_memory_keeps_pending_and_the_database_keeps_all(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    log = DecisionLog(db, keep=10)
    log.open()
    log.record(rec(0))  # pending: never forgotten
    for i in range(1, 50):
        log.record(rec(i, status="dry-run"))
    assert len(log.records()) == 10 and log.records()[0].item == 0
    log.update_fate(3, "fired", fired_at=2.0)  # forgotten in memory: the row is corrected
    log.close()
    rows = {r["item"]: r for r in read_decisions(db)}
    assert len(rows) == 50 and rows[3]["status"] == "fired" and rows[3]["fired_at"] == 2.0


def test_extra_columns_added_to_an_older_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sorter.monitor import audit

    db = tmp_path / "d.db"
    old = DecisionLog(db, run="r1")
    old.open()
    old.record(rec(1))
    old.close()
    monkeypatch.setitem(audit.EXTRA_COLUMNS, "probe_mm", "REAL")
    monkeypatch.setitem(audit.EXTRA_COLUMNS, "probe_list", "TEXT")
    new = DecisionLog(db, run="r2")
    new.open()
    r = rec(2)
    r.extra.update(probe_mm=12.5, probe_list=[1, 2])
    new.record(r)
    new.record(rec(3))  # no value: NULL
    new.close()
    rows = {row["item"]: row for row in read_decisions(db, "r2")}
    assert rows[2]["probe_mm"] == 12.5 and json.loads(rows[2]["probe_list"]) == [1, 2]
    assert rows[3]["probe_mm"] is None
    assert read_decisions(db, "r1")[0]["probe_mm"] is None  # the old row reads back too
