"""Clocks the link and the simulator read time from (the host <-> controller mapping from
SYNC round trips, `SyncEstimator`, is in `firmware_bridge.sync`; re-exported here).

`MonotonicClock` is the real thing (`time.monotonic()`). `VirtualClock` only moves when
told to (`set`, `advance`), so a replay can run as fast as possible and still put every
event at the right virtual time. Listeners registered with `subscribe` are called
synchronously, in subscription order, by whichever thread moves the clock: the simulator
does its due work there instead of on a real-time thread.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from firmware_bridge.sync import SyncEstimator, SyncSample

__all__ = [
    "Clock",
    "MonotonicClock",
    "SyncEstimator",
    "SyncSample",
    "VirtualClock",
    "port_clock",
    "ports_follow",
]

log = logging.getLogger(__name__)

Listener = Callable[[float], None]
"""Called with the new time after a virtual clock moved."""
WakeFn = Callable[[], "float | None"]
"""Returns the next time a subscriber needs the virtual clock to stop at, or None."""


class Clock(Protocol):
    """What the link and the simulator need from a clock."""

    virtual: bool
    """True when time only moves when told to (replay)."""

    def now(self) -> float:
        """Seconds on this clock's timeline."""
        ...

    def wait_until(self, t: float, stop: threading.Event, poll_s: float = 0.05) -> bool:
        """Block until `now() >= t` or `stop` is set; True if the time was reached."""
        ...


class MonotonicClock:
    """The host's monotonic clock."""

    virtual = False

    def now(self) -> float:
        return time.monotonic()

    def wait_until(self, t: float, stop: threading.Event, poll_s: float = 0.05) -> bool:
        while not stop.is_set():
            remaining = t - time.monotonic()
            if remaining <= 0:
                return True
            stop.wait(remaining)
        return False


class VirtualClock:
    """A clock that moves only when `set` or `advance` is called. Thread safe.

    A discrete-event clock: subscribers may say when they next need to act
    (`next_wake`). Moving the clock from t0 to t1 stops at every such wake time in
    between, in order, and calls every listener there; then it stops at t1. So the
    simulator fires a SORT at exactly its target and the link sends its heartbeats at
    their virtual times even when a replay jumps the clock by seconds at once.
    """

    virtual = True

    def __init__(self, start: float = 0.0) -> None:
        self._t = float(start)
        self._lock = threading.Lock()
        self._moved = threading.Condition(self._lock)
        self._subs: list[tuple[Listener, WakeFn | None]] = []
        self._advance_lock = threading.RLock()

    def now(self) -> float:
        with self._lock:
            return self._t

    def set(self, t: float) -> None:
        """Move to time `t`, stopping at the subscribers' wake times on the way. An
        earlier `t` is an error: a virtual clock never goes back."""
        with self._advance_lock:
            for _ in range(_MAX_STEPS):
                with self._lock:
                    if t < self._t:
                        raise ValueError(f"virtual clock cannot go back from {self._t} to {t}")
                    subs = list(self._subs)
                    current = self._t
                wake = self._earliest_wake(subs, current, t)
                self._move(wake if wake is not None else t, subs)
                if wake is None:
                    return
            log.warning("virtual clock: more than %d wake-ups before %.6f; jumping", _MAX_STEPS, t)
            with self._lock:
                subs = list(self._subs)
            self._move(t, subs)

    def advance(self, dt: float) -> None:
        """Move forward by `dt` seconds (see `set`)."""
        if dt < 0:
            raise ValueError(f"virtual clock cannot advance by a negative {dt}")
        with self._advance_lock:
            self.set(self.now() + dt)

    def subscribe(self, listener: Listener, next_wake: WakeFn | None = None) -> Callable[[], None]:
        """Call `listener(t)` after every move. `next_wake()` returns when this subscriber
        next needs the clock to stop (or None). Returns a function that unsubscribes."""
        entry = (listener, next_wake)
        with self._lock:
            self._subs.append(entry)

        def unsubscribe() -> None:
            with self._lock:
                if entry in self._subs:
                    self._subs.remove(entry)

        return unsubscribe

    def wait_until(self, t: float, stop: threading.Event, poll_s: float = 0.05) -> bool:
        """Block until virtual time reaches `t` (someone else must move it) or `stop`."""
        with self._lock:
            while self._t < t:
                if stop.is_set():
                    return False
                self._moved.wait(poll_s)
            return True

    @staticmethod
    def _earliest_wake(
        subs: list[tuple[Listener, WakeFn | None]], current: float, target: float
    ) -> float | None:
        best: float | None = None
        for _, next_wake in subs:
            if next_wake is None:
                continue
            try:
                wake = next_wake()
            except Exception:
                log.exception("virtual clock: next_wake %r failed", next_wake)
                continue
            if wake is not None and current < wake < target and (best is None or wake < best):
                best = wake
        return best

    def _move(self, t: float, subs: list[tuple[Listener, WakeFn | None]]) -> None:
        with self._lock:
            self._t = max(self._t, float(t))
            self._moved.notify_all()
        for listener, _ in subs:
            try:
                listener(t)
            except Exception:
                log.exception("virtual clock listener %r failed", listener)


_MAX_STEPS = 1_000_000
"""Safety bound on wake-ups within one move."""


_PORT_CLOCK: contextvars.ContextVar[Clock | None] = contextvars.ContextVar(
    "port_clock", default=None
)


@contextlib.contextmanager
def ports_follow(clock: Clock) -> Iterator[None]:
    """Ports opened inside this block (`serial.serial_for_url`) run on `clock` if they keep
    time at all (the `sim://` simulator does; a device or a socket ignores it). pyserial
    passes only its own settings to a port, so the link says which clock it is on here."""
    token = _PORT_CLOCK.set(clock)
    try:
        yield
    finally:
        _PORT_CLOCK.reset(token)


def port_clock() -> Clock | None:
    """The clock of the `ports_follow` block being run in, or None outside one."""
    return _PORT_CLOCK.get()
