"""A stateful property test: hypothesis drives `ControllerLink` against the simulator over
a channel that corrupts, drops, duplicates, delays and reorders bytes, pulls the cable and
resets the controller, and checks after every step and at the end:

- no item fires twice, over every controller run;
- no gate fires for a target from an earlier controller run: every firing is of SORT bytes
  the host wrote after that controller run began;
- every fate the host reports equals the controller's: "fired" only for what fired, with
  the epoch the host holds; "late", "nak", "cancelled" never for something that fired; a
  "timeout" (the host does not know) hides a firing only when the controller that fired
  was reset since, its answer gone with it.

The controller runs on a VirtualClock (each step moves it); the link's ACK timeouts and
retries run in real time. Bounded: a few dozen short sessions, well under a minute.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from typing import Any

import serial
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from firmware_bridge import protocol as p
from firmware_bridge.clock import VirtualClock
from firmware_bridge.command import Command
from firmware_bridge.framing import Deframer
from firmware_bridge.link import ControllerLink
from firmware_bridge.simulator import FireRecord, SimController, SimOptions, SimulatorPort

GATES = 4


class Line:
    """The cable and the controller behind it: faults in both directions, held-back
    chunks released later (delay, reorder), a pull (`broken`), a reset."""

    def __init__(self, clock: VirtualClock, seed: int) -> None:
        self.clock = clock
        self.sim = SimulatorPort(f"sim://?gates={GATES}", clock)
        self.rng = random.Random(seed)
        self.rate = 0.0
        self.lock = threading.Lock()
        self.generation = 0
        self.fired: list[tuple[int, FireRecord]] = []
        """(controller run, firing) of every run so far."""
        self.written: set[tuple[int, int, int]] = set()
        """(controller run, epoch, item) of every SORT the host wrote, before damage."""
        self._host = Deframer()
        self._held_up: list[bytes] = []
        self._held_down: list[bytes] = []

    def port(self) -> Any:
        return LinePort(self)

    def mangle(self, data: bytes, held: list[bytes]) -> bytes:
        out = bytearray()
        for byte in data:
            if self.rng.random() >= self.rate:
                out.append(byte)
                continue
            kind = self.rng.randrange(4)
            if kind == 0:
                out.append(byte ^ (1 << self.rng.randrange(8)))
            elif kind == 2:
                out += bytes([byte, byte])
            elif kind == 3:  # hold the rest back: it goes out after later bytes
                held.append(bytes(out))
                out = bytearray([byte])
        if held and self.rng.random() < 0.5:
            out += held.pop(0)
        return bytes(out)

    def up(self, data: bytes) -> None:
        with self.lock:
            for frame in self._host.feed(data):
                msg = p.decode(frame)
                if isinstance(msg, p.Sort):
                    self.written.add((self.generation, msg.epoch, msg.item))
            out = self.mangle(data, self._held_up)
        self.sim.write(out)

    def down(self, size: int) -> bytes:
        data = self.sim.read(size)
        with self.lock:
            return self.mangle(data, self._held_down)

    def reset(self) -> None:
        """The controller reboots: a fresh one on the same port, nothing remembered."""
        with self.lock, self.sim._lock:
            self.fired += [(self.generation, r) for r in self.sim.controller.fire_log]
            self.generation += 1
            now = self.sim.now_us()
            self.sim.controller = SimController(SimOptions(gates=GATES), (now + 777_777))
            self.sim._tick(self.sim.now_us())

    def all_fired(self) -> list[tuple[int, FireRecord]]:
        with self.lock:
            now = [(self.generation, r) for r in self.sim.controller.fire_log]
            return self.fired + now


class LinePort:
    """What the link opens: one plug-in of the cable (a pull ends it)."""

    def __init__(self, line: Line) -> None:
        self.line = line
        self.broken = False
        self.timeout = 0.05

    @property
    def clock(self) -> VirtualClock:
        return self.line.clock

    @property
    def in_waiting(self) -> int:
        return 0

    def write(self, data: bytes) -> int:
        if self.broken:
            raise serial.SerialException("cable pulled")
        self.line.up(bytes(data))
        return len(data)

    def read(self, size: int = 1) -> bytes:
        if self.broken:
            raise serial.SerialException("cable pulled")
        return self.line.down(max(size, 64))

    def close(self) -> None:
        self.broken = True


class LinkMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = VirtualClock(1000.0)
        self.line = Line(self.clock, seed=0)
        self.ports: list[LinePort] = []
        self.link: ControllerLink | None = None
        self.cmds: list[Command] = []
        self.item = 0

    def _port(self) -> LinePort:
        port = self.line.port()
        self.ports.append(port)
        return port

    @rule(seed=st.integers(0, 2**32 - 1))
    @precondition(lambda self: self.link is None)
    def connect(self, seed: int) -> None:
        self.line.rng.seed(seed)
        rate, self.line.rate = self.line.rate, 0.0  # start() must succeed: a clean plug-in
        self.link = ControllerLink(
            "sim://",
            clock=self.clock,
            heartbeat_s=1.0,
            ack_timeout_s=0.03,
            retries=4,
            n_gates=GATES,
            lost_grace_s=0.5,
            port_factory=self._port,
        ).start()
        self.line.rate = rate

    @rule(
        sorts=st.lists(
            st.tuples(st.integers(0, GATES - 1), st.floats(0.0, 0.6)), min_size=1, max_size=4
        ),
        window=st.sampled_from([0.002, 0.02]),
    )
    @precondition(lambda self: self.link is not None)
    def sort(self, sorts: list[tuple[int, float]], window: float) -> None:
        assert self.link is not None
        for gate, lead in sorts:
            self.item += 1
            self.cmds.append(self.link.sort(self.item, gate, self.clock.now() + lead, window))

    @rule(dt=st.floats(0.001, 0.4))
    @precondition(lambda self: self.link is not None)
    def let_time_pass(self, dt: float) -> None:
        steps = max(1, int(dt / 0.02))
        for _ in range(steps):
            self.clock.advance(dt / steps)
            time.sleep(0.002)  # the link's real-time retries get a look in

    @rule(dt=st.floats(0.001, 0.1))
    @precondition(lambda self: self.link is not None)
    def let_a_little_time_pass(self, dt: float) -> None:
        self.let_time_pass(dt)

    @rule(rate=st.sampled_from([0.0, 0.01, 0.05]))
    def damage(self, rate: float) -> None:
        self.line.rate = rate

    @rule(what=st.sampled_from(["pull the cable", "reset the controller"]))
    @precondition(lambda self: self.link is not None and self.ports)
    def mishap(self, what: str) -> None:
        link = self.link
        assert link is not None
        if what == "pull the cable":
            self.ports[-1].broken = True
        else:
            self.line.reset()
        end = time.monotonic() + 2.0  # let it notice and reconnect (or not: a bound)
        time.sleep(0.02)
        while time.monotonic() < end and link.state != "connected":
            self.clock.advance(0.01)
            time.sleep(0.01)

    @invariant()
    def no_item_fires_twice_nor_for_an_old_target(self) -> None:
        fired = self.line.all_fired()
        counts = Counter(r.item for _, r in fired)
        assert all(n == 1 for n in counts.values()), counts.most_common(3)
        with self.line.lock:
            written = set(self.line.written)
        for gen, r in fired:
            assert (gen, r.epoch, r.item) in written, (gen, r)

    def teardown(self) -> None:
        link = self.link
        if link is None:
            self.line.sim.close()
            return
        try:
            self.line.rate = 0.0
            end = time.monotonic() + 15
            while time.monotonic() < end and (
                not all(c.done() for c in self.cmds) or link.rechecking()
            ):
                self.clock.advance(0.05)
                time.sleep(0.01)
            self.no_item_fires_twice_nor_for_an_old_target()
            self._fates_match()
        finally:
            link.close()
            self.line.sim.close()

    def _fates_match(self) -> None:
        runs = self.line.all_fired()
        fired = {(r.epoch, r.item) for _, r in runs}
        fired_in = {r.item: gen for gen, r in runs}
        for cmd in self.cmds:
            assert cmd.done(), cmd
            sort = cmd.msg
            assert isinstance(sort, p.Sort)
            if cmd.status == "fired":
                assert (sort.epoch, sort.item) in fired, cmd
            elif cmd.status in {"late", "nak", "cancelled"}:
                assert sort.item not in fired_in, cmd
            elif sort.item in fired_in:  # "timeout" for an item that did fire: only when
                # the controller that fired it was reset since (its answer died with it)
                assert cmd.status == "timeout", cmd
                assert fired_in[sort.item] < self.line.generation, cmd


LinkMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("LINK_STATEFUL_EXAMPLES", "12")),
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_link_against_a_bad_line = LinkMachine.TestCase
