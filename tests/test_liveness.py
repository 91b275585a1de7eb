"""A hung sorting loop lets the controller fall to safe, and stops feeding systemd.

The link heartbeats from its own thread; without a check of the loop's own progress a hung
loop would keep the controller believing the host is in control. `sorter.runtime.liveness`
silences the link once the loop makes no progress for `serial.loop_timeout_ms`; the
controller's heartbeat timeout then puts it safe. systemd's watchdog is fed from the loop's
thread per processed frame, so it stops too.
"""

from __future__ import annotations

import contextlib
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from firmware_bridge import protocol as p
from sorter.config import Config, apply_overrides
from sorter.monitor import notify
from sorter.monitor.audit import DecisionLog
from sorter.monitor.status import Status
from sorter.perception.sources import Frame, FrameSource
from sorter.runtime.liveness import Liveness, LoopWatch
from sorter.runtime.runner import RunOptions, run
from tests.test_pipeline_standins import ColourClassifier


def wait_for(pred: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class _Link:
    """Records heartbeat_paused() entries and exits."""

    def __init__(self) -> None:
        self.paused = 0
        self.log: list[str] = []

    @contextlib.contextmanager
    def heartbeat_paused(self) -> Iterator[None]:
        self.paused += 1
        self.log.append("pause")
        try:
            yield
        finally:
            self.paused -= 1
            self.log.append("resume")


def test_liveness_counts_beats_against_its_timeout() -> None:
    clock = _Clock()
    live = Liveness(2.0, clock)
    assert live.alive()
    clock.t = 2.0
    assert live.alive()
    clock.t = 2.01
    assert not live.alive() and live.age() == pytest.approx(2.01)
    live.beat()
    assert live.alive() and live.beats == 1
    with pytest.raises(ValueError):
        Liveness(0.0)


def test_the_watch_silences_the_link_while_the_loop_is_stalled() -> None:
    clock, link = _Clock(), _Link()
    alarms: list[tuple[str, str | None]] = []
    live = Liveness(1.0, clock)
    watch = LoopWatch(live, link, lambda k, t: alarms.append((k, t)))
    assert not watch.check() and link.paused == 0
    clock.t = 1.5  # no beat for 1.5 s
    assert watch.check() and link.paused == 1
    assert watch.check() and link.paused == 1  # once, not once per check
    live.beat()
    assert not watch.check() and link.paused == 0
    assert link.log == ["pause", "resume"] and watch.stalls == 1
    assert [k for k, _ in alarms] == ["loop_stalled", "loop_stalled"]
    assert alarms[0][1] and "no progress" in str(alarms[0][1]) and alarms[1][1] is None
    clock.t = 5.0
    watch.check()
    watch.stop()  # stopping speaks again
    assert link.paused == 0


def test_a_link_that_cannot_be_silenced_is_said_so(caplog: pytest.LogCaptureFixture) -> None:
    LoopWatch(Liveness(1.0), object())
    assert "cannot be silenced" in caplog.text


class _LiveBelt(FrameSource):
    """A camera-like source: an empty belt at ~30 fps on the monotonic clock, until stopped."""

    name = "live belt"
    fps = 30.0

    def __init__(self) -> None:
        self._stop = threading.Event()

    def start(self) -> None:
        self._stop.clear()

    def stop(self) -> None:
        self._stop.set()

    def frames(self) -> Iterator[Frame]:
        image = np.full((240, 320, 3), (200, 120, 40), np.uint8)
        i = 0
        while not self._stop.wait(1 / 30):
            yield Frame(i, time.monotonic(), image)
            i += 1


class _WatchdogSocket:
    """A datagram socket standing in for systemd's notify socket; times of WATCHDOG=1."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="wd", dir="/tmp")
        self.path = str(Path(self.dir) / "n")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.05)
        self.pings: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            if b"WATCHDOG=1" in data:
                self.pings.append(time.monotonic())

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()
        Path(self.path).unlink()
        Path(self.dir).rmdir()


def _sim(link: Any) -> Any:
    port = link._port
    return getattr(port, "sim_port", port).controller


def test_a_hung_loop_puts_the_controller_safe_and_starves_the_watchdog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wd = _WatchdogSocket()
    monkeypatch.setattr(
        notify, "_default", notify.Notifier(socket_path=wd.path, watchdog_usec=400_000)
    )
    config = apply_overrides(
        Config(),
        {"serial.url": "sim://?gates=9", "serial.loop_timeout_ms": 1000, "camera.stall_s": 0.5},
    )
    hang, release = threading.Event(), threading.Event()
    hung_at: list[float] = []

    def progress(st: Status) -> None:  # called on the loop's thread after each frame
        if hang.is_set() and not release.is_set():
            hung_at.append(time.monotonic())
            release.wait(60.0)

    status = Status()
    opts = RunOptions(
        source=_LiveBelt(), classifier=ColourClassifier(), progress=progress, handle_signals=False
    )
    links: list[Any] = []
    real_open = __import__("sorter.runtime.runner", fromlist=["open_link"]).open_link

    def open_link(*a: Any, **kw: Any) -> Any:
        links.append(real_open(*a, **kw))
        return links[-1]

    monkeypatch.setattr("sorter.runtime.runner.open_link", open_link)
    result: list[Any] = []
    t = threading.Thread(
        target=lambda: result.append(run(config, opts, DecisionLog(tmp_path / "d.db"), status))
    )
    t.start()
    try:
        assert wait_for(lambda: status.snapshot()["frames"] >= 15 and len(wd.pings) >= 2)
        link = links[0]
        ctrl = _sim(link)
        assert link.state == "connected" and not ctrl.state.safe
        hang.set()
        assert wait_for(lambda: bool(hung_at))
        # the controller goes safe on its own heartbeat timeout, the dashboard says why
        assert wait_for(lambda: ctrl.state.safe, timeout=20.0)
        assert ctrl.state.safe_reason == p.SafeReason.HEARTBEAT
        kinds = [a["kind"] for a in status.snapshot()["alarms"]]
        assert "loop_stalled" in kinds
        stalled_for = time.monotonic() - hung_at[0]
        assert stalled_for >= 1.0  # not before the loop timeout
        # systemd hears nothing from the hung loop (a ping sent just before the hang has
        # long been read by now: the stall took over a second to be noticed)
        heard = len(wd.pings)
        time.sleep(1.0)
        assert len(wd.pings) == heard
        release.set()
        # progress again: alarm cleared, link speaking, controller resumed, watchdog fed
        assert wait_for(
            lambda: "loop_stalled" not in [a["kind"] for a in status.snapshot()["alarms"]]
        )
        assert wait_for(lambda: not ctrl.state.safe, timeout=20.0)
        assert wait_for(lambda: len(wd.pings) > heard)
    finally:
        release.set()
        opts.stop.set()
        t.join(timeout=60.0)
        wd.close()
    assert result and result[0].summary["stopped"] is True
