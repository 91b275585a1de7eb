"""A fault-injection run: the link, as the README uses it, against the real firmware under
QEMU through `FaultProxy` (byte damage both ways), with cable pulls (the proxy drops the
host) and controller resets (QEMU restarted mid-stream), firings counted on the
controller's side of the proxy.

`run(...)` returns a `FaultRunResult` whose check lists must all be empty:

- `double_fired`: an item that fired more than once (over all controller runs);
- `wrong_gate`: fired at a gate other than its SORT's;
- `outside_window`: fired before its target or after target + window (controller time);
- `stale_fired`: fired for SORT bytes written before the controller run it fired in began
  (a target on a clock that no longer existed), or for an epoch other than the command's;
- `fate_mismatch`: the host said "fired" and the controller did not fire it, or the host
  said late/nak/cancelled and the controller fired it.

A "timeout" is the host saying it does not know; `hidden_fired` counts the timeouts that
had fired, split into those after a reset (a SORT due near a reset, whose controller died
with the answer) and others.

Used by tests/test_fault_injection.py (>= 1000 SORTs in `make test`) and by
`python -m benchmarks.fault_run` (>= 10,000 SORTs, a table).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from firmware_bridge import protocol as p
from firmware_bridge.command import Command
from firmware_bridge.emulator import QemuController
from firmware_bridge.framing import Deframer
from firmware_bridge.link import ControllerLink
from tests.fault_proxy import FaultProxy


@dataclass
class ControllerTap:
    """Everything the controller said, undamaged, per controller run (generation)."""

    started: list[float] = field(default_factory=lambda: [0.0])
    """Monotonic time each controller run (generation) began: its restart was asked for
    (bytes written before that cannot rightly fire in it)."""
    fired: list[tuple[int, p.Fired]] = field(default_factory=list)
    """(generation, FIRED) in order."""
    late: list[tuple[int, p.Late]] = field(default_factory=list)
    """(generation, LATE)."""
    _deframers: dict[int, Deframer] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def feed(self, data: bytes, generation: int) -> None:
        """Bytes the controller of run `generation` sent (the proxy's upstream count)."""
        with self._lock:
            deframer = self._deframers.setdefault(generation, Deframer())
            for frame in deframer.feed(data):
                try:
                    msg = p.decode(frame, sender="controller")
                except Exception:
                    continue
                if isinstance(msg, p.Fired):
                    self.fired.append((generation, msg))
                elif isinstance(msg, p.Late):
                    self.late.append((generation, msg))

    def new_generation(self) -> None:
        """A restart is about to happen."""
        with self._lock:
            self.started.append(time.monotonic())


@dataclass
class FaultRunResult:
    """What a run did and what went wrong (every check list empty: all well)."""

    sorts: int
    wall_s: float
    faults: dict[str, int]
    statuses: Counter[str]
    resets: int
    disconnects: int
    reconnects: int
    retries: int
    queries: int
    corrections: int
    controller_fired: int
    controller_late: int
    """Items the controller reported LATE (under load QEMU's timer runs late)."""
    double_fired: list[int]
    wrong_gate: list[int]
    outside_window: list[int]
    stale_fired: list[int]
    fate_mismatch: list[tuple[int, str, str]]
    hidden_fired_after_reset: int
    hidden_fired_other: int
    timing_errors_ms: list[float]
    hidden_details: list[tuple[int, str]] = field(default_factory=list)
    """(item, the host's detail) of each timeout that had fired (for the report)."""

    def problems(self) -> dict[str, list[object]]:
        """The checks that failed (empty when the run kept every promise)."""
        checks: dict[str, list[object]] = {
            "double_fired": list(self.double_fired),
            "wrong_gate": list(self.wrong_gate),
            "outside_window": list(self.outside_window),
            "stale_fired": list(self.stale_fired),
            "fate_mismatch": list(self.fate_mismatch),
        }
        return {k: v for k, v in checks.items() if v}

    def table(self) -> str:
        """A Markdown table of the figures."""
        errs = sorted(abs(e) for e in self.timing_errors_ms)
        p99 = errs[min(len(errs) - 1, int(0.99 * len(errs)))] if errs else float("nan")
        rows = [
            ("SORTs sent", self.sorts),
            ("wall time (s)", f"{self.wall_s:.0f}"),
            ("bytes damaged (corrupt/drop/dup/delay, both ways)", sum(self.faults.values())),
            ("controller restarts", self.resets),
            ("cable pulls", self.disconnects),
            ("link reconnects + resyncs", self.reconnects),
            ("host fates", dict(sorted(self.statuses.items()))),
            ("fired on the controller's side", self.controller_fired),
            ("reported LATE by the controller", self.controller_late),
            ("items fired twice", len(self.double_fired)),
            ("fired at a wrong gate", len(self.wrong_gate)),
            ("fired outside their window", len(self.outside_window)),
            ("fired for a target from before a reset", len(self.stale_fired)),
            ("fates reported wrong", len(self.fate_mismatch)),
            ("timeouts that had fired (reset near their time)", self.hidden_fired_after_reset),
            ("timeouts that had fired (other)", self.hidden_fired_other),
            ("fired: error vs intended host time, p99 (ms)", f"{p99:.1f}"),
            (
                "link retries / queries / corrections",
                f"{self.retries} / {self.queries} / {self.corrections}",
            ),
        ]
        lines = ["| figure | value |", "|---|---|"]
        lines += [f"| {name} | {value} |" for name, value in rows]
        if self.hidden_details:
            lines += ["", "Timeouts that had fired (item: the host's detail):", ""]
            lines += [f"- item {i}: {d}" for i, d in self.hidden_details]
        return "\n".join(lines)


def run(
    n_sorts: int = 1100,
    rate_hz: float = 22.0,
    fault_rate: float = 0.01,
    resets: int = 2,
    disconnects: int = 2,
    seed: int = 20261201,
    lead_s: float = 0.3,
    window_s: float = 0.05,
) -> FaultRunResult:
    """One run; `resets` controller restarts and `disconnects` cable pulls spread evenly
    through the stream (alternating)."""
    tap = ControllerTap()
    events = _event_schedule(n_sorts, resets, disconnects)
    with QemuController() as qemu:
        tap.started[0] = time.monotonic()
        proxy = FaultProxy(("127.0.0.1", qemu.port), rate=fault_rate, seed=seed, tap=tap.feed)
        with proxy:
            link = ControllerLink(
                proxy.url,
                heartbeat_s=1.0,
                ack_timeout_s=0.2,
                retries=6,
                n_gates=8,
                lost_grace_s=1.0,
                open_timeout_s=8.0,
            )
            with link:
                cmds, wall = _drive(
                    link, proxy, qemu, tap, events, n_sorts, rate_hz, lead_s, window_s
                )
                stats = link.stats
    return _judge(cmds, tap, proxy, qemu, stats, wall)


def _event_schedule(n: int, resets: int, disconnects: int) -> dict[int, str]:
    """SORT index -> "disconnect" or "reset", spread evenly, alternating."""
    todo: list[str] = []
    while resets or disconnects:
        if disconnects:
            todo.append("disconnect")
            disconnects -= 1
        if resets:
            todo.append("reset")
            resets -= 1
    step = n // (len(todo) + 1)
    return {step * (i + 1): kind for i, kind in enumerate(todo)}


def _drive(
    link: ControllerLink,
    proxy: FaultProxy,
    qemu: QemuController,
    tap: ControllerTap,
    events: dict[int, str],
    n: int,
    rate_hz: float,
    lead_s: float,
    window_s: float,
) -> tuple[list[Command], float]:
    items = itertools.count(1)
    cmds: list[Command] = []
    t0 = time.monotonic()
    for k in range(n):
        what = events.get(k)
        if what == "disconnect":
            proxy.disconnect()
        elif what == "reset":
            tap.new_generation()
            qemu.restart()
            proxy.reconnect_upstream()
        cmds.append(link.sort(next(items), k % 8, link.clock.now() + lead_s, window_s=window_s))
        delay = t0 + (k + 1) / rate_hz - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(c.done() for c in cmds):
        time.sleep(0.05)
    deadline = time.monotonic() + 15  # timeouts the controller may still know: asked again
    while time.monotonic() < deadline and link.rechecking():
        time.sleep(0.05)
    wall = time.monotonic() - t0
    time.sleep(0.5)  # the last events through the proxy
    return cmds, wall


def _judge(
    cmds: list[Command],
    tap: ControllerTap,
    proxy: FaultProxy,
    qemu: QemuController,
    stats: object,
    wall: float,
) -> FaultRunResult:
    by_item = {c.item: c for c in cmds if c.item is not None}
    fired_count = Counter(msg.item for _, msg in tap.fired)
    double = sorted(i for i, n in fired_count.items() if n > 1)
    wrong_gate, outside, stale, timing = [], [], [], []
    for gen, msg in tap.fired:
        cmd = by_item.get(msg.item)
        sort = cmd.msg if cmd is not None else None
        if cmd is None or not isinstance(sort, p.Sort):
            stale.append(msg.item)  # nothing the host sent (cannot happen: counted)
            continue
        if msg.gate != sort.gate:
            wrong_gate.append(msg.item)
        if msg.epoch != sort.epoch or (cmd.sent_at or 0.0) < tap.started[gen]:
            stale.append(msg.item)
        elif not 0 <= p.time_diff(msg.time, sort.target) <= sort.window_us:
            outside.append(msg.item)
        if cmd.fired_at is not None and cmd.fire_at is not None:
            timing.append((cmd.fired_at - cmd.fire_at) * 1e3)
    fired_keys = {(msg.epoch, msg.item) for _, msg in tap.fired}
    mismatch: list[tuple[int, str, str]] = []
    hidden_reset = hidden_other = 0
    hidden_details: list[tuple[int, str]] = []
    for item, cmd in by_item.items():
        sort = cmd.msg
        assert isinstance(sort, p.Sort) and item is not None
        did_fire = fired_count[item] > 0
        if cmd.status == "fired" and (sort.epoch, item) not in fired_keys:
            mismatch.append((item, str(cmd.status), "not fired"))
        elif cmd.status in {"late", "nak", "cancelled"} and did_fire:
            mismatch.append((item, str(cmd.status), "fired"))
        elif cmd.status == "timeout" and did_fire:
            hidden_details.append((item, cmd.detail))
            if "reset" in cmd.detail:
                hidden_reset += 1
            else:
                hidden_other += 1
        elif cmd.status not in {"fired", "late", "nak", "cancelled", "timeout"}:
            mismatch.append((item, str(cmd.status), "never ended"))
    return FaultRunResult(
        sorts=len(cmds),
        wall_s=wall,
        faults={f"{d}-{k}": n for (d, k), n in proxy.stats.faults.items()},
        statuses=Counter(str(c.status) for c in cmds),
        resets=qemu.restarts,
        disconnects=proxy.stats.disconnects,
        reconnects=getattr(stats, "reconnects", 0),
        retries=getattr(stats, "retries", 0),
        queries=getattr(stats, "queries", 0),
        corrections=getattr(stats, "corrections", 0),
        controller_fired=len(tap.fired),
        controller_late=len({msg.item for _, msg in tap.late}),
        double_fired=double,
        wrong_gate=sorted(set(wrong_gate)),
        outside_window=sorted(set(outside)),
        stale_fired=sorted(set(stale)),
        fate_mismatch=mismatch,
        hidden_fired_after_reset=hidden_reset,
        hidden_fired_other=hidden_other,
        timing_errors_ms=timing,
        hidden_details=hidden_details,
    )
