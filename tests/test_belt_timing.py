"""Gates timed by the belt itself: the speed profile of the simulated belt and its truth,
the odometer and the held SORTs of `[belt] timing = "measured"`, the belt-speed metrics and
alarm, and a belt that slows by 20% mid-run scored against its true gate arrivals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from firmware_bridge.clock import VirtualClock
from firmware_bridge.command import Fate
from sorter.actuation.scheduling import BeltOdometer, Scheduler
from sorter.cli import app
from sorter.config import Config, apply_overrides, parse_config
from sorter.errors import ConfigError
from sorter.monitor.audit import DecisionLog
from sorter.monitor.status import Status
from sorter.replay.belt_sim import BeltSimConfig, simulate_belt
from sorter.replay.speed_profile import SpeedProfile
from sorter.replay.truth import load_truth, run_with_truth
from sorter.runtime.runner import RunOptions
from tests.test_pipeline_standins import ColourClassifier, make_dataset
from tests.test_scheduling import RecordingLink

DIP = "0:1,2.5:1,3.5:0.8,5:0.8,6:1"
"""20% slower from 3.5 s to 5 s (one-second ramps either side)."""


def test_profile_travel_and_its_inverse() -> None:
    p = SpeedProfile.parse(DIP)
    assert p.factor(1.0) == 1.0 and p.factor(3.0) == pytest.approx(0.9)
    assert p.factor(4.0) == pytest.approx(0.8) and p.factor(9.0) == 1.0
    # 2.5 s at full speed, the ramp (0.9 on average), 1.5 s at 0.8, the ramp back, then full
    assert p.integral(2.5) == pytest.approx(2.5)
    assert p.integral(7.0) == pytest.approx(2.5 + 0.9 + 1.2 + 0.9 + 1.0)
    for t in (0.3, 3.2, 4.4, 5.5, 8.0):
        assert p.time_at(p.integral(t)) == pytest.approx(t, abs=1e-9)
    assert SpeedProfile.parse("").integral(3.0) == 3.0


@pytest.mark.parametrize("bad", ["1-0.8", "0:1,0:0.8", "0:0", "0:nan", "a:b"])
def test_a_bad_profile_says_how_to_write_one(bad: str) -> None:
    with pytest.raises(ConfigError, match="--speed-profile"):
        SpeedProfile.parse(bad)


def test_odometer_follows_a_belt_that_slows_down() -> None:
    odo = BeltOdometer(200.0)
    assert odo.arrival(100.0, 0.0) == pytest.approx(0.5)  # configured speed before readings
    pos = 0.0
    for k in range(1, 61):  # 2 s at 30 fps: 200 mm/s, then 160 mm/s from 1 s on
        t = k / 30
        pos += (200.0 if t <= 1.0 else 160.0) / 30
        odo.observe(t, pos)
    assert odo.speed_mm_s == pytest.approx(160.0, rel=1e-6)
    assert odo.arrival(pos + 80.0, 2.0) == pytest.approx(2.5)


def test_odometer_speed_does_not_lag_a_ramp() -> None:
    """On a belt slowing steadily (200 -> 160 mm/s over 1 s) the speed is the speed now, not
    half a fitting window ago, so a gate 100 ms ahead is predicted to about a millisecond."""
    odo = BeltOdometer(200.0)
    speed = lambda t: 200.0 - 40.0 * t  # noqa: E731
    travel = lambda t: 200.0 * t - 20.0 * t * t  # noqa: E731
    for k in range(1, 19):  # 0.6 s at 30 fps
        odo.observe(k / 30, travel(k / 30))
    assert odo.speed_mm_s == pytest.approx(speed(0.6), abs=0.1)
    ahead = travel(0.7)  # where the belt is 100 ms later
    assert abs(odo.arrival(ahead, 0.6) - 0.7) < 0.0015  # a lagging speed: ~4.5 ms


MEASURED = """
[belt]
speed_mm_s = 200.0
timing = "measured"
send_ahead_ms = 100.0
[bins.grades]
A = "A"
[gates.0]
bin = "A"
distance_mm = 200.0
"""


def test_measured_timing_holds_each_sort_until_its_gate_is_near() -> None:
    config = parse_config(MEASURED)
    clock = VirtualClock()
    link = RecordingLink()
    sched = Scheduler(config, clock, link)  # type: ignore[arg-type]
    fates: list[Any] = []
    s = sched.schedule(7, 0, t_line=0.0, on_done=fates.append)
    assert s.status == Fate.PENDING and s.fire_at == pytest.approx(1.0) and not link.sent
    pos = 0.0
    for k in range(1, 40):  # the belt runs at 160 mm/s, not the configured 200
        t = k / 30
        pos += 160.0 / 30
        sched.observe_travel(t, pos)
        clock.set(t)
        sched.tick(t)
        if link.sent:
            break
    assert len(link.sent) == 1 and not sched.held
    item, gate, fire_at, _ = link.sent[0]
    assert (item, gate) == (7, 0)
    assert fire_at == pytest.approx(1.25, abs=0.002)  # 200 mm at 160 mm/s
    assert fire_at - clock.now() <= 0.1 + 1e-9  # sent send_ahead_ms before the gate


def test_a_held_sort_that_became_too_late_is_late_not_fired() -> None:
    config = parse_config(MEASURED)
    clock = VirtualClock()
    link = RecordingLink()
    sched = Scheduler(config, clock, link)  # type: ignore[arg-type]
    fates: list[Any] = []
    sched.schedule(3, 0, t_line=0.0, on_done=fates.append)
    clock.set(0.99)  # the host stalled until the item had all but reached its gate
    sched.tick(0.99)
    assert not link.sent and len(fates) == 1 and fates[0].status == Fate.LATE


def test_send_ahead_must_exceed_the_safety_margin() -> None:
    with pytest.raises(ConfigError, match=r"belt\.send_ahead_ms"):
        parse_config(MEASURED.replace("send_ahead_ms = 100.0", "send_ahead_ms = 20.0"))


def test_belt_speed_on_metrics_and_the_alarm() -> None:
    status = Status()
    status.belt_speed(196.0, 200.0, 0.05)
    text = _metrics(status)
    assert "sorter_belt_speed_mm_s 196.0" in text
    assert "sorter_belt_speed_configured_mm_s 200.0" in text
    assert not status.snapshot()["alarms"]
    status.belt_speed(160.0, 200.0, 0.05)
    alarms = status.snapshot()["alarms"]
    assert [a["kind"] for a in alarms] == ["belt_speed"] and "20% off" in alarms[0]["text"]
    status.belt_speed(191.0, 200.0, 0.05)  # 4.5% off: above 0.8 x the tolerance, still raised
    assert status.snapshot()["alarms"]
    status.belt_speed(199.0, 200.0, 0.05)
    assert not status.snapshot()["alarms"]
    assert status.snapshot()["belt"] == {"speed_mm_s": 199.0, "configured_mm_s": 200.0}


def _metrics(status: Status) -> str:
    from prometheus_client import generate_latest

    return generate_latest(status.registry).decode()


@pytest.fixture(scope="module")
def dip_belt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dip")
    data = make_dataset(root / "data", per_grade=2)
    cfg = BeltSimConfig(
        seed=3, lead_in_s=0.5, count=16, items_per_second=2.0, subpixel=True, speed_profile=DIP
    )
    return Path(simulate_belt(data, root / "dip.mp4", cfg).truth)


def _gate_errors_ms(truth_path: Path, timing: str, angle_deg: float = 0.0) -> list[float]:
    over = {"serial.url": "sim://", "belt.timing": timing, "lens.belt_angle_deg": angle_deg}
    config = apply_overrides(Config(), over)
    opts = RunOptions(
        video=truth_path.with_suffix(".mp4"),
        mode="fast",
        classifier=ColourClassifier(),
        handle_signals=False,
    )
    result = run_with_truth(config, opts, DecisionLog(None), Status(), truth_path)
    truth = load_truth(truth_path)
    errors = []
    for it in truth["items"]:
        rec = min(result.records, key=lambda r: abs(r.t_line - it["t_line"]))
        assert rec.status == Fate.FIRED and rec.gate is not None and rec.fired_at is not None
        distance = config.gates[str(rec.gate)].distance_mm
        errors.append(1000.0 * (rec.fired_at - it["arrivals"][f"{distance:g}"]))
    return errors


def test_the_truth_carries_each_items_gate_arrivals(dip_belt: Path) -> None:
    truth = load_truth(dip_belt)
    assert truth["speed_profile"] == [list(p) for p in SpeedProfile.parse(DIP).points]
    p = SpeedProfile.parse(DIP)
    for it in truth["items"]:
        t_line, arrivals = it["t_line"], it["arrivals"]
        assert set(arrivals) == {f"{200 + 100 * i:g}" for i in range(9)}
        # the belt between the line and a gate: distance_mm * px_per_mm at the profile
        moved = (p.integral(arrivals["500"]) - p.integral(t_line)) * truth["speed_px_s"]
        assert moved == pytest.approx(500 * truth["px_per_mm"], abs=1e-3)


def test_measured_timing_hits_every_gate_on_a_belt_that_slows(dip_belt: Path) -> None:
    window_ms = Config().serial.window_ms
    measured = _gate_errors_ms(dip_belt, "measured")
    configured = _gate_errors_ms(dip_belt, "configured")
    assert len(measured) == 16
    assert max(abs(e) for e in measured) <= window_ms, measured
    # the configured speed fires the items that travel in the slow stretch early
    assert max(abs(e) for e in configured) > 10 * window_ms, configured


@pytest.fixture(scope="module")
def tilted_belt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The slowing belt seen by a camera turned 5 degrees to it."""
    root = tmp_path_factory.mktemp("tilted")
    data = make_dataset(root / "data", per_grade=2)
    cfg = BeltSimConfig(
        seed=3,
        lead_in_s=0.5,
        count=16,
        items_per_second=2.0,
        subpixel=True,
        speed_profile=DIP,
        belt_angle_deg=5.0,
    )
    return Path(simulate_belt(data, root / "tilted.mp4", cfg).truth)


def test_a_belt_at_an_angle_times_its_gates_along_itself(tilted_belt: Path) -> None:
    """With the belt's angle ([lens] belt_angle_deg, as calibrate-camera measures it) every
    gate fires inside its window; read along the image's x axis the belt seems cos(5 deg)
    slower and the gates fire late."""
    window_ms = Config().serial.window_ms
    truth = load_truth(tilted_belt)
    assert truth["belt_angle_deg"] == 5.0
    along = _gate_errors_ms(tilted_belt, "measured", angle_deg=5.0)
    across = _gate_errors_ms(tilted_belt, "measured", angle_deg=0.0)
    assert len(along) == len(across) == 16
    assert max(abs(e) for e in along) <= window_ms, along
    assert abs(sum(along) / 16) < 1.0, along
    assert sum(across) / 16 > 2.0, across  # late by about the distance x 0.38%


def test_a_tilted_belts_truth_moves_at_its_angle(tilted_belt: Path, tmp_path: Path) -> None:
    import math

    for it in load_truth(tilted_belt)["items"]:
        (_, x0, y0), (_, x1, y1) = it["centres"][0], it["centres"][-1]
        assert math.degrees(math.atan2(y1 - y0, x1 - x0)) == pytest.approx(5.0, abs=1e-6)
    data = make_dataset(tmp_path / "data", per_grade=1)
    out = CliRunner().invoke(
        app, ["simulate-belt", str(data), str(tmp_path / "b.mp4"), "--belt-angle", "40"]
    )
    assert out.exit_code == 2 and "--belt-angle 40" in out.output


def test_simulate_belt_cli_rejects_a_bad_profile(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", per_grade=1)
    out = CliRunner().invoke(
        app, ["simulate-belt", str(data), str(tmp_path / "b.mp4"), "--speed-profile", "0:1,1"]
    )
    assert out.exit_code == 2 and "--speed-profile" in out.output and "TIME:FACTOR" in out.output
