"""POSITION mode against the real firmware: the sorter's scheduler sends POSITION-mode SORTs
computed from the controller's (time, position) pairs (firmware_bridge.position) and the
C core fires each gate when the belt has moved its distance, also while the belt slows
down by 20% and speeds up again.

- Host build (build/libfwcore.so): the harness's encoder follows a speed profile
  (firmware_bridge/firmware/test_encoder.h, mirrored exactly by tests/encoder_belt.py); a
  virtual host asks for positions like `ControllerLink` does (a SYNC every 50 ms, and
  STATUS), and the real `Scheduler` computes every SORT. Exact virtual time: every gate
  must fire within its window of the item's true arrival, once, for that item only.
- Under qemu-system-avr: the emulator cannot drive the encoder pins, so a TEST build of
  the firmware (`make TEST_ENCODER=2`, never the shipped image) runs profile 2 itself on
  its Timer1 clock. `ControllerLink` and the `Scheduler`, wired as `sorter run` wires them
  ([belt] encoder_ticks_per_mm), send the SORTs; firings are counted on the controller's
  side of a (fault-free) proxy.

The truth: an item's belt position when it crossed the line is the profile's position at
the controller time of that instant (the link's clock mapping, the same one the host uses:
the mapping's own error is measured by the TIME-mode tests); it reaches its gate when the
profile's position is that plus distance_mm * encoder_ticks_per_mm.
"""

from __future__ import annotations

import ctypes
import itertools
import random
import statistics
from dataclasses import dataclass, field
from typing import Any

import pytest

from firmware_bridge import protocol as p
from firmware_bridge.errors import LinkError
from firmware_bridge.position import PositionEstimator
from sorter.actuation.scheduling import Scheduler
from sorter.config import Config, apply_overrides
from tests import test_firmware_host as fh
from tests.encoder_belt import BUILTIN, EncoderBelt, Segment

TICKS_PER_MM = 10.0
"""Encoder resolution in these tests: 200 mm/s (the configured speed) is 2000 ticks/s."""
GATES = (0, 1, 2, 3)
"""Gates used (200..500 mm from the line: 1..2.5 s of travel at the configured speed)."""
LATENCY_S = (0.0, 0.02, 0.08, 0.15)
"""From the item crossing the line to its SORT (the camera, the model), item by item: at 0
the position is extrapolated past the newest pair, later it is interpolated."""


def belt_config() -> Config:
    """The default config with an encoder (gate distances 200 + 100 * gate mm)."""
    return apply_overrides(Config(), {"belt.encoder_ticks_per_mm": TICKS_PER_MM})


def window_ticks(config: Config) -> int:
    """The SORT window in ticks, as the scheduler computes it."""
    return max(1, round(config.serial.window_ms / 1000 * config.belt.speed_mm_s * TICKS_PER_MM))


def phase(belt: EncoderBelt, t_us: float) -> str:
    """ "constant", "changing" or "slow" speed at controller time t_us (profile 2)."""
    speed = belt.speed(t_us)
    if speed >= 1999.0:
        return "constant"
    return "slow" if speed <= 1601.0 else "changing"


@dataclass
class Item:
    """One item and what the truth says about it."""

    item: int
    gate: int
    t_line: float
    """Host time it crossed the line."""
    true_target: int
    """Belt position (ticks) when it is at its gate."""
    true_arrival_us: float
    """Controller time it is at its gate."""
    configured_arrival_us: float
    """Where configured-speed scheduling (TIME mode) would have fired it."""
    fired: list[p.Fired] = field(default_factory=list)


def judge(items: list[Item], fired: list[p.Fired], config: Config) -> dict[str, list[Any]]:
    """Problems (every list must be empty): fired twice, at another gate, for an unknown
    item, or outside its window of the true arrival (ticks, and ms at the belt's speed)."""
    by_id = {it.item: it for it in items}
    problems: dict[str, list[Any]] = {"unknown": [], "twice": [], "wrong_gate": [], "window": []}
    win = window_ticks(config)
    for f in fired:
        it = by_id.get(f.item)
        if it is None:
            problems["unknown"].append(f)
            continue
        it.fired.append(f)
        if f.gate != it.gate:
            problems["wrong_gate"].append((f, it.gate))
        if abs(f.position - it.true_target) > win:
            problems["window"].append((it.item, f.position - it.true_target))
    problems["twice"] = [it.item for it in items if len(it.fired) > 1]
    return problems


def report(items: list[Item], belt: EncoderBelt) -> str:
    """Fire error against the true arrival, per speed phase (counts and ms)."""
    rows = []
    for name in ("constant", "changing", "slow"):
        group = [it for it in items if it.fired and phase(belt, it.true_arrival_us) == name]
        if not group:
            continue
        ticks = [abs(it.fired[0].position - it.true_target) for it in group]
        ms = [abs(p.time_diff(it.fired[0].time, round(it.true_arrival_us))) / 1e3 for it in group]
        conf = [abs(it.configured_arrival_us - it.true_arrival_us) / 1e3 for it in group]
        rows.append(
            f"{name:9s} n={len(group):3d}  |error| ticks median {statistics.median(ticks):.0f} "
            f"max {max(ticks)}  ms median {statistics.median(ms):.2f} max {max(ms):.2f}  "
            f"(configured speed would be off by up to {max(conf):.0f} ms)"
        )
    return "\n".join(rows)


# ---- the host build -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def lib() -> ctypes.CDLL:
    fh.build_host_libs()
    return fh.load_lib(fh.LIB)


class SegArray(ctypes.Structure):
    """enc_seg_t."""

    _fields_ = [("len", ctypes.c_uint32), ("r0", ctypes.c_uint16), ("r1", ctypes.c_uint16)]


def set_profile(lib: ctypes.CDLL, core: fh.Core, segments: tuple[Segment, ...]) -> None:
    arr = (SegArray * len(segments))(*[SegArray(s.len, s.r0, s.r1) for s in segments])
    assert lib.fwh_encoder(core.mem, arr, len(segments)) == 0


def test_the_python_profiles_are_the_firmwares(lib: ctypes.CDLL) -> None:
    rng = random.Random(14)
    custom = (Segment(40_000, 900, 900), Segment(65_535, 900, 3000), Segment(9_000, 3000, 0))
    for name, segments in [
        ("builtin 1", BUILTIN[1]),
        ("builtin 2", BUILTIN[2]),
        ("custom", custom),
    ]:
        core = fh.Core(lib, encoder=True)
        if name.startswith("builtin"):
            assert lib.fwh_encoder_builtin(core.mem, int(name[-1])) == 0
        else:
            set_profile(lib, core, segments)
        belt = EncoderBelt(segments)
        edges = itertools.accumulate(s.len * 16 for s in segments * 3)
        times = [t + d for t in edges for d in (-16, 0, 16)] + [
            rng.randrange(0, 60_000_000) for _ in range(3000)
        ]
        for t in times:
            assert lib.fwh_encoder_position(core.mem, t) == belt.position(t), (name, t)
    core = fh.Core(lib, encoder=True)
    assert (
        lib.fwh_encoder(core.mem, (SegArray * 1)(SegArray(70_000, 10, 20)), 1) == 1
    )  # ramp too long
    assert lib.fwh_encoder_builtin(core.mem, 3) == 1


class VirtualHost:
    """The host side of the link on exact virtual time, against the C core: asks for the
    belt position (SYNC) every 50 ms and takes STATUS pairs, as `ControllerLink` does;
    `position_at` and `sort` are what the scheduler needs (a `PositionLink`).
    Host time = controller time / 1e6 + OFFSET_S (a fixed, known mapping)."""

    OFFSET_S = 100.0

    def __init__(self, lib: ctypes.CDLL, profile: int, position_every_s: float = 0.05) -> None:
        self.lib = lib
        self.core = fh.Core(lib, now=0, encoder=True)
        assert lib.fwh_encoder_builtin(self.core.mem, profile) == 0
        self.core.take()
        self.t_us = 0
        self.positions = PositionEstimator()
        self.every_us = round(position_every_s * 1e6)
        self.next_ask = 0
        self.fired: list[p.Fired] = []
        self.sent: list[p.Sort] = []
        (ack,) = self.send(p.Config(5000, 1000, (40,) * 8))
        assert isinstance(ack, p.Ack)

    def now(self) -> float:
        return self.t_us / 1e6 + self.OFFSET_S

    def to_controller(self, t_host: float) -> int:
        return round((t_host - self.OFFSET_S) * 1e6)

    def send(self, msg: p.Message) -> list[p.Message]:
        pos = self.lib.fwh_encoder_position(self.core.mem, self.t_us)
        return self._take(self.core.feed(p.encode(msg, self.core.seq), self.t_us, pos))

    def _take(self, msgs: list[p.Message]) -> list[p.Message]:
        for m in msgs:
            if isinstance(m, p.SyncReply | p.Status):
                self.positions.add(m.time, m.position)
            elif isinstance(m, p.Fired):
                self.fired.append(m)
        self.core.seq += 1
        return msgs

    def run_until(self, t_us: int) -> None:
        """Advance to t_us: the core polled every 64 us (one clock count, the AVR loop
        while a command is due), a position SYNC every `position_every_s`."""
        while self.t_us < t_us:
            stop = min(t_us, self.next_ask)
            if stop > self.t_us:
                self.lib.fwh_run(self.core.mem, self.t_us, stop, 64, 0)
                self.t_us = stop
                self._take(self.core.take())
            if self.t_us >= self.next_ask:
                self.send(p.Sync(self.t_us & 0xFFFFFFFF))
                self.next_ask += self.every_us

    def position_at(self, t_host: float) -> float:
        pos = self.positions.at(self.to_controller(t_host))
        if pos is None:
            raise LinkError("no fresh belt position")  # as ControllerLink.position_at
        return pos

    def sort(self, item: int, gate: int, fire_at: float | None = None, window_s: float = 0.005,
             *, position: int | None = None, window_ticks: int = 0) -> Any:  # fmt: skip
        assert position is not None, "an encoder was configured: SORTs go out in POSITION mode"
        msg = p.Sort(item, gate, p.SortMode.POSITION, position & 0xFFFFFFFF, window_ticks)
        self.sent.append(msg)
        (ack,) = self.send(msg)
        assert isinstance(ack, p.Ack), ack
        return ack


def host_run(
    lib: ctypes.CDLL, profile: int, n: int, spacing_s: float
) -> tuple[list[Item], VirtualHost, EncoderBelt]:
    """n items, one every spacing_s from t = 0.5 s, through the real Scheduler."""
    config = belt_config()
    host = VirtualHost(lib, profile)
    belt = EncoderBelt(BUILTIN[profile])
    sched = Scheduler(config, host, host)
    items = []
    for k in range(n):
        t_line_us = 500_000 + round(k * spacing_s * 1e6) + 7_919 * (k % 6)  # off the SYNC grid
        gate = GATES[k % len(GATES)]
        host.run_until(t_line_us + round(LATENCY_S[k % len(LATENCY_S)] * 1e6))
        t_line = t_line_us / 1e6 + host.OFFSET_S
        scheduled = sched.schedule(1000 + k, gate, t_line)
        assert scheduled.status == "pending", scheduled
        target = belt.position(t_line_us) + round(
            config.gates[str(gate)].distance_mm * TICKS_PER_MM
        )
        configured = t_line_us + sched.travel_s(gate) * 1e6
        items.append(Item(1000 + k, gate, t_line, target, belt.time_of(target), configured))
    host.run_until(host.t_us + 5_000_000)
    return items, host, belt


@pytest.mark.parametrize("profile", [1, 2])
def test_host_build_fires_every_position_sort_at_the_items_true_arrival(
    lib: ctypes.CDLL, profile: int
) -> None:
    items, host, belt = host_run(lib, profile, n=50, spacing_s=0.2)
    config = belt_config()
    assert len(host.sent) == len(items)
    assert all(
        s.mode == p.SortMode.POSITION and s.window_us == window_ticks(config) for s in host.sent
    )
    problems = judge(items, host.fired, config)
    print(f"\nprofile {profile}, host build:\n{report(items, belt)}")
    assert not any(problems.values()), problems
    assert all(len(it.fired) == 1 for it in items)  # exact time: every one fires
    for gate in GATES:  # the pins, not only the messages
        assert host.core.gate_rises(gate) == sum(1 for it in items if it.gate == gate)
    if profile == 2:
        phases = {phase(belt, it.true_arrival_us) for it in items}
        assert phases == {"constant", "changing", "slow"}
        worst = max(abs(it.configured_arrival_us - it.true_arrival_us) for it in items)
        assert worst > 50_000  # configured-speed timing would have missed by > 50 ms


def test_positions_from_the_clock_syncs_alone_would_miss_a_slowing_belt(lib: ctypes.CDLL) -> None:
    """Why the link asks for the position every 50 ms, and why the estimator will not
    extrapolate far: with a pair only every second or two (STATUS and the clock's SYNCs)
    a line through the newest pairs takes the gates out of their windows while the belt
    slows; the estimator refuses instead and the scheduler sends nothing (reject lane)."""
    config = belt_config()
    misses = refused = 0
    sent: list[Item] = []
    for guess in (True, False):
        host = VirtualHost(lib, 2, position_every_s=2.0)
        if guess:
            host.positions = PositionEstimator(max_ahead_s=10.0, slope_s=3.0)  # guessing
        belt = EncoderBelt(BUILTIN[2])
        sched = Scheduler(config, host, host)
        for k in range(40):
            t_line_us = 2_500_000 + k * 200_000 + 7_919 * (k % 6)
            gate = GATES[k % len(GATES)]
            host.run_until(t_line_us + round(LATENCY_S[2] * 1e6))
            t_line = t_line_us / 1e6 + host.OFFSET_S
            true = belt.position(t_line_us) + round(config.gates[str(gate)].distance_mm * 10)
            if not guess:
                status = sched.schedule(2000 + k, gate, t_line).status
                refused += status == "timeout"
                if status == "pending":  # a pair within 0.1 s (a STATUS, a clock SYNC)
                    sent.append(Item(2000 + k, gate, t_line, true, belt.time_of(true), 0.0))
                continue
            target = sched.position_target(gate, t_line)
            assert target is not None
            misses += abs(target[0] - true) > window_ticks(config)
        if not guess:
            host.run_until(host.t_us + 5_000_000)
            assert not any(judge(sent, host.fired, config).values())
            assert all(len(it.fired) == 1 for it in sent)
    print(f"pairs 1-2 s apart: {misses}/40 would miss their window; {refused}/40 refused")
    assert misses >= 10 and refused >= 30


# ---- under QEMU ---------------------------------------------------------------------------


@pytest.mark.qemu
@pytest.mark.slow
def test_qemu_position_sorts_fire_at_the_items_true_arrival_while_the_belt_slows() -> None:
    from tests.position_qemu import run_position_qemu

    config = belt_config()
    run = run_position_qemu(config, n_items=44, spacing_s=0.25)
    belt = run.belt
    problems = judge(run.items, run.fired, config)
    print(f"\nTEST_ENCODER=2 under QEMU ({run.wall_s:.1f} s):\n{report(run.items, belt)}")
    print(f"host statuses: {run.statuses}; controller LATE: {len(run.late)}")
    assert run.sent and all(s.mode == p.SortMode.POSITION for s in run.sent)
    assert not any(problems.values()), problems
    fired = [it for it in run.items if it.fired]
    # Liveness depends on the machine: a QEMU starved by a loaded host reports LATE (the
    # firmware's correct answer to a target it reached too late), and the link sends
    # nothing when it has had no fresh belt position; both are safe. Measured: 43-44 of
    # 44 fired at a load average of 5-7 on 2 cores, 30-38 at 7-10, 17 (+12 LATE) during
    # a full `make test` at 10. So: the controller handled at least half, a quarter fired,
    # and POSITION mode fired in every phase of the profile.
    handled = len(fired) + len({m.item for m in run.late})
    assert handled >= 0.5 * len(run.items) and len(fired) >= 0.25 * len(run.items), (
        run.statuses,
        run.naks,
    )
    assert {phase(belt, it.true_arrival_us) for it in fired} == {"constant", "changing", "slow"}
    assert not {m.item for m in run.late} & {it.item for it in fired}  # LATE never fires
    # what the host was told agrees with what the controller did ("timeout" is the host
    # saying it does not know: a reply lost to a starved emulator, as in fault_run.py)
    for it in run.items:
        status = run.host_status[it.item]
        if status != "timeout":
            assert (status == "fired") == bool(it.fired), (it.item, status, it.fired)
