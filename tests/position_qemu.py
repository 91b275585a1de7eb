"""POSITION mode under qemu-system-avr: the TEST_ENCODER firmware build (its belt encoder
follows a built-in speed profile on its own clock, firmware/test_encoder.h), the link and
the scheduler wired as `sorter run` wires them, a fault-free `FaultProxy` in between whose
tap counts what the controller really sent (FIRED, LATE).

`run_position_qemu(config, ...)` sends one item every `spacing_s` (gates 0..3 in turn),
each seen crossing the line `latency_s` before its SORT is computed, and returns the items
with their truth (tests/encoder_belt.py) and the controller's FIRED messages. Used by
tests/test_position_firmware.py and `python -m benchmarks.position_qemu`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from firmware_bridge import protocol as p
from firmware_bridge.command import Command
from firmware_bridge.emulator import QemuController, build_test_firmware
from firmware_bridge.link import ControllerLink
from sorter.actuation.scheduling import Scheduler
from sorter.config import Config
from sorter.runtime.wiring import configure_link, open_link
from tests.encoder_belt import BUILTIN, EncoderBelt
from tests.fault_proxy import FaultProxy
from tests.fault_run import ControllerTap
from tests.test_position_firmware import GATES, Item


@dataclass
class PositionRun:
    """What one run sent, what the controller did, and the truth."""

    belt: EncoderBelt
    items: list[Item] = field(default_factory=list)
    sent: list[p.Sort] = field(default_factory=list)
    """The SORTs as written."""
    fired: list[p.Fired] = field(default_factory=list)
    """FIRED as the controller sent them (the proxy's tap)."""
    late: list[p.Late] = field(default_factory=list)
    host_status: dict[int, str] = field(default_factory=dict)
    """Each item's fate as the host saw it."""
    unsent: dict[int, str] = field(default_factory=dict)
    """Items the scheduler did not send, and why (its status)."""
    naks: dict[int, str] = field(default_factory=dict)
    """Why the controller refused a SORT, per item."""
    wall_s: float = 0.0

    @property
    def statuses(self) -> dict[str, int]:
        """How many items ended in each host status."""
        out: dict[str, int] = {}
        for status in self.host_status.values():
            out[status] = out.get(status, 0) + 1
        return out


def run_position_qemu(
    config: Config,
    n_items: int = 44,
    spacing_s: float = 0.25,
    profile: int = 2,
    latency_s: float = 0.05,
) -> PositionRun:
    """One run of n_items against the TEST_ENCODER=profile build (see the module doc)."""
    run = PositionRun(EncoderBelt(BUILTIN[profile]))
    tap = ControllerTap()
    t0 = time.monotonic()
    with QemuController(build_test_firmware(profile)) as qemu:
        proxy = FaultProxy(("127.0.0.1", qemu.port), rate=0.0, tap=tap.feed)
        with proxy, open_link(config, url=proxy.url) as link:
            configure_link(link, config)
            cmds = _drive(link, config, run, n_items, spacing_s, latency_s)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not all(c.done() for c in cmds.values()):
                time.sleep(0.05)
            run.host_status = {item: str(c.status) for item, c in cmds.items()}
            run.host_status.update(run.unsent)
            run.naks = {i: p.NakReason(c.nak_reason).name for i, c in cmds.items() if c.nak_reason}
            time.sleep(0.3)  # the last bytes through the proxy
    run.wall_s = time.monotonic() - t0
    run.fired = [f for _, f in tap.fired]
    run.late = [m for _, m in tap.late]
    return run


def _drive(
    link: ControllerLink,
    config: Config,
    run: PositionRun,
    n_items: int,
    spacing_s: float,
    latency_s: float,
) -> dict[int, Command]:
    deadline = time.monotonic() + 5  # the belt runs before the first item: polls have come
    while time.monotonic() < deadline and link.positions.samples < 12:
        time.sleep(0.02)
    sched = Scheduler(config, link.clock, link)
    ticks_per_mm = config.belt.encoder_ticks_per_mm
    cmds: dict[int, Command] = {}
    start = time.monotonic()
    for k in range(n_items):
        item, gate = 5000 + k, GATES[k % len(GATES)]
        t_line = link.clock.now() - latency_s
        ctrl_line = link.sync.to_controller(t_line)
        scheduled = sched.schedule(item, gate, t_line)
        ctrl_line_after = link.sync.to_controller(t_line)
        if scheduled.command is not None:
            msg = scheduled.command.msg
            assert isinstance(msg, p.Sort)
            run.sent.append(msg)
            cmds[item] = scheduled.command
        else:  # not sent (no fresh belt position): the item rides to the reject lane
            run.unsent[item] = str(scheduled.status)
        # the truth at the controller time the host mapped the crossing to (the mapping may
        # have moved by a SYNC in between: take the mean of the two readings)
        line_us = (ctrl_line + p.time_diff(ctrl_line_after, ctrl_line) / 2) % (1 << 32)
        target = run.belt.position(round(line_us)) + round(
            config.gates[str(gate)].distance_mm * ticks_per_mm
        )
        configured = line_us + sched.travel_s(gate) * 1e6
        run.items.append(Item(item, gate, t_line, target, run.belt.time_of(target), configured))
        delay = start + (k + 1) * spacing_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return cmds
