"""Figure 8: gate timing against the emulated firmware, in real time.

A few hundred SORT commands, each with a fire time a little ahead, are sent through
ControllerLink to the real firmware running under qemu-system-avr
(`firmware_bridge.emulator.qemu_controller`), or to a real controller with `--controller`.
The controller reports when each gate fired and the link maps that back to the host
clock. The error is fired time minus the ideal fire time. Baseline: the same sequence
against the Python simulator (sim://) on the same monotonic clock, i.e. what the host side
alone contributes.
"""

from __future__ import annotations

import logging
import shutil
import time
from contextlib import AbstractContextManager
from typing import Any

from benchmarks.core import Context, NotAvailable, Row, fmt_ms, need_modules, percentiles

NUMBER = 8
TITLE = "Gate timing (fired - ideal)"

log = logging.getLogger(__name__)

LEAD_S = 0.25
"""How far ahead of sending each command's fire time is (well past the safety margin)."""
SPACING_S = 0.05
"""Interval between commands' fire times: about 5 pending at once, well inside the queue of 16."""
WINDOW_S = 0.1
"""Window each SORT may still fire in: wide, so a late fire is measured rather than dropped."""
LOOP_WINDOW_S = 0.005
"""The loop's default window (serial.window_ms): fires later than this would be LATE there."""
HEARTBEAT_S = 2.0
"""Controller heartbeat timeout for this measurement: generous, so that a loaded machine
delaying a heartbeat does not put the gates in the safe state mid-run (the safe-state
behaviour is tested in tests/, not measured here)."""
N_GATES = 9
PULSE_MS = 10


def missing() -> str | None:
    return need_modules("firmware_bridge.link", "firmware_bridge.clock")


def qemu_missing() -> str | None:
    """Why the emulated firmware cannot run here (None when it can)."""
    if shutil.which("qemu-system-avr") is None:
        return "qemu-system-avr not installed (apt install qemu-system-misc), or pass --controller"
    if shutil.which("avr-gcc") is None:
        return "avr-gcc not installed (apt install gcc-avr avr-libc), or pass --controller"
    return need_modules("firmware_bridge.emulator")


def _qemu() -> AbstractContextManager[str]:
    """The firmware under QEMU (firmware_bridge.emulator builds it and ends QEMU after)."""
    from firmware_bridge.emulator import qemu_controller

    cm: AbstractContextManager[str] = qemu_controller()
    return cm


def fired_time(cmd: Any) -> float | None:
    """The host-clock time the controller reported the gate fired (None if unknown)."""
    for attr in ("fired_at", "fired_t", "t_fired", "fired_host"):
        value = getattr(cmd, attr, None)
        if value is not None:
            return float(value)
    return None


WARMUP = 8
"""Unmeasured SORTs first: QEMU translates the firmware's code on first use and the link
refines its clock sync over the first seconds."""


def warm_up(link: Any, clock: Any) -> None:
    """Send WARMUP unmeasured commands and wait for their fates."""
    time.sleep(0.5)
    cmds = []
    for i in range(WARMUP):
        fire_at = clock.now() + LEAD_S
        cmds.append(link.sort(item=60000 + i, gate=i % N_GATES, fire_at=fire_at, window_s=WINDOW_S))
        time.sleep(SPACING_S)
    for cmd in cmds:
        cmd.wait(LEAD_S + 2.0)
    time.sleep(0.5)


def measure(url: str, n: int) -> dict[str, Any]:
    """Send `n` SORTs over `url` in real time; return errors (s) and fate counts."""
    from firmware_bridge.clock import MonotonicClock
    from firmware_bridge.command import Fate
    from firmware_bridge.link import ControllerLink

    clock = MonotonicClock()
    link = ControllerLink(url, clock=clock, heartbeat_s=HEARTBEAT_S)
    errors: list[float] = []
    fates: dict[str, int] = {}
    with link:
        link.configure(N_GATES, PULSE_MS)
        warm_up(link, clock)
        cmds = []
        t_first = clock.now() + LEAD_S
        for i in range(n):
            fire_at = t_first + i * SPACING_S
            # Send each command LEAD_S before it is due, as the loop does.
            while clock.now() < fire_at - LEAD_S:
                time.sleep(0.001)
            cmd = link.sort(item=i + 1, gate=i % N_GATES, fire_at=fire_at, window_s=WINDOW_S)
            cmds.append((fire_at, cmd))
        deadline = time.monotonic() + LEAD_S + 5.0
        for fire_at, cmd in cmds:
            cmd.wait(max(0.0, deadline - time.monotonic()))
            status = str(getattr(cmd, "status", "?"))
            fates[status] = fates.get(status, 0) + 1
            fired = fired_time(cmd)
            if status == Fate.FIRED and fired is not None:
                errors.append(fired - fire_at)
            elif status != Fate.FIRED:
                log.info("%s: item %s ended %s (%s)", url, cmd.msg, status, cmd.detail)
    return {"errors": errors, "fates": fates}


RESOLUTION_S = 1e-5
"""Below this a baseline error is treated as zero (no meaningful ratio)."""


def _row(label: str, stats: dict[str, float], base: dict[str, float], key: str, fates: str) -> Row:
    value, ref = stats[key], base[key]
    ratio_text = "-"
    if value == value and ref == ref and abs(ref) >= RESOLUTION_S:
        ratio_text = f"{abs(value) / abs(ref):.3g}x (|err|)"
    return Row(
        measure=f"{label} {key}",
        value=fmt_ms(value),
        baseline="simulator (sim://), same commands",
        baseline_value=fmt_ms(ref),
        ratio=ratio_text,
        note=fates,
    )


def run(ctx: Context) -> list[Row]:
    n = 12 if ctx.smoke else 300
    sim = measure("sim://?gates=9", n)
    if ctx.controller:
        label = f"controller at {ctx.controller}"
        qemu = measure(ctx.controller, n)
    else:
        label = "firmware under QEMU"
        why = qemu_missing()
        if why:
            raise NotAvailable(why)
        try:
            ctx_mgr = _qemu()
        except ImportError as err:
            raise NotAvailable(f"firmware harness: {err}") from err
        with ctx_mgr as url:
            qemu = measure(url, n)
    if not qemu["errors"]:
        return [
            Row(
                measure=label,
                value="no command fired (see fates)",
                baseline="simulator (sim://), same commands",
                baseline_value=f"fates {sim['fates']}",
                note=f"n={n}, fates {qemu['fates']}: QEMU fell behind real time (machine loaded?)",
            )
        ]
    stats = percentiles(qemu["errors"])
    base = percentiles(sim["errors"])
    beyond = sum(1 for e in qemu["errors"] if abs(e) > LOOP_WINDOW_S)
    fates = (
        f"n={n}, fates {qemu['fates']} (sim {sim['fates']}); window {WINDOW_S * 1000:.0f} ms, "
        f"heartbeat {HEARTBEAT_S:g} s, "
        f"{beyond} fired more than {LOOP_WINDOW_S * 1000:.0f} ms off"
    )
    ctx.cache["gate_timing"] = {"qemu": stats, "sim": base}
    return [
        _row(label, stats, base, "p50", fates),
        _row(label, stats, base, "p99", ""),
        _row(label, stats, base, "max", ""),
    ]
