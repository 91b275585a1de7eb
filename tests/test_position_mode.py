"""POSITION mode end to end: the controller reports (time, position) pairs in its SYNC
replies, the link maps a host time to a belt position (firmware_bridge.position), and the
loop's SORTs go out in POSITION mode and fire when the belt reaches each gate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from firmware_bridge.link import ControllerLink
from firmware_bridge.position import PositionEstimator
from sorter.config import Config, apply_overrides
from sorter.monitor.audit import DecisionLog
from sorter.monitor.status import Status
from sorter.replay.belt_sim import BeltSimConfig, simulate_belt
from sorter.replay.truth import load_truth, run_with_truth
from sorter.runtime.runner import RunOptions
from tests.test_pipeline_standins import ColourClassifier, make_dataset


def test_estimator_unwraps_and_extrapolates() -> None:
    est = PositionEstimator()
    assert est.at(0) is None
    t0 = 0xFFFFFFFF - 150_000  # the u32 microsecond clock wraps during the run
    for k in range(6):
        t = (t0 + 100_000 * k) & 0xFFFFFFFF
        est.add(t, 2_000_000_000 + 200 * k)  # 2000 ticks/s, past the i32 edge later
    assert est.ticks_per_s == pytest.approx(2000.0)
    later = (t0 + 580_000) & 0xFFFFFFFF  # 80 ms past the newest pair
    assert est.at(later) == pytest.approx(2_000_000_000 + 1160.0)
    inside = (t0 + 250_000) & 0xFFFFFFFF
    assert est.at(inside) == pytest.approx(2_000_000_000 + 500.0)
    # the controller clock jumps back 4.19 s (QEMU losing a Timer1 overflow): start over
    back = (t0 + 600_000 - 4_194_304) & 0xFFFFFFFF
    est.add(back, 2_000_000_000 + 1200)
    est.add((back + 50_000) & 0xFFFFFFFF, 2_000_000_000 + 1300)
    assert est.samples == 2
    assert est.at((back + 25_000) & 0xFFFFFFFF) == pytest.approx(2_000_000_000 + 1250.0)
    est.add((back + 40_000) & 0xFFFFFFFF, 0)  # a reordered, older reply: dropped
    assert est.samples == 2


def test_estimator_follows_a_slowing_belt_pair_by_pair_and_will_not_guess_far() -> None:
    from tests.encoder_belt import BUILTIN, EncoderBelt

    belt = EncoderBelt(BUILTIN[2])  # 2000 ticks/s, 1 s ramps to 1600 and back
    est = PositionEstimator()
    inside: list[float] = []
    ahead: list[float] = []

    def error(t: int) -> float:
        at = est.at(t)
        assert at is not None
        return abs(at - belt.position(t))

    for t in range(0, 10_000_000, 50_000):  # a pair every 50 ms, as the link asks
        est.add(t, belt.position(t))
        if t:
            inside += [error(t - 50_000 + dt) for dt in (7_000, 23_000, 41_000)]
            ahead += [error(t + dt) for dt in (30_000, 80_000)]
    worst_inside, worst_ahead = max(inside), max(ahead)
    print(f"between pairs: max {worst_inside:.2f} ticks; up to 80 ms ahead: {worst_ahead:.2f}")
    assert worst_inside <= 1.0  # whole ticks: the line between pairs is within a tick
    assert worst_ahead <= 6.0  # 80 ms ahead through a ramp: still inside a 10-tick window
    assert est.ticks_per_s == pytest.approx(2000.0, abs=5)
    assert est.at(9_950_000 + 100_001) is None  # no pair for over 0.1 s: no answer
    assert est.samples == 41  # the last 2 s


TICKS_PER_MM = 2.0


@pytest.fixture(scope="module")
def belt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pos")
    data = make_dataset(root / "data", per_grade=1)
    cfg = BeltSimConfig(seed=5, lead_in_s=0.5, count=9, items_per_second=2.0, subpixel=True)
    return Path(simulate_belt(data, root / "pos.mp4", cfg).truth)


def test_sorts_go_out_in_position_mode_and_hit_their_gates(
    belt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    truth = load_truth(belt)
    mm_s = truth["speed_px_s"] / truth["px_per_mm"]
    sent: list[dict[str, Any]] = []
    real_sort = ControllerLink.sort

    def spy(self: ControllerLink, *args: Any, **kwargs: Any) -> Any:
        sent.append(kwargs)
        return real_sort(self, *args, **kwargs)

    monkeypatch.setattr(ControllerLink, "sort", spy)
    url = f"sim://?encoder=1&ticks_per_s={mm_s * TICKS_PER_MM:.6f}"
    config = apply_overrides(
        Config(), {"serial.url": url, "belt.encoder_ticks_per_mm": TICKS_PER_MM}
    )
    opts = RunOptions(video=belt.with_suffix(".mp4"), mode="fast", classifier=ColourClassifier(),
                      handle_signals=False)  # fmt: skip
    result = run_with_truth(config, opts, DecisionLog(None), Status(), belt)
    assert len(sent) == len(truth["items"])
    assert all(k.get("position") is not None and k.get("fire_at") is None for k in sent)
    window_ms = config.serial.window_ms
    for it in truth["items"]:
        rec = min(result.records, key=lambda r: abs(r.t_line - it["t_line"]))
        assert rec.status == "fired" and rec.fired_at is not None
        distance = config.gates[str(rec.gate)].distance_mm
        error_ms = 1000.0 * (rec.fired_at - it["arrivals"][f"{distance:g}"])
        print(f"item {it['id']}: gate {rec.gate} fired {error_ms:+.3f} ms from its true arrival")
        assert abs(error_ms) <= window_ms, (it["id"], error_ms)


def test_no_encoder_means_no_position() -> None:
    from firmware_bridge.errors import LinkError

    with ControllerLink("sim://?encoder=0") as link, pytest.raises(LinkError, match="no encoder"):
        link.position_at(0.0)


def test_the_link_polls_the_position_and_will_not_guess_once_replies_stop() -> None:
    import time

    from firmware_bridge.errors import LinkError

    url = "sim://?encoder=1&ticks_per_s=2000"
    with ControllerLink(url, heartbeat_s=2.0, status_s=30.0) as link:  # no STATUS pairs
        before = link.positions.samples
        time.sleep(0.5)
        polled = link.positions.samples - before
        assert polled >= 5  # about 10 in 0.5 s (one every 50 ms), a loaded machine fewer
        t = link.clock.now() - 0.05
        assert link.position_at(t) == pytest.approx(link.positions.at(link.sync.to_controller(t)))
        with link.heartbeat_paused():  # nothing goes out: no position replies either
            time.sleep(0.4)
            stale = r"no belt position from the controller for 0\.\d\d s"
            with pytest.raises(LinkError, match=stale):
                link.position_at(link.clock.now())
    with ControllerLink("sim://?encoder=0") as link:
        time.sleep(0.3)
        assert link.positions.samples <= 5  # the handshake's SYNCs only: no polls
