"""A gate controller in Python that speaks the protocol of PROTOCOL.md.

`SimController` is the controller's logic with time passed in (microseconds, u32 wrapping):
queue of 16 SORTs, duplicate window of 16, fates of 32, heartbeat supervision and the safe
state, CONFIG, RESUME, QUERY, periodic STATUS. It is pure: bytes in, bytes out.

`SimulatorPort` puts it behind the same small serial-port interface the link uses for
pyserial (`write`, `read`, `close`, ...), on a clock:
- with a `MonotonicClock` a thread wakes at each due event (real time); events are
  still stamped with their own due times, like a microcontroller's timer, so a busy host
  thread does not make the simulated controller late;
- with a `VirtualClock` it subscribes to the clock and does its due work whenever the
  clock moves, stopping the clock at each due event, so a replay run as fast as possible
  still fires every gate at exactly its virtual target time, deterministically.

Open it through the link with a URL: `sim://?gates=9&encoder=0&ticks_per_s=1000&time0=0`.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from firmware_bridge import protocol as p
from firmware_bridge.clock import Clock, MonotonicClock, VirtualClock
from firmware_bridge.errors import LinkError, ProtocolError
from firmware_bridge.framing import Deframer, Frame

log = logging.getLogger(__name__)

FW_VERSION = (1, 1, 1)
"""Version the simulator reports in HELLO_INFO (it follows the firmware it twins)."""
MAX_AHEAD = 1 << 30
"""A target further ahead than this (us or ticks) is NAKed BAD_TARGET."""
EFFECT_TYPES = frozenset({p.MsgType.CONFIG, p.MsgType.CANCEL, p.MsgType.RESUME, p.MsgType.SAFE})
"""Commands recorded in the duplicate window (SORT is idempotent by (epoch, item))."""


@dataclass(frozen=True)
class SimOptions:
    """What the simulated controller is (from the sim:// URL query)."""

    gates: int = 9
    """Gates the controller can drive (HELLO_INFO n_gates)."""
    encoder: bool = False
    """Whether a belt encoder is fitted (POSITION mode allowed)."""
    ticks_per_s: float = 1000.0
    """Belt speed in encoder ticks per second, when `encoder`."""
    time0: int = 0
    """Controller time (us) at start, e.g. near 2**32 to exercise wrap-around."""

    @classmethod
    def from_url(cls, url: str) -> SimOptions:
        """Parse `sim://?gates=9&encoder=1&ticks_per_s=800&time0=4294000000`."""
        query = parse_qs(urlsplit(url).query, keep_blank_values=True)
        known = {"gates", "encoder", "ticks_per_s", "time0"}
        unknown = sorted(set(query) - known)
        if unknown:
            raise LinkError(
                f"{url}: unknown simulator option {unknown[0]!r}; use {', '.join(sorted(known))}"
            )
        try:
            opts = cls(
                gates=int(query.get("gates", ["9"])[-1]),
                encoder=query.get("encoder", ["0"])[-1].lower() in {"1", "true", "yes", "on"},
                ticks_per_s=float(query.get("ticks_per_s", ["1000"])[-1]),
                time0=int(query.get("time0", ["0"])[-1]) & 0xFFFFFFFF,
            )
        except ValueError as err:
            raise LinkError(f"{url}: bad simulator option value ({err})") from err
        if not 1 <= opts.gates <= 27:
            raise LinkError(f"{url}: gates={opts.gates} must be 1..27")
        return opts


@dataclass
class Pending:
    """A queued SORT."""

    item: int
    """Item id."""
    gate: int
    """Gate to fire."""
    mode: int
    """SortMode."""
    target: int
    """Target time (us) or position (ticks)."""
    window: int
    """Allowed lateness (us or ticks)."""
    arrived: int = 0
    """Controller time (us) the SORT was accepted."""
    epoch: int = 0
    """Link epoch the item belongs to."""


@dataclass
class FireRecord:
    """One gate firing, for tests that look at the outputs."""

    item: int
    """Item fired for."""
    gate: int
    """Gate driven high."""
    time: int
    """Controller time (us) of the rising edge."""
    position: int
    """Belt position then."""
    epoch: int = 0
    """Link epoch of the SORT."""


@dataclass
class SimState:
    """Everything the controller remembers."""

    configured: bool = False
    """CONFIG accepted."""
    heartbeat_ms: int = 0
    """Supervision timeout."""
    status_ms: int = 1000
    """STATUS period."""
    pulse_ms: tuple[int, ...] = ()
    """Pulse per configured gate."""
    safe: bool = False
    """In the safe state (all gates low, belt-run permit off)."""
    run: bool = False
    """The belt-run permit is asserted (RESUMEd while configured, not safe since)."""
    epoch: int = 0
    """Link epoch of the last HELLO (0 before any)."""
    max_lead_ms: int = p.DEFAULT_MAX_LEAD_MS
    """TIME targets further ahead are NAKed BAD_TARGET."""
    safe_reason: int = 0
    """Why it entered the safe state."""
    safe_dropped: int = 0
    """SORTs dropped on entry."""
    safe_resend: bool = False
    """Re-send SAFE_STATE(entered) on the next valid host frame."""
    queue: list[Pending] = field(default_factory=list)
    """Pending SORTs, at most QUEUE_SIZE."""
    dedup: deque[tuple[int, int, int, int]] = field(default_factory=lambda: deque(maxlen=16))
    """(seq, type, nak reason or 0 for ACK, time answered) of recent effectful commands."""
    fates: deque[tuple[int, int, int, int]] = field(default_factory=lambda: deque(maxlen=32))
    """(item, fate, time, epoch) of items that left the queue (or were refused)."""
    fired: int = 0
    """Gates fired (STATUS counter)."""
    late: int = 0
    """Items late (STATUS counter)."""
    tx_seq: int = 0
    """Next seq of a frame sent."""
    last_rx: int = 0
    """Time (us) of the last valid host frame."""
    next_status: int = 0
    """When the next STATUS is due (us)."""
    gate_high_until: dict[int, int] = field(default_factory=dict)
    """Gate -> time (us) its pulse ends."""


class SimController:
    """The controller's logic; every method takes the current controller time in us."""

    def __init__(self, options: SimOptions | None = None, now_us: int = 0) -> None:
        self.options = options or SimOptions()
        self.state = SimState(next_status=now_us, last_rx=now_us)
        self.deframer = Deframer()
        self.fire_log: list[FireRecord] = []
        """Every firing, in order (tests check no item fires twice)."""
        self.executed: list[tuple[int, int]] = []
        """(type, seq) of every command executed (not replayed from the window)."""
        self._pos_origin = now_us
        self._out = bytearray()

    # ------------------------------------------------------------------ I/O
    def take_output(self) -> bytes:
        """Bytes the controller has sent since the last call."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive(self, data: bytes, now: int) -> None:
        """Bytes arrived from the host at time `now`."""
        self.advance(now)
        for frame in self.deframer.feed(data):
            self._handle(frame, now)
            self.advance(now)

    def position(self, now: int) -> int:
        """Belt position (ticks, i32) at `now`; 0 without an encoder."""
        if not self.options.encoder:
            return 0
        ticks = int(p.time_diff(now, self._pos_origin) * self.options.ticks_per_s / 1e6)
        return p.time_diff(ticks & 0xFFFFFFFF, 0)

    def gate_is_high(self, gate: int, now: int) -> bool:
        """Whether a gate output is driven at `now`."""
        until = self.state.gate_high_until.get(gate)
        return until is not None and p.time_diff(until, now) > 0

    @property
    def belt_stop(self) -> bool:
        """The belt is stopped: the run permit is not asserted (boot, reset, safe state)."""
        return not self.state.run

    # ------------------------------------------------------------------ time
    def next_event(self, now: int) -> int | None:
        """Microseconds from `now` until the next thing the controller must do (>= 1)."""
        st = self.state
        candidates = [p.time_diff(st.next_status, now)]
        if self._supervising():
            candidates.append(p.time_diff(st.last_rx + st.heartbeat_ms * 1000, now) + 1)
        for entry in st.queue:
            due = self._due_in(entry, now)
            if due is not None:
                candidates.append(due)
        for until in st.gate_high_until.values():
            candidates.append(p.time_diff(until, now))
        return max(1, min(candidates))

    def advance(self, now: int) -> None:
        """Do everything due at or before `now`, in time order, each at its own due time.

        Like the firmware's timer, a SORT fires at its target even when this is called a
        little later (a busy host thread must not make the simulated controller late);
        only a SORT that *arrived* after its window is LATE.
        """
        st = self.state
        for gate, until in list(st.gate_high_until.items()):
            if p.time_diff(until, now) <= 0:
                del st.gate_high_until[gate]
        for _ in range(10_000):
            due = self._earliest_due(now)
            if due is None:
                return
            when, what = due
            if what is None:
                self._send_status(when)
                period = st.status_ms * 1000
                st.next_status = (when + period) & 0xFFFFFFFF
                if p.time_diff(now, st.next_status) >= period:  # a long jump: skip ahead
                    st.next_status = (now + period) & 0xFFFFFFFF
            elif what == "heartbeat":
                self._enter_safe(p.SafeReason.HEARTBEAT, when)
            else:
                assert isinstance(what, Pending)
                self._fire_or_late(what, when)

    def _earliest_due(self, now: int) -> tuple[int, Pending | str | None] | None:
        """(time, event) of the earliest event due at or before `now`; event is a Pending
        SORT, "heartbeat" or None (STATUS)."""
        st = self.state
        best: tuple[int, Pending | str | None] | None = None

        def consider(when: int, what: Pending | str | None) -> None:
            nonlocal best
            if p.time_diff(when, now) > 0:
                return
            if best is None or p.time_diff(when, best[0]) < 0:
                best = (when, what)

        if self._supervising():
            consider((st.last_rx + st.heartbeat_ms * 1000 + 1) & 0xFFFFFFFF, "heartbeat")
        for entry in st.queue:
            when = self._due_time(entry, now)
            if when is not None:
                consider(when, entry)
        consider(st.next_status, None)
        return best

    def _due_time(self, entry: Pending, now: int) -> int | None:
        if entry.mode == p.SortMode.NOW:
            return entry.arrived
        if entry.mode == p.SortMode.TIME:
            if p.time_diff(entry.target, entry.arrived) < 0:
                return entry.arrived
            return entry.target
        if p.time_diff(self.position(now), entry.target) >= 0:
            return now
        return None

    def _due_in(self, entry: Pending, now: int) -> int | None:
        if entry.mode == p.SortMode.NOW:
            return 0
        if entry.mode == p.SortMode.TIME:
            return p.time_diff(entry.target, now)
        rate = self.options.ticks_per_s
        if rate <= 0:
            return None
        ticks = p.time_diff(entry.target, self.position(now))
        return int(ticks * 1e6 / rate) + 1 if ticks > 0 else 0

    def _fire_or_late(self, entry: Pending, now: int) -> None:
        st = self.state
        if entry.mode == p.SortMode.NOW:
            late_by = 0
        elif entry.mode == p.SortMode.TIME:
            late_by = p.time_diff(now, entry.target)
        else:
            late_by = p.time_diff(self.position(now), entry.target)
        st.queue.remove(entry)
        if late_by > entry.window and entry.mode != p.SortMode.NOW:
            st.late = min(st.late + 1, 0xFFFF)
            st.fates.append((entry.item, p.Fate.LATE, now, entry.epoch))
            self._send(p.Late(entry.item, entry.gate, now, entry.target, entry.epoch))
            return
        pulse = st.pulse_ms[entry.gate] if entry.gate < len(st.pulse_ms) else 1
        st.gate_high_until[entry.gate] = (now + pulse * 1000) & 0xFFFFFFFF
        st.fired = min(st.fired + 1, 0xFFFF)
        st.fates.append((entry.item, p.Fate.FIRED, now, entry.epoch))
        pos = self.position(now)
        self.fire_log.append(FireRecord(entry.item, entry.gate, now, pos, entry.epoch))
        self._send(p.Fired(entry.item, entry.gate, now, pos, entry.epoch))

    def _supervising(self) -> bool:
        return self.state.configured and not self.state.safe and self.state.heartbeat_ms > 0

    # ------------------------------------------------------------------ frames
    def _send(self, msg: p.Message) -> None:
        st = self.state
        self._out += p.encode(msg, st.tx_seq)
        st.tx_seq = (st.tx_seq + 1) & 0xFFFF

    def _send_status(self, now: int) -> None:
        st = self.state
        self._send(
            p.Status(
                time=now,
                position=self.position(now),
                queue=len(st.queue),
                flags=self._flags(),
                crc_errors=min(self.deframer.crc_errors, 0xFFFF),
                frame_errors=min(self.deframer.frame_errors, 0xFFFF),
                fired=st.fired,
                late=st.late,
            )
        )

    def _flags(self) -> int:
        st = self.state
        flags = p.FLAG_ENCODER if self.options.encoder else 0
        flags |= p.FLAG_CONFIGURED if st.configured else 0
        flags |= p.FLAG_SAFE if st.safe else 0
        flags |= p.FLAG_RUN if st.run else 0
        return flags

    def _nak(self, frame: Frame, reason: int) -> None:
        self._send(p.Nak(frame.seq, frame.type, reason))

    def _handle(self, frame: Frame, now: int) -> None:
        st = self.state
        st.last_rx = now
        if st.safe_resend:
            st.safe_resend = False
            self._send(p.SafeState(1, st.safe_reason, st.safe_dropped))
        try:
            msg = p.decode(frame, sender="host")
        except ProtocolError as err:
            self._nak(frame, err.reason)
            return
        if isinstance(msg, p.Hello):
            st.dedup.clear()
            st.epoch = msg.epoch
            self._send(
                p.HelloInfo(
                    frame.seq,
                    *FW_VERSION,
                    proto=1,
                    n_gates=self.options.gates,
                    flags=self._flags(),
                    queue_size=p.QUEUE_SIZE,
                    time_hz=p.TIME_HZ,
                )
            )
            self._send_status(now)
            return
        if isinstance(msg, p.Heartbeat):
            return
        if isinstance(msg, p.Sync):
            self._send(p.SyncReply(frame.seq, msg.echo, now, self.position(now)))
            return
        if isinstance(msg, p.Query):
            if not st.configured:  # reset or new: it remembers nothing from before
                self._nak(frame, p.NakReason.NOT_CONFIGURED)
                return
            fate, when = self._fate_of(msg.item, msg.epoch)
            self._send(p.FateReply(frame.seq, msg.item, fate, when, msg.epoch))
            return
        if isinstance(msg, p.Sort):
            self._sort(frame, msg, now)
            return
        for seq, typ, reason, when in st.dedup:
            fresh = p.time_diff(now, when) <= p.DEDUP_TTL_MS * 1000
            if seq == frame.seq and typ == frame.type and fresh:
                self._answer(frame, reason)
                return
        self.executed.append((frame.type, frame.seq))
        reason, after = self._execute(msg, now)
        st.dedup.append((frame.seq, frame.type, reason, now))
        self._answer(frame, reason)
        if after is not None:
            after()

    def _answer(self, frame: Frame, reason: int) -> None:
        if reason:
            self._nak(frame, reason)
        else:
            self._send(p.Ack(frame.seq, frame.type))

    def _fate_of(self, item: int, epoch: int) -> tuple[int, int]:
        if any(e.item == item and e.epoch == epoch for e in self.state.queue):
            return p.Fate.PENDING, 0
        for fate_item, fate, when, fate_epoch in reversed(self.state.fates):
            if fate_item == item and fate_epoch == epoch:
                return fate, when
        return p.Fate.UNKNOWN, 0

    def _sort(self, frame: Frame, msg: p.Sort, now: int) -> None:
        """SORT, idempotent per (epoch, item): an older epoch is NAKed STALE_EPOCH, a known
        item is answered with its fate (FATE) and not run again, a refusal is remembered."""
        st = self.state
        if msg.epoch != st.epoch:
            self._nak(frame, p.NakReason.STALE_EPOCH)
            return
        fate, when = self._fate_of(msg.item, msg.epoch)
        if fate != p.Fate.UNKNOWN:
            self._send(p.FateReply(frame.seq, msg.item, fate, when, msg.epoch))
            return
        self.executed.append((frame.type, frame.seq))
        reason = self._check_sort(msg, now)
        if reason:
            st.fates.append((msg.item, p.Fate.REFUSED, now, msg.epoch))
            self._nak(frame, reason)
            return
        st.queue.append(
            Pending(msg.item, msg.gate, msg.mode, msg.target, msg.window_us, now, msg.epoch)
        )
        self._answer(frame, 0)

    def _execute(self, msg: p.Message, now: int) -> tuple[int, Callable[[], None] | None]:
        """Run an effectful command: (NAK reason or 0, work to do after the answer)."""
        st = self.state
        if isinstance(msg, p.Config):
            n = len(msg.pulse_ms)
            if n == 0 or n > self.options.gates:
                return p.NakReason.BAD_GATE, None
            if msg.heartbeat_ms < 50 or msg.status_ms < 100 or 0 in msg.pulse_ms:
                return p.NakReason.BAD_VALUE, None
            if msg.max_lead_ms < 100:
                return p.NakReason.BAD_VALUE, None
            st.configured = True
            st.max_lead_ms = msg.max_lead_ms
            st.heartbeat_ms = msg.heartbeat_ms
            st.status_ms = msg.status_ms
            st.pulse_ms = tuple(msg.pulse_ms)
            st.last_rx = now
            st.next_status = (now + msg.status_ms * 1000) & 0xFFFFFFFF
            return 0, None
        if isinstance(msg, p.Cancel):
            for entry in st.queue:
                if entry.item == msg.item and entry.epoch == msg.epoch:
                    st.queue.remove(entry)
                    st.fates.append((entry.item, p.Fate.CANCELLED, now, entry.epoch))
                    return 0, None
            return p.NakReason.NOT_FOUND, None
        if isinstance(msg, p.Resume):
            return 0, lambda: self._resume(now)
        if isinstance(msg, p.Safe):
            return 0, lambda: self._enter_safe(p.SafeReason.COMMAND, now)
        return p.NakReason.UNKNOWN_TYPE, None

    def _check_sort(self, msg: p.Sort, now: int) -> int:
        st = self.state
        if not st.configured:
            return p.NakReason.NOT_CONFIGURED
        if st.safe:
            return p.NakReason.SAFE_STATE
        if msg.gate >= len(st.pulse_ms):
            return p.NakReason.BAD_GATE
        if msg.mode not in (p.SortMode.TIME, p.SortMode.POSITION, p.SortMode.NOW):
            return p.NakReason.BAD_VALUE
        if msg.mode == p.SortMode.POSITION and not self.options.encoder:
            return p.NakReason.BAD_VALUE
        if msg.mode == p.SortMode.TIME and p.time_diff(msg.target, now) > st.max_lead_ms * 1000:
            return p.NakReason.BAD_TARGET
        if msg.mode == p.SortMode.POSITION and (
            p.time_diff(msg.target, self.position(now) & 0xFFFFFFFF) > MAX_AHEAD
        ):
            return p.NakReason.BAD_TARGET
        if len(st.queue) >= p.QUEUE_SIZE:
            return p.NakReason.QUEUE_FULL
        return 0

    def _enter_safe(self, reason: int, now: int) -> None:
        st = self.state
        if st.safe:
            return  # already safe (like the firmware): a SAFE now gets only its ACK
        dropped = len(st.queue)
        for entry in st.queue:
            st.fates.append((entry.item, p.Fate.DROPPED, now, entry.epoch))
        st.queue.clear()
        st.gate_high_until.clear()
        st.safe = True
        st.run = False
        st.safe_reason = reason
        st.safe_dropped = min(dropped, 0xFF)
        st.safe_resend = True
        log.info("simulator: safe state (%s), %d dropped", p.SafeReason(reason).name, dropped)
        self._send(p.SafeState(1, reason, st.safe_dropped))

    def _resume(self, now: int) -> None:
        """RESUME: leave the safe state (if in it), assert the run permit (if configured)."""
        st = self.state
        was_safe = st.safe
        st.safe = False
        st.safe_resend = False
        st.last_rx = now
        st.run = st.configured
        if was_safe:
            self._send(p.SafeState(0, p.SafeReason.RESUMED, 0))


class SimulatorPort:
    """A `SimController` behind a serial-port-like interface, on a clock.

    `write` hands bytes to the controller at the clock's current time; `read` returns what
    it sent. With a `VirtualClock` all controller work happens in the thread that moves
    the clock; with a real clock a worker thread wakes at each due event.
    """

    def __init__(self, url: str = "sim://", clock: Clock | None = None) -> None:
        self.url = url
        self.options = SimOptions.from_url(url)
        self.clock: Clock = clock or MonotonicClock()
        self._t0 = self.clock.now()
        self.controller = SimController(self.options, self.options.time0)
        self._lock = threading.Lock()
        self._readable = threading.Condition(self._lock)
        self._rx = bytearray()
        self._closed = False
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._unsubscribe: Callable[[], None] | None = None
        self._thread: threading.Thread | None = None
        self.timeout: float | None = 0.05
        """Read timeout in seconds (like pyserial's)."""
        if isinstance(self.clock, VirtualClock):
            self._unsubscribe = self.clock.subscribe(self._on_clock, self._next_wake)
        else:
            self._thread = threading.Thread(target=self._run, name="sim-controller", daemon=True)
            self._thread.start()
        with self._lock:
            self._tick(self._now_us())

    # ----------------------------------------------------------- time mapping
    def _now_us(self) -> int:
        return (round((self.clock.now() - self._t0) * 1e6) + self.options.time0) & 0xFFFFFFFF

    def now_us(self) -> int:
        """The controller's current time (us)."""
        return self._now_us()

    def _tick(self, now: int) -> None:
        self.controller.advance(now)
        out = self.controller.take_output()
        if out:
            self._rx += out
            self._readable.notify_all()

    def _on_clock(self, _t: float) -> None:
        with self._lock:
            if not self._closed:
                self._tick(self._now_us())

    def _next_wake(self) -> float | None:
        with self._lock:
            if self._closed:
                return None
            now_t = self.clock.now()
            delay = self.controller.next_event(self._now_us())
        return None if delay is None else now_t + delay / 1e6

    def _run(self) -> None:
        while not self._stop.is_set():
            self._kick.clear()
            with self._lock:
                if self._closed:
                    return
                self._tick(self._now_us())
                delay = self.controller.next_event(self._now_us())
            wait = 0.05 if delay is None else min(0.05, delay / 1e6)
            self._kick.wait(max(wait, 0.0001))

    # ----------------------------------------------------------- serial-like
    @property
    def is_open(self) -> bool:
        return not self._closed

    @property
    def in_waiting(self) -> int:
        with self._lock:
            return len(self._rx)

    def write(self, data: bytes) -> int:
        with self._lock:
            if self._closed:
                raise LinkError(f"{self.url}: simulator port is closed")
            now = self._now_us()
            self.controller.receive(bytes(data), now)
            out = self.controller.take_output()
            if out:
                self._rx += out
                self._readable.notify_all()
        self._kick.set()
        return len(data)

    def read(self, size: int = 1) -> bytes:
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        with self._lock:
            while not self._rx and not self._closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._readable.wait(remaining)
            out = bytes(self._rx[:size])
            del self._rx[:size]
        return out

    def flush(self) -> None:
        """Nothing buffered on the way out."""

    def reset_input_buffer(self) -> None:
        with self._lock:
            self._rx.clear()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._readable.notify_all()
        self._stop.set()
        self._kick.set()
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)


class SimulatorServer:
    """The simulator on a TCP socket, so `socket://127.0.0.1:PORT` reaches it like the
    firmware under QEMU. One client at a time; the controller keeps its state across
    connections unless `reset_on_connect` (an Uno resets when its port is opened).
    `disconnect()` drops the client (a pulled cable); tests use it for reconnects."""

    def __init__(
        self,
        url: str = "sim://",
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        reset_on_connect: bool = False,
    ) -> None:
        self.sim_url = url
        self.reset_on_connect = reset_on_connect
        self._listener = socket.create_server((host, port))
        self._listener.settimeout(0.1)
        self.host, self.port = self._listener.getsockname()[:2]
        self.port_obj = SimulatorPort(url)
        self.connections = 0
        """Clients accepted so far."""
        self._client: socket.socket | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._accept_loop, name="sim-server-accept", daemon=True),
            threading.Thread(target=self._pump_out, name="sim-server-out", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @property
    def url(self) -> str:
        """The pyserial URL of this server."""
        return f"socket://{self.host}:{self.port}"

    @property
    def controller(self) -> SimController:
        """The simulated controller (its state, fire log...)."""
        return self.port_obj.controller

    def __enter__(self) -> SimulatorServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def disconnect(self) -> None:
        """Drop the current client, as if the cable were pulled."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
            client.close()

    def close(self) -> None:
        """Stop serving and end the threads."""
        self._stop.set()
        self.disconnect()
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=2)
        self.port_obj.close()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            client.settimeout(0.1)
            self.disconnect()
            if self.reset_on_connect:
                old = self.port_obj
                self.port_obj = SimulatorPort(self.sim_url)
                old.close()
            with self._lock:
                self._client = client
                self.connections += 1
            self._pump_in(client)

    def _pump_in(self, client: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                data = client.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            with contextlib.suppress(LinkError):
                self.port_obj.write(data)
        with self._lock:
            if self._client is client:
                self._client = None
        client.close()

    def _pump_out(self) -> None:
        while not self._stop.is_set():
            data = self.port_obj.read(4096)
            if not data:
                continue
            with self._lock:
                client = self._client
            if client is None:
                continue  # nobody listening: bytes are lost, as on a real UART
            with contextlib.suppress(OSError):
                client.sendall(data)
