"""Figure 8: gate timing against the emulated firmware, in real time, clean and damaged.

SORT commands, each with a fire time LEAD_S ahead, go through ControllerLink to the real
firmware under qemu-system-avr (`firmware_bridge.emulator.qemu_controller`), or to a real
controller with `--controller`: once on a clean line and once through a proxy that damages
1% of the bytes each way (tests/fault_proxy.py: flipped, dropped, duplicated, delayed).

The error of a firing is the host time the gate fired minus the intended `fire_at`. The
controller stamps each FIRED with its own clock at the rising edge; that stamp is put on
the host's clock by a mapping fitted AFTER the run, independently of the link's online
estimate: a Theil-Sen line through the quickest SYNC round trip of each 2 s stretch of
the whole run (`hindsight_mapping`; a new line wherever the controller's clock jumped).
So the figure includes the link's clock-sync error, the firmware's tick and QEMU's
scheduling; the hindsight mapping itself is good to about half the quickest round trip
(its spread is printed). Reported: p50 / p99 / max of
|error|, and how many fired more than 2 / 20 ms off. Baseline: the same commands against
the Python simulator (sim://) on the same monotonic clock.

    nice -n 19 python -m benchmarks.gate_timing            # table + results file
    python -m benchmarks --only 8                          # as part of the full run
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import shutil
import sys
import time
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from benchmarks.core import (
    REPO,
    Context,
    FigureResult,
    NotAvailable,
    Row,
    fmt_ms,
    need_modules,
    percentiles,
)

NUMBER = 8
TITLE = "Gate timing (fired - intended)"

log = logging.getLogger(__name__)

LEAD_S = 1.0
"""How far ahead of sending each command's fire time is: the default belt's (first gate
200 mm past the line at 200 mm/s), and room for a resend or two after the 0.25 s ACK
timeout when a SORT is damaged on the way."""
SPACING_S = 0.1
"""Interval between commands' fire times: about 10 pending at once, inside the queue of 16."""
WINDOW_S = 0.06
"""Window each SORT may still fire in: wide, so a late fire is measured rather than dropped."""
HEARTBEAT_S = 2.0
"""Controller heartbeat timeout for this measurement: generous, so that a loaded machine
delaying a heartbeat does not put the gates in the safe state mid-run (the safe-state
behaviour is tested in tests/, not measured here)."""
DAMAGE = 0.01
"""Share of bytes the proxy damages, each way."""
N_GATES = 9
PULSE_MS = 10
WARMUP = 8
"""Unmeasured SORTs first: QEMU translates the firmware's code on first use."""
BIN_S = 2.0
"""Stretch of time whose quickest SYNC round trip enters the hindsight mapping."""


def missing() -> str | None:
    return need_modules("firmware_bridge.link", "firmware_bridge.sync", "tests.fault_proxy")


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


# ---------------------------------------------------------------- the hindsight mapping
JUMP_US = 500_000
"""A sample this far (us) from the median offset of the few before it starts a new
segment: the controller's clock jumped (on a loaded machine the firmware under QEMU can
lose a Timer1 overflow, 4.194 s)."""


@dataclass
class Mapping:
    """host = t_ref + (ctrl_us - ctrl_ref) / 1e6 / (1 + rate) over [t_start, t_end] (host
    s), from a whole run's SYNCs."""

    t_ref: float
    ctrl_ref: float
    rate: float
    spread_us: float
    """Median |residual| of the points the line went through (its own error scale)."""
    points: int
    t_start: float
    t_end: float

    def to_host(self, ctrl_us: int) -> float:
        d = (ctrl_us - self.ctrl_ref + (1 << 31)) % (1 << 32) - (1 << 31)
        return self.t_ref + d / 1e6 / (1.0 + self.rate)


def _wrap(x: int) -> int:
    return ((x + (1 << 31)) % (1 << 32)) - (1 << 31)


def segments(samples: list[Any]) -> list[list[Any]]:
    """Split the run where the controller's clock jumped (see JUMP_US)."""
    out: list[list[Any]] = []
    for s in samples:
        if out:
            recent = [x.offset_us for x in out[-1][-5:]]
            ref = sorted(recent)[len(recent) // 2]
            if abs(_wrap(s.offset_us - ref)) <= JUMP_US:
                out[-1].append(s)
                continue
        out.append([s])
    return [seg for seg in out if len(seg) >= 3]


def _line(samples: list[Any], prior_rate: float) -> Mapping:
    """Theil-Sen line (controller us against host s) through the quickest round trip of
    each stretch, quick ones only (up to twice the quickest + 1 ms); with fewer than 3
    such stretches (a short segment after a clock jump) the quickest sample and
    `prior_rate`."""
    fastest = min(s.delay for s in samples)
    quick = [s for s in samples if s.delay <= 2 * fastest + 0.001]
    t0, end = samples[0].mid, samples[-1].mid
    width = max(0.25, min(BIN_S, (end - t0) / 8))
    best: dict[int, Any] = {}
    for s in quick:
        k = int((s.mid - t0) / width)
        if k not in best or s.delay < best[k].delay:
            best[k] = s
    pts = sorted(best.values(), key=lambda s: s.mid)
    base = pts[0].ctrl_us
    x = np.array([s.mid - t0 for s in pts])
    y = np.array([_wrap(s.ctrl_us - base) for s in pts], float)
    slope = 1e6 * (1.0 + prior_rate)
    if len(pts) >= 3:
        i, j = np.triu_indices(len(pts), 1)
        far = (x[j] - x[i]) >= width
        if far.any():
            slope = float(np.median((y[j] - y[i])[far] / (x[j] - x[i])[far]))
    icept = float(np.median(y - slope * x))
    spread = float(np.median(np.abs(y - (icept + slope * x))))
    return Mapping(t0, base + icept, slope / 1e6 - 1.0, spread, len(pts), t0, end)


def hindsight_mapping(samples: list[Any]) -> list[Mapping]:
    """One line per stretch of the run the controller's clock ran without a jump."""
    out: list[Mapping] = []
    for seg in segments(samples):
        out.append(_line(seg, out[-1].rate if out else 0.0))
    return out


def _mapping_at(maps: list[Mapping], t: float) -> Mapping | None:
    """The segment's line in force at host time t (the last one begun by then)."""
    chosen = None
    for m in maps:
        if m.t_start <= t + 1.0:
            chosen = m
    return chosen


# ---------------------------------------------------------------- one run
@dataclass
class RunResult:
    """What one measured run saw."""

    errors: list[float] = field(default_factory=list)
    """Fired (hindsight mapping) - intended, seconds, per fired SORT."""
    link_errors: list[float] = field(default_factory=list)
    """Fired as the link reported it (its own mapping) - intended."""
    sync_errors: list[float] = field(default_factory=list)
    """The SORT's target (controller us, hindsight mapping) - intended, every SORT: the
    link's clock-sync error alone."""
    lateness: list[float] = field(default_factory=list)
    """FIRED stamp - target (s), on the controller's clock: the firmware (tick, QEMU
    scheduling) alone."""
    fates: dict[str, int] = field(default_factory=dict)
    mappings: list[Mapping] = field(default_factory=list)
    sync: dict[str, Any] = field(default_factory=dict)
    """The link's estimator at the end: rate, rate_known, samples, rejected, steps."""


def _recording_sync(link: Any) -> list[Any]:
    """Every SYNC sample the link hands its estimator, in order."""
    samples: list[Any] = []
    add = link.sync.add

    def record(sample: Any) -> bool:
        samples.append(sample)
        return bool(add(sample))

    link.sync.add = record
    return samples


def _send_all(link: Any, clock: Any, n: int, item0: int) -> list[tuple[float, Any]]:
    cmds = []
    t_first = clock.now() + LEAD_S
    for i in range(n):
        fire_at = t_first + i * SPACING_S
        while clock.now() < fire_at - LEAD_S:  # send each LEAD_S before it is due
            time.sleep(0.001)
        cmd = link.sort(item=item0 + i, gate=i % N_GATES, fire_at=fire_at, window_s=WINDOW_S)
        cmds.append((fire_at, cmd))
    return cmds


def measure(url: str, n: int, hold_s: float = 2 * BIN_S) -> RunResult:
    """Send WARMUP + `n` SORTs over `url` in real time; see the module docstring."""
    from firmware_bridge.clock import MonotonicClock
    from firmware_bridge.command import Fate
    from firmware_bridge.link import ControllerLink

    clock = MonotonicClock()
    link = ControllerLink(url, clock=clock, heartbeat_s=HEARTBEAT_S)
    samples = _recording_sync(link)
    out = RunResult()
    with link:
        link.configure(N_GATES, PULSE_MS)
        time.sleep(0.5)
        for _fire_at, cmd in _send_all(link, clock, WARMUP, 60000):
            cmd.wait(LEAD_S + 2.0)
        cmds = _send_all(link, clock, n, 1)
        deadline = time.monotonic() + LEAD_S + 10.0
        for _fire_at, cmd in cmds:
            cmd.wait(max(0.0, deadline - time.monotonic()))
        time.sleep(hold_s)  # SYNCs after the last firing, for the hindsight line
        est = link.sync
        out.sync = {
            "rate_ppm": est.rate * 1e6,
            "rate_known": est.rate_known,
            "samples": len(samples),
            "rejected": est.rejected,
            "steps": est.steps,
        }
    out.mappings = hindsight_mapping(samples)
    for fire_at, cmd in cmds:
        target = getattr(cmd.msg, "target", None)
        m = _mapping_at(out.mappings, cmd.sent_at if cmd.sent_at is not None else fire_at)
        if target is not None and m is not None:
            out.sync_errors.append(m.to_host(target) - fire_at)
        status = str(cmd.status)
        out.fates[status] = out.fates.get(status, 0) + 1
        if status != Fate.FIRED:
            log.info("%s: item %s ended %s (%s)", url, cmd.item, status, cmd.detail)
            continue
        if cmd.fired_at is not None:
            out.link_errors.append(cmd.fired_at - fire_at)
        m = _mapping_at(out.mappings, cmd.done_at if cmd.done_at is not None else fire_at)
        if cmd.ctrl_time is not None and m is not None:
            out.errors.append(m.to_host(cmd.ctrl_time) - fire_at)
        if cmd.ctrl_time is not None and target is not None:
            out.lateness.append(_wrap(cmd.ctrl_time - target) / 1e6)
    return out


# ---------------------------------------------------------------- the figure
def _abs_stats(errors: list[float]) -> dict[str, float]:
    return percentiles([abs(e) for e in errors])


def _rows(label: str, res: RunResult, base: RunResult, n: int) -> list[Row]:
    if not res.errors:
        why = (
            "no hindsight mapping: fewer than 3 quick SYNC round trips"
            if not res.mappings
            else "QEMU fell behind real time (machine loaded?)"
        )
        return [
            Row(
                measure=label,
                value="not available: no firing measured",
                baseline="simulator (sim://), same commands",
                baseline_value=f"fates {base.fates}",
                note=f"n={n}, fates {res.fates}: {why}",
            )
        ]
    stats, ref = _abs_stats(res.errors), _abs_stats(base.errors)
    signed = percentiles(res.errors)
    off2 = sum(1 for e in res.errors if abs(e) > 0.002)
    off20 = sum(1 for e in res.errors if abs(e) > 0.020)
    link = _abs_stats(res.link_errors)
    maps = res.mappings
    notes = [
        f"n={n}, fates {res.fates}; {off2} fired > 2 ms off, {off20} > 20 ms; "
        f"signed error p50 {fmt_ms(signed['p50'])}, mean {fmt_ms(signed['mean'])}",
        f"link's own view |fired_at - intended| p99 {fmt_ms(link['p99'])}; its estimator: "
        f"rate {res.sync.get('rate_ppm', 0):.1f} ppm, {res.sync.get('samples', 0)} SYNCs, "
        f"{res.sync.get('rejected', 0)} rejected, {res.sync.get('steps', 0)} clock steps",
        f"hindsight: {len(maps)} clock segment(s); "
        + "; ".join(
            f"rate {m.rate * 1e6:.1f} ppm through {m.points} points, spread {m.spread_us:.0f} us"
            for m in maps
        ),
    ]
    rows = []
    for key, note in zip(("p50", "p99", "max"), notes, strict=True):
        value, r = stats[key], ref[key]
        ratio = f"{value / r:.3g}x" if r == r and r >= 1e-5 else "-"
        rows.append(
            Row(
                measure=f"{label} |fired - intended| {key}",
                value=fmt_ms(value),
                baseline="simulator (sim://), same commands",
                baseline_value=fmt_ms(r),
                ratio=ratio,
                note=note,
            )
        )
    return rows + _component_rows(label, res)


def _triple(values: list[float]) -> str:
    st = _abs_stats(values)
    return f"p50 {fmt_ms(st['p50'])}, p99 {fmt_ms(st['p99'])}, max {fmt_ms(st['max'])}"


def _component_rows(label: str, res: RunResult) -> list[Row]:
    """The error split in two: the link's clock sync and the controller's lateness."""
    early = sum(1 for e in res.sync_errors if e < -0.002)
    late = sum(1 for e in res.lateness if e > 0.002)
    return [
        Row(
            measure=f"{label}: clock sync alone, |target - intended|",
            value=_triple(res.sync_errors),
            note=f"every SORT sent ({len(res.sync_errors)}), target put on the host clock by "
            f"the hindsight line; {early} targets > 2 ms early",
        ),
        Row(
            measure=f"{label}: controller alone, |FIRED stamp - target|",
            value=_triple(res.lateness),
            note=f"on the controller's clock (tick 1.024 ms, QEMU scheduling); {late} > 2 ms late",
        ),
    ]


def _damaged(url: str, stack: ExitStack, seed: int) -> str:
    """A 1% byte-damaging proxy in front of the socket:// controller at `url`."""
    from tests.fault_proxy import FaultProxy

    parts = urlsplit(url)
    if parts.scheme != "socket" or parts.hostname is None or parts.port is None:
        raise NotAvailable(f"the damaged line needs a socket:// controller, not {url}")
    proxy = stack.enter_context(FaultProxy((parts.hostname, parts.port), DAMAGE, seed))
    return proxy.url


def _scenario(
    label: str, url: str, sim: RunResult, n: int, hold_s: float
) -> tuple[list[Row], RunResult]:
    """One measured run as table rows; a link that cannot start is a row saying so."""
    from firmware_bridge.errors import LinkError

    try:
        res = measure(url, n, hold_s)
    except LinkError as err:
        note = f"the link could not start: {err} (QEMU starved on a loaded machine?)"
        row = Row(measure=label, value="not available: the link could not start", note=note)
        return [row], RunResult()
    return _rows(label, res, sim, n), res


def run(ctx: Context) -> list[Row]:
    n, hold_s = (12, 1.0) if ctx.smoke else (500, 2 * BIN_S)
    sim = measure("sim://?gates=9", n, hold_s)
    rows: list[Row] = []
    with ExitStack() as stack:
        if ctx.controller:
            label, url = f"controller at {ctx.controller}", ctx.controller
        else:
            label = "firmware under QEMU"
            why = qemu_missing()
            if why:
                raise NotAvailable(why)
            try:
                url = stack.enter_context(_qemu())
            except ImportError as err:
                raise NotAvailable(f"firmware harness: {err}") from err
        more, clean = _scenario(f"{label}, clean line", url, sim, n, hold_s)
        rows += more
        if url.startswith("socket://"):
            damaged_url = _damaged(url, stack, ctx.seed + 11)
            damaged_label = f"{label}, {DAMAGE:.0%} bytes damaged"
            more, damaged = _scenario(damaged_label, damaged_url, sim, n, hold_s)
            rows += more
            ctx.cache["gate_timing_damaged"] = _abs_stats(damaged.errors)
    ctx.cache["gate_timing"] = {"qemu": _abs_stats(clean.errors), "sim": _abs_stats(sim.errors)}
    return rows


def main(argv: list[str] | None = None) -> int:
    """Figure 8 on its own: print the table and write a results file with the machine."""
    from benchmarks import machine
    from benchmarks.report import document, table

    parser = argparse.ArgumentParser(prog="python -m benchmarks.gate_timing")
    parser.add_argument("--controller", help="controller URL instead of the firmware under QEMU")
    parser.add_argument("--smoke", action="store_true", help="12 SORTs per run")
    parser.add_argument("--out", help="results file (default benchmarks/results/...)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    load0 = _load()
    ctx = Context(smoke=args.smoke, workdir=REPO, data_dir=REPO, controller=args.controller)
    res = FigureResult(NUMBER, TITLE, "ok")
    try:
        res.rows = run(ctx)
    except NotAvailable as err:
        res.status, res.reason = "n/a", str(err)
    res.seconds = time.monotonic() - t0
    print(table([res]))
    if args.smoke and not args.out:
        return 0 if res.status == "ok" else 1
    slug = machine.machine_slug()
    name = f"gate-timing-{slug}-{started:%Y-%m-%d}.md"
    out = args.out or str(REPO / "benchmarks" / "results" / name)
    doc = document(
        [res],
        machine.describe(),
        title=f"Gate timing {started:%Y-%m-%d} on {machine.cpu_model()}",
        started=f"{started:%Y-%m-%d %H:%M}",
        total_s=res.seconds,
        mode="smoke" if args.smoke else "full",
        notes=[
            f"niceness {os.nice(0)}; load average (1, 5, 15 min) {load0} at the start, "
            f"{_load()} at the end, on {os.cpu_count()} cores"
        ],
        command=" ".join(["python -m benchmarks.gate_timing", *sys.argv[1:]]).strip(),
    )
    with open(out, "w", encoding="utf-8") as f:
        f.write(doc)
    print(f"written {out}")
    return 0 if res.status == "ok" else 1


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    raise SystemExit(main())
