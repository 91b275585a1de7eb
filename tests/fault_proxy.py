"""A TCP proxy that damages a byte stream on purpose, for fault-injection tests.

    with FaultProxy(("127.0.0.1", qemu_port), rate=0.01, seed=7) as proxy:
        link = ControllerLink(proxy.url)        # socket://127.0.0.1:<proxy port>
        ...
        proxy.disconnect()                      # drop the client as if USB were pulled

Each byte passing through (both directions) is, with probability `rate`, corrupted (one
bit flipped), dropped, duplicated or delayed (the rest of the chunk held back for up to
`max_delay_s`), chosen with a seeded `random.Random`, so a run is repeatable in what it
does to the stream (timing on a real machine still varies). The upstream connection
(the controller) stays open across client reconnects: a disconnect is the host's cable,
not a controller reset; `reconnect_upstream()` follows a controller that was restarted
(QEMU started again on the same port). `tap(data, generation)`, if given, sees every
byte the controller sent, before any damage, with the number of upstream reconnects
before the connection it came on: a test counts firings on the controller's side.
`stats` counts what was done.
"""

from __future__ import annotations

import logging
import random
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

log = logging.getLogger(__name__)

KINDS = ("corrupt", "drop", "duplicate", "delay")
"""The faults, drawn with equal probability for a byte that is hit."""


@dataclass
class FaultStats:
    """What the proxy did, per direction ("up": host -> controller, "down": back)."""

    bytes: Counter[str] = field(default_factory=Counter)
    """Bytes that entered the proxy, per direction."""
    faults: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(direction, kind) -> count."""
    disconnects: int = 0
    """Client connections closed by `disconnect()`."""
    connections: int = 0
    """Client connections accepted."""
    upstream_reconnects: int = 0
    """Times the proxy connected to a restarted controller."""


class FaultProxy:
    """Listens on 127.0.0.1 (a free port), forwards to `upstream` with injected faults."""

    def __init__(
        self,
        upstream: tuple[str, int],
        rate: float = 0.01,
        seed: int = 0,
        max_delay_s: float = 0.02,
        kinds: tuple[str, ...] = KINDS,
        tap: Callable[[bytes, int], None] | None = None,
    ) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate {rate} must be within 0..1")
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {KINDS}")
        self.upstream = upstream
        self.rate = rate
        self.max_delay_s = max_delay_s
        self.kinds = kinds
        self.tap = tap
        """Called with each chunk the controller sent, undamaged, and its upstream
        connection's generation (proxy thread)."""
        self._up_generation = 0
        self.stats = FaultStats()
        self.enabled = True
        """Set False to pass bytes through untouched (e.g. while checking results)."""
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._up: socket.socket | None = None
        self._client: socket.socket | None = None
        self._client_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.port = 0
        """The port the proxy listens on (after start)."""

    @property
    def url(self) -> str:
        """pyserial URL of the proxy."""
        return f"socket://127.0.0.1:{self.port}"

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> FaultProxy:
        self._up = socket.create_connection(self.upstream, timeout=5)
        self._up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._up.settimeout(None)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(1)
        self.port = int(self._listener.getsockname()[1])
        for target, name in ((self._accept_loop, "accept"), (self._down_loop, "down")):
            t = threading.Thread(target=target, name=f"fault-proxy-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        self.disconnect(count=False)
        for sock in (self._listener, self._up):
            if sock is not None:
                try:
                    sock.close()
                except OSError as err:
                    log.debug("closing proxy socket: %s", err)
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def reconnect_upstream(self, timeout_s: float = 10.0) -> None:
        """Connect to the controller again (it was restarted); bytes sent meanwhile are
        lost, as on a UART whose far end was resetting."""
        old = self._up
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                up = socket.create_connection(self.upstream, timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        up.settimeout(None)
        self._up = up
        self.stats.upstream_reconnects += 1
        self._up_generation = self.stats.upstream_reconnects
        if old is not None:
            try:
                old.close()
            except OSError as err:
                log.debug("closing the old upstream: %s", err)

    def disconnect(self, count: bool = True) -> None:
        """Close the current client connection (the link sees its port vanish)."""
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            if count:
                self.stats.disconnects += 1
            try:
                client.shutdown(socket.SHUT_RDWR)
            except OSError as err:
                log.debug("shutdown of the proxy client: %s", err)
            client.close()

    # ---------------------------------------------------------------- pumping
    def mangle(self, data: bytes, direction: str) -> list[tuple[float, bytes]]:
        """Apply faults to one chunk: a list of (delay before sending, bytes)."""
        self.stats.bytes[direction] += len(data)
        if not self.enabled or self.rate == 0.0:
            return [(0.0, data)]
        out: list[tuple[float, bytes]] = []
        cur = bytearray()
        with self._rng_lock:
            for byte in data:
                if self._rng.random() >= self.rate:
                    cur.append(byte)
                    continue
                kind = self._rng.choice(self.kinds)
                self.stats.faults[(direction, kind)] += 1
                if kind == "corrupt":
                    cur.append(byte ^ (1 << self._rng.randrange(8)))
                elif kind == "drop":
                    pass
                elif kind == "duplicate":
                    cur += bytes([byte, byte])
                else:  # delay: hold this byte and the rest of the chunk back
                    out.append((0.0, bytes(cur)))
                    cur = bytearray([byte])
                    out.append((self._rng.uniform(0, self.max_delay_s), b""))
        out.append((0.0, bytes(cur)))
        return [(d, b) for d, b in out if b or d]

    def _send(self, sock: socket.socket, pieces: list[tuple[float, bytes]]) -> None:
        for delay, chunk in pieces:
            if delay:
                time.sleep(delay)
            if chunk:
                sock.sendall(chunk)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.disconnect(count=False)
            with self._client_lock:
                self._client = client
            self.stats.connections += 1
            t = threading.Thread(target=self._up_loop, args=(client,), daemon=True)
            t.start()

    def _up_loop(self, client: socket.socket) -> None:
        """Host -> controller for one client connection."""
        assert self._up is not None
        while not self._stop.is_set():
            try:
                data = client.recv(4096)
            except OSError:
                return
            if not data:
                return
            try:
                self._send(self._up, self.mangle(data, "up"))
            except OSError as err:  # the controller restarting: these bytes are lost
                log.debug("proxy upstream write failed: %s", err)

    def _down_loop(self) -> None:
        """Controller -> host; bytes are discarded while no client is connected."""
        assert self._up is not None
        while not self._stop.is_set():
            up, generation = self._up, self._up_generation
            try:
                ready, _, _ = select.select([up], [], [], 0.1)
                if not ready:
                    continue
                data = up.recv(4096)
            except (OSError, ValueError):
                data = b""
            if not data:  # the controller went away: wait for reconnect_upstream()
                while up is self._up and not self._stop.is_set():
                    time.sleep(0.02)
                continue
            if self.tap is not None:
                self.tap(data, generation)
            pieces = self.mangle(data, "down")
            with self._client_lock:
                client = self._client
            if client is None:
                continue
            try:
                self._send(client, pieces)
            except OSError as err:
                log.debug("proxy client write failed: %s", err)
