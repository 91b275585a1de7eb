"""The dashboard under hostile or broken clients: a socket timeout, a bound on the clients
served at once (a slow client cannot hold threads before the token check), and crop
numbers that are not ASCII digits answered with 404, not an exception."""

from __future__ import annotations

import socket
import time
from typing import Any

import numpy as np
import pytest

from sorter.monitor.dashboard import serve
from sorter.monitor.status import Status


def _raw(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, return everything the server answers before it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        chunks = []
        while True:
            try:
                data = s.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def _until(pred: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not pred():
        time.sleep(0.02)
    return bool(pred())


@pytest.fixture
def status() -> Status:
    st = Status()
    st.decided({"item": 3, "label": "M", "bin": "M"}, 0.01, np.zeros((8, 8, 3), np.uint8))
    return st


@pytest.mark.parametrize(
    "path",
    [
        b"/crop/\xb2.jpg",  # '\xb2' is superscript two: str.isdigit() says yes, int() raises
        b"/crop/\xd9\xa3.jpg",  # Arabic-Indic three, raw UTF-8
        b"/crop/%D9%A3.jpg",  # the same, percent-encoded
        b"/crop/%C2%B2.jpg",
        b"/crop/3%00.jpg",
        b"/crop/99999999999999999999999999.jpg",
    ],
)
def test_crop_numbers_that_are_not_ascii_digits_are_404(status: Status, path: bytes) -> None:
    with serve(status, "127.0.0.1", 0) as srv:
        answer = _raw(srv.port, b"GET " + path + b" HTTP/1.0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.0 404"), answer[:80]
        ok = _raw(srv.port, b"GET /crop/3.jpg HTTP/1.0\r\n\r\n")  # the real one still works
        assert ok.startswith(b"HTTP/1.0 200") and b"image/jpeg" in ok


def test_arabic_indic_digits_do_not_reach_int(status: Status) -> None:
    """Even a caller that decodes the path first: only ASCII digits name an item."""
    from sorter.monitor.dashboard import parse_item

    assert parse_item("3") == 3 and parse_item("-2") == -2
    for text in ("\u0663", "\u00b2", "\uff13", "3\u0663", "", "-", "1e3", " 3"):
        assert parse_item(text) is None, text


def test_a_silent_client_is_dropped_after_the_socket_timeout(status: Status) -> None:
    with serve(status, "127.0.0.1", 0, timeout_s=0.5) as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10.0) as s:
            s.sendall(b"GET /healthz HTTP/1.0\r\n")  # headers never finished
            t0 = time.monotonic()
            data = s.recv(1024)  # the server closes: b"" (or an error reply)
            waited = time.monotonic() - t0
        assert not data.startswith(b"HTTP/1.0 200"), data
        assert waited < 9.0  # closed by the server's timeout, not by ours


def test_clients_beyond_the_limit_are_refused_at_once_not_queued(status: Status) -> None:
    """`max_clients` slow clients (connected, sending nothing, no token yet) hold their
    slots; the next one gets 503 at once instead of another thread; once the slow ones
    time out, requests are served again."""
    with serve(status, "127.0.0.1", 0, token="s3cret", timeout_s=1.0, max_clients=3) as srv:
        slow = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(3)]
        try:
            assert _until(lambda: srv.active == 3)  # all three waiting for a request line
            answer = _raw(srv.port, b"GET /healthz?token=s3cret HTTP/1.0\r\n\r\n")
            assert answer.startswith(b"HTTP/1.0 503"), answer[:80]
            assert srv.refused >= 1
            assert srv.active <= 3
        finally:
            for s in slow:
                s.close()
        deadline = time.monotonic() + 10.0
        answer = b""
        while time.monotonic() < deadline:
            answer = _raw(srv.port, b"GET /healthz?token=s3cret HTTP/1.0\r\n\r\n")
            if answer.startswith(b"HTTP/1.0 200"):
                break
            time.sleep(0.1)
        assert answer.startswith(b"HTTP/1.0 200"), answer[:80]


def test_slow_clients_hold_no_more_threads_than_the_limit(status: Status) -> None:
    import threading

    with serve(status, "127.0.0.1", 0, timeout_s=30.0, max_clients=4) as srv:
        before = threading.active_count()
        socks: list[Any] = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(20)]
        try:
            # 4 served (waiting for their request lines), the other 16 refused, never a thread
            assert _until(lambda: srv.refused == 16)
            assert srv.active == 4
            assert threading.active_count() - before <= 4
        finally:
            for s in socks:
                s.close()
