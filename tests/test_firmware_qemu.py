"""The real firmware under qemu-system-avr, driven through `ControllerLink` over
`socket://`: handshake, firing time against the synced clock, LATE, heartbeat loss and
recovery, queue full.

QEMU runs the AVR at roughly real time, but on a loaded two-core machine the emulator
itself gets descheduled now and then (and QEMU's Timer1 model loses the length of a stall
that spans its overflow event). Tolerances below were chosen from measurements on such
a machine (see FIRE_TOLERANCE_S); the firmware's own guarantee - never fire after
target + window - is checked exactly on every FIRED.
"""

from __future__ import annotations

import itertools
import statistics
import threading
import time
from collections.abc import Iterator

import pytest

from firmware_bridge import protocol as p
from firmware_bridge.emulator import qemu_controller
from firmware_bridge.link import ControllerLink

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.slow,
]

FIRE_TOLERANCE_S = 0.005
"""Median |FIRED - fire_at| on the synced host clock must be within this. Measured on a
2-core machine under a load average of 8-10 (other test suites and a training run):
medians 0.04-1.1 ms over 8 runs of 30 SORTs (the firmware's own latency is about one
64 us clock count; the rest is SYNC error and QEMU scheduling)."""
FIRE_P90_S = 0.050
"""90% of firings within this (= the SORT window used). Measured p90: 0.5-32 ms; the
tail is the emulator being descheduled on the loaded host, not the firmware."""
SAFE_MARGIN_S = 0.5
"""Extra time allowed on top of the heartbeat timeout for SAFE_STATE to arrive."""

_items = itertools.count(50_000)


@pytest.fixture(scope="module")
def qemu_url() -> Iterator[str]:
    with qemu_controller() as url:
        yield url


class Events:
    """Collects controller events seen by a link (reader thread -> test)."""

    def __init__(self, link: ControllerLink) -> None:
        self.msgs: list[tuple[float, p.Message]] = []
        self._lock = threading.Lock()
        self._link = link
        link.on_event(self._on)

    def _on(self, msg: p.Message) -> None:
        with self._lock:
            self.msgs.append((self._link.clock.now(), msg))

    def of(self, cls: type) -> list:
        with self._lock:
            return [m for _, m in self.msgs if isinstance(m, cls)]

    def wait_for(self, cond: object, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if callable(cond) and cond():
                return True
            time.sleep(0.01)
        return bool(callable(cond) and cond())


def open_link(url: str, **kwargs: object) -> ControllerLink:
    kwargs.setdefault("heartbeat_s", 1.0)
    kwargs.setdefault("ack_timeout_s", 0.3)
    kwargs.setdefault("n_gates", 8)
    return ControllerLink(url, **kwargs)  # type: ignore[arg-type]


def test_handshake_reports_the_firmware(qemu_url: str) -> None:
    with open_link(qemu_url) as link:
        info = link.info
        assert info is not None
        assert (info.proto, info.n_gates, info.queue_size, info.time_hz) == (1, 12, 16, 10**6)
        assert (info.fw_major, info.fw_minor) == (1, 1)
        status = link.request(p.Hello(link.epoch))
        assert isinstance(status, p.HelloInfo) and status.flags & 0x02  # configured


def test_sorts_fire_at_their_target_on_the_synced_clock(qemu_url: str) -> None:
    n = 30
    with open_link(qemu_url) as link:
        events = Events(link)
        cmds = []
        for k in range(n):
            fire_at = link.clock.now() + 0.25
            cmds.append(link.sort(next(_items), k % 8, fire_at, window_s=0.05))
            time.sleep(0.06)
        for cmd in cmds:
            cmd.wait(5)
        fired = [c for c in cmds if c.status == "fired"]
        # the firmware's hard rule, exact in controller time: never before the target,
        # never after target + window
        by_item = {f.item: f for f in events.of(p.Fired)}
        ctl_late_us = []
        for cmd in fired:
            msg = cmd.msg
            assert isinstance(msg, p.Sort)
            late_by_us = p.time_diff(by_item[msg.item].time, msg.target)
            assert 0 <= late_by_us <= msg.window_us
            ctl_late_us.append(late_by_us)
        errors = sorted(abs(c.fired_at - c.fire_at) for c in fired if c.fired_at and c.fire_at)
    assert len(fired) >= n - 3, [c.status for c in cmds]  # a stall may make one late
    median = statistics.median(errors)
    p90 = errors[int(0.9 * (len(errors) - 1))]
    print(
        f"fire error on the synced clock: median {median * 1e3:.2f} ms, "
        f"p90 {p90 * 1e3:.2f} ms, max {errors[-1] * 1e3:.2f} ms over {len(errors)}; "
        f"FIRED - target in controller time: median {statistics.median(ctl_late_us)} us"
    )
    assert median <= FIRE_TOLERANCE_S
    assert p90 <= FIRE_P90_S


def test_a_sort_sent_after_its_deadline_is_late_and_never_fires(qemu_url: str) -> None:
    with open_link(qemu_url) as link:
        events = Events(link)
        item = next(_items)
        cmd = link.sort(item, 1, link.clock.now() - 0.2, window_s=0.005)
        assert cmd.wait(5) == "late"
        time.sleep(0.3)
        assert [m for m in events.of(p.Late) if m.item == item]
        assert not [m for m in events.of(p.Fired) if m.item == item]
        assert link.query(item).fate == p.Fate.LATE


def test_heartbeat_loss_enters_the_safe_state_and_the_link_recovers(qemu_url: str) -> None:
    heartbeat_s = 0.3
    with open_link(qemu_url, heartbeat_s=heartbeat_s) as link:
        events = Events(link)
        pending = link.sort(next(_items), 2, link.clock.now() + 8.0)
        assert events.wait_for(lambda: pending.acked, 3)
        with link.heartbeat_paused():
            silent_from = time.monotonic()
            assert events.wait_for(lambda: events.of(p.SafeState), heartbeat_s + SAFE_MARGIN_S)
            took = time.monotonic() - silent_from
            safe = events.of(p.SafeState)[0]
            assert (safe.entered, safe.reason, safe.dropped) == (1, p.SafeReason.HEARTBEAT, 1)
            assert link.in_safe_state
        print(
            f"SAFE_STATE {took * 1e3:.0f} ms after the host fell silent "
            f"(heartbeat timeout {heartbeat_s * 1e3:.0f} ms)"
        )
        assert took >= heartbeat_s * 0.9
        # the dropped item is reported, never fired
        assert link.query(pending.item or 0).fate == p.Fate.DROPPED
        # heartbeats are back: the link resumes the controller and sorting works again
        assert events.wait_for(lambda: not link.in_safe_state, 5)
        cmd = link.sort(next(_items), 3, link.clock.now() + 0.2, window_s=0.05)
        assert cmd.wait(5) == "fired"
    assert pending.status in {"timeout", "late", "cancelled"} or pending.done()


def test_queue_full_is_naked(qemu_url: str) -> None:
    with open_link(qemu_url) as link:
        t = link.clock.now() + 8.0
        cmds = [link.sort(next(_items), k % 8, t + 0.01 * k) for k in range(p.QUEUE_SIZE)]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not all(c.acked for c in cmds):
            time.sleep(0.01)
        assert all(c.acked for c in cmds)
        extra = link.sort(next(_items), 0, t + 1.0)
        assert extra.wait(5) == "nak" and extra.nak_reason == p.NakReason.QUEUE_FULL
        # SAFE drops the queue (each item DROPPED), RESUME opens it again
        assert link.safe().wait(5) == "acked"
        assert link.query(cmds[0].item or 0).fate == p.Fate.DROPPED
        assert link.resume().wait(5) == "acked"
        again = link.sort(next(_items), 0, link.clock.now() + 0.2, window_s=0.05)
        assert again.wait(5) == "fired"
