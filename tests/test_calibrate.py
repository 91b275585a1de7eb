"""Gate-timing calibration: the arithmetic, the targeted config edit, the session, the command."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from sorter.cli import app
from sorter.config import example_toml, load_config, parse_config
from sorter.errors import ConfigError
from sorter.ops.calibration import (
    arrival_errors_ms,
    error_ms_from_report,
    propose_offset,
    run_session,
    set_gate_offset,
    write_gate_offset,
)


@pytest.mark.parametrize(
    ("report", "expected"),
    [
        ("30mm", 150.0),  # 30 mm short of the gate at 200 mm/s: fired 150 ms early
        ("-20 mm", -100.0),
        ("+15ms", 15.0),
        ("-10ms", -10.0),
        ("0.02s", 20.0),
        ("ok", 0.0),
        ("HIT", 0.0),
        ("", None),
        ("skip", None),
    ],
)
def test_error_from_operator_report(report: str, expected: float | None) -> None:
    got = error_ms_from_report(report, speed_mm_s=200.0)
    assert got == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize("report", ["early", "30", "30 inches", "mm"])
def test_unreadable_report_says_what_to_type(report: str) -> None:
    with pytest.raises(ValueError, match="30mm"):
        error_ms_from_report(report, 200.0)


def test_arrival_errors_from_a_second_detection() -> None:
    assert arrival_errors_ms([(10.0, 10.012), (11.0, 10.995)]) == pytest.approx([12.0, -5.0])


def test_propose_offset_takes_the_median_and_ignores_one_slipped_marker() -> None:
    r = propose_offset(3, old_offset_ms=5.0, errors_ms=[12.0, 14.0, 13.0, 15.0, 90.0])
    assert r.correction_ms == pytest.approx(14.0)
    assert r.new_offset_ms == pytest.approx(19.0)
    assert r.spread_ms == pytest.approx(1.0)
    assert r.trusted and r.note == ""
    assert r.n == 5


def test_propose_offset_distrusts_few_or_scattered_trials() -> None:
    few = propose_offset(0, 0.0, [20.0, 22.0])
    assert not few.trusted and "only 2 trial" in few.note
    scattered = propose_offset(0, 0.0, [-40.0, 0.0, 45.0, 80.0], tolerance_ms=10.0)
    assert not scattered.trusted and "disagree" in scattered.note
    none = propose_offset(0, 7.0, [])
    assert none.n == 0 and none.new_offset_ms == 7.0 and not none.trusted


def test_propose_offset_is_clamped_to_the_config_range() -> None:
    r = propose_offset(1, 9990.0, [50.0, 50.0, 50.0])
    assert r.new_offset_ms == 10000.0 and not r.trusted and "clamped" in r.note


CONFIG = """\
# my farm's sorter
[belt]
speed_mm_s = 250.0   # measured with a stopwatch

[gates.0]
bin = "2L"
distance_mm = 300.0
offset_ms = 0.0  # calibrated 2026-05-01

[gates.1]
bin = "L"
distance_mm = 400.0
# no offset yet

[gates.10]
bin = "C"
distance_mm = 900.0

[bins.grades]
2L = "2L"
L = "L"
C = "C"
"""


def test_set_gate_offset_replaces_only_that_value_and_keeps_comments() -> None:
    out = set_gate_offset(CONFIG, 0, 12.345)
    before, after = CONFIG.splitlines(), out.splitlines()
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert changed == [
        ("offset_ms = 0.0  # calibrated 2026-05-01", "offset_ms = 12.3  # calibrated 2026-05-01")
    ]
    assert parse_config(out).gates["0"].offset_ms == pytest.approx(12.3)


def test_set_gate_offset_inserts_the_key_after_the_tables_last_key() -> None:
    out = set_gate_offset(CONFIG, 1, -7.0)
    config = parse_config(out)
    assert config.gates["1"].offset_ms == -7.0
    assert config.gates["10"].offset_ms == 0.0  # [gates.10] is not [gates.1]
    lines = out.splitlines()
    i = lines.index("distance_mm = 400.0")
    assert lines[i + 1] == "offset_ms = -7.0"
    assert lines[i + 2] == "# no offset yet"
    assert len(lines) == len(CONFIG.splitlines()) + 1
    last = set_gate_offset(CONFIG, 10, 3.0)  # the table at the end of a section
    assert parse_config(last).gates["10"].offset_ms == 3.0


def test_set_gate_offset_on_the_generated_example_and_crlf() -> None:
    text = example_toml()
    out = set_gate_offset(text, 4, 21.5)
    assert parse_config(out).gates["4"].offset_ms == 21.5
    assert len(out.splitlines()) == len(text.splitlines())
    crlf = CONFIG.replace("\n", "\r\n")
    out_crlf = set_gate_offset(crlf, 1, 2.0)
    assert "\r\noffset_ms = 2.0\r\n" in out_crlf and "\n\n" not in out_crlf.replace("\r\n", "")


def test_set_gate_offset_refuses_an_unknown_gate() -> None:
    with pytest.raises(ConfigError, match=r"no \[gates.7\] table"):
        set_gate_offset(CONFIG, 7, 1.0, "sorter.toml")


def test_write_gate_offset_keeps_the_file_mode(tmp_path: Path) -> None:
    path = tmp_path / "sorter.toml"
    path.write_text(CONFIG)
    path.chmod(0o640)
    write_gate_offset(path, 1, 33.3)
    assert load_config(path).gates["1"].offset_ms == pytest.approx(33.3)
    assert path.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["sorter.toml"]  # no temp file left


class _Command:
    def __init__(self, status: str) -> None:
        self.status = status

    def wait(self, timeout: float | None = None) -> str:
        return self.status


class _Link:
    """A stand-in with ControllerLink's sort() shape, recording what it was asked."""

    def __init__(self, statuses: list[str]) -> None:
        self.statuses = statuses
        self.sent: list[dict[str, Any]] = []

    def sort(self, *, item: int, gate: int, fire_at: float, window_s: float) -> _Command:
        self.sent.append({"item": item, "gate": gate, "fire_at": fire_at})
        return _Command(self.statuses[len(self.sent) - 1])


def test_session_fires_the_gate_per_trial_and_collects_reports() -> None:
    link = _Link(["fired", "fired", "late", "fired"])
    crossings = iter([100.0, 101.0, 102.0, 103.0])
    answers = iter(["30mm", "oops", "+10ms", "ok", "skip"])
    said: list[str] = []
    trials = run_session(
        link=link,
        gate=2,
        travel_s=1.5,
        trigger=lambda: next(crossings),
        ask=lambda _prompt: next(answers),
        say=said.append,
        speed_mm_s=200.0,
        trials=4,
    )
    assert [s["fire_at"] for s in link.sent] == [101.5, 102.5, 103.5, 104.5]
    assert {s["gate"] for s in link.sent} == {2}
    assert [t.error_ms for t in trials] == [150.0, 10.0, None, None]  # late: not counted
    assert any("cannot read 'oops'" in s for s in said)
    assert any("did not fire (late)" in s for s in said)


def test_session_stops_when_the_trigger_gives_up() -> None:
    trials = run_session(
        link=_Link([]),
        gate=0,
        travel_s=1.0,
        trigger=lambda: None,
        ask=lambda _p: "ok",
        say=lambda _s: None,
        speed_mm_s=200.0,
        trials=3,
    )
    assert trials == []


runner = CliRunner()


def test_command_writes_the_offset_from_reports(tmp_path: Path) -> None:
    path = tmp_path / "sorter.toml"
    path.write_text(CONFIG)
    result = runner.invoke(
        app, ["calibrate", "1", "--config", str(path), "--errors", "25mm,+100ms,30mm", "--yes"]
    )
    assert result.exit_code == 0, result.output
    assert "offset_ms 0.0 -> 100.0" in result.output
    assert load_config(path).gates["1"].offset_ms == pytest.approx(100.0)
    assert "# no offset yet" in path.read_text()


def test_command_from_second_detection_arrivals_and_dry_run(tmp_path: Path) -> None:
    path = tmp_path / "sorter.toml"
    path.write_text(CONFIG)
    arrivals = tmp_path / "arrivals.txt"
    arrivals.write_text("# fired arrived\n1.000 1.020\n2.000 2.018\n3.0, 3.022\n")
    result = runner.invoke(
        app, ["calibrate", "0", "-c", str(path), "--arrivals", str(arrivals), "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert "offset_ms 0.0 -> 20.0" in result.output
    assert path.read_text() == CONFIG  # dry run: untouched


def test_command_refuses_untrusted_results_without_yes(tmp_path: Path) -> None:
    path = tmp_path / "sorter.toml"
    path.write_text(CONFIG)
    result = runner.invoke(app, ["calibrate", "0", "-c", str(path), "--errors", "20ms"])
    assert result.exit_code == 1
    assert "not written" in result.output and path.read_text() == CONFIG


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["calibrate", "5", "--errors", "1ms"], "no [gates.5]"),
        (["calibrate", "0", "--errors", "soon"], "--errors: cannot read 'soon'"),
    ],
)
def test_command_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    path = tmp_path / "sorter.toml"
    path.write_text(CONFIG)
    result = runner.invoke(app, [*args, "-c", str(path)])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and message in result.output
    assert "Traceback" not in result.output


def test_command_with_a_missing_config_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["calibrate", "0", "-c", str(tmp_path / "none.toml")])
    assert result.exit_code == 2
    assert "config file not found" in result.output


def test_session_against_the_simulated_controller() -> None:
    import time

    from firmware_bridge.link import ControllerLink

    answers = iter(["10mm", "12mm", "8mm"])
    with ControllerLink("sim://?gates=4") as link:
        link.configure(4, 40)
        trials = run_session(
            link=link,
            gate=3,
            travel_s=0.2,  # enough lead for a loaded machine
            trigger=time.monotonic,
            ask=lambda _p: next(answers),
            say=lambda _s: None,
            speed_mm_s=200.0,
            trials=3,
        )
    assert [t.status for t in trials] == ["fired"] * 3
    result = propose_offset(3, 0.0, [t.error_ms for t in trials if t.error_ms is not None])
    assert result.new_offset_ms == pytest.approx(50.0) and result.trusted


def test_camera_trigger_reports_when_the_marker_crosses_the_line() -> None:
    import numpy as np

    from sorter.config import Config, apply_overrides
    from sorter.ops.calibration import camera_trigger
    from sorter.perception.sources import Frame
    from sorter.runtime.wiring import make_locator, make_tracker

    config = apply_overrides(Config(), {"locate.method": "color", "belt.decision_line": 0.5})
    fps, speed_px_s = 20.0, 200.0

    def frames() -> Iterator[Frame]:
        for i in range(60):
            t = i / fps
            img = np.full((240, 320, 3), (230, 120, 40), np.uint8)  # orange belt
            x = round(-40 + speed_px_s * t)  # a 60 px green marker entering from the left
            if x + 60 > 0:
                img[90:150, max(0, x) : max(0, x + 60)] = (40, 180, 60)
            yield Frame(i, t, img)

    locator = make_locator(config)
    tracker = make_tracker(config, (320, 240))
    trigger = camera_trigger(frames(), locator.locate, tracker, timeout_s=30.0)
    t_line = trigger()
    # the centre (x + 30) reaches the line at x = 130: t = (130 + 40) / 200 = 0.85 s
    assert t_line == pytest.approx(0.85, abs=0.06)
    assert trigger() is None  # the stream ended without another crossing


def test_command_guided_session_with_enter_trigger_on_the_simulator(tmp_path: Path) -> None:
    path = tmp_path / "sorter.toml"
    path.write_text(CONFIG.replace("distance_mm = 400.0", "distance_mm = 50.0"))  # 0.2 s
    # per trial: Enter as the marker crosses, then where it was when gate 1 fired
    answers = "\n20mm\n\n25mm\n\n22.5mm\ny\n"
    result = runner.invoke(
        app,
        [
            "calibrate",
            "1",
            "-c",
            str(path),
            "--serial",
            "sim://?gates=11",
            "--trigger",
            "enter",
            "--trials",
            "3",
        ],
        input=answers,
    )
    assert result.exit_code == 0, result.output
    assert result.output.count("gate 1 fired") == 3
    # 22.5 mm at 250 mm/s = 90 ms
    assert "offset_ms 0.0 -> 90.0" in result.output
    assert load_config(path).gates["1"].offset_ms == pytest.approx(90.0)


def test_marker_session_builds_the_link_from_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """`sorter calibrate` opens the controller with the config's [serial] settings and
    sends CONFIG for every configured gate with its own pulse (runtime.wiring), and fires
    at the scheduler's travel time (distance / speed + offset)."""
    from sorter.config import apply_overrides
    from sorter.ops import calibration
    from sorter.runtime import wiring

    config = apply_overrides(
        parse_config(
            '[belt]\nspeed_mm_s = 1000.0\n[gates.0]\nbin = "A"\ndistance_mm = 250.0\n'
            'offset_ms = -50.0\npulse_ms = 30\n[gates.2]\nbin = "B"\npulse_ms = 70\n'
            '[bins]\ngrades = { A = "A", B = "B" }\n'
        ),
        {"serial.url": "sim://?gates=3", "serial.heartbeat_ms": 800, "serial.retries": 5},
    )
    opened: list[Any] = []
    configured: list[tuple[int, Any]] = []
    real_open = wiring.open_link

    def spy_open(cfg: Any, url: str | None = None, clock: Any = None) -> Any:
        link = real_open(cfg, url, clock)
        real_configure = link.configure

        def configure(n_gates: int, pulse_ms: Any = 40) -> None:
            configured.append((n_gates, list(pulse_ms)))
            real_configure(n_gates, pulse_ms)

        link.configure = configure  # type: ignore[method-assign]
        opened.append(link)
        return link

    monkeypatch.setattr(calibration.wiring, "open_link", spy_open)
    presses = iter(["", "ok", "", "+5ms"])  # Enter at the line, then the report; twice
    said: list[str] = []
    errors = calibration.marker_session(
        config,
        0,
        url=None,
        trials=2,
        trigger_kind="enter",
        camera=None,
        ask=lambda _p: next(presses),
        say=said.append,
    )
    link = opened[0]
    assert (link.url, link.options.heartbeat_s, link.options.retries) == ("sim://?gates=3", 0.8, 5)
    assert configured == [(3, [30, 1, 70])]  # gates 0..2, the gap at 1 gets 1 ms
    assert "= 200 ms" in said[0]  # 250 mm at 1000 mm/s - 50 ms offset
    assert errors == [0.0, 5.0]
    with pytest.raises(ConfigError, match="--trigger 'flash'"):
        calibration.marker_session(
            config, 0, url=None, trials=1, trigger_kind="flash", camera=None,
            ask=lambda _p: "", say=said.append,
        )  # fmt: skip
