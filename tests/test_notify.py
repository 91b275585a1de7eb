"""sorter.monitor.notify speaks sd_notify to a real AF_UNIX datagram socket; silent off systemd."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from sorter.monitor import notify
from sorter.monitor.notify import Notifier


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2.0)
    try:
        yield sock, path
    finally:
        sock.close()


def _recv(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_status_stopping_reach_the_socket(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("camera open,\n link up")
    lines = _recv(sock)
    assert lines[0] == "READY=1"
    assert f"MAINPID={os.getpid()}" in lines
    assert "STATUS=camera open, link up" in lines  # newlines folded into one line
    assert n.status("12.0 fps")
    assert _recv(sock) == ["STATUS=12.0 fps"]
    assert n.stopping()
    assert _recv(sock) == ["STOPPING=1"]
    assert n.sent == 3
    n.close()


def test_watchdog_is_rate_limited_to_the_watchdog_interval(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    # WatchdogSec=10 s -> aim for keep-alives every 5 s, send at most every 2.5 s.
    n = Notifier.from_env(
        {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}
    )
    assert n.watchdog_interval() == pytest.approx(5.0)
    sent = [n.watchdog(now=t) for t in (100.0, 100.1, 101.0, 102.6, 102.7, 105.2)]
    assert sent == [True, False, False, True, False, True]
    assert [_recv(sock) for _ in range(3)] == [["WATCHDOG=1"]] * 3
    n.close()


def test_no_watchdog_datagrams_when_systemd_runs_no_watchdog_for_us(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    other = {"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    for env in ({"NOTIFY_SOCKET": path}, {"NOTIFY_SOCKET": path, **other}):
        n = Notifier.from_env(env)
        assert n.watchdog_interval() is None
        assert [n.watchdog(now=float(t)) for t in range(5)] == [False] * 5
        n.close()
    assert n.status("still here")  # the socket works; only the keep-alives were skipped
    assert sock.recv(4096) == b"STATUS=still here"


def test_abstract_socket_names_are_supported() -> None:
    name = f"sorter-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2.0)
    try:
        n = Notifier(socket_path="@" + name)
        assert n.ready()
        assert sock.recv(4096).startswith(b"READY=1")
        n.close()
    finally:
        sock.close()


def test_off_systemd_every_call_is_a_silent_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setattr(notify, "_default", None)
    assert notify.ready() is False
    assert notify.watchdog() is False
    assert notify.status("x") is False
    assert notify.stopping() is False
    assert notify.default().sent == 0


def test_a_vanished_socket_does_not_raise(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier(socket_path=str(tmp_path / "gone.sock"), watchdog_usec=2_000_000)
    assert n.ready() is False
    assert n.watchdog() is False
    assert "sd_notify" in caplog.text
    n.close()
