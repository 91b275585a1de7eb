"""Packhouse lanes: a lane id in the config goes into every decision record, every /metrics
series and every crop's name; two lanes replay belts at once, each against its own simulated
controller, and keep separate logs, metrics and crops; the template unit verifies."""

from __future__ import annotations

import http.client
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import Counter, generate_latest
from typer.testing import CliRunner

from firmware_bridge.emulator import free_port
from sorter.cli import app
from sorter.config import parse_config
from sorter.errors import ConfigError
from sorter.monitor.audit import DecisionLog, DecisionRecord, read_decisions
from sorter.monitor.status import Status
from tests.test_pipeline_standins import make_belt

REPO = Path(__file__).resolve().parents[1]
MODEL = Path(__file__).parent / "data" / "classifier" / "tiny-int8.tflite"
TEMPLATE = REPO / "deploy" / "produce-sorter@.service"


@pytest.mark.parametrize("lane", ["1", "east-2", "L_3", "a" * 16])
def test_lane_ids_that_are_accepted(lane: str) -> None:
    assert parse_config(f'[lane]\nid = "{lane}"\n').lane.id == lane


@pytest.mark.parametrize("lane", ["a b", "../1", "-1", "é", "a" * 17, "1/2", 'x"y'])
def test_lane_ids_that_are_refused_name_the_key_and_line(lane: str) -> None:
    text = "[camera]\nfps = 30\n[lane]\nid = " + json.dumps(lane) + "\n"
    with pytest.raises(ConfigError, match=r"^lane\.toml:4: lane\.id: must be 1-16 letters"):
        parse_config(text, "lane.toml")


def _record(item: int, confidence: float = 0.9) -> DecisionRecord:
    return DecisionRecord(
        item=item, t_line=1.0 * item, label="M", confidence=confidence, scores=[0.1, 0.9],
        bin="M", gate=3, fire_at=2.0, status="fired",
    )  # fmt: skip


def test_lane_goes_into_every_record_and_crop_name(tmp_path: Path) -> None:
    log = DecisionLog(
        tmp_path / "d.db", jsonl_path=tmp_path / "d.jsonl", crops_dir=tmp_path / "crops",
        run="r7", lane="2",
    )  # fmt: skip
    log.open()
    crop = np.zeros((8, 8, 3), np.uint8)
    log.record(_record(1), crop)
    log.record(_record(2, confidence=0.3), crop)
    log.close()
    rows = read_decisions(tmp_path / "d.db")
    assert [r["lane"] for r in rows] == ["2", "2"]
    lines = [json.loads(x) for x in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert [x["lane"] for x in lines] == ["2", "2"]
    assert Path(rows[0]["crop"]) == tmp_path / "crops" / "M" / "2_r7_1.png"
    assert Path(rows[1]["crop"]) == tmp_path / "crops" / "_review" / "M" / "2_r7_2.png"
    assert (tmp_path / "crops" / "M" / "2_r7_1.png").is_file()


def test_without_a_lane_names_and_columns_stay_as_before(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path / "d.db", crops_dir=tmp_path / "crops", run="r")
    log.open()
    log.record(_record(1), np.zeros((8, 8, 3), np.uint8))
    log.close()
    (row,) = read_decisions(tmp_path / "d.db")
    assert row["lane"] is None and Path(row["crop"]).name == "r_1.png"


def test_every_series_carries_the_lane_label_even_ones_added_later() -> None:
    st = Status(url="sim://", lane="3")
    st.frame_in()
    st.frame_dropped(2)
    st.decided({"item": 1, "bin": "L", "label": "L"}, 0.01)
    st.fate(1, "fired")
    st.set_link("connected", safe=False)
    late = Counter("sorter_added_later", "A metric another part registers", registry=st.registry)
    late.inc()
    text = generate_latest(st.registry).decode()
    samples = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert samples and all('lane="3"' in ln for ln in samples), text
    assert 'sorter_items_total{bin="L",grade="L",lane="3"} 1.0' in text
    assert 'sorter_frames_dropped_total{lane="3"} 2.0' in text
    assert 'sorter_added_later_total{lane="3"} 1.0' in text
    assert st.registry.get_sample_value("sorter_link_up", {"lane": "3"}) == 1.0
    assert st.snapshot()["lane"] == "3"
    assert "lane=" not in generate_latest(Status().registry).decode()


def test_config_init_writes_a_lane_config(tmp_path: Path) -> None:
    path = tmp_path / "2.toml"
    r = CliRunner().invoke(
        app, ["config", "init", str(path), "--lane", "2", "--camera", "1", "--port", "8082"]
    )
    assert r.exit_code == 0, r.output
    c = parse_config(path.read_text(), str(path))
    assert (c.lane.id, c.camera.index, c.dashboard.port, c.dashboard.enabled) == (
        "2", 1, 8082, True
    )  # fmt: skip
    assert c.logging.db == "/var/lib/produce-sorter/2/decisions.db"
    assert c.logging.crops_dir == "/var/lib/produce-sorter/2/crops"
    r = CliRunner().invoke(app, ["config", "init", "--lane", "../2"])
    assert r.exit_code == 2 and r.stderr.startswith("error: command line: lane.id: must be")


def test_template_unit_verifies_per_lane(tmp_path: Path) -> None:
    text = TEMPLATE.read_text()
    assert (
        "ExecStart=/opt/produce-sorter/venv/bin/sorter run --config /etc/produce-sorter/%i.toml"
        in text
    )
    for key in ("StateDirectory", "LogsDirectory", "WorkingDirectory"):
        assert re.search(rf"(?m)^{key}=\S*produce-sorter/%i$", text), key
    assert re.search(r"(?m)^SyslogIdentifier=produce-sorter@%i$", text)
    assert re.search(r"(?m)^ReadWritePaths=/var/lib/produce-sorter/%i ", text)
    unit = tmp_path / "produce-sorter@.service"
    unit.write_text(re.sub(r"(?m)^ExecStart=\S+", "ExecStart=/bin/true", text))
    for name in ("produce-sorter@.service", "produce-sorter@1.service", "produce-sorter@2.service"):
        result = subprocess.run(
            ["systemd-analyze", "verify", str(tmp_path / name)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "produce-sorter@" not in result.stderr, result.stderr
    # the same check notices a broken unit (it is not vacuous)
    unit.write_text(unit.read_text().replace("Type=notify", "Type=notifyy"))
    bad = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "produce-sorter@1.service")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "Failed to parse service type" in bad.stderr


# --------------------------------------------------------------------------------------
# Two lanes at once


def _lane_config(root: Path, lane: str, port: int) -> Path:
    path = root / f"{lane}.toml"
    path.write_text(
        f'[lane]\nid = "{lane}"\n'
        f'[logging]\ndb = "{root / lane / "decisions.db"}"\n'
        f'jsonl = "{root / lane / "decisions.jsonl"}"\n'
        f'crops_dir = "{root / lane / "crops"}"\n'
        f"[dashboard]\nenabled = true\nport = {port}\n"
    )
    return path


def _scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            return str(resp.read().decode())
    except (OSError, http.client.HTTPException):  # not up yet, or a response cut at exit
        return None


def _value(text: str, name: str) -> float:
    """Sum of every sample of `name` in a /metrics text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_two_lanes_replay_at_once_with_separate_logs_metrics_and_crops(tmp_path: Path) -> None:
    belts = {
        "a": make_belt(tmp_path / "ba", per_grade=1, speed_px_s=800.0, items_per_second=5.0),
        "b": make_belt(tmp_path / "bb", per_grade=2, speed_px_s=800.0, items_per_second=5.0),
    }
    want = {lane: len(json.loads(truth.read_text())["items"]) for lane, (_, truth) in belts.items()}
    assert want == {"a": 9, "b": 18}
    ports = {"a": free_port(), "b": free_port()}
    procs = {}
    for lane, (video, _) in belts.items():
        cfg = _lane_config(tmp_path, lane, ports[lane])
        cmd = [
            sys.executable, "-m", "sorter.cli", "run", "--config", str(cfg), "--video", str(video),
            "--realtime", "--serial", "sim://?gates=9", "--model", str(MODEL), "--json",
            "--linger", "3",
        ]  # fmt: skip
        procs[lane] = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
    last: dict[str, str] = {}
    try:
        deadline = time.monotonic() + 90
        while any(p.poll() is None for p in procs.values()) and time.monotonic() < deadline:
            for lane, port in ports.items():
                text = _scrape(port)
                if text is not None:
                    last[lane] = text
            time.sleep(0.2)
        outs = {lane: p.communicate(timeout=30) for lane, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    for lane, (out, err) in outs.items():
        assert procs[lane].returncode == 0, err
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["items"] == want[lane]
        # the log: every row of this lane, none of the other
        rows = read_decisions(tmp_path / lane / "decisions.db")
        assert len(rows) == want[lane] and {r["lane"] for r in rows} == {lane}
        db = sqlite3.connect(tmp_path / lane / "decisions.db")
        assert db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0] == want[lane]
        db.close()
        lines = (tmp_path / lane / "decisions.jsonl").read_text().splitlines()
        assert {json.loads(x)["lane"] for x in lines} == {lane} and len(lines) == want[lane]
        # crops: LANE_RUN_ITEM.png, one per item, in this lane's folder only
        crops = sorted((tmp_path / lane / "crops").rglob("*.png"))
        assert len(crops) == want[lane]
        run = rows[0]["run"]
        assert {p.name for p in crops} == {f"{lane}_{run}_{r['item']}.png" for r in rows}
        # metrics: this lane's label on every series, final counts equal to its log
        text = last[lane]
        samples = [x for x in text.splitlines() if x.startswith("sorter_")]
        assert samples and all(f'lane="{lane}"' in x for x in samples), text
        assert _value(text, "sorter_items_total") == want[lane]
        assert _value(text, "sorter_commands_total") == want[lane]
        assert _value(text, "sorter_frames_in_total") == summary["frames_in"]


# --------------------------------------------------------------------------------------
# The fleet demo, shortened


def test_fleet_demo_shows_the_controller_lost_alert_for_the_killed_lane(tmp_path: Path) -> None:
    """Three lanes, a real Prometheus, lane 2's controller killed: SorterControllerLost
    fires for lane 2 only (alerts' `for:` shortened to 2 s; tiny model, short belt)."""
    from sorter.replay.fleet import FleetOptions, run_demo

    # long enough (about 16 s) that every lane is still replaying when the controller dies;
    # 10 fps keeps it cheap to render
    video, _ = make_belt(
        tmp_path / "belt", per_grade=1, fps=10.0, speed_px_s=400.0, items_per_second=0.6
    )
    said: list[str] = []
    opts = FleetOptions(
        lanes=3, kill=2, video=video, model=MODEL, out=tmp_path / "out", alert_for_s=2.0,
        timeout_s=30.0, linger_s=120.0,
    )  # fmt: skip
    t0 = time.monotonic()
    result = run_demo(opts, say=said.append)
    assert result.fired, "\n".join(said)
    assert result.alert["labels"]["lane"] == "2"
    assert result.alert["annotations"]["summary"] == "lane 2: gate controller lost"
    assert result.lanes_seen == ["1", "2", "3"]
    assert [o for o in result.other_alerts if o["lane"] != "2"] == []
    assert time.monotonic() - t0 < 90
    # every lane wrote its own decision log while it ran
    for lane in ("1", "2", "3"):
        rows = read_decisions(tmp_path / "out" / f"lane{lane}" / "decisions.db")
        assert rows and {r["lane"] for r in rows} == {lane}
    # and every process the demo started is gone
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    assert str(tmp_path / "out") not in ps.stdout
