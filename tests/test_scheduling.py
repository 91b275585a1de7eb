"""Scheduling: fire time from geometry, the safety margin, dry run, rejects, timeline."""

from __future__ import annotations

from typing import Any

import pytest

from firmware_bridge.clock import VirtualClock
from firmware_bridge.errors import LinkError
from sorter.actuation.scheduling import Scheduler, Timeline
from sorter.config import parse_config


class RecordingLink:
    """Stand-in for ControllerLink.sort: records what would be sent."""

    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[int, int, float, float]] = []
        self.fail = fail

    def sort(
        self,
        item: int,
        gate: int,
        fire_at: float | None = None,
        window_s: float = 0.005,
        *,
        position: int | None = None,
        window_ticks: int = 0,
    ) -> Any:
        if self.fail:
            raise LinkError("sim://: link lost")
        if position is not None:
            self.sent.append((item, gate, float(position), float(window_ticks)))
        else:
            assert fire_at is not None
            self.sent.append((item, gate, fire_at, window_s))
        return _Cmd()


class EncoderLink(RecordingLink):
    """A link that knows the belt position: 1000 ticks at host time 0, 2000 ticks/s."""

    def position_at(self, t_host: float) -> float:
        return 1000.0 + 2000.0 * t_host


class _Cmd:
    status = "pending"

    def __init__(self) -> None:
        self.callbacks: list[Any] = []

    def add_done_callback(self, fn: Any) -> None:
        self.callbacks.append(fn)


CONFIG = """
[belt]
speed_mm_s = 500
[serial]
safety_margin_ms = 30
window_ms = 4
[gates.0]
bin = "2L"
distance_mm = 250
offset_ms = 10
[gates.1]
bin = "M"
distance_mm = 500
[bins.grades]
2L = "2L"
M = "M"
"""


def test_fire_time_is_distance_over_speed_plus_offset() -> None:
    s = Scheduler(parse_config(CONFIG), VirtualClock(), RecordingLink())
    assert s.fire_time(0, 10.0) == pytest.approx(10.0 + 0.5 + 0.010)
    assert s.fire_time(1, 10.0) == pytest.approx(11.0)


def test_sends_sort_on_the_host_timeline() -> None:
    clock, link = VirtualClock(100.0), RecordingLink()
    s = Scheduler(parse_config(CONFIG), clock, link, timeline=Timeline(offset=95.0))
    done: list[Any] = []
    out = s.schedule(7, 1, t_line=5.0, on_done=done.append)
    assert out.status == "pending" and out.fire_at == pytest.approx(6.0)
    assert link.sent == [(7, 1, pytest.approx(101.0), pytest.approx(0.004))]
    assert out.command.callbacks == [done.append]


def test_too_late_is_not_sent() -> None:
    clock, link = VirtualClock(0.0), RecordingLink()
    s = Scheduler(parse_config(CONFIG), clock, link)
    clock.set(1.0 - 0.029)  # fire at 1.0: 29 ms ahead, under the 30 ms margin
    out = s.schedule(1, 1, t_line=0.0)
    assert out.status == "late" and link.sent == []
    clock2 = VirtualClock(1.0 - 0.031)
    assert Scheduler(parse_config(CONFIG), clock2, link).schedule(2, 1, 0.0).status == "pending"


def test_dry_run_and_rejects_send_nothing() -> None:
    link = RecordingLink()
    s = Scheduler(parse_config(CONFIG), VirtualClock(), link, dry_run=True)
    out = s.schedule(3, 0, t_line=1.0)
    assert out.status == "dry-run" and out.fire_at == pytest.approx(1.51)
    rej = s.schedule(4, None, t_line=1.0)
    assert (rej.status, rej.fire_at, rej.gate) == ("rejected", None, None)
    assert link.sent == []


def test_link_error_means_timeout_not_a_crash() -> None:
    s = Scheduler(parse_config(CONFIG), VirtualClock(), RecordingLink(fail=True))
    assert s.schedule(5, 1, t_line=1.0).status == "timeout"


def test_timeline_round_trip() -> None:
    tl = Timeline(offset=12.5)
    assert tl.to_source(tl.to_host(3.25)) == pytest.approx(3.25)


def test_encoder_schedules_by_belt_position() -> None:
    # 4 ticks/mm at 500 mm/s = 2000 ticks/s; gate 1 is 500 mm = 2000 ticks past the line
    config = parse_config(CONFIG)
    config.belt.encoder_ticks_per_mm = 4.0
    link = EncoderLink()
    out = Scheduler(config, VirtualClock(0.0), link).schedule(9, 1, t_line=0.5)
    assert out.status == "pending"
    # line crossed at 0.5 s -> 2000 ticks; + 2000 ticks to the gate; window 4 ms = 8 ticks
    assert link.sent == [(9, 1, 4000.0, 8.0)]
    # a plain link cannot map time to position: timed from the speed instead
    plain = RecordingLink()
    Scheduler(config, VirtualClock(0.0), plain).schedule(9, 1, t_line=0.5)
    assert plain.sent == [(9, 1, pytest.approx(1.5), pytest.approx(0.004))]
