"""How the link learns each SORT's fate when the controller's FIRED/LATE does not arrive.

`SortFates` is the object a `ControllerLink` composes (`link.fates`; what it needs of the
link is `FatesHost`) that QUERYs SORTs whose FIRED/LATE is overdue or whose ACK never
came, applies FATE answers, re-times a SORT the controller never saw while it is still in
time, and ends a SORT "timeout" only after asking:

- a SORT is QUERYed when its FIRED/LATE is overdue (target + window + `fate_margin_s`),
  when its ACK never came, and after a reconnect or a controller reset;
- each QUERY is itself retried (same seq) on the ACK timeout; a SORT ends "timeout" when
  the controller answers UNKNOWN (it never saw the item, was reset, or forgot it), when
  `FATE_QUERIES` QUERYs in a row got no answer, or when the link stays lost past
  the fate's due time + `lost_grace_s`; a QUERY NAKed NOT_CONFIGURED (a controller that
  started since knows nothing) is taken as a reset: the link shakes hands again and the
  SORT is settled as after one;
- a "timeout" is QUERYed again up to `RECHECKS` times within `RECHECK_S` (monotonic)
  until the controller gives a final fate (a copy of the SORT written before a reconnect
  can reach it after the QUERY that answered UNKNOWN), and any FIRED/LATE event
  or FATE answer that arrives later for a SORT reported "timeout" corrects it once
  (`Command.corrected`; the done-callbacks run again).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Any, Protocol

from firmware_bridge import protocol as p
from firmware_bridge.clock import Clock, SyncEstimator
from firmware_bridge.command import CANCELLED, FIRED, LATE, NAK, TIMEOUT, Command, LinkStats
from firmware_bridge.options import LinkOptions

log = logging.getLogger(__name__)

FATE_QUERIES = 3
"""QUERYs in a row without any answer before a SORT ends "timeout"."""
RECHECKS = 3
"""QUERYs sent for a SORT after it ended "timeout" without an answer (to correct it)."""
RECHECK_S = 10.0
"""How long after a "timeout" those QUERYs may still go out (monotonic seconds)."""
RECHECKS_IN_FLIGHT = 4
"""At most this many QUERYs outstanding when re-checking timeouts (after a long loss
hundreds of SORTs can time out at once: asking about all of them together would flood a
115200-baud line)."""
RESET_MARGIN_S = 0.05
"""A SORT due this close after a controller reset may have fired on the old controller
(clock mapping error): its fate is unknown, never assumed "late"."""
TIMED_OUT_KEPT = 512
"""SORTs reported "timeout" remembered so a late FIRED/LATE can still correct them."""


class FatesHost(Protocol):
    """What `SortFates` uses of its link (`ControllerLink` is one): the shared lock, the
    SORTs in flight, a way to send a command, the clock mapping and the link's state."""

    url: str
    clock: Clock
    stats: LinkStats
    sync: SyncEstimator
    options: LinkOptions
    safe_reason: str
    _lock: threading.RLock
    _sorts: dict[int, Command]
    _outstanding: dict[int, Any]
    _lost_since: float | None
    _epoch: int

    @property
    def state(self) -> str: ...

    def _send_command(self, cmd: Command, on_reply: Any = None) -> None: ...

    def _ack_timeout(self) -> float: ...

    def _host_time(self, ctrl_us: int, near: float) -> float | None: ...

    def _remembered(self, cmd: Command) -> bool: ...

    def _note_reset(self, why: str) -> None: ...


class SortFates:
    """A link's SORT fates: from events, from QUERY, from re-timing, and late corrections.

    The link calls `resolve_sort`, `on_fired_or_late`, `on_stray_fate`, `apply_fate`,
    `query`, `query_overdue`, `retime_or_late`, `expire_while_lost`, `forget_timed_out`
    and `rechecking`; everything else is inside."""

    def __init__(self, host: FatesHost) -> None:
        self.host = host
        self._next_query: dict[int, float] = {}
        self._query_failures: dict[int, int] = {}
        self._timed_out: OrderedDict[int, Command] = OrderedDict()
        self._rechecks: dict[int, tuple[float, int, float]] = {}
        """item -> (next QUERY, QUERYs left, give up at), all monotonic."""

    def rechecking(self) -> int:
        """SORTs reported "timeout" whose fate the link is still asking for (a correction
        may follow)."""
        with self.host._lock:
            return len(self._rechecks)

    # ------------------------------------------------------------------ outcomes
    def resolve_sort(
        self, cmd: Command, status: str, detail: str = "", *, recheck: bool = False
    ) -> None:
        """End a SORT; a "timeout" is remembered (and QUERYed again if `recheck`) so its
        real fate can still correct it."""
        if not cmd._finish(status, self.host.clock.now(), detail):
            return
        self._forget_sort(cmd)
        if status != TIMEOUT or cmd.item is None:
            return
        self.host.stats.timeouts += 1
        with self.host._lock:
            self._timed_out[cmd.item] = cmd
            self._timed_out.move_to_end(cmd.item)
            while len(self._timed_out) > TIMED_OUT_KEPT:
                old, _ = self._timed_out.popitem(last=False)
                self._rechecks.pop(old, None)
            if recheck:
                mono = time.monotonic()
                self._rechecks[cmd.item] = (mono, RECHECKS, mono + RECHECK_S)

    def _forget_sort(self, cmd: Command) -> None:
        item = cmd.item
        with self.host._lock:
            if item is not None and self.host._sorts.get(item) is cmd:
                del self.host._sorts[item]
            self._next_query.pop(cmd.seq, None)
            self._query_failures.pop(cmd.seq, None)
            out = self.host._outstanding.get(cmd.seq)
            if out is not None and out.cmd is cmd:
                del self.host._outstanding[cmd.seq]

    def forget_timed_out(self, item: int) -> None:
        """A new SORT for `item`: later news about the item is about the new one."""
        with self.host._lock:
            self._timed_out.pop(item, None)
            self._rechecks.pop(item, None)

    def _correct(
        self, item: int, status: str, detail: str, cmd: Command | None = None
    ) -> Command | None:
        """The controller's word on a SORT already reported "timeout" (`cmd`, or the one
        remembered for `item`): correct it."""
        with self.host._lock:
            known = self._timed_out.get(item)
            if known is not None and (cmd is None or known is cmd):
                del self._timed_out[item]
                self._rechecks.pop(item, None)
        cmd = cmd or known
        if cmd is None:
            return None
        if cmd._correct(status, self.host.clock.now(), detail):
            self.host.stats.corrections += 1
            log.warning("%s: item %s was reported timeout but %s", self.host.url, item, status)
        return cmd

    def on_fired_or_late(self, msg: p.Fired | p.Late, now: float) -> None:
        with self.host._lock:
            cmd = self.host._sorts.get(msg.item)
            if cmd is None or _epoch_of(cmd) != msg.epoch:
                cmd = self._timed_out.get(msg.item)
        if cmd is None or _epoch_of(cmd) != msg.epoch:
            log.debug("%s: %s for an unknown item", self.host.url, p.describe(msg))
            return
        cmd.acked = True
        cmd.ctrl_time = msg.time
        if isinstance(msg, p.Fired):
            cmd.fired_at = self.host._host_time(msg.time, now)
            status, detail = FIRED, ""
        else:
            status, detail = LATE, f"late at controller time {msg.time}"
        if cmd.status == TIMEOUT:
            self._correct(msg.item, status, detail or "FIRED event")
        else:
            self.resolve_sort(cmd, status, detail=detail)

    def on_stray_fate(self, reply: p.FateReply) -> None:
        """A FATE answer to a QUERY the link had stopped waiting for (slow line): still
        the controller's word on the item, so apply it (a stale UNKNOWN/PENDING is not)."""
        if reply.fate in (p.Fate.UNKNOWN, p.Fate.PENDING):
            return
        with self.host._lock:
            cmd = self.host._sorts.get(reply.item) or self._timed_out.get(reply.item)
        if cmd is not None and _epoch_of(cmd) == reply.epoch:
            self.apply_fate(cmd, reply)

    # ------------------------------------------------------------------ QUERY
    def query_overdue(self, now: float) -> None:
        """QUERY acked SORTs whose FIRED/LATE is overdue, re-QUERY (every few ACK timeouts,
        real time) SORTs whose fate is still being asked for, and re-check timeouts."""
        mono = time.monotonic()
        with self.host._lock:
            sorts = [c for c in self.host._sorts.values() if not c.done()]
            asked = dict(self._next_query)
            rechecks = [
                (item, entry)
                for item, entry in self._rechecks.items()
                if entry[0] <= mono or entry[2] <= mono
            ]
        for cmd in sorts:
            if cmd.seq not in asked:
                due = self._fate_due(cmd)
                if not cmd.acked or due is None or now < due:
                    continue
            if mono >= asked.get(cmd.seq, 0.0):
                self.query(cmd)
        with self.host._lock:
            in_flight = sum(
                1 for o in self.host._outstanding.values() if isinstance(o.cmd.msg, p.Query)
            )
        for item, (_, left, give_up) in rechecks[: max(0, RECHECKS_IN_FLIGHT - in_flight)]:
            with self.host._lock:
                timed_out = self._timed_out.get(item)
                if timed_out is None or left <= 0 or mono >= give_up:
                    self._rechecks.pop(item, None)
                    continue
                self._rechecks[item] = (
                    mono + max(0.5, 4 * self.host._ack_timeout()),
                    left - 1,
                    give_up,
                )
            self.query(timed_out)

    def _fate_due(self, cmd: Command) -> float | None:
        if cmd.fire_at is not None:
            return cmd.fire_at + cmd.window_s + self.host.options.fate_margin_s
        if isinstance(cmd.msg, p.Sort) and cmd.msg.mode == p.SortMode.NOW and cmd.sent_at:
            return cmd.sent_at + self.host.options.fate_margin_s
        return None

    def query(self, sort: Command) -> None:
        item = sort.item
        assert item is not None
        with self.host._lock:
            if not sort.done():
                self._next_query[sort.seq] = time.monotonic() + max(
                    0.2, 4 * self.host._ack_timeout()
                )
        self.host.stats.queries += 1
        query = Command(p.Query(item, _epoch_of(sort)), 0)
        asked_for = sort.seq

        def on_reply(reply: p.Message) -> None:
            if isinstance(reply, p.Nak) and reply.reason == p.NakReason.NOT_CONFIGURED:
                # a controller that started since: its UNKNOWN would say nothing about
                # the one the SORT went to; the handshake settles the SORT as after a reset
                if self.host.options.handshake and self.host.state == "connected":
                    self.host._note_reset("it answered QUERY unconfigured (was it reset?)")
                return
            if not isinstance(reply, p.FateReply):
                return
            if reply.fate == p.Fate.UNKNOWN and sort.seq != asked_for:
                return  # asked before the SORT was resent: says nothing about the resend
            self.apply_fate(sort, reply)

        def on_done(q: Command) -> None:
            if q.status != TIMEOUT or sort.done() or self.host.state != "connected":
                return
            with self.host._lock:
                self._query_failures[sort.seq] = self._query_failures.get(sort.seq, 0) + 1
                failures = self._query_failures[sort.seq]
            if failures >= FATE_QUERIES:
                self.resolve_sort(
                    sort, TIMEOUT, detail="no answer to the SORT nor to QUERY", recheck=True
                )

        query.add_done_callback(on_done)
        self.host._send_command(query, on_reply)

    def apply_fate(self, cmd: Command, reply: p.FateReply) -> None:
        fate = reply.fate
        if cmd.done():
            if cmd.status == TIMEOUT and fate in (p.Fate.FIRED, p.Fate.LATE):
                self._fate_times(cmd, reply)
                status = FIRED if fate == p.Fate.FIRED else LATE
                self._correct(reply.item, status, "fate from QUERY", cmd)
            elif cmd.status == TIMEOUT and fate in (p.Fate.CANCELLED, p.Fate.DROPPED):
                with self.host._lock:  # the controller's final word: nothing to correct
                    self._rechecks.pop(reply.item, None)
            return
        if fate == p.Fate.PENDING:
            cmd.acked = True
            return
        if fate == p.Fate.FIRED:
            cmd.acked = True
            self._fate_times(cmd, reply)
            self.resolve_sort(cmd, FIRED, detail="fate from QUERY")
        elif fate == p.Fate.LATE:
            cmd.ctrl_time = reply.time
            self.resolve_sort(cmd, LATE, detail="fate from QUERY")
        elif fate == p.Fate.CANCELLED:
            self.resolve_sort(cmd, CANCELLED, detail="fate from QUERY")
        elif fate == p.Fate.DROPPED:
            why = f"dropped: safe state {self.host.safe_reason}".rstrip()
            self.resolve_sort(cmd, CANCELLED, detail=f"{why} (fate from the controller)")
        elif fate == p.Fate.REFUSED:
            self.resolve_sort(cmd, NAK, detail="refused (fate from the controller)")
        else:
            remembered = self.host._remembered(cmd)  # else UNKNOWN may just mean forgotten
            if not cmd.acked and remembered and _epoch_of(cmd) != self.host._epoch:
                # asked in its old epoch after a handshake: it never arrived, and a late
                # copy is now refused (STALE_EPOCH): re-time it or report it late
                self.retime_or_late(cmd, "never reached the controller")
                return
            if not cmd.acked and remembered and self._can_resend(cmd):
                self._resend_sort(cmd)
                return
            # UNKNOWN: never arrived, forgotten, or still on its way (a copy written before
            # a reconnect can reach the controller after the QUERY): ask again later
            self.resolve_sort(
                cmd, TIMEOUT, detail="controller does not know the item", recheck=True
            )

    def _fate_times(self, cmd: Command, reply: p.FateReply) -> None:
        cmd.ctrl_time = reply.time
        if reply.fate == p.Fate.FIRED:
            cmd.fired_at = self.host._host_time(reply.time, self.host.clock.now())

    def _can_resend(self, cmd: Command) -> bool:
        """In time to send again, and (same epoch) surely remembered by the controller if
        an earlier copy did arrive, so a copy cannot run twice."""
        if cmd.fire_at is None:
            return False
        return self.host.clock.now() < cmd.fire_at - self.host.options.ack_timeout_s

    def retime_or_late(self, cmd: Command, why: str, ran_until: float | None = None) -> None:
        """A SORT the controller does not hold whose epoch is over (it never arrived, or
        the controller was reset, having run its old queue until at most `ran_until`):
        re-timed in the current epoch on the current clock mapping if still in time, else
        reported "late" when it surely did not fire, "timeout" when it may have fired
        before a reset. Never resent as stored bytes."""
        assert isinstance(cmd.msg, p.Sort)
        mode = cmd.msg.mode
        reset = ran_until is not None
        in_time = mode == p.SortMode.TIME and self._can_resend(cmd)
        # a belt position survives a lost cable, not a controller reset (counts from 0)
        same_belt = mode == p.SortMode.POSITION and not reset
        if in_time or same_belt:
            self._resend_sort(cmd)
        elif ran_until is not None and (
            cmd.fire_at is None or cmd.fire_at - RESET_MARGIN_S <= ran_until
        ):
            self.resolve_sort(cmd, TIMEOUT, detail=f"{why}: it may have fired before")
        else:
            self.resolve_sort(cmd, LATE, detail=f"{why}; too late to send again: not fired")

    def _resend_sort(self, cmd: Command) -> None:
        """Send a SORT again under a new seq in the current epoch, its target re-timed on
        the current clock mapping. Its earlier seq stops being outstanding: one item is
        never in flight under two seqs (a copy that still arrives is answered with the
        item's fate, or refused as STALE_EPOCH, and the answer goes nowhere)."""
        assert isinstance(cmd.msg, p.Sort)
        with self.host._lock:
            self._next_query.pop(cmd.seq, None)
            out = self.host._outstanding.get(cmd.seq)
            if out is not None and out.cmd is cmd:
                del self.host._outstanding[cmd.seq]
        msg = cmd.msg
        target = msg.target
        if msg.mode == p.SortMode.TIME and cmd.fire_at is not None and self.host.sync.synced:
            target = self.host.sync.to_controller(cmd.fire_at)
        cmd.msg = p.Sort(msg.item, msg.gate, msg.mode, target, msg.window_us, self.host._epoch)
        cmd.acked = False
        self.host._send_command(cmd)
        log.info("%s: resent SORT for item %s (seq %d)", self.host.url, cmd.item, cmd.seq)

    def expire_while_lost(self) -> None:
        """While the port is gone: SORTs whose fate is long overdue end "timeout" (the
        caller needs an answer); they are QUERYed after the reconnect and corrected."""
        if self.host._lost_since is None:
            return
        now = self.host.clock.now()
        with self.host._lock:
            sorts = [c for c in self.host._sorts.values() if not c.done()]
        for cmd in sorts:
            due = self._fate_due(cmd)
            if due is not None and now > due + self.host.options.lost_grace_s:
                self.resolve_sort(cmd, TIMEOUT, detail="link lost", recheck=True)


def _epoch_of(cmd: Command) -> int:
    """The link epoch a SORT (or CANCEL/QUERY) command belongs to."""
    return int(getattr(cmd.msg, "epoch", 0))
