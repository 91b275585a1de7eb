"""`sorter doctor`: each check alone, against the simulator and a replay source; the CLI."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from firmware_bridge import protocol as p
from firmware_bridge.framing import Deframer
from sorter.cli import app
from sorter.ops import diagnostics as d
from sorter.perception.sources import Frame

DATA = Path(__file__).parent / "data" / "classifier"
MODEL = DATA / "tiny-int8.tflite"


@pytest.fixture(scope="module")
def replay_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2 s, 20 fps belt video: what the camera check measures as a replay source."""
    path = tmp_path_factory.mktemp("doctor") / "belt.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 20.0, (160, 120))
    assert writer.isOpened()
    for i in range(40):
        frame = np.full((120, 160, 3), (20, 80, 200), np.uint8)
        cv2.rectangle(frame, (4 * i, 40), (4 * i + 30, 70), (40, 200, 40), -1)
        writer.write(frame)
    writer.release()
    return path


def test_python_version() -> None:
    assert d.check_python().state == d.OK
    old = d.check_python((3, 9, 2))
    assert old.state == d.FAIL and old.blocking and "3.11" in old.hint


def test_packages_and_litert_import() -> None:
    packages = d.check_packages()
    assert packages.state in (d.OK, d.WARN), packages
    assert "numpy 2." in packages.detail and "opencv" in packages.detail
    litert = d.check_litert()
    assert litert.state == d.OK and "ai-edge-litert" in litert.detail


def test_config_valid_missing_and_bad(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[serial]\nurl = "sim://"\n')
    check, config = d.check_config(good)
    assert check.state == d.OK and config.serial.url == "sim://"
    bad = tmp_path / "bad.toml"
    bad.write_text('[serial]\nurl = "sim://"\nbaud = 9600\n')
    check, config = d.check_config(bad)
    assert check.state == d.FAIL and "bad.toml:3" in check.detail and "serial.baud" in check.detail
    assert config.serial.url == "/dev/sorter-controller"  # defaults, so the rest can still run
    missing, _ = d.check_config(tmp_path / "none.toml")
    assert missing.state == d.FAIL and "sorter config init" in missing.detail
    assert d.check_config(None)[0].state == d.WARN


def test_model_loads_and_answers(tmp_path: Path) -> None:
    ok = d.check_model(MODEL)
    assert ok.state == d.OK, ok
    assert "3 grades" in ok.detail
    no_meta = d.check_model(DATA / "tiny-nometa.tflite")
    assert no_meta.state == d.FAIL and "metadata" in no_meta.detail.lower()
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a model")
    assert d.check_model(junk).state == d.FAIL
    assert d.check_model(tmp_path / "absent.tflite").state == d.FAIL


def test_camera_check_on_a_replay_source(replay_video: Path) -> None:
    from sorter.perception.sources import VideoSource

    check = d.check_camera(lambda: VideoSource(replay_video, realtime=True), 20.0, seconds=0.6)
    assert check.state == d.OK, check
    assert "160x120" in check.detail and "configured 20" in check.detail


class _ScriptedSource:
    """Frames on a scripted clock: each frame advances the clock by `dt`."""

    def __init__(self, clock: list[float], dt: float, n: int = 50) -> None:
        self.clock, self.dt, self.n = clock, dt, n

    def __enter__(self) -> _ScriptedSource:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __iter__(self) -> Iterator[Frame]:
        for i in range(self.n):
            self.clock[0] += self.dt
            yield Frame(i, self.clock[0], np.zeros((48, 64, 3), np.uint8))


@pytest.mark.parametrize(("dt", "state"), [(0.1, d.OK), (0.14, d.WARN), (0.3, d.FAIL)])
def test_camera_rate_against_the_configured_fps(dt: float, state: str) -> None:
    now = [0.0]
    check = d.check_camera(
        lambda: _ScriptedSource(now, dt), 10.0, seconds=2.0, clock=lambda: now[0]
    )
    assert check.state == state, check
    assert f"{1 / dt:.1f} fps" in check.detail


def test_camera_that_does_not_open_is_a_failure_with_a_hint(tmp_path: Path) -> None:
    from sorter.perception.sources import VideoSource

    check = d.check_camera(lambda: VideoSource(tmp_path / "none.mp4"), 30.0, seconds=0.2)
    assert check.state == d.FAIL and "none.mp4" in check.detail and check.hint
    empty = d.check_camera(lambda: _ScriptedSource([0.0], 0.1, n=0), 10.0)
    assert empty.state == d.FAIL and "no frame" in empty.detail


def test_controller_answers_hello_on_the_simulator() -> None:
    check = d.check_controller("sim://?gates=6", expected_gates=4)
    assert check.state == d.OK, check
    assert "protocol 1" in check.detail and "6 gates" in check.detail
    short = d.check_controller("sim://?gates=2", expected_gates=4)
    assert short.state == d.FAIL and "config has 4 gates" in short.detail


def test_controller_that_does_not_answer() -> None:
    check = d.check_controller("loop://", timeout_s=1.0)  # our own HELLO echoes back
    assert check.state == d.FAIL and check.hint


def test_missing_serial_device_names_the_port() -> None:
    check = d.check_controller("/dev/ttyDOESNOTEXIST", timeout_s=0.5)
    assert check.state == d.FAIL
    assert "/dev/ttyDOESNOTEXIST" in check.detail and "dialout" in check.hint


@contextmanager
def _controller_speaking(proto: int) -> Iterator[str]:
    """A TCP 'controller' that answers HELLO with the given protocol version."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.settimeout(0.2)
            deframer = Deframer()
            with conn:
                while not stop.is_set():
                    try:
                        data = conn.recv(256)
                    except TimeoutError:
                        continue
                    if not data:
                        break
                    for frame in deframer.feed(data):
                        if frame.type == p.MsgType.HELLO:
                            info = p.HelloInfo(frame.seq, 9, 9, 9, proto, 9, 0, 16, 1_000_000)
                            conn.sendall(p.encode(info, 0))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"socket://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


def test_controller_with_another_protocol_version_fails() -> None:
    with _controller_speaking(proto=2) as url:
        check = d.check_controller(url, timeout_s=2.0)
    assert check.state == d.FAIL
    assert "protocol 2" in check.detail and "firmware" in check.hint


def test_disk_space(tmp_path: Path) -> None:
    ok = d.check_disk([tmp_path / "logs" / "decisions.db", ""], min_free_mb=1)
    assert ok.state in (d.OK, d.WARN) and "MB free" in ok.detail
    full = d.check_disk([tmp_path / "crops"], min_free_mb=1e12)
    assert full.state == d.FAIL and full.hint
    assert d.check_disk([""]).state == d.SKIP


def test_disk_not_writable_is_reported(tmp_path: Path) -> None:
    check = d.check_disk([tmp_path / "decisions.db"], min_free_mb=1, writable=lambda _p: False)
    assert check.state == d.WARN
    assert f"{tmp_path} is not writable" in check.detail and "sudo -u sorter" in check.hint


def test_clock() -> None:
    assert d.check_clock(ntp_synchronized=lambda: True).state == d.OK
    unset = d.check_clock(wall=lambda: 0.0)
    assert unset.state == d.WARN and "1970-01-01" in unset.detail and "RTC" in unset.hint
    assert d.check_clock(ntp_synchronized=lambda: False).state == d.WARN
    backwards = iter([5.0, 4.0])
    assert d.check_clock(monotonic=lambda: next(backwards)).state == d.FAIL


runner = CliRunner()


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "sorter.toml"
    path.write_text(
        f'[model]\npath = "{MODEL}"\n\n[serial]\nurl = "sim://"\n\n'
        f'[logging]\ndb = "{tmp_path}/decisions.db"\n'
        '\n[gates.0]\nbin = "A"\n\n[bins.grades]\nA = "A"\n'
    )
    return path


def test_cli_json_against_the_simulator_and_a_replay(tmp_path: Path, replay_video: Path) -> None:
    result = runner.invoke(
        app,
        ["doctor", "-c", str(_config(tmp_path)), "--video", str(replay_video), "--seconds", "0.5"],
    )
    assert result.exit_code == 0, result.output
    assert "nothing blocks running" in result.output
    result = runner.invoke(app, ["doctor", "-c", str(_config(tmp_path)), "--no-camera", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    states = {c["name"]: c["state"] for c in report["checks"]}
    assert report["ok"] is True
    assert states["controller"] == "ok" and states["model"] == "ok" and states["camera"] == "skip"
    assert list(states) == [
        "python",
        "packages",
        "litert",
        "config",
        "model",
        "camera",
        "controller",
        "disk",
        "clock",
    ]


def test_cli_exits_1_when_something_blocks(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "doctor",
            "-c",
            str(_config(tmp_path)),
            "--no-camera",
            "--serial",
            "/dev/ttyDOESNOTEXIST",
            "--model",
            str(tmp_path / "gone.tflite"),
        ],
    )
    assert result.exit_code == 1
    assert "2 problem(s) block running: model, controller" in result.output


@pytest.mark.qemu
def test_controller_check_against_the_firmware_under_qemu() -> None:
    from firmware_bridge.emulator import qemu_controller

    with qemu_controller() as url:
        check = d.check_controller(url, expected_gates=4, timeout_s=10.0)
    assert check.state == d.OK, check
    assert "protocol 1" in check.detail and url in check.detail
