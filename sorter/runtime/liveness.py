"""Is the sorting loop making progress? If not, let the controller fall to safe on its own.

The link to the controller sends heartbeats from its own supervisor thread, so a loop that
hangs (a stuck camera driver call, a deadlock, an interpreter that never returns) would
leave the controller believing the host is in control while no item is decided, and
gates could still fire for SORTs sent before the hang. `Liveness` is the loop's progress:
the runner calls `beat()` on every step (a frame processed, or a camera stall noted).
`LoopWatch` checks it from its own thread; when the last beat is older than the timeout
it silences the link (`heartbeat_paused()`: nothing goes out on the link's own initiative),
so the controller's own heartbeat timeout puts every gate in the safe state within
`serial.heartbeat_ms`, raises a `loop_stalled` alarm, and undoes both once beats resume
(the link then RESUMEs the controller like after any silent stretch).

systemd's watchdog is fed from the same progress: `sorter.monitor.notify.watchdog()` is
called on the loop's thread per processed frame, never from another thread, so a hung loop
also gets the service restarted (`WatchdogSec=` in deploy/produce-sorter.service), by
which time the controller is already safe.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol, runtime_checkable

log = logging.getLogger(__name__)


@runtime_checkable
class SilenceableLink(Protocol):
    """A link that can stop sending on its own (firmware_bridge.link.ControllerLink)."""

    def heartbeat_paused(self) -> contextlib.AbstractContextManager[None]: ...


class Liveness:
    """The time of the loop's last progress; read from any thread."""

    def __init__(self, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.timeout_s = timeout_s
        """Without a beat for this long the loop counts as stalled."""
        self._clock = clock
        self._last = clock()
        self.beats = 0
        """Beats so far."""

    def beat(self) -> None:
        """The loop made progress (called on the loop's thread)."""
        self._last = self._clock()
        self.beats += 1

    def age(self) -> float:
        """Seconds since the last beat (or since creation)."""
        return self._clock() - self._last

    def alive(self) -> bool:
        """True while the last beat is at most `timeout_s` old."""
        return self.age() <= self.timeout_s


AlarmCallback = Callable[[str, str | None], None]


class LoopWatch:
    """Silences a link while `liveness` says the loop is stalled (see the module docstring).

    `alarm(kind, text)` (e.g. `Status.alarm`) gets "loop_stalled" with a text when the loop
    stalls and None when it resumes. Use as a context manager or `start()` / `stop()`.
    """

    def __init__(
        self,
        liveness: Liveness,
        link: object | None,
        alarm: AlarmCallback | None = None,
        *,
        check_s: float = 0.05,
    ) -> None:
        self.liveness = liveness
        self.link = link if isinstance(link, SilenceableLink) else None
        if link is not None and self.link is None:
            log.warning("the controller link cannot be silenced: a hung loop keeps it alive")
        self.alarm = alarm
        self.check_s = check_s
        self.stalls = 0
        """Times the loop was found stalled."""
        self._silence: contextlib.ExitStack | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def stalled(self) -> bool:
        """True while the loop counts as stalled (and the link is silenced)."""
        return self._silence is not None

    def start(self) -> LoopWatch:
        """Start watching (a daemon thread)."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="loop-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching; a silenced link speaks again."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        self._resume(quiet=True)

    def __enter__(self) -> LoopWatch:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def check(self) -> bool:
        """One check (the thread calls it every `check_s`); returns `stalled`."""
        alive = self.liveness.alive()
        if not alive and self._silence is None:
            self._stall()
        elif alive and self._silence is not None:
            self._resume(quiet=False)
        return self.stalled

    def _run(self) -> None:
        while not self._stop.wait(self.check_s):
            try:
                self.check()
            except Exception:  # the watch must outlive a failing alarm callback
                log.exception("loop watch check failed")

    def _stall(self) -> None:
        with self._lock:
            stack = contextlib.ExitStack()
            if self.link is not None:
                stack.enter_context(_paused(self.link))
            self._silence = stack
            self.stalls += 1
        text = (
            f"the sorting loop made no progress for {self.liveness.age():.1f} s; controller "
            "link silenced so the controller goes safe on its heartbeat timeout"
        )
        log.error("%s", text)
        if self.alarm is not None:
            self.alarm("loop_stalled", text)

    def _resume(self, *, quiet: bool) -> None:
        with self._lock:
            stack, self._silence = self._silence, None
        if stack is None:
            return
        stack.close()
        if not quiet:
            log.warning("the sorting loop is making progress again; controller link resumed")
        if self.alarm is not None:
            self.alarm("loop_stalled", None)


@contextlib.contextmanager
def _paused(link: SilenceableLink) -> Iterator[None]:
    with link.heartbeat_paused():
        yield
