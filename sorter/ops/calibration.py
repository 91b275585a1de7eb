"""Gate-timing calibration (`sorter calibrate`): offsets measured with a marker, written back
to the config file.

A gate fires at `t_line + distance_mm / speed_mm_s + offset_ms` (sorter.actuation.scheduling). The
distance is measured with a tape and the speed is nominal, so each gate needs a small
correction, `offset_ms`. To find it:

1. send a test item or a marker past the camera; when it crosses the decision line (seen by
   the camera, or when you press Enter), the gate is fired at the computed time;
2. report where the marker was when the gate fired: `30mm` means it still had 30 mm to go
   (the gate fired early), `-20mm` it was 20 mm past (late); or in time, `+15ms` (the item
   reached the gate 15 ms after it fired) / `-10ms`; `ok` for a clean hit. A second
   detection (a photo-eye or camera at the gate) can report arrival times instead
   (`--arrivals FILE`);
3. after a few trials the median error is added to the gate's `offset_ms`, and that one
   line of the config file is rewritten in place, comments and all.

The arithmetic (`error_ms_from_report`, `propose_offset`, `set_gate_offset`) is pure and
tested; the guided session (`marker_session`) takes its prompts and output as functions and
builds the link, camera, locator and tracker with `sorter.runtime.wiring`, as `sorter run`
does (the config's [serial] settings, CONFIG for every gate, the scheduler's travel time).
"""

from __future__ import annotations

import logging
import re
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firmware_bridge.command import Fate
from sorter.actuation.link import SortLink
from sorter.actuation.scheduling import travel_s as gate_travel_s
from sorter.config import Config, parse_config
from sorter.errors import ConfigError, SorterError
from sorter.ops.config_edit import replace_file, table_span
from sorter.runtime import wiring

logger = logging.getLogger(__name__)

OFFSET_LIMIT_MS = 10000.0
"""offset_ms must stay within +-this (the config's range)."""
MIN_TRIALS = 3
"""Fewer trials than this give a result that is shown but marked as not trusted."""


@dataclass
class CalibrationResult:
    """What a set of trials says about one gate's offset."""

    gate: int
    """Controller gate number."""
    old_offset_ms: float
    """offset_ms before calibration."""
    new_offset_ms: float
    """Proposed offset_ms (old + correction, clamped to the allowed range)."""
    correction_ms: float
    """Median error of the trials: how much later the gate should fire."""
    n: int
    """Number of trials."""
    spread_ms: float
    """Median absolute deviation of the errors (how consistent the trials were)."""
    trusted: bool
    """Enough trials, consistent enough to write."""
    note: str = ""
    """Why it is not trusted, when it is not."""


def error_ms_from_report(report: str, speed_mm_s: float) -> float | None:
    """The timing error (ms, + = the gate should fire later) from one operator report.

    `30mm` / `30 mm`: the marker still had 30 mm to go when the gate fired (early: +);
    `-20mm`: it was 20 mm past (late: -); `+15ms` / `-10ms`: the same in time;
    `ok` / `hit` / `0`: no error; `skip` / empty: no usable trial (None).
    Raises ValueError with a usage hint for anything else.
    """
    text = report.strip().lower().replace(" ", "")
    if text in ("", "skip", "s", "?"):
        return None
    if text in ("ok", "hit", "0"):
        return 0.0
    m = re.fullmatch(r"([+-]?\d+(?:\.\d+)?)(mm|ms|s)", text)
    if not m:
        raise ValueError(
            f"cannot read {report!r}: give e.g. 30mm (marker short of the gate), -20mm "
            "(past it), +15ms, -10ms, ok or skip"
        )
    value, unit = float(m.group(1)), m.group(2)
    if unit == "ms":
        return value
    if unit == "s":
        return value * 1000.0
    if speed_mm_s <= 0:
        raise ValueError("a report in mm needs a belt speed above 0 ([belt] speed_mm_s)")
    return value / speed_mm_s * 1000.0


def arrival_errors_ms(pairs: Iterable[tuple[float, float]]) -> list[float]:
    """Errors (ms) from a second detection: (fired_at, arrived_at) in seconds, same clock."""
    return [(arrived - fired) * 1000.0 for fired, arrived in pairs]


def propose_offset(
    gate: int,
    old_offset_ms: float,
    errors_ms: Sequence[float],
    *,
    tolerance_ms: float = 10.0,
    min_trials: int = MIN_TRIALS,
) -> CalibrationResult:
    """New offset = old + median error; trusted with enough, consistent trials.

    The median ignores a trial where the marker slipped; the spread is the median
    absolute deviation, and above `tolerance_ms` (half the gate's pulse is a fair choice)
    the trials disagree too much to trust.
    """
    if not errors_ms:
        return CalibrationResult(
            gate, old_offset_ms, old_offset_ms, 0.0, 0, 0.0, False, "no trials"
        )
    correction = float(statistics.median(errors_ms))
    spread = float(statistics.median(abs(e - correction) for e in errors_ms))
    proposed = old_offset_ms + correction
    new = max(-OFFSET_LIMIT_MS, min(OFFSET_LIMIT_MS, proposed))
    notes = []
    if len(errors_ms) < min_trials:
        notes.append(f"only {len(errors_ms)} trial(s); run at least {min_trials}")
    if spread > tolerance_ms:
        notes.append(
            f"trials disagree (spread {spread:.1f} ms > {tolerance_ms:.1f} ms): check the belt "
            "speed in the config and that the marker does not slip"
        )
    if new != proposed:
        notes.append(f"clamped to +-{OFFSET_LIMIT_MS:g} ms: check distance_mm and speed_mm_s")
    return CalibrationResult(
        gate=gate,
        old_offset_ms=old_offset_ms,
        new_offset_ms=round(new, 1),
        correction_ms=correction,
        n=len(errors_ms),
        spread_ms=spread,
        trusted=not notes,
        note="; ".join(notes),
    )


# ------------------------------------------------------------------------------------------
# Writing the offset back: one targeted line edit


_OFFSET = re.compile(r"^(\s*offset_ms\s*=\s*)([^#\s]+)(.*)$")


def set_gate_offset(text: str, gate: int, offset_ms: float, source: str = "config") -> str:
    """`text` with `offset_ms` of `[gates.<gate>]` set, everything else byte for byte.

    Replaces the value on an existing `offset_ms = ...` line (keeping its comment), or
    inserts `offset_ms = ...` after the table's last key. ConfigError when the file has no
    `[gates.<gate>]` table (the gate must be configured, with its bin, first).
    """
    lines = text.splitlines(keepends=True)
    start, end = table_span(lines, f'gates."{gate}"')
    if start is None:
        raise ConfigError(
            f"{source}: no [gates.{gate}] table; add one (with its bin and distance_mm) before "
            "calibrating it"
        )
    value = f"{offset_ms:.1f}"
    last_key = start
    for i in range(start + 1, end):
        stripped = lines[i].strip()
        m = _OFFSET.match(lines[i].rstrip("\r\n"))
        if m:
            newline = lines[i][len(lines[i].rstrip("\r\n")) :]
            lines[i] = f"{m.group(1)}{value}{m.group(3)}{newline}"
            return "".join(lines)
        if stripped and not stripped.startswith("#"):
            last_key = i
    newline = "\r\n" if lines[start].endswith("\r\n") else "\n"
    if not lines[last_key].endswith(("\n", "\r")):
        lines[last_key] += newline
    lines.insert(last_key + 1, f"offset_ms = {value}{newline}")
    return "".join(lines)


def write_gate_offset(path: Path, gate: int, offset_ms: float) -> None:
    """Set the gate's offset in the config file in place (atomic replace, mode kept).

    The edited text is validated with the config loader before anything is written.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config ({err.strerror or err})") from err
    new_text = set_gate_offset(text, gate, offset_ms, str(path))
    config = parse_config(new_text, str(path))
    if abs(config.gates[str(gate)].offset_ms - round(offset_ms, 1)) > 1e-6:
        raise ConfigError(f"{path}: gates.{gate}.offset_ms is set twice; keep one line")
    replace_file(path, new_text, f"set [gates.{gate}] offset_ms = {offset_ms:.1f} by hand")


# ------------------------------------------------------------------------------------------
# The guided session (thin: triggers, the link and the prompts are passed in)


Trigger = Callable[[], float | None]
"""Blocks until the marker crosses the decision line; returns that host time (or None: stop)."""


@dataclass
class Trial:
    """One marker run."""

    item: int
    """Item number used for the SORT command."""
    t_line: float
    """Host time the marker crossed the decision line."""
    fire_at: float
    """Host time the gate was told to fire."""
    status: str
    """The command's fate (fired, late, nak, timeout...)."""
    error_ms: float | None
    """The reported error, or None when skipped."""


def run_session(
    *,
    link: SortLink,
    gate: int,
    travel_s: float,
    trigger: Trigger,
    ask: Callable[[str], str],
    say: Callable[[str], None],
    speed_mm_s: float,
    trials: int,
    window_s: float = 0.005,
    first_item: int = 900_000,
) -> list[Trial]:
    """Fire `gate` for each marker run and collect the operator's reports.

    `travel_s` is the gate's full delay from the line (distance / speed + current offset).
    """
    done: list[Trial] = []
    for n in range(trials):
        say(f"trial {n + 1}/{trials}: send the marker past the camera")
        t_line = trigger()
        if t_line is None:
            break
        item = first_item + n
        fire_at = t_line + travel_s
        cmd = link.sort(item=item, gate=gate, fire_at=fire_at, window_s=window_s)
        cmd.wait(max(1.0, fire_at - time.monotonic() + 2.0))
        status = str(cmd.status)
        say(f"  gate {gate} {status} for item {item}")
        error: float | None = None
        while True:
            answer = ask(
                "  where was the marker when the gate fired? (30mm / -20mm / +15ms / ok / skip)"
            )
            try:
                error = error_ms_from_report(answer, speed_mm_s)
                break
            except ValueError as err:
                say(f"  {err}")
        if status != Fate.FIRED and error is not None:
            say(f"  the gate did not fire ({status}); trial not counted")
            error = None
        done.append(Trial(item, t_line, fire_at, status, error))
    return done


def enter_trigger(ask: Callable[[str], str], clock: Callable[[], float]) -> Trigger:
    """Trigger on Enter (add ~150-250 ms of reaction time: prefer the camera trigger)."""

    def trigger() -> float | None:
        answer = ask("  press Enter the moment it crosses the decision line (q to stop)")
        return None if answer.strip().lower() == "q" else clock()

    return trigger


def camera_trigger(
    frames: Iterator[Any], locate: Callable[[Any], list[Any]], tracker: Any, timeout_s: float
) -> Trigger:
    """Trigger when a tracked item's centre crosses the tracker's decision line.

    `frames` yields sorter.perception.sources Frames whose `t` is the host monotonic clock
    (a camera); the crossing time is interpolated between frames by the tracker.
    """

    def trigger() -> float | None:
        deadline = time.monotonic() + timeout_s
        for frame in frames:
            tracker.update(locate(frame.image), frame.t, frame.index)
            if tracker.crossings:
                t_line: float = tracker.crossings[0].t_line
                return t_line
            if time.monotonic() > deadline:
                return None
        return None

    return trigger


def read_arrivals(path: Path) -> list[tuple[float, float]]:
    """(fired_at, arrived_at) pairs from a file of two numbers a line (`#` comments)."""
    pairs = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise ConfigError(f"--arrivals {path}: cannot read ({err.strerror or err})") from err
    for n, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].replace(",", " ").split()
        if not text:
            continue
        try:
            fired, arrived = (float(v) for v in text)
        except ValueError as err:
            raise ConfigError(
                f"--arrivals {path}:{n}: expected two numbers 'fired_at arrived_at', got {line!r}"
            ) from err
        pairs.append((fired, arrived))
    return pairs


def marker_session(
    config: Config,
    gate: int,
    *,
    url: str | None,
    trials: int,
    trigger_kind: str,
    camera: int | None,
    ask: Callable[[str], str],
    say: Callable[[str], None],
) -> list[float]:
    """Run `trials` marker runs on `gate` over the controller at `url` (default [serial]
    url); returns the usable errors (ms). `trigger_kind`: "camera" or "enter"."""
    if trigger_kind not in ("camera", "enter"):
        raise ConfigError(f"--trigger {trigger_kind!r}: use camera or enter")
    g = config.gates[str(gate)]
    travel = gate_travel_s(config, gate)
    url = url or config.serial.url
    speed = config.belt.speed_mm_s
    say(
        f"gate {gate}: {g.distance_mm:g} mm from the line at {speed:g} mm/s "
        f"= {1000 * travel:.0f} ms (offset {g.offset_ms:+.1f} ms). Controller {url}."
    )

    def session(link: SortLink, trigger: Trigger) -> list[Trial]:
        return run_session(
            link=link,
            gate=gate,
            travel_s=travel,
            trigger=trigger,
            ask=ask,
            say=say,
            speed_mm_s=speed,
            trials=trials,
            window_s=config.serial.window_ms / 1000.0,
        )

    try:
        with wiring.open_link(config, url) as link:
            wiring.configure_link(link, config)
            if trigger_kind == "enter":
                done = session(link, enter_trigger(ask, time.monotonic))
            else:
                done = _camera_session(config, camera, lambda t: session(link, t))
    except SorterError:
        raise
    except Exception as err:  # firmware_bridge's LinkError names the port
        raise ConfigError(f"controller {url}: {err}") from err
    return [t.error_ms for t in done if t.error_ms is not None]


def _camera_session(
    config: Config, camera: int | None, session: Callable[[Trigger], list[Trial]]
) -> list[Trial]:
    """The session with the camera trigger: the [camera] settings, [locate] and [track]."""
    from sorter.perception.sources import CameraSource

    cam = config.camera
    locator = wiring.make_locator(config)
    tracker = wiring.make_tracker(config, (cam.width, cam.height))
    index = cam.index if camera is None else camera
    with CameraSource(index, wiring.camera_settings(config)) as source:
        return session(camera_trigger(iter(source), locator.locate, tracker, timeout_s=120.0))
