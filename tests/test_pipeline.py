"""The sorting loop end to end on generated belts (real locate/track/scheduling/log,
the Python controller simulator on the replay clock, a colour-grading stand-in classifier).
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sorter.config import Config, apply_overrides
from sorter.monitor.audit import DecisionLog, read_decisions
from sorter.monitor.status import Status
from sorter.perception.sources import Frame, FrameSource
from sorter.replay.truth import run_with_truth
from sorter.runtime.runner import RunOptions, RunResult, run
from tests.test_pipeline_standins import ColourClassifier, make_belt, reference_accuracy

CONTRACT = {"item", "t_line", "label", "confidence", "scores", "bin", "gate", "fire_at", "status"}


@pytest.fixture(scope="module")
def belt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("belt")
    video, truth = make_belt(root, per_grade=3, speed_px_s=800.0, items_per_second=5.0)  # 27 items
    return video, truth, root / "data"


@pytest.fixture(scope="module")
def fast_belt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fast")
    return make_belt(root, "fast", per_grade=2, count=40, speed_px_s=1500.0, items_per_second=10.0)


def _run(
    config: Config, tmp: Path, truth: Path | None = None, **kw: Any
) -> tuple[RunResult, Status]:
    status = Status()
    log = DecisionLog(tmp / "d.db", jsonl_path=tmp / "d.jsonl")
    kw.setdefault("classifier", ColourClassifier())
    opts = RunOptions(handle_signals=False, **kw)
    if truth is not None:
        return run_with_truth(config, opts, log, status, truth), status
    return run(config, opts, log, status), status


def test_fast_replay_against_simulator(belt: tuple[Path, Path, Path], tmp_path: Path) -> None:
    video, truth, data = belt
    config = apply_overrides(Config(), {"serial.url": "sim://?gates=9"})
    result, status = _run(config, tmp_path, video=video, truth=truth)
    card = result.scorecard
    assert card.items == 27
    assert (card.missed, card.duplicated, card.spurious) == (0, 0, 0)
    ref = 100.0 * reference_accuracy(truth, data)
    assert abs(card.correct_bin_pct - ref) <= max(1.0, 100.0 / card.items)
    # every command fired, at the ideal time within a few ms (virtual clock: line error only)
    assert result.summary["statuses"] == {"fired": 27}
    assert card.gate_error_ms["n"] == 27 and card.gate_error_ms["p99"] < 10.0
    assert result.summary["mode"] == "fast" and result.summary["drops"] == 0
    # the controller's events read as words on the dashboard, not as dataclass dumps
    fired = [e["text"] for e in status.snapshot()["events"] if e["kind"] == "FIRED"]
    assert fired and all(re.fullmatch(r"item \d+ fired at gate \d+", t) for t in fired)
    # the decision log agrees: SQLite and JSON lines, contract fields, final fates
    rows = read_decisions(tmp_path / "d.db")
    lines = [json.loads(x) for x in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert len(rows) == len(lines) == 27
    assert all(set(d) >= CONTRACT for d in lines)
    assert {r["status"] for r in rows} == {"fired"}
    assert all(r["fired_at"] is not None for r in rows)
    snap = status.snapshot()
    assert snap["items"] == 27 and sum(snap["bins"].values()) == 27
    assert set(result.summary["stages"]) >= {"locate", "track", "classify", "decide", "log"}
    assert result.summary["latency_s"]["n"] == 27


def test_ten_items_per_second_no_misses_no_duplicates(
    fast_belt: tuple[Path, Path], tmp_path: Path
) -> None:
    video, truth = fast_belt
    config = apply_overrides(Config(), {"serial.url": "sim://?gates=9"})
    result, _ = _run(config, tmp_path, video=video, truth=truth)
    card = result.scorecard
    assert card.items == 40
    assert (card.missed, card.duplicated, card.spurious) == (0, 0, 0)
    assert card.correct_bin == 40
    assert result.summary["statuses"] == {"fired": 40}


def test_dry_run_sends_nothing(belt: tuple[Path, Path, Path], tmp_path: Path) -> None:
    video, truth, _ = belt
    result, status = _run(Config(), tmp_path, video=video, truth=truth, dry_run=True)
    assert result.summary["statuses"] == {"dry-run": 27}
    assert result.summary["serial"] == "dry-run"
    assert all(r.fire_at is not None and r.gate is not None for r in result.records)
    assert status.snapshot()["link"]["url"] == "dry-run"


def test_uncertain_items_go_to_reject(belt: tuple[Path, Path, Path], tmp_path: Path) -> None:
    video, truth, _ = belt
    config = apply_overrides(Config(), {"serial.url": "sim://?gates=9"})
    unsure = ColourClassifier(sharpness=400.0)  # right grade, but top score about 0.2
    result, _ = _run(config, tmp_path, video=video, truth=truth, classifier=unsure)
    assert result.summary["statuses"] == {"rejected": 27}
    assert result.summary["bins"] == {"reject": 27}
    assert result.scorecard.rejected == 27 and result.scorecard.correct_bin == 0
    assert result.scorecard.correct_grade == 27
    assert {r.reason for r in result.records} == {"low-confidence"}


def test_saved_crops_feed_training(belt: tuple[Path, Path, Path], tmp_path: Path) -> None:
    video, _truth, _ = belt
    config = apply_overrides(
        Config(), {"logging.crops_dir": str(tmp_path / "crops"), "thresholds.review_below": 0.0}
    )
    log = DecisionLog(tmp_path / "d.db", crops_dir=tmp_path / "crops", review_below=0.0)
    run(
        config,
        RunOptions(video=video, dry_run=True, classifier=ColourClassifier(), handle_signals=False),
        log,
        Status(),
    )
    folders = sorted(p.name for p in (tmp_path / "crops").iterdir())
    assert folders == sorted(ColourClassifier.labels)
    assert sum(1 for _ in (tmp_path / "crops").rglob("*.png")) == 27


def test_images_folder_is_one_item_per_image(belt: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, _, data = belt
    result, _ = _run(Config(), tmp_path, images=data, dry_run=True)
    assert len(result.records) == 27
    # sorted by path: 3 images per grade folder, grades in folder order
    labels = [r.label for r in result.records]
    assert labels == [g for g in sorted(ColourClassifier.labels) for _ in range(3)]


def test_stop_flushes_pending_and_tells_controller(
    belt: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    video, _truth, _ = belt
    config = apply_overrides(Config(), {"serial.url": "sim://?gates=9"})
    stop = threading.Event()

    def progress(st: Status) -> None:
        if st.frames >= 120:
            stop.set()

    result, status = _run(config, tmp_path, video=video, progress=progress, stop=stop)
    assert result.summary["stopped"] is True
    assert 0 < result.summary["items"] < 27
    assert result.summary["frames"] == 120
    statuses = {r.status for r in result.records}
    assert "pending" not in statuses and statuses <= {"fired", "cancelled"}
    assert status.snapshot()["link"]["safe"] is True


class _StallingCamera(FrameSource):
    """A live source (monotonic times) that delivers, stops for a while, then delivers."""

    name = "stalling camera"
    fps = 30.0

    def __init__(self, frames: list[np.ndarray], pause_after: int, pause_s: float) -> None:
        self.images = frames
        self.pause_after = pause_after
        self.pause_s = pause_s

    def frames(self) -> Iterator[Frame]:
        for i, img in enumerate(self.images):
            if i == self.pause_after:
                time.sleep(self.pause_s)
            time.sleep(1 / self.fps)
            yield Frame(i, time.monotonic(), img)


class _RecordingLink:
    """Stands in for ControllerLink: records safe/resume, fires nothing."""

    state = "connected"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __enter__(self) -> _RecordingLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.calls.append("close")

    def configure(self, n_gates: int, pulse_ms: Any) -> None:
        self.calls.append(f"configure {n_gates}")

    def safe(self) -> None:
        self.calls.append("safe")

    def resume(self) -> None:
        self.calls.append("resume")

    def cancel(self, item: int) -> None:
        self.calls.append(f"cancel {item}")

    def on_event(self, callback: Any) -> Any:
        self.calls.append("on_event")
        return lambda: None

    def sort(self, *a: Any, **k: Any) -> Any:
        raise AssertionError("no item on an empty belt")


def test_stall_is_reported_and_controller_told(tmp_path: Path) -> None:
    empty = [np.full((120, 160, 3), (200, 90, 30), np.uint8) for _ in range(10)]
    config = apply_overrides(Config(), {"camera.stall_s": 0.3, "serial.url": "/dev/fake"})
    link = _RecordingLink()
    events: list[list[dict[str, Any]]] = []

    def progress(st: Status) -> None:
        events.append(st.snapshot()["alarms"])

    result, status = _run(
        config,
        tmp_path,
        source=_StallingCamera(empty, pause_after=4, pause_s=0.8),
        link=link,
        progress=progress,
    )
    # a live source drops the oldest frame when the loop falls behind (a loaded machine)
    assert result.summary["frames"] + result.summary["drops"] == 10
    assert link.calls[0] == "configure 9"
    assert link.calls.index("safe") < link.calls.index("resume")
    kinds = [e["kind"] for e in status.snapshot()["events"]]
    assert "STALL" in kinds and "RESUMED" in kinds
    # the alarm was up while stalled (seen on the first frame after) and is clear at the end
    assert any(a and a[0]["kind"] == "camera_stalled" for a in events) or "STALL" in kinds
    assert status.snapshot()["alarms"] == []


def test_systemd_status_line_during_and_after_a_run(
    belt: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`systemctl status` shows the loop's one-line summary: sent over a real sd_notify
    socket, and the last one counts every item per bin."""
    import socket

    from sorter.monitor import notify

    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    monkeypatch.setattr(notify, "_default", notify.Notifier(socket_path=path))
    video, _truth, _ = belt
    config = apply_overrides(Config(), {"serial.url": "sim://?gates=9"})
    try:
        result, _status = _run(config, tmp_path, video=video)
        datagrams: list[str] = []
        with contextlib.suppress(BlockingIOError):
            while True:
                datagrams.append(sock.recv(4096).decode())
    finally:
        sock.close()
    lines = [x for d in datagrams for x in d.split("\n") if x.startswith("STATUS=")]
    assert datagrams[0].startswith("READY=1") and len(lines) >= 2  # first frame, then the end
    last = lines[-1]
    bins = ", ".join(f"{k} {v}" for k, v in sorted(result.summary["bins"].items()))
    assert f"27 items ({bins})" in last and "link " in last and " fps" in last


def test_systemd_status_is_sent_at_most_once_per_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sorter.monitor import notify
    from sorter.runtime.runner import SystemdStatus

    now = [0.0]
    sent: list[str] = []
    monkeypatch.setattr(notify, "status", lambda text: bool(sent.append(text)) or True)
    assert not SystemdStatus().update(Status())  # off systemd: not even a snapshot
    notifier = SystemdStatus(interval_s=1.0, clock=lambda: now[0], enabled=True)
    st = Status()
    results = []
    for t in (100.0, 100.4, 101.0, 101.3, 102.5, 102.75):
        now[0] = t
        results.append(notifier.update(st))
    assert results == [True, False, True, False, True, False]
    assert notifier.update(st, force=True)  # the final one at the end of a run
    assert len(sent) == 4 and all("items" in text for text in sent)


def test_runner_start_step_stop_and_the_caller_adds_to_the_summary(
    belt: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """The runner's lifecycle as the CLI and replay use it: one step per frame, the result
    from stop(), and the summary (with what the caller added) stored when it closes."""
    import sqlite3

    from sorter.runtime.runner import Runner

    video, _truth, _ = belt
    config = apply_overrides(Config(), {"serial.url": "sim://?gates=9"})
    opts = RunOptions(video=video, classifier=ColourClassifier(), handle_signals=False)
    decisions = DecisionLog(tmp_path / "d.db")
    runner = Runner(config, opts, decisions, Status())
    with pytest.raises(RuntimeError, match="before start"):
        runner.step()
    steps = 0
    with runner:
        assert runner.link is not None and runner.link.state == "connected"
        while runner.step():
            steps += 1
        result = runner.stop()
        assert decisions.is_open  # still open: the caller may add to the summary
        result.summary["note"] = "added by the caller"
    assert steps == result.summary["frames"] > 0
    assert result.summary["statuses"] == {"fired": 27}
    assert runner.link.state == "closed" and not decisions.is_open
    with sqlite3.connect(tmp_path / "d.db") as db:
        (stored,) = db.execute("SELECT summary FROM runs").fetchone()
    assert json.loads(stored)["note"] == "added by the caller"
