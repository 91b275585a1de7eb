"""Fault injection between the link and the real firmware (under QEMU).

`FaultProxy` corrupts, drops, duplicates and delays 1% of the bytes in both directions
while the host sends over a thousand SORTs through `ControllerLink`; mid-run the cable is
pulled twice and the controller restarted twice (QEMU ended and started again). Firings
are counted on the controller's side of the proxy (tests/fault_run.py): no item fires
twice, none at a wrong gate or outside its window, none for a target from before a
reset, every fate the host reports agrees with the controller, and the link comes back by
itself. `python -m benchmarks.fault_run` runs the same for 10,000 SORTs.
"""

from __future__ import annotations

import pytest

from firmware_bridge.emulator import tools_available
from tests import fault_run
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


@pytest.mark.qemu
@pytest.mark.slow
def test_a_thousand_sorts_through_a_faulty_line_with_resets_and_cable_pulls() -> None:
    assert tools_available(), "avr-gcc / qemu-system-avr missing: run `make sysdeps`"
    result = fault_run.run(n_sorts=N_COMMANDS, rate_hz=RATE_HZ, fault_rate=FAULT_RATE)
    print(result.table())
    assert result.sorts == N_COMMANDS >= 1000
    assert sum(result.faults.values()) > 100  # the line really was damaged
    assert result.resets == 2 and result.disconnects == 2
    # two cable pulls, two resets: the link came back (a reset met while reconnecting
    # from a pull is one handshake)
    assert result.reconnects >= 2
    # the promises, counted on the controller's side of the proxy
    assert not result.problems(), result.problems()
    assert result.hidden_fired_other == 0  # a plain timeout never hides a firing
    # most SORTs reached the controller and were handled despite all that (each pull or
    # restart costs about a second of SORTs: refused at once while the link shakes hands,
    # or too late to re-time); whether they fired in time is QEMU's timing on a loaded
    # machine (a starved emulator reports LATE), measured in benchmarks/
    handled = result.controller_fired + result.controller_late
    assert handled >= 0.6 * result.sorts, (handled, result.statuses)
