"""`sorter run` and `sorter config` on the command line: bad inputs give one-line errors
(exit 2), a replay gives a JSON summary, flags override the config file."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import cv2
import pytest
from typer.testing import CliRunner

from sorter.cli import app
from sorter.monitor.audit import read_decisions
from tests.test_pipeline_standins import make_belt

MODEL = Path(__file__).parent / "data" / "classifier" / "tiny-int8.tflite"


@pytest.fixture(scope="module")
def belt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("clibelt")
    return make_belt(root, per_grade=1, speed_px_s=800.0, items_per_second=5.0)


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["run", *args])
    return result.exit_code, result.stdout, result.stderr


def one_error_line(stderr: str) -> str:
    lines = [x for x in stderr.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_missing_video(tmp_path: Path) -> None:
    code, _, err = invoke(
        "--video", str(tmp_path / "nope.mp4"), "--dry-run", "--model", str(MODEL),
        "--db", str(tmp_path / "d.db"),
    )  # fmt: skip
    assert code == 2
    assert f"{tmp_path / 'nope.mp4'}: video file not found" in one_error_line(err)


def test_unreadable_model(tmp_path: Path, belt: tuple[Path, Path]) -> None:
    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"not a model at all")
    code, _, err = invoke("--video", str(belt[0]), "--dry-run", "--model", str(bad))
    assert code == 2
    assert str(bad) in one_error_line(err)


def test_bad_config_names_key_and_line(tmp_path: Path, belt: tuple[Path, Path]) -> None:
    cfg = tmp_path / "sorter.toml"
    cfg.write_text('[serial]\nurl = "sim://"\n\n[belt]\nspeed_mm_s = "fast"\n')
    code, _, err = invoke("--video", str(belt[0]), "--config", str(cfg), "--model", str(MODEL))
    assert code == 2
    line = one_error_line(err)
    assert line.startswith(f"error: {cfg}:5: belt.speed_mm_s: must be a number")


def test_serial_port_that_does_not_exist(tmp_path: Path, belt: tuple[Path, Path]) -> None:
    code, _, err = invoke(
        "--video", str(belt[0]), "--serial", "/dev/ttyNOPE9", "--model", str(MODEL),
        "--db", str(tmp_path / "d.db"),
    )  # fmt: skip
    assert code == 2
    assert "/dev/ttyNOPE9" in one_error_line(err)


def test_fast_needs_the_simulator(belt: tuple[Path, Path]) -> None:
    code, _, err = invoke("--video", str(belt[0]), "--fast", "--serial", "socket://127.0.0.1:9")
    assert code == 2
    assert "--fast replays on a virtual clock" in one_error_line(err)


def test_realtime_and_fast_exclude_each_other(belt: tuple[Path, Path]) -> None:
    code, _, err = invoke("--video", str(belt[0]), "--fast", "--realtime")
    assert code == 2 and "exclude each other" in one_error_line(err)


def test_missing_truth(tmp_path: Path, belt: tuple[Path, Path]) -> None:
    code, _, err = invoke(
        "--video", str(belt[0]), "--dry-run", "--model", str(MODEL),
        "--truth", str(tmp_path / "t.json"),
    )  # fmt: skip
    assert code == 2 and "truth file not found" in one_error_line(err)


def test_json_summary_and_flags_override_config(tmp_path: Path, belt: tuple[Path, Path]) -> None:
    cfg = tmp_path / "sorter.toml"
    cfg.write_text(f'[serial]\nurl = "/dev/ttyNOPE9"\n[logging]\ndb = "{tmp_path / "x.db"}"\n')
    video, truth = belt
    code, out, err = invoke(
        "--video", str(video), "--truth", str(truth), "--config", str(cfg),
        "--serial", "sim://?gates=9", "--model", str(MODEL), "--json",
        "--db", str(tmp_path / "d.db"), "--log", str(tmp_path / "d.jsonl"),
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["serial"] == "sim://?gates=9" and summary["mode"] == "fast"
    assert {"frames", "wall_s", "stages", "latency_s", "scorecard"} <= set(summary)
    card = summary["scorecard"]
    assert card["items"] == 9 and card["missed"] == 0 and card["duplicated"] == 0
    # the tiny test model's grades (long/round/bent) have no bins here: all go to reject
    assert summary["bins"] == {"reject": 9}
    assert len(read_decisions(tmp_path / "d.db")) == 9
    assert not (tmp_path / "x.db").exists()
    assert len((tmp_path / "d.jsonl").read_text().splitlines()) == 9


def test_truncated_video_keeps_what_was_decided(tmp_path: Path, belt: tuple[Path, Path]) -> None:
    # MJPG in AVI announces its frame count up front and decodes up to the cut (an mp4 whose
    # index is at the end would not open at all: that is the missing/corrupt video case)
    video, _ = belt
    full = tmp_path / "full.avi"
    cap = cv2.VideoCapture(str(video))
    writer = cv2.VideoWriter(str(full), cv2.VideoWriter.fourcc(*"MJPG"), 30.0, (640, 480))
    frames = 0
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        writer.write(bgr)
        frames += 1
    writer.release()
    cap.release()
    data = full.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) * 2 // 3])
    code, _, err = invoke(
        "--video", str(cut), "--dry-run", "--model", str(MODEL), "--db", str(tmp_path / "d.db")
    )
    rows = read_decisions(tmp_path / "d.db")
    assert code == 1
    line = one_error_line(err)
    assert str(cut) in line and "truncated" in line
    assert f"{len(rows)} decisions before it are kept" in line
    assert 1 <= len(rows) < 9


def test_config_init_and_check(tmp_path: Path) -> None:
    runner = CliRunner()
    path = tmp_path / "s.toml"
    r = runner.invoke(app, ["config", "init", str(path)])
    assert r.exit_code == 0 and path.is_file()
    r = runner.invoke(app, ["config", "init", str(path)])
    assert r.exit_code == 2 and "already exists" in r.stderr
    r = runner.invoke(app, ["config", "check", str(path)])
    assert r.exit_code == 0 and "ok" in r.stdout
    path.write_text(path.read_text().replace("retries = 3", "retries = -1"))
    r = runner.invoke(app, ["config", "check", str(path)])
    assert r.exit_code == 2
    line = one_error_line(r.stderr)
    n = next(i for i, x in enumerate(path.read_text().splitlines(), 1) if "retries = -1" in x)
    assert line.startswith(f"error: {path}:{n}: serial.retries: must be >= 0")


def test_dashboard_serves_the_running_loop(tmp_path: Path, belt: tuple[Path, Path]) -> None:
    from firmware_bridge.emulator import free_port
    from sorter.commands.run import start_dashboard
    from sorter.config import Config
    from sorter.monitor.audit import DecisionLog
    from sorter.monitor.status import Status
    from sorter.runtime.runner import RunOptions, run
    from tests.test_pipeline_standins import ColourClassifier

    status = Status()
    server = start_dashboard(Config(), status, f"127.0.0.1:{free_port()}")
    seen: list[dict[str, object]] = []

    def progress(st: Status) -> None:
        if st.frames in (30, 75):
            with urllib.request.urlopen(f"{server.url.rstrip('/')}/api/status") as resp:
                seen.append(json.loads(resp.read()))

    try:
        run(
            Config(),
            RunOptions(
                video=belt[0], dry_run=True, classifier=ColourClassifier(), progress=progress,
                handle_signals=False,
            ),
            DecisionLog(tmp_path / "d.db"),
            status,
        )  # fmt: skip
    finally:
        server.stop()
    assert [s["frames"] for s in seen] == [30, 75]
    assert seen[1]["items"] > seen[0]["items"]  # type: ignore[operator]


def test_camera_comes_from_the_config_and_flags_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service runs `sorter run --config FILE`: the camera index and [camera] settings
    come from the file; --camera overrides the index (and a video/images flag the camera)."""
    import sorter.runtime.runner
    from sorter.errors import SourceError

    asked: list[dict[str, Any]] = []

    def fake_open_source(**kw: Any) -> Any:
        asked.append(kw)
        raise SourceError("camera stand-in: stop here")

    monkeypatch.setattr(sorter.runtime.runner, "open_source", fake_open_source)
    cfg = tmp_path / "sorter.toml"
    cfg.write_text(
        "[camera]\nindex = 3\nwidth = 320\nheight = 240\nfps = 15.0\n"
        f'backend = "opencv"\nstall_s = 1.0\n[logging]\ndb = "{tmp_path / "d.db"}"\n'
    )
    base = ("--config", str(cfg), "--model", str(MODEL), "--dry-run")
    for extra, want in (((), 3), (("--camera", "5"), 5), (("--camera", "/dev/video7"), None)):
        code, _, err = invoke(*base, *extra)
        assert code == 2 and "camera stand-in" in one_error_line(err)
        kw = asked.pop()
        assert kw["camera"] == (want if want is not None else "/dev/video7")
        settings = kw["camera_settings"]
        assert settings.size == (320, 240) and settings.fps == 15.0
        assert settings.backend == "opencv" and settings.read_timeout_s >= 5.0
    code, _, err = invoke(*base, "--video", str(tmp_path / "none.mp4"))
    assert code == 2 and asked.pop()["camera"] is None
