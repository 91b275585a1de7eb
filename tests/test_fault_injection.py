"""Fault injection between the link and the real firmware (under QEMU).

`FaultProxy` corrupts, drops, duplicates and delays 1% of the bytes in both directions
while the host sends over a thousand SORTs through `ControllerLink`, and drops the
connection once mid-run. Whatever the damage: no gate fires for a command the host did
not send intact, no item fires twice, every command ends with a reported fate that agrees
with the controller's own record (its fired/late counters and the FIRED/LATE events and
FATE answers it sent), and the link comes back by itself after the disconnect.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from firmware_bridge import protocol as p
from firmware_bridge.emulator import qemu_controller, tools_available
from firmware_bridge.errors import LinkError
from firmware_bridge.link import FINAL, ControllerLink
from tests.fault_proxy import FaultProxy

N_COMMANDS = 1100
"""SORTs sent in the run."""
RATE_HZ = 22.0
"""How fast they are sent (about 50 s of wall time)."""
FAULT_RATE = 0.01
"""Fraction of bytes damaged, each direction."""


# ---- the proxy itself (no QEMU) ----------------------------------------------------------


def test_proxy_faults_are_seeded_and_counted() -> None:
    data = bytes(range(256)) * 40
    a = FaultProxy(("127.0.0.1", 9), rate=0.05, seed=3)
    b = FaultProxy(("127.0.0.1", 9), rate=0.05, seed=3)
    assert a.mangle(data, "up") == b.mangle(data, "up")
    hit = sum(a.stats.faults.values())
    assert 0.03 * len(data) < hit < 0.07 * len(data)
    assert {k for _, k in a.stats.faults} == {"corrupt", "drop", "duplicate", "delay"}
    clean = FaultProxy(("127.0.0.1", 9), rate=0.0)
    assert clean.mangle(data, "down") == [(0.0, data)]
    drops = FaultProxy(("127.0.0.1", 9), rate=1.0, kinds=("drop",))
    assert drops.mangle(data, "up") == []
    with pytest.raises(ValueError, match="unknown fault kinds"):
        FaultProxy(("127.0.0.1", 9), kinds=("melt",))


# ---- against the firmware ----------------------------------------------------------------


@pytest.fixture(scope="module")
def qemu_port() -> Iterator[int]:
    assert tools_available(), "avr-gcc / qemu-system-avr missing: run `make sysdeps`"
    with qemu_controller() as url:
        yield int(url.rsplit(":", 1)[1])


@pytest.mark.qemu
@pytest.mark.slow
def test_a_thousand_sorts_through_a_faulty_line(qemu_port: int) -> None:
    fired_events: Counter[int] = Counter()
    fired_msgs: dict[int, p.Fired] = {}
    said_fired: set[int] = set()  # items the controller said fired (FIRED or FATE FIRED)
    said_late: set[int] = set()
    events_lock = threading.Lock()
    items = itertools.count(1)
    cmds = []
    send_errors = 0
    with FaultProxy(("127.0.0.1", qemu_port), rate=FAULT_RATE, seed=20261122) as proxy:
        link = ControllerLink(
            proxy.url,
            heartbeat_s=1.0,
            ack_timeout_s=0.2,
            retries=6,
            n_gates=8,
            lost_grace_s=1.0,
        )
        with link:

            def on_event(msg: p.Message) -> None:
                if isinstance(msg, p.Fired):
                    with events_lock:
                        fired_events[msg.item] += 1
                        fired_msgs[msg.item] = msg

            def on_message(msg: p.Message) -> None:
                with events_lock:
                    if isinstance(msg, p.Fired) or (
                        isinstance(msg, p.FateReply) and msg.fate == p.Fate.FIRED
                    ):
                        said_fired.add(msg.item)
                    if isinstance(msg, p.Late) or (
                        isinstance(msg, p.FateReply) and msg.fate == p.Fate.LATE
                    ):
                        said_late.add(msg.item)

            link.on_event(on_event)
            link.on_message(on_message)
            t0 = time.monotonic()
            for k in range(N_COMMANDS):
                if k == N_COMMANDS // 2:
                    proxy.disconnect()
                item = next(items)
                try:
                    cmds.append(link.sort(item, k % 8, link.clock.now() + 0.3, window_s=0.05))
                except LinkError:
                    send_errors += 1  # port down right now: the caller sees it at once
                delay = t0 + (k + 1) / RATE_HZ - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not all(c.done() for c in cmds):
                time.sleep(0.05)
            # timeouts the controller may still know about are asked again (a bound)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and link.rechecking():
                time.sleep(0.05)
            wall = time.monotonic() - t0
            # read the controller's own counters over a clean line
            proxy.enabled = False
            # a bound, not a speed check: QEMU starved on a loaded 2-core machine can take
            # seconds to drain its backlog before it answers
            status = link.request(p.Hello(link.epoch), timeout=15.0)
            assert isinstance(status, p.HelloInfo)
            time.sleep(0.3)
            counters = link.last_status
            stats = link.stats

    statuses = Counter(c.status for c in cmds)
    print(
        f"{len(cmds)} SORTs in {wall:.1f} s through {dict(proxy.stats.faults)}; "
        f"statuses {dict(statuses)}; send errors {send_errors}; link retries "
        f"{stats.retries}, queries {stats.queries}, reconnects {stats.reconnects}, "
        f"corrections {stats.corrections}; "
        f"controller crc_errors {counters and counters.crc_errors}, "
        f"frame_errors {counters and counters.frame_errors}, fired {counters and counters.fired}, "
        f"late {counters and counters.late}"
    )
    assert len(cmds) + send_errors == N_COMMANDS and len(cmds) >= 1000
    assert sum(proxy.stats.faults.values()) > 100  # the line really was damaged
    # every command's fate is reported
    assert all(c.status in FINAL for c in cmds), Counter(c.status for c in cmds if not c.done())
    # no item fires twice, and every FIRED is one of ours, at its gate, inside its window
    assert all(n == 1 for n in fired_events.values()), fired_events.most_common(3)
    sent = {c.item: c for c in cmds}
    for item, msg in fired_msgs.items():
        sort = sent[item].msg
        assert isinstance(sort, p.Sort)
        assert msg.gate == sort.gate
        assert 0 <= p.time_diff(msg.time, sort.target) <= sort.window_us
    # what the host was told matches what happened, for every command: "fired" exactly
    # for the items the controller said fired (FIRED event or FATE answer), "late" exactly
    # for those it said were late, and its own counters (read over a clean line) agree,
    # so no firing hides behind "timeout" (a "timeout" corrected later counts as its
    # corrected fate: that is what the decision log ends up with)
    assert counters is not None
    reported = {s: {c.item for c in cmds if c.status == s} for s in ("fired", "late")}
    wrong_fired = reported["fired"] ^ said_fired
    wrong_late = reported["late"] ^ said_late
    assert not wrong_fired, [(i, sent[i].status, sent[i].detail) for i in sorted(wrong_fired)]
    assert not wrong_late, [(i, sent[i].status, sent[i].detail) for i in sorted(wrong_late)]
    assert counters.fired == len(reported["fired"]), (counters.fired, len(reported["fired"]))
    assert counters.late == len(reported["late"]), (counters.late, len(reported["late"]))
    assert set(fired_events) <= reported["fired"]
    for c in cmds:
        if c.corrected:
            assert c.status in {"fired", "late"} and "timeout" in c.detail
    # the link recovered from the disconnect by itself, and most items were sorted
    assert proxy.stats.disconnects == 1 and proxy.stats.connections >= 2
    assert stats.reconnects >= 1
    assert statuses["fired"] >= 0.8 * len(cmds), statuses
