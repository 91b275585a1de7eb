"""`ControllerLink`: the host's end of the serial link to the gate controller.

It owns the port (pyserial `serial_for_url`: a device path, `socket://host:port`,
`loop://`, or `sim://`, the in-process simulator, a URL handler registered by
`firmware_bridge.urlhandler` that runs on the link's clock), a reader thread
that turns bytes into messages, and a supervisor thread that sends heartbeats, re-SYNCs,
resends commands whose ACK is overdue (same seq, bounded), QUERYs SORTs whose FIRED/LATE
is overdue, and reconnects with backoff when the port disappears (HELLO, CONFIG, RESUME,
SYNC, then QUERY whatever was in flight).

Every command is a `Command` that ends as "fired", "late", "nak", "timeout" or
"cancelled" (SORT) or "acked", "nak", "timeout" (other commands); waits use monotonic
deadlines and never block forever.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import serial

from firmware_bridge import protocol as p
from firmware_bridge.clock import Clock, MonotonicClock, SyncEstimator, SyncSample, ports_follow
from firmware_bridge.command import (
    ACKED,
    CANCELLED,
    FINAL,
    FIRED,
    LATE,
    NAK,
    PENDING,
    TIMEOUT,
    Command,
    LinkStats,
    call_safely,
)
from firmware_bridge.errors import LinkError, ProtocolError
from firmware_bridge.fates import SortFates
from firmware_bridge.framing import PROTO_VERSION, Deframer
from firmware_bridge.options import LinkOptions
from firmware_bridge.position import PositionEstimator
from firmware_bridge.rtt import AckTimeout

log = logging.getLogger(__name__)

__all__ = [
    "ACKED",
    "CANCELLED",
    "FINAL",
    "FIRED",
    "LATE",
    "NAK",
    "PENDING",
    "TIMEOUT",
    "Command",
    "ControllerLink",
    "LinkStats",
]

EventCallback = Callable[[p.Message], None]
_EFFECT_TYPES = frozenset({p.MsgType.CONFIG, p.MsgType.CANCEL, p.MsgType.RESUME, p.MsgType.SAFE})
"""Commands the controller keeps in its duplicate window (SORT is idempotent by item)."""
RETRY_TTL_S = p.DEDUP_TTL_MS / 1000 - 1.0
"""A command in the duplicate window is never resent with its seq later than this after
its first write: the controller forgets entries after DEDUP_TTL_MS."""
RESYNC_EVERY_S = 2.0
"""At most one handshake on the same port this often (a controller that keeps resetting
must not keep the link shaking hands)."""
RESUME_EVERY_S = 1.0
"""At most one automatic RESUME this often when the controller is seen in the safe state
while the host wants the line to run."""


@dataclass
class _Outstanding:
    cmd: Command
    wire: bytes
    deadline: float
    on_reply: Callable[[p.Message], None] | None = None
    waited: bool = False
    effect_index: int = 0
    """Effectful commands first written before this one (`_effects` at its first write)."""
    older_open: int = 0
    """Effectful commands still unanswered when it was first written (they may reach the
    controller after it and push it out of the duplicate window)."""
    sent_mono: float = 0.0
    retry: bool = True
    """False: never resent (a position poll: a newer one follows)."""


class ControllerLink:
    """The serial link to a gate controller; see the module docstring and INTERFACES.md."""

    def __init__(
        self,
        url: str,
        clock: Clock | None = None,
        *,
        n_gates: int | None = None,
        pulse_ms: int | Sequence[int] = 40,
        options: LinkOptions | None = None,
        port_factory: Callable[[], Any] | None = None,
        **tuning: Any,
    ) -> None:
        """`tuning`: any `LinkOptions` field by name (heartbeat_s=1.0, retries=6, ...),
        applied over `options` (default: LinkOptions())."""
        self.url = url
        self.clock: Clock = clock or MonotonicClock()
        self.options = (options or LinkOptions()).with_(url, **tuning)
        """How this link talks (timeouts, retries, CONFIG values)."""
        self.hello_resend_s = self.options.hello_resend_s
        """How often HELLO is resent while waiting for HELLO_INFO (s)."""
        self.ack_timer = AckTimeout(self.options.ack_timeout_s, self.options.ack_timeout_s)
        """The ACK timeout in use (adaptive when given a ceiling above ack_timeout_s; kept
        fixed for now: see rtt.py)."""
        self._port_factory = port_factory
        self._n_gates = n_gates
        self._pulse_ms = pulse_ms
        self.sync = SyncEstimator()
        """Host <-> controller clock mapping."""
        self.positions = PositionEstimator()
        """Belt position against controller time, from SYNC replies and STATUS (POSITION
        mode)."""
        self.stats = LinkStats()
        """Counters."""
        self.info: p.HelloInfo | None = None
        """The controller's HELLO_INFO (after start)."""
        self.last_status: p.Status | None = None
        """The latest STATUS."""
        self.in_safe_state = False
        """The controller reported it is in the safe state."""
        self.safe_reason = ""
        """Why it last entered the safe state (SafeReason name), from SAFE_STATE."""
        self._state = "closed"
        self._port: Any = None
        self._port_lock = threading.Lock()
        self._write_lock = threading.RLock()
        self._lock = threading.RLock()
        self._seq = itertools.count()
        self._outstanding: dict[int, _Outstanding] = {}
        self._sorts: dict[int, Command] = {}
        self.fates = SortFates(self)
        """SORT fates: QUERY, re-timing, corrections (firmware_bridge.fates)."""
        self._effects = 0
        self._epoch = 0
        """Link epoch of the current session (chosen at each handshake, never 0)."""
        self._sorts_written = 0
        """SORTs written so far, all epochs (to bound what the fates ring remembers)."""
        self._reset_seen_at: float | None = None
        """Host time the controller was first seen reset (unconfigured STATUS, a NAK
        STALE_EPOCH in our epoch, a watchdog FAULT): it ran its old queue until then."""
        self._epoch_items: set[int] = set()
        """Items sent in the current epoch: an item id never repeats within an epoch."""
        self._last_auto_resume = -1e9
        self._rng = random.Random()
        self._resync_wanted = ""
        self._last_resync = -1e9
        self._deframer = Deframer()
        self._seen: OrderedDict[int, bytes] = OrderedDict()
        self._callbacks: list[EventCallback] = []
        self._msg_callbacks: list[EventCallback] = []
        self._stop = threading.Event()
        self._port_ready = threading.Event()
        self._status_seen = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_tx_mono = 0.0
        self._last_tx_clock = 0.0
        self._heartbeat_paused = 0
        self._want_safe = False
        self._resume_wanted = False
        self._last_sync_clock = -1e18
        self._last_position_clock = -1e18
        self._position_cmd: Command | None = None
        self._lost_since: float | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._sync_echo = itertools.count(1)

    # ================================================================ lifecycle
    @property
    def epoch(self) -> int:
        """The current link epoch (chosen at each handshake; SORT items are unique in it)."""
        return self._epoch

    @property
    def state(self) -> str:
        """ "closed", "connecting", "connected" or "lost" (reconnecting)."""
        return self._state

    def __enter__(self) -> ControllerLink:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> ControllerLink:
        """Open the port, shake hands (HELLO, CONFIG, RESUME, SYNC) and start the threads.
        Raises `LinkError` naming the port when that fails."""
        if self._state != "closed":
            raise LinkError(f"{self.url}: link already started")
        self._stop.clear()
        self._state = "connecting"
        reader = threading.Thread(target=self._reader, name="link-reader", daemon=True)
        self._threads = [reader]
        reader.start()
        try:
            self._open()
            if self.options.handshake:
                self._shake_hands()
        except BaseException:
            self.close()
            raise
        if not self._set_connected():
            self.close()
            raise LinkError(f"{self.url}: the port closed during the handshake; {_hint(self.url)}")
        if self._heartbeat_virtual():
            vclock: Any = self.clock
            self._unsubscribe = vclock.subscribe(self._virtual_heartbeat, self._next_heartbeat)
        supervisor = threading.Thread(target=self._supervise, name="link-supervisor", daemon=True)
        self._threads.append(supervisor)
        supervisor.start()
        return self

    def close(self) -> None:
        """Stop the threads and close the port. Commands still pending end "timeout"."""
        self._stop.set()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=3)
        self._threads = []
        self._close_port()
        now = self.clock.now()
        with self._lock:
            pending = [o.cmd for o in self._outstanding.values()]
            pending += [c for c in self._sorts.values() if not c.done()]
            self._outstanding.clear()
            self._sorts.clear()
        for cmd in pending:
            cmd._finish(TIMEOUT, now, "link closed")
        self._state = "closed"

    # ================================================================ public commands
    def configure(self, n_gates: int, pulse_ms: int | Sequence[int] = 40) -> None:
        """Send CONFIG (kept for reconnects). Raises `LinkError` on NAK or timeout."""
        kept = self._n_gates, self._pulse_ms
        self._n_gates, self._pulse_ms = n_gates, pulse_ms
        try:
            msg = self._config_msg()
        except LinkError:
            self._n_gates, self._pulse_ms = kept  # a reconnect sends the last good CONFIG
            raise
        reply = self.request(msg)
        if isinstance(reply, p.Nak):
            raise LinkError(f"{self.url}: controller refused CONFIG: {_nak_name(reply.reason)}")

    def sort(
        self,
        item: int,
        gate: int,
        fire_at: float | None = None,
        window_s: float = 0.005,
        *,
        position: int | None = None,
        window_ticks: int = 0,
    ) -> Command:
        """Fire `gate` for `item` at host-clock time `fire_at` (TIME mode), at belt
        `position` (POSITION mode, needs an encoder) or, with neither, now (NOW mode).
        Returns at once; the Command ends fired/late/nak/timeout/cancelled. On a link that
        is not connected (reconnecting, shaking hands) it ends "timeout" at once: nothing
        is queued to go out later with a stale target. An item id may be used once per
        link epoch (a new epoch starts at every handshake)."""
        if not 0 <= item <= 0xFFFFFFFF or not 0 <= gate <= 0xFF:
            raise ValueError(f"item {item} must be a u32 and gate {gate} a u8")
        if self._stop.is_set() or self._state == "closed":
            raise LinkError(f"{self.url}: the link is closed")
        if self._state != "connected":  # no target is computed, nothing is queued
            cmd = Command(p.Sort(item, gate, p.SortMode.TIME, 0, 0), 0, fire_at, window_s)
            self.stats.timeouts += 1
            cmd._finish(TIMEOUT, self.clock.now(), f"link {self._state}: not sent")
            return cmd
        if position is not None:
            msg = p.Sort(item, gate, p.SortMode.POSITION, position & 0xFFFFFFFF, window_ticks)
        elif fire_at is not None:
            if not self.sync.synced:
                raise LinkError(f"{self.url}: no clock sync yet; start() the link first")
            target = self.sync.to_controller(fire_at)
            window_us = max(0, min(0xFFFF, round(window_s * 1e6)))
            msg = p.Sort(item, gate, p.SortMode.TIME, target, window_us)
        else:
            msg = p.Sort(item, gate, p.SortMode.NOW, 0, 0)
        cmd = Command(replace(msg, epoch=self._epoch), 0, fire_at=fire_at, window_s=window_s)
        with self._lock:
            old = self._sorts.get(item)
            if old is not None and not old.done():
                raise LinkError(f"{self.url}: item {item} already has a pending SORT")
            if item in self._epoch_items:
                raise LinkError(
                    f"{self.url}: item {item} was already sent in this link session; "
                    "item ids must not repeat (the controller would answer with its old fate)"
                )
            self._sorts[item] = cmd
        self.fates.forget_timed_out(item)
        self._send_command(cmd)
        return cmd

    def cancel(self, item: int) -> Command:
        """CANCEL a pending item; when ACKed, its SORT command ends "cancelled"."""
        with self._lock:
            sort = self._sorts.get(item)
        epoch = sort.msg.epoch if sort is not None and isinstance(sort.msg, p.Sort) else 0
        cmd = Command(p.Cancel(item, epoch or self._epoch), 0)

        def on_reply(reply: p.Message) -> None:
            if isinstance(reply, p.Ack):
                with self._lock:
                    sort = self._sorts.get(item)
                if sort is not None:
                    self.fates.resolve_sort(sort, CANCELLED, detail="cancelled by host")

        self._send_command(cmd, on_reply)
        return cmd

    def safe(self) -> Command:
        """Stop the line: SAFE (the controller drops its queue and drops the belt-run
        permit). The link will not RESUME by itself until `resume()`: RESUMEs not yet
        answered are no longer resent, and SAFE is sent again after every handshake."""
        self._want_safe = True
        self._resume_wanted = False
        with self._lock:
            resumes = [o for o in self._outstanding.values() if isinstance(o.cmd.msg, p.Resume)]
            for out in resumes:
                self._outstanding.pop(out.cmd.seq, None)
        for out in resumes:
            out.cmd._finish(TIMEOUT, self.clock.now(), "superseded by SAFE: not resent")
        cmd = Command(p.Safe(), 0)
        self._send_command(cmd)
        return cmd

    def resume(self) -> Command:
        """Leave the safe state (RESUME)."""
        self._want_safe = False
        cmd = Command(p.Resume(), 0)
        self._send_command(cmd)
        return cmd

    def query(
        self, item: int, timeout: float | None = None, *, epoch: int | None = None
    ) -> p.FateReply:
        """Ask the controller what became of `item` (blocking), in the link's current
        epoch unless `epoch` is given."""
        reply = self.request(p.Query(item, self._epoch if epoch is None else epoch), timeout)
        if isinstance(reply, p.Nak):
            raise LinkError(
                f"{self.url}: QUERY for item {item} NAKed {_nak_name(reply.reason)}; "
                "the controller was reset since (it knows no fates): reconnect"
            )
        assert isinstance(reply, p.FateReply)
        return reply

    def hello(self, timeout: float | None = None) -> p.HelloInfo:
        """HELLO -> HELLO_INFO (blocking) in the current epoch; also clears the
        controller's duplicate window."""
        reply = self.request(p.Hello(self._epoch), timeout)
        assert isinstance(reply, p.HelloInfo)
        return reply

    def sync_once(self, timeout: float | None = None) -> SyncSample:
        """One SYNC round trip, added to the clock estimate."""
        t_send: list[float] = []
        sample: list[SyncSample] = []

        def on_reply(reply: p.Message) -> None:
            if isinstance(reply, p.SyncReply) and t_send:
                self.positions.add(reply.time, reply.position)  # one instant: no RTT needed
                sample.append(SyncSample(t_send[0], self.clock.now(), reply.time))
                if cmd.attempts == 1:  # Karn: a resent SYNC's reply has no known send time
                    self.sync.add(sample[0])

        cmd = Command(p.Sync(next(self._sync_echo) & 0xFFFFFFFF), 0)
        t_send.append(self.clock.now())
        self._send_command(cmd, on_reply)
        self._wait_or_raise(cmd, timeout)
        self._last_sync_clock = self.clock.now()
        if not sample:
            raise LinkError(f"{self.url}: SYNC answered without a time ({cmd.reply})")
        return sample[0]

    def request(
        self, msg: p.Message, timeout: float | None = None, *, seq: int | None = None
    ) -> p.Message:
        """Send a command and wait (with retries) for its reply; raise `LinkError` on
        timeout. NAKs are returned, not raised. `seq` reuses a sequence number (tests of
        the controller's duplicate window)."""
        cmd = Command(msg, 0 if seq is None else seq & 0xFFFF)
        self._send_command(cmd, fixed_seq=seq is not None)
        self._wait_or_raise(cmd, timeout)
        assert cmd.reply is not None
        return cmd.reply

    def send_raw(self, data: bytes) -> None:
        """Write bytes as they are (tests: malformed frames)."""
        self._write(data)

    def send(self, msg: p.Message, seq: int | None = None) -> int:
        """Write one message without waiting for anything; returns its seq."""
        with self._write_lock:  # numbered and written in one step: seqs go out in order
            seq = self._next_seq() if seq is None else seq
            self._write(p.encode(msg, seq))
        return seq

    def on_event(self, callback: EventCallback) -> Callable[[], None]:
        """Call `callback(msg)` for FIRED, LATE, SAFE_STATE, FAULT and STATUS (from the
        reader thread). Returns a function that removes it."""
        with self._lock:
            self._callbacks.append(callback)

        def remove() -> None:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)

        return remove

    def on_message(self, callback: EventCallback) -> Callable[[], None]:
        """Call `callback(msg)` for every message from the controller, replies included
        (monitors, tests). Returns a function that removes it."""
        with self._lock:
            self._msg_callbacks.append(callback)

        def remove() -> None:
            with self._lock:
                if callback in self._msg_callbacks:
                    self._msg_callbacks.remove(callback)

        return remove

    @contextlib.contextmanager
    def heartbeat_paused(self) -> Iterator[None]:
        """Inside the block the link sends nothing on its own initiative (heartbeats,
        re-SYNCs, retries, QUERYs, automatic RESUME): simulates a silent host. Commands the
        caller sends still go out."""
        with self._lock:
            self._heartbeat_paused += 1
        try:
            yield
        finally:
            with self._lock:
                self._heartbeat_paused -= 1

    def position_at(self, t_host: float) -> float:
        """Host clock time (s) -> belt position (encoder ticks, the controller's count):
        the controller time of `t_host` (SYNC mapping) on the line fitted to the recent
        SYNC replies' (time, position) pairs. LinkError without an encoder or positions."""
        if self.info is None or not self.info.flags & p.FLAG_ENCODER:
            raise LinkError(
                f"{self.url}: the controller reports no encoder; set belt.encoder_ticks_per_mm "
                "= 0 (gates timed by speed) or fit the encoder"
            )
        ctrl = self.sync.to_controller(t_host)
        position = self.positions.at(ctrl)
        if position is None:
            ahead = self.positions.ahead_us(ctrl)
            if ahead is None or not self.positions.ready:
                raise LinkError(f"{self.url}: no belt positions from the controller yet (SYNC)")
            if ahead > 0:
                raise LinkError(
                    f"{self.url}: no belt position from the controller for {ahead / 1e6:.2f} s "
                    "(SYNC unanswered); not guessing where the belt is"
                )
            raise LinkError(
                f"{self.url}: no belt position from the controller near that time (a gap "
                "in its replies); not guessing where the belt was"
            )
        return position

    def to_controller_time(self, t: float) -> int:
        """Host clock time (s) -> controller time (u32 us)."""
        return self.sync.to_controller(t)

    def to_host_time(self, ctrl_us: int) -> float:
        """Controller time (u32 us) -> host clock time (s), nearest wrap to now."""
        return self.sync.to_host(ctrl_us, self.clock.now())

    def rechecking(self) -> int:
        """SORTs reported "timeout" whose fate the link is still asking for (a correction
        may follow)."""
        return self.fates.rechecking()

    def pending(self) -> list[Command]:
        """SORTs not finished yet."""
        with self._lock:
            return [c for c in self._sorts.values() if not c.done()]

    # ================================================================ port
    def _open(self) -> None:
        port: Any
        try:
            if self._port_factory is not None:
                port = self._port_factory()
            else:
                with ports_follow(self.clock):
                    port = serial.serial_for_url(
                        self.url, baudrate=self.options.baudrate, timeout=0.05, write_timeout=0.5
                    )
        except LinkError:
            raise
        except (serial.SerialException, OSError, ValueError) as err:
            raise LinkError(f"{self.url}: cannot open the port ({err}); {_hint(self.url)}") from err
        self._deframer.reset()
        with self._port_lock:
            self._port = port
        self._port_ready.set()
        self._write(b"\x00")

    def _close_port(self) -> None:
        with self._port_lock:
            port, self._port = self._port, None
        self._port_ready.clear()
        if port is not None:
            with contextlib.suppress(Exception):
                port.close()

    def _lost(self, err: BaseException) -> None:
        if self._stop.is_set():
            return
        with self._port_lock:
            had_port = self._port is not None
        if not had_port:
            return
        log.warning("%s: link lost (%s)", self.url, err)
        self._state = "lost"
        self._lost_since = time.monotonic()
        self._close_port()

    def _write(self, data: bytes) -> None:
        with self._write_lock:
            with self._port_lock:
                port = self._port
            if port is None:
                return
            try:
                port.write(data)
            except (serial.SerialException, OSError, LinkError) as err:
                self._lost(err)
                return
            except (TypeError, AttributeError, ValueError):
                # the reader closed the port under this write (pyserial's socket:// port
                # then selects on a socket that is None): the link is already lost
                with self._port_lock:
                    if self._port is port:
                        raise
                return
            self._last_tx_mono = time.monotonic()
            self._last_tx_clock = self.clock.now()
            self.stats.frames_sent += 1

    # ================================================================ sending
    def _next_seq(self) -> int:
        return next(self._seq) & 0xFFFF

    def _ack_timeout(self) -> float:
        return self.ack_timer.current()

    def _send_command(
        self,
        cmd: Command,
        on_reply: Callable[[p.Message], None] | None = None,
        *,
        fixed_seq: bool = False,
        retry: bool = True,
    ) -> None:
        """Number `cmd` (unless `fixed_seq`), record it as outstanding and write it: all in
        one step under the write lock, so frames go out in seq order. `retry=False`: never
        resent; it ends "timeout" after one ACK timeout."""
        if self._stop.is_set() or (self._state == "closed" and self._port is None):
            raise LinkError(f"{self.url}: the link is closed")
        with self._write_lock:
            if not fixed_seq:
                cmd.seq = self._next_seq()
            wire = p.encode(cmd.msg, cmd.seq)
            with self._lock:
                mono = time.monotonic()
                out = _Outstanding(
                    cmd, wire, mono + self._ack_timeout(), on_reply, sent_mono=mono, retry=retry
                )
                if cmd.msg.TYPE in _EFFECT_TYPES:
                    out.effect_index = self._effects
                    out.older_open = sum(
                        1 for o in self._outstanding.values() if o.cmd.msg.TYPE in _EFFECT_TYPES
                    )
                    self._effects += 1
                elif isinstance(cmd.msg, p.Sort):
                    self._mark_sort(cmd)
                self._outstanding[cmd.seq] = out
            cmd.sent_at = self.clock.now()
            cmd.attempts = 1
            self._write(wire)

    def _wait_or_raise(self, cmd: Command, timeout: float | None) -> None:
        """Wait for a reply, resending (same seq) each time the ACK timeout passes."""
        limit = (
            timeout
            if timeout is not None
            else self._ack_timeout() * (self.options.retries + 1) + 0.5
        )
        end = time.monotonic() + limit
        with self._lock:
            out = self._outstanding.get(cmd.seq)
            if out is not None:
                out.waited = True
        while cmd.reply is None:
            remaining = end - time.monotonic()
            if remaining <= 0 or self._stop.is_set():
                break
            cmd._event.wait(min(remaining, 0.02))
            mono = time.monotonic()
            due = out is not None and cmd.reply is None and out.deadline <= mono
            if (
                due
                and out is not None
                and cmd.attempts <= self.options.retries
                and self._may_retry(out)
            ):
                cmd.attempts += 1
                out.deadline = mono + self._ack_timeout()
                self.stats.retries += 1
                self._write(out.wire)
            if out is not None and cmd.done() and cmd.reply is None:
                break  # ended by someone else (superseded RESUME, link closed)
        if cmd.reply is None:
            with self._lock:
                self._outstanding.pop(cmd.seq, None)
            self.stats.timeouts += 1
            cmd._finish(TIMEOUT, self.clock.now(), f"no answer after {cmd.attempts} tries")
            raise LinkError(
                f"{self.url}: no answer to {cmd.kind} within {limit:.2f} s; "
                f"is the controller connected and running the produce-sorter firmware?"
            )

    def _config_msg(self) -> p.Config:
        n = self._n_gates if self._n_gates is not None else (self.info.n_gates if self.info else 1)
        pulses = (
            tuple(self._pulse_ms) if not isinstance(self._pulse_ms, int) else (self._pulse_ms,) * n
        )
        if len(pulses) != n:
            raise LinkError(f"{self.url}: {len(pulses)} pulse lengths given for {n} gates")
        if n > p.MAX_CONFIG_GATES:
            raise LinkError(
                f"{self.url}: {n} gates configured; CONFIG carries at most "
                f"{p.MAX_CONFIG_GATES} (gates 0..{p.MAX_CONFIG_GATES - 1})"
            )
        return p.Config(
            round(self.options.heartbeat_s * 1000),
            round(self.options.status_s * 1000),
            pulses,
            round(self.options.max_lead_s * 1000),
        )

    # ================================================================ handshake
    def wait_hello(self, timeout: float | None = None) -> p.HelloInfo:
        """Send HELLO every 0.3 s until HELLO_INFO answers (an Uno resets when its port is
        opened and its bootloader swallows the first bytes), and once more at once when the
        controller's first STATUS arrives (it has just booted and listens now). Raises
        `LinkError`."""
        limit = self.options.open_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + limit
        self._new_epoch()
        self._status_seen.clear()
        answered_status = False
        # one HELLO, resent with its seq: a slow controller's answer to any copy counts
        cmd = Command(p.Hello(self._epoch), 0)
        self._send_command(cmd)
        try:
            while not isinstance(cmd.reply, p.HelloInfo):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set():
                    raise LinkError(
                        f"{self.url}: no answer to HELLO within {limit:.1f} s; {_hint(self.url)}"
                    )
                until = time.monotonic() + min(self.hello_resend_s, remaining)
                while not cmd.done() and time.monotonic() < until:
                    if not answered_status and self._status_seen.is_set():
                        answered_status = True  # the controller is up: HELLO again now
                        break
                    cmd._event.wait(0.005)
                if self._port is None:
                    raise LinkError(f"{self.url}: the port closed during the handshake")
                if not isinstance(cmd.reply, p.HelloInfo):
                    with self._lock:
                        if cmd.seq not in self._outstanding:  # a NAK or a stray: again
                            cmd = Command(p.Hello(self._epoch), 0)
                            self._send_command(cmd)
                            continue
                    cmd.attempts += 1
                    self._write(p.encode(cmd.msg, cmd.seq))
        finally:
            with self._lock:
                self._outstanding.pop(cmd.seq, None)
        return cmd.reply

    def _new_epoch(self) -> None:
        """A new link epoch for the next HELLO: random (a restarted host does not reuse
        its predecessor's), never 0 nor the previous one."""
        with self._lock:
            epoch = self._epoch
            while epoch in (0, self._epoch):
                epoch = self._rng.randrange(1, 0x10000)
            self._epoch = epoch
            self._epoch_items = set()

    def _shake_hands(self) -> None:
        """HELLO until answered (a new epoch), check it, CONFIG, then SAFE if a stop is
        wanted, else RESUME; SYNC."""
        info = self.wait_hello()
        if info.proto != PROTO_VERSION:
            raise LinkError(
                f"{self.url}: controller speaks protocol {info.proto}, this host speaks "
                f"{PROTO_VERSION}; update the firmware or the sorter"
            )
        self.info = info
        self.in_safe_state = bool(info.flags & p.FLAG_SAFE)
        if self._n_gates is not None and self._n_gates > info.n_gates:
            raise LinkError(
                f"{self.url}: {self._n_gates} gates configured but the controller has "
                f"{info.n_gates}; lower n_gates in the config"
            )
        reply = self.request(self._config_msg())
        if isinstance(reply, p.Nak):
            raise LinkError(f"{self.url}: controller refused CONFIG: {_nak_name(reply.reason)}")
        if self._want_safe:
            self.request(p.Safe())
        else:
            self.request(p.Resume())
        self.sync.reset()
        self.positions.reset()
        good = 0
        for _ in range(10):  # 5 good round trips; a noisy line may lose a few
            try:
                self.sync_once()
            except LinkError:
                continue
            good += 1
            if good == 5:
                break
        if not good or not self.sync.synced:
            raise LinkError(f"{self.url}: no answer to SYNC; {_hint(self.url)}")

    # ================================================================ reader
    def _reader(self) -> None:
        while not self._stop.is_set():
            with self._port_lock:
                port = self._port
            if port is None:
                self._port_ready.wait(0.05)
                continue
            try:
                data = port.read(max(1, port.in_waiting))
            except (serial.SerialException, OSError, LinkError, AttributeError, TypeError) as err:
                self._lost(err)
                continue
            if not data:
                continue
            for frame in self._deframer.feed(data):
                try:
                    msg = p.decode(frame, sender="controller")
                except ProtocolError as err:
                    self.stats.bad_messages += 1
                    log.debug("%s: ignoring frame: %s", self.url, err)
                    continue
                self.stats.frames_received += 1
                with self._lock:
                    listeners = list(self._msg_callbacks)
                for fn in listeners:
                    call_safely(fn, msg)
                try:
                    self._dispatch(msg, frame.seq, p.body(msg, frame.seq))
                except Exception:
                    log.exception("%s: handling %s failed", self.url, p.describe(msg))

    def _dispatch(self, msg: p.Message, seq: int, body: bytes) -> None:
        if msg.TYPE in p.EVENT_TYPES:
            with self._lock:
                if self._seen.get(seq) == body:
                    self.stats.duplicates += 1
                    return
                self._seen[seq] = body
                self._seen.move_to_end(seq)
                while len(self._seen) > 64:
                    self._seen.popitem(last=False)
            self._handle_event(msg)
            with self._lock:
                callbacks = list(self._callbacks)
            for fn in callbacks:
                call_safely(fn, msg)
            return
        acked_seq = getattr(msg, "acked_seq", None)
        with self._lock:
            out = self._outstanding.pop(acked_seq, None) if acked_seq is not None else None
        if out is None:
            log.debug("%s: reply to no outstanding command: %s", self.url, p.describe(msg))
            if isinstance(msg, p.FateReply):
                self.fates.on_stray_fate(msg)  # a QUERY answered after the link gave up on it
            return
        cmd = out.cmd
        if cmd.attempts == 1:  # unambiguous round trip (Karn)
            self.ack_timer.sample(time.monotonic() - out.sent_mono)
        if isinstance(cmd.msg, p.Sort):
            self._sort_reply(cmd, msg)
            return
        cmd.acked = True
        if out.on_reply is not None:
            call_safely(out.on_reply, msg)
        cmd.reply = msg  # last: a waiter (sync_once) may read what on_reply stored
        now = self.clock.now()
        if isinstance(msg, p.Nak):
            cmd.nak_reason = _nak_enum(msg.reason)
            cmd._finish(NAK, now, _nak_name(msg.reason))
            if msg.reason == p.NakReason.SAFE_STATE:
                self._saw_safe()
        else:
            cmd._finish(ACKED, now)

    def _sort_reply(self, cmd: Command, msg: p.Message) -> None:
        """The answer to a SORT: ACK (queued), FATE (a copy the controller already knew:
        its recorded fate, never a second run), or NAK (refused; final unless it is
        STALE_EPOCH, an old session's copy that the handshake logic re-times)."""
        cmd.reply = msg
        if isinstance(msg, p.FateReply):
            self.fates.apply_fate(cmd, msg)
            return
        if not isinstance(msg, p.Nak):
            cmd.acked = True
            return
        if msg.reason == p.NakReason.STALE_EPOCH:
            assert isinstance(cmd.msg, p.Sort)
            if cmd.msg.epoch == self._epoch:  # the controller is in another epoch than ours
                self._note_reset("the controller is in another session (was it reset?)")
            return
        if msg.reason == p.NakReason.SAFE_STATE:
            self._saw_safe()
        cmd.acked = True
        cmd.nak_reason = _nak_enum(msg.reason)
        self.fates.resolve_sort(cmd, NAK, detail=_nak_name(msg.reason))

    def _saw_safe(self) -> None:
        """The controller says it is in the safe state (STATUS flag, SAFE_STATE, a NAK):
        RESUME (rate-limited) if the host wants the line to run."""
        self.in_safe_state = True
        if not self._want_safe and self.options.auto_resume and self._state == "connected":
            self._resume_wanted = True

    def _handle_event(self, msg: p.Message) -> None:
        now = self.clock.now()
        if isinstance(msg, p.Fired | p.Late):
            self.fates.on_fired_or_late(msg, now)
        elif isinstance(msg, p.SafeState):
            self._on_safe_state(msg)
        elif isinstance(msg, p.Status):
            if self._has_encoder():
                self.positions.add(msg.time, msg.position)  # one instant, like SYNC
            self.last_status = msg
            self._status_seen.set()
            self.in_safe_state = bool(msg.flags & p.FLAG_SAFE)
            if self.in_safe_state:
                self._saw_safe()
            lost_config = not msg.flags & p.FLAG_CONFIGURED
            if lost_config and self.options.handshake and self._state == "connected":
                self._note_reset("the controller lost its CONFIG (was it reset?)")
        elif isinstance(msg, p.Fault):
            log.warning("%s: controller fault %s", self.url, p.describe(msg))
            if msg.code == p.FaultCode.WATCHDOG_RESET and self._state == "connected":
                self._note_reset("the controller restarted (watchdog)")

    def _note_reset(self, why: str) -> None:
        """Evidence the controller was reset: handshake again; remember when (it may have
        fired queued SORTs until then)."""
        if self._reset_seen_at is None:
            self._reset_seen_at = self.clock.now()
        self._resync_wanted = why

    def _on_safe_state(self, msg: p.SafeState) -> None:
        """SAFE_STATE: the controller says how many SORTs it dropped; which ones is its
        word too (QUERY: DROPPED, or FIRED if one fired just before), never a guess."""
        again = self.in_safe_state and bool(msg.entered)
        self.in_safe_state = bool(msg.entered)
        if not msg.entered:
            return
        reason = _enum_name(p.SafeReason, msg.reason)
        self.safe_reason = reason
        level = logging.INFO if again or msg.reason == p.SafeReason.COMMAND else logging.WARNING
        log.log(level, "%s: controller in the safe state (%s)", self.url, reason)
        if msg.dropped and self._state == "connected":
            with self._lock:
                asked = [c for c in self._sorts.values() if not c.done()]
            for cmd in asked:
                self.fates.query(cmd)
        self._saw_safe()

    def _host_time(self, ctrl_us: int, near: float) -> float | None:
        try:
            return self.sync.to_host(ctrl_us, near)
        except RuntimeError:
            return None

    # ================================================================ supervisor
    def _heartbeat_virtual(self) -> bool:
        """Heartbeats on virtual time: the port keeps time on the link's virtual clock."""
        return self.clock.virtual and getattr(self._port, "clock", None) is self.clock

    def _next_heartbeat(self) -> float | None:
        """When the virtual clock must stop next: a heartbeat, or a position poll."""
        if self._state != "connected":
            return None
        beat = self._last_tx_clock + self.options.heartbeat_s / 4
        if self.options.position_interval_s > 0 and self._has_encoder():
            return min(beat, self._last_position_clock + self.options.position_interval_s)
        return beat

    def _virtual_heartbeat(self, t: float) -> None:
        """On virtual time the belt position is polled here too, as the clock passes each
        poll time (a replay runs faster than the supervisor's 10 ms steps)."""
        if self._state != "connected" or self._heartbeat_paused:
            return
        if t - self._last_tx_clock >= self.options.heartbeat_s / 4 - 1e-9:
            self.send(p.Heartbeat())
        interval = self.options.position_interval_s
        if (
            interval > 0
            and self._has_encoder()
            and t - self._last_position_clock >= interval - 1e-9
        ):
            self._last_position_clock = t
            self._ask_position()

    def _supervise(self) -> None:
        backoff = 0.1
        next_attempt = 0.0
        while not self._stop.wait(0.01):
            try:
                if self._state == "lost":
                    if not self.options.reconnect or time.monotonic() < next_attempt:
                        self.fates.expire_while_lost()
                        continue
                    if self._try_reconnect():
                        backoff = 0.1
                    else:
                        next_attempt = time.monotonic() + backoff
                        backoff = min(backoff * 2, 2.0)
                    continue
                self._tick()
            except LinkError as err:
                log.warning("%s: %s", self.url, err)
            except Exception:
                log.exception("%s: supervisor step failed", self.url)

    def _tick(self) -> None:
        if self._port is None and self._state == "connected":
            log.warning("%s: connected without a port; reconnecting", self.url)
            self._state, self._lost_since = "lost", self._lost_since or time.monotonic()
            return  # never a silent "connected" that writes nothing
        if self._heartbeat_paused > 0:
            return  # a silent host: nothing goes out on the link's own initiative
        if self._resync_wanted and self._resync():
            return
        mono = time.monotonic()
        now = self.clock.now()
        self._retry_overdue(mono)
        beat_due = mono - self._last_tx_mono >= self.options.heartbeat_s / 4
        if beat_due and not self._heartbeat_virtual():
            self.send(p.Heartbeat())
        if (
            self._resume_wanted
            and not self._want_safe
            and mono - self._last_auto_resume >= (RESUME_EVERY_S)
        ):
            self._resume_wanted = False
            self._last_auto_resume = mono
            log.info("%s: controller in the safe state; RESUME", self.url)
            self._send_command(Command(p.Resume(), 0))
        if now - self._last_sync_clock >= self._sync_interval():
            self._last_sync_clock = now
            self._start_sync()
        interval = self.options.position_interval_s
        if interval > 0 and self._has_encoder() and now - self._last_position_clock >= interval:
            self._last_position_clock = now
            self._ask_position()
        self.fates.query_overdue(now)

    def _sync_interval(self) -> float:
        """Re-SYNC every sync_interval_s; 4x as often until the drift rate is known, so the
        offset stays fresh and the baseline fills with samples sooner; at once (every
        50 ms) while the last sample disagreed with the mapping, so a controller clock that
        jumped is followed within a few round trips, not a few intervals."""
        if self.sync.unconfirmed:
            return min(self.options.sync_interval_s, 0.05)
        if self.sync.rate_known:
            return self.options.sync_interval_s
        return self.options.sync_interval_s / 4

    def _start_sync(self) -> None:
        t_send = self.clock.now()
        cmd = Command(p.Sync(next(self._sync_echo) & 0xFFFFFFFF), 0)

        def on_reply(reply: p.Message) -> None:
            if isinstance(reply, p.SyncReply):
                self.positions.add(reply.time, reply.position)
            if isinstance(reply, p.SyncReply) and cmd.attempts == 1:  # Karn, as sync_once
                self.sync.add(SyncSample(t_send, self.clock.now(), reply.time))

        self._send_command(cmd, on_reply)

    def _has_encoder(self) -> bool:
        """The controller reports an encoder, and this link drives it (a bench tool's
        link, handshake=False, only watches: no position polls)."""
        return (
            self.options.handshake
            and self.info is not None
            and bool(self.info.flags & p.FLAG_ENCODER)
        )

    def _ask_position(self) -> None:
        """A SYNC for the belt position only: its reply's (time, position) pair goes to
        `positions`, not to the clock mapping (whose history is counted in samples). One
        at a time and never resent, so a slow controller is not flooded with them."""
        last = self._position_cmd
        if last is not None and not last.done() and self.clock.now() - (last.sent_at or 0.0) < 1.0:
            return

        def on_reply(reply: p.Message) -> None:
            if isinstance(reply, p.SyncReply):
                self.positions.add(reply.time, reply.position)

        cmd = Command(p.Sync(next(self._sync_echo) & 0xFFFFFFFF), 0)
        self._position_cmd = cmd
        self._send_command(cmd, on_reply, retry=False)

    def _retry_overdue(self, mono: float) -> None:
        with self._lock:
            overdue = [o for o in self._outstanding.values() if o.deadline <= mono and not o.waited]
        for out in overdue:
            cmd = out.cmd
            if not out.retry:
                with self._lock:
                    self._outstanding.pop(cmd.seq, None)
                cmd._finish(TIMEOUT, self.clock.now(), "unanswered (not resent)")
                continue
            if cmd.attempts <= self.options.retries and self._may_retry(out):
                cmd.attempts += 1
                out.deadline = mono + self._ack_timeout()
                self.stats.retries += 1
                self._write(out.wire)
                continue
            with self._lock:
                self._outstanding.pop(cmd.seq, None)
            if isinstance(cmd.msg, p.Sort):
                # The SORT may have arrived with only its ACKs lost: ask before deciding.
                self.fates.query(cmd)
            else:
                self.stats.timeouts += 1
                cmd._finish(TIMEOUT, self.clock.now(), f"no answer after {cmd.attempts} tries")

    def _may_retry(self, out: _Outstanding) -> bool:
        """A command is resent with its seq only while the controller surely still
        remembers it, or it would run twice: a SORT while its item is surely in the fates
        ring (`_remembered`), another effectful command while it is surely in the
        duplicate window: fewer than 15 entries can have been added after it (commands
        written after it, and older ones still unanswered when it went out, which may
        arrive after it) and it is younger than the window's time-to-live. Past that the
        link asks with QUERY (SORT) or gives up (others)."""
        cmd = out.cmd
        if isinstance(cmd.msg, p.Sort):
            return self._remembered(cmd)
        if cmd.msg.TYPE not in _EFFECT_TYPES:
            return True
        if time.monotonic() - out.sent_mono > RETRY_TTL_S:
            return False
        with self._lock:
            newer = self._effects - out.effect_index - 1 + out.older_open
        return newer < p.DEDUP_WINDOW - 1

    def _mark_sort(self, cmd: Command) -> None:
        """Note, as a SORT goes out, how many ring entries may be written after its own:
        SORTs unresolved now (they may leave the queue later) plus those written later."""
        open_now = sum(1 for c in self._sorts.values() if not c.done() and c is not cmd)
        open_now += len(self.fates._rechecks)
        cmd.ring_mark = (self._epoch, self._sorts_written, open_now)
        self._sorts_written += 1
        assert isinstance(cmd.msg, p.Sort)
        self._epoch_items.add(cmd.msg.item)

    def _remembered(self, cmd: Command) -> bool:
        """The controller surely still knows this SORT's item (queued or in its fates
        ring, whatever the epoch): a copy of it is answered with its fate, never run
        again, and a QUERY's UNKNOWN means it never arrived."""
        mark = cmd.ring_mark
        if mark is None:
            return False
        _epoch, index, open_then = mark
        with self._lock:
            later = self._sorts_written - index - 1
        return open_then + later < p.FATES_SIZE - 1

    def _resync(self) -> bool:
        """The controller reset under us (same port): handshake again (a new epoch), then
        settle what was in flight (`_after_handshake`). At most one every RESYNC_EVERY_S: a
        request sooner waits (kept, not dropped: SORTs refused as STALE_EPOCH meanwhile
        are settled by the next handshake). Returns whether it ran."""
        mono = time.monotonic()
        if mono - self._last_resync < RESYNC_EVERY_S:
            return False
        reason, self._resync_wanted = self._resync_wanted, ""
        self._last_resync = mono
        log.warning("%s: %s; shaking hands again", self.url, reason)
        self._state = "connecting"
        stale = self._take_outstanding()
        try:
            self._shake_hands()
        except Exception as err:  # whatever went wrong, never stay "connecting"
            self._end_stale(stale)
            self._state = "connected"  # so that _lost closes the port and goes "lost"
            self._lost(err)
            if self._state != "lost":
                self._state, self._lost_since = "lost", time.monotonic()
            return True
        if not self._set_connected():
            self._end_stale(stale)
            return True
        self.stats.reconnects += 1
        self._after_handshake(stale)
        return True

    # ================================================================ reconnect
    def _try_reconnect(self) -> bool:
        stale = self._take_outstanding()
        try:
            self._open()
            self._state = "connecting"
            self._seen.clear()
            if self.options.handshake:
                self._shake_hands()
            else:
                self.info = self.wait_hello()
        except Exception as err:  # LinkError, or anything else: try again later
            log.info("%s: reconnect failed: %s", self.url, err)
            self._close_port()
            self._state = "lost"
            with self._lock:
                for out in stale:
                    self._outstanding.setdefault(out.cmd.seq, out)
            return False
        if not self._set_connected():
            with self._lock:
                for out in stale:
                    self._outstanding.setdefault(out.cmd.seq, out)
            return False
        self._lost_since = None
        self.stats.reconnects += 1
        log.info("%s: reconnected", self.url)
        self._after_handshake(stale)
        return True

    def _set_connected(self) -> bool:
        """Enter "connected" only with an open port (a port lost during the handshake
        leaves the link "lost", so it reconnects instead of sitting silent)."""
        with self._port_lock:
            if self._port is None or self._stop.is_set():
                if not self._stop.is_set():
                    self._state = "lost"
                    self._lost_since = self._lost_since or time.monotonic()
                return False
            self._state = "connected"
        return True

    def _take_outstanding(self) -> list[_Outstanding]:
        """Before a handshake: the commands in flight, which must not be resent with their
        seqs after HELLO (it clears the duplicate window)."""
        with self._lock:
            stale = list(self._outstanding.values())
            self._outstanding.clear()
        return stale

    def _end_stale(self, stale: list[_Outstanding]) -> None:
        now = self.clock.now()
        for out in stale:
            if not isinstance(out.cmd.msg, p.Sort) and not out.cmd.done():
                self.stats.timeouts += 1
                out.cmd._finish(TIMEOUT, now, "link lost before the answer")

    def _after_handshake(self, stale: list[_Outstanding]) -> None:
        """A new epoch is on: commands in flight before it end "timeout" (SORTs excepted);
        no SORT of the old epoch is ever resent as it was. If the controller was reset
        (HELLO_INFO: not configured), their targets are on a clock that no longer exists:
        each is re-timed on the new mapping if still in time, else reported late. If not,
        each is QUERYed in its old epoch: PENDING/FIRED/... is the controller's word, and
        UNKNOWN (it never arrived; a late copy is now refused as STALE_EPOCH) re-times it."""
        self._end_stale(stale)
        reset = self.info is not None and not self.info.flags & p.FLAG_CONFIGURED
        seen_at, self._reset_seen_at = self._reset_seen_at, None
        with self._lock:
            sorts = [c for c in self._sorts.values() if not c.done()]
            if reset:
                self.fates._rechecks.clear()
        for cmd in sorts:
            if reset:  # it ran its old queue until at most then
                ran_until = self.clock.now() if seen_at is None else seen_at
                self.fates.retime_or_late(cmd, "controller was reset", ran_until=ran_until)
            else:
                self.fates.query(cmd)


def _nak_enum(reason: int) -> p.NakReason | None:
    try:
        return p.NakReason(reason)
    except ValueError:
        return None


def _nak_name(reason: int) -> str:
    return _enum_name(p.NakReason, reason)


def _enum_name(enum: Any, value: int) -> str:
    try:
        return str(enum(value).name)
    except ValueError:
        return f"code {value}"


def _hint(url: str) -> str:
    if url.startswith("socket://"):
        return "check that the emulator or server is listening on that host and port"
    if url.startswith("sim://"):
        return "check the simulator options in the URL"
    if "://" in url:
        return "check the URL"
    return (
        "check the USB cable, that the device exists (ls /dev/ttyACM* /dev/sorter-controller) "
        "and that you may open it (group dialout)"
    )
