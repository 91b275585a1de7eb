"""systemd's sd_notify protocol, pure stdlib: READY, WATCHDOG, STATUS, STOPPING.

Under systemd (`Type=notify`), the service manager passes a datagram socket in
`$NOTIFY_SOCKET`; each message is a newline-separated list of `KEY=value` lines sent
as one datagram. Off systemd (no `$NOTIFY_SOCKET`) every call is a cheap no-op, so the
loop can call these unconditionally.

The pipeline calls:
- `ready()` once the camera is open and the controller link is up,
- `watchdog()` per processed frame batch (rate-limited here to a fraction of
  `$WATCHDOG_USEC`, so calling it per frame is cheap),
- `status(text)` now and then (shown by `systemctl status produce-sorter`),
- `stopping()` when shutting down (SIGTERM / Ctrl-C), before the final flush.

A stalled loop stops calling `watchdog()` (it is called on the loop's thread only);
systemd then kills and restarts the service (`WatchdogSec=` in
deploy/produce-sorter.service), and meanwhile the controller's own heartbeat timeout has
put the gates in the safe state: `sorter.runtime.liveness` silences the controller link
once the loop makes no progress for `[serial] loop_timeout_ms`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

__all__ = [
    "Notifier",
    "default",
    "ready",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval",
]


def _socket_address(value: str) -> str | bytes:
    """Turn `$NOTIFY_SOCKET` into an AF_UNIX address (a leading '@' is the abstract namespace)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


@dataclass
class Notifier:
    """Sends sd_notify datagrams to one socket; thread-safe; silent when no socket is set."""

    socket_path: str | None = None
    """`$NOTIFY_SOCKET` (path or `@abstract`); None -> every call is a no-op."""
    watchdog_usec: int | None = None
    """`$WATCHDOG_USEC`: systemd's watchdog timeout in microseconds (None: no watchdog)."""
    watchdog_pid: int | None = None
    """`$WATCHDOG_PID`: the pid the watchdog is meant for (None: any)."""
    sent: int = 0
    """Datagrams sent so far (for tests and the status line)."""
    _sock: socket.socket | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _last_watchdog: float | None = field(default=None, repr=False)
    _warned: bool = field(default=False, repr=False)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Notifier:
        """Build from the environment systemd gives the service (`os.environ` by default)."""
        env = dict(os.environ) if env is None else env
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        return cls(
            socket_path=env.get("NOTIFY_SOCKET") or None,
            watchdog_usec=int(usec) if usec and usec.isdigit() and int(usec) > 0 else None,
            watchdog_pid=int(pid) if pid and pid.isdigit() else None,
        )

    @property
    def enabled(self) -> bool:
        """True when running under systemd with a notify socket."""
        return self.socket_path is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between keep-alives we aim for: half of `WatchdogSec`, or None."""
        if self.watchdog_usec is None:
            return None
        if self.watchdog_pid is not None and self.watchdog_pid != os.getpid():
            return None
        return self.watchdog_usec / 2e6

    def send(self, *lines: str) -> bool:
        """Send one datagram of `KEY=value` lines; returns True when it was sent."""
        if self.socket_path is None:
            return False
        message = "\n".join(lines).encode()
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(
                        socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                    )
                self._sock.sendto(message, _socket_address(self.socket_path))
            except OSError as err:
                # Never let the service die because systemd's socket went away; say so once.
                if not self._warned:
                    logger.warning("sd_notify to %s failed: %s", self.socket_path, err)
                    self._warned = True
                return False
            self.sent += 1
            return True

    def ready(self, status_text: str | None = None) -> bool:
        """READY=1: the service is up (systemd's `Type=notify` start completes)."""
        lines = ["READY=1", f"MAINPID={os.getpid()}"]
        if status_text:
            lines.append(f"STATUS={_one_line(status_text)}")
        return self.send(*lines)

    def watchdog(self, now: float | None = None) -> bool:
        """WATCHDOG=1, at most once per half watchdog interval; returns True when sent.

        Sends nothing when systemd runs no watchdog for this process (no `WATCHDOG_USEC`,
        or a `WATCHDOG_PID` that is not ours), so calling it per frame costs nothing.
        """
        interval = self.watchdog_interval()
        if self.socket_path is None or interval is None:
            return False
        t = time.monotonic() if now is None else now
        # Keep-alive at a quarter of the timeout is plenty; skip the rest.
        last = self._last_watchdog
        if last is not None and t - last < interval / 2:
            return False
        if self.send("WATCHDOG=1"):
            self._last_watchdog = t
            return True
        return False

    def status(self, text: str) -> bool:
        """STATUS=...: one line of free text for `systemctl status`."""
        return self.send(f"STATUS={_one_line(text)}")

    def stopping(self, status_text: str | None = None) -> bool:
        """STOPPING=1: the service is shutting down on purpose."""
        lines = ["STOPPING=1"]
        if status_text:
            lines.append(f"STATUS={_one_line(status_text)}")
        return self.send(*lines)

    def close(self) -> None:
        """Close the datagram socket (it is reopened on the next send)."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def _one_line(text: str) -> str:
    return " ".join(text.split())


_default: Notifier | None = None
_default_lock = threading.Lock()


def default() -> Notifier:
    """The process-wide notifier, built from the environment on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Notifier.from_env()
        return _default


def ready(status_text: str | None = None) -> bool:
    """Tell systemd the service is running (call once, when the loop is up)."""
    return default().ready(status_text)


def watchdog() -> bool:
    """Keep the systemd watchdog fed (call per processed frame batch; rate-limited)."""
    return default().watchdog()


def status(text: str) -> bool:
    """Set the one-line status shown by `systemctl status`."""
    return default().status(text)


def stopping(status_text: str | None = None) -> bool:
    """Tell systemd the service is stopping on purpose."""
    return default().stopping(status_text)


def watchdog_interval() -> float | None:
    """Seconds between keep-alives systemd expects at most, halved; None off systemd."""
    return default().watchdog_interval()
