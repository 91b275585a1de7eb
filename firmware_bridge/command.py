"""`Command`: one command sent to the controller and what became of it (its fate).

A SORT ends "fired", "late", "nak", "timeout" or "cancelled"; other commands end "acked",
"nak" or "timeout". "timeout" means the host could not learn the fate in time (no answer
to the SORT nor to QUERY, link lost, controller reset). It is the only status that can
change afterwards, and at most once: when the controller's FIRED/LATE event or a FATE
answer for that SORT arrives later, the status is corrected to "fired" or "late",
`corrected` is set, and every done-callback is called again, so a decision log can update
the item's fate.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from firmware_bridge import protocol as p

log = logging.getLogger(__name__)


class Fate(StrEnum):
    """What became of a command: the one set of fate names, for the link and the sorter.

    A StrEnum: members equal (and hash, print and serialise as) their plain strings, so
    logs, JSON and SQLite hold "fired", "late"... as before. The link's commands end in one
    of FINAL; REJECTED and DRY_RUN are the sorter's outcomes for an item no command was
    sent for (no gate: reject lane; a dry run).
    """

    PENDING = "pending"
    FIRED = "fired"
    LATE = "late"
    NAK = "nak"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    ACKED = "acked"
    REJECTED = "rejected"
    DRY_RUN = "dry-run"


PENDING = Fate.PENDING
FIRED = Fate.FIRED
LATE = Fate.LATE
NAK = Fate.NAK
TIMEOUT = Fate.TIMEOUT
CANCELLED = Fate.CANCELLED
ACKED = Fate.ACKED
FINAL = frozenset({FIRED, LATE, NAK, TIMEOUT, CANCELLED, ACKED})
"""Statuses a command ends in."""
CORRECTABLE_TO = frozenset({FIRED, LATE})
"""What a "timeout" may be corrected to when the controller's word arrives late."""


@dataclass(eq=False)
class Command:
    """One command sent to the controller and what became of it.

    A SORT ends "fired", "late", "nak", "timeout" or "cancelled"; other commands end
    "acked", "nak" or "timeout". A SORT's "timeout" may be corrected once to "fired" or
    "late" (see the module docstring); callbacks are then called again. Callbacks run in a
    link thread: keep them short.
    """

    msg: p.Message
    """The message sent."""
    seq: int
    """Its sequence number (kept across retries)."""
    fire_at: float | None = None
    """SORT in TIME mode: the host-clock time it should fire."""
    window_s: float = 0.0
    """SORT: how late it may still fire (s)."""
    status: str = PENDING
    """"pending" until done, then one of FINAL."""
    acked: bool = False
    """The controller ACKed (or replied to) it."""
    nak_reason: p.NakReason | None = None
    """Why it was refused, when status is "nak"."""
    detail: str = ""
    """Human-readable note on the outcome (e.g. "dropped: safe state HEARTBEAT")."""
    reply: p.Message | None = None
    """The typed reply (HELLO_INFO, SYNC_REPLY, FATE, ACK or NAK)."""
    attempts: int = 0
    """Times written (1 + retries)."""
    sent_at: float | None = None
    """Host clock time of the first write."""
    done_at: float | None = None
    """Host clock time it finished (or, when corrected, the time of the correction)."""
    fired_at: float | None = None
    """Host clock time the controller reported the gate fired (FIRED), on the fire_at line."""
    ctrl_time: int | None = None
    """Controller time (us) of the FIRED/LATE/fate."""
    corrected: bool = False
    """True once a "timeout" was corrected to "fired" or "late" (happens at most once)."""
    ring_mark: tuple[int, int, int] | None = field(default=None, repr=False)
    """SORT: (epoch, SORTs written before it in that epoch, SORTs unresolved then): how
    long the controller surely remembers its item (the link's resend bound)."""
    _event: threading.Event = field(default_factory=threading.Event, repr=False)
    _callbacks: list[Callable[[Command], None]] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def item(self) -> int | None:
        """The item id for SORT/CANCEL/QUERY."""
        return getattr(self.msg, "item", None)

    @property
    def kind(self) -> str:
        """Message type name, e.g. "SORT"."""
        return self.msg.TYPE.name

    def done(self) -> bool:
        """True once the status is final."""
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> str:
        """Wait up to `timeout` seconds (real time) for the outcome; return the status."""
        self._event.wait(timeout)
        return self.status

    def add_done_callback(self, fn: Callable[[Command], None]) -> None:
        """Call `fn(command)` when done (at once if already done), and again if a
        "timeout" is later corrected."""
        with self._lock:
            self._callbacks.append(fn)
            if not self._event.is_set():
                return
        call_safely(fn, self)

    def _finish(self, status: str, when: float, detail: str = "") -> bool:
        """End the command (once); returns False if it had already ended."""
        with self._lock:
            if self._event.is_set():
                return False
            self.status = status
            self.done_at = when
            if detail:
                self.detail = detail
            callbacks = list(self._callbacks)
            self._event.set()
        for fn in callbacks:
            call_safely(fn, self)
        return True

    def _correct(self, status: str, when: float, detail: str) -> bool:
        """Turn a "timeout" into "fired"/"late" (once) and call the callbacks again."""
        if status not in CORRECTABLE_TO:
            return False
        with self._lock:
            if self.status != TIMEOUT or self.corrected:
                return False
            self.status = status
            self.corrected = True
            self.done_at = when
            self.detail = f"{detail} (corrected from timeout)"
            callbacks = list(self._callbacks)
        log.info("item %s: fate corrected from timeout to %s", self.item, status)
        for fn in callbacks:
            call_safely(fn, self)
        return True


def call_safely(fn: Callable[..., Any], *args: Any) -> None:
    """Call a user callback; log (never raise) what it throws."""
    try:
        fn(*args)
    except Exception:
        log.exception("callback %r failed", fn)


@dataclass
class LinkStats:
    """Counters the link keeps (shown by `sorter controller monitor`)."""

    frames_sent: int = 0
    """Frames written."""
    frames_received: int = 0
    """Valid frames read."""
    retries: int = 0
    """Commands written again after an ACK timeout."""
    timeouts: int = 0
    """Commands that ended "timeout"."""
    corrections: int = 0
    """SORTs reported "timeout" whose real fate (fired/late) arrived later."""
    queries: int = 0
    """QUERYs sent for overdue or uncertain SORTs."""
    reconnects: int = 0
    """Successful reconnections."""
    duplicates: int = 0
    """Controller frames dropped as duplicates."""
    bad_messages: int = 0
    """Frames with a good CRC that did not decode."""
