"""`sorter model promote` / `rollback` and the reload on SIGHUP: a checked model is installed
atomically (the previous one kept), a model whose labels do not match the bins is refused
in one line, and a running replay switches models between two frames without losing an item
or sending a SORT twice; a bad file at reload time is refused and the old model keeps
sorting."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from sorter.cli import app
from sorter.config import load_config
from sorter.grading.model_check import model_id
from sorter.monitor.audit import DecisionLog, read_decisions
from sorter.monitor.status import Status
from sorter.replay.truth import geometry_from_truth, load_truth, score_run
from sorter.runtime.runner import Runner, RunOptions
from tests.model_files import BUNDLED, TINY, renamed_model, swapped_model
from tests.test_pipeline_standins import make_belt

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def belt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_belt(tmp_path_factory.mktemp("promotebelt"), per_grade=2)


def _farm(root: Path) -> tuple[Path, Path]:
    """A config whose [model] path is root/models/model.tflite (the bundled model)."""
    models = root / "models"
    models.mkdir(parents=True)
    target = models / "model.tflite"
    shutil.copyfile(BUNDLED, target)
    cfg = root / "sorter.toml"
    cfg.write_text(
        f'[model]\npath = "{target}"\n[logging]\ndb = "{root / "d.db"}"\n'
        f'jsonl = "{root / "d.jsonl"}"\n'
    )
    return cfg, target


def _model(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(app, ["model", *args])
    return res.exit_code, res.stdout, res.stderr


def _one_error(stderr: str) -> str:
    lines = [x for x in stderr.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_promote_installs_keeps_the_previous_and_rollback_swaps_back(tmp_path: Path) -> None:
    cfg, target = _farm(tmp_path)
    cand = swapped_model(tmp_path / "cand.tflite")
    code, out, err = _model("promote", str(cand), "--config", str(cfg), "--json")
    assert code == 0, err
    done = json.loads(out)
    prev = target.with_name("model.tflite.previous")
    assert target.read_bytes() == cand.read_bytes() and prev.read_bytes() == BUNDLED.read_bytes()
    assert done["model_id"] == model_id(cand) and done["previous_id"] == model_id(BUNDLED)
    assert not [p for p in target.parent.iterdir() if p.name.endswith(".tmp")]
    code, out, err = _model("rollback", "--config", str(cfg))
    assert code == 0, err and "rolled back" in out
    assert target.read_bytes() == BUNDLED.read_bytes() and prev.read_bytes() == cand.read_bytes()
    code, _, err = _model("rollback", "--config", str(cfg))  # undoes the rollback
    assert code == 0, err
    assert target.read_bytes() == cand.read_bytes() and prev.read_bytes() == BUNDLED.read_bytes()


@pytest.mark.parametrize("kind", ["labels", "truncated", "not-a-file", "tiny"])
def test_a_bad_model_is_refused_in_one_line_and_nothing_changes(tmp_path: Path, kind: str) -> None:
    cfg, target = _farm(tmp_path)
    bad = tmp_path / "bad.tflite"
    if kind == "labels":
        renamed_model(bad)
    elif kind == "truncated":
        bad.write_bytes(BUNDLED.read_bytes()[:5000])
    elif kind == "tiny":  # a real model for other grades (long, round, bent)
        shutil.copyfile(TINY, bad)
    code, _, err = _model("promote", str(bad), "--config", str(cfg))
    assert code == 2
    line = _one_error(err)
    assert str(bad) in line
    if kind in ("labels", "tiny"):
        assert "labels do not match the config's bins" in line
    assert target.read_bytes() == BUNDLED.read_bytes()
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.tflite"]


def test_promote_needs_a_model_path_and_rollback_a_previous(tmp_path: Path) -> None:
    cfg = tmp_path / "plain.toml"
    cfg.write_text('[lane]\nid = "1"\n')
    code, _, err = _model("promote", str(BUNDLED), "--config", str(cfg))
    assert code == 2 and "[model] path is empty" in _one_error(err)
    cfg2, _ = _farm(tmp_path / "farm")
    code, _, err = _model("rollback", "--config", str(cfg2))
    assert code == 2 and "no previous model" in _one_error(err)


# --------------------------------------------------------------------------------------
# Reloading in a running replay


def _controller(runner: Runner) -> Any:
    return runner.link._port.controller  # type: ignore[union-attr]


def test_reload_between_two_frames_loses_no_item_and_sends_no_sort_twice(
    tmp_path: Path, belt: tuple[Path, Path]
) -> None:
    """In-process: a fast replay against sim://, the model promoted after 80 frames (and
    reloaded), rolled back after 120, then a file with other labels put in place and
    reloaded (refused)."""
    video, truth_path = belt
    cfg, target = _farm(tmp_path)
    truth = load_truth(truth_path)
    config = geometry_from_truth(load_config(cfg), truth)
    from sorter.config import apply_overrides

    config = apply_overrides(config, {"serial.url": "sim://?gates=9"})
    cand = swapped_model(tmp_path / "cand.tflite")
    status = Status()
    opts = RunOptions(video=video, handle_signals=False)
    with Runner(config, opts, DecisionLog(tmp_path / "r.db"), status) as runner:
        old_id = runner.model_id
        while runner.step():
            if runner.frames == 80:
                from sorter.ops.model_install import promote

                promote(cand, config)
                runner.request_reload()
            if runner.frames == 120:  # and rolled back
                from sorter.ops.model_install import rollback

                rollback(config)
                runner.request_reload()
            if runner.frames == 160:  # a bad file slipped in: refused, old model kept
                renamed_model(tmp_path / "bad.tflite")
                os.replace(tmp_path / "bad.tflite", target)
                runner.request_reload()
            if runner.frames == 161:
                alarms = {a["kind"]: a["text"] for a in status.snapshot()["alarms"]}
                assert "labels do not match" in alarms["model_reload"]
        result = runner.stop()
        fired = [f.item for f in _controller(runner).fire_log]
    card = score_run(result.records, truth, config)
    assert (card.items, card.decided, card.missed, card.duplicated) == (18, 18, 0, 0)
    assert result.summary["items"] == 18 and result.summary["lost"] == 0
    assert len(fired) == len(set(fired)) == result.summary["statuses"].get("fired")
    reloads = result.summary["model"]["reloads"]
    assert [r["ok"] for r in reloads] == [True, True, False]
    new_id = model_id(cand)
    assert [r.get("model_id") for r in reloads[:2]] == [new_id, old_id]
    assert result.summary["model"]["id"] == old_id  # the refused file changed nothing
    rows = read_decisions(tmp_path / "r.db")
    ids = [r["model_id"] for r in rows]
    runs = [ids[0]] + [b for a, b in itertools.pairwise(ids) if b != a]
    assert runs == [old_id, new_id, old_id], ids  # old, promoted, rolled back


def test_sighup_to_a_running_replay_switches_and_a_bad_file_is_refused(
    tmp_path: Path, belt: tuple[Path, Path]
) -> None:
    """A subprocess replaying in real time: `sorter model promote --pid` installs the
    candidate and sends SIGHUP; later a file with other labels and a second SIGHUP. Every
    item is decided once, each fired once, the reloads are in the summary and the log."""
    video, truth = belt
    cfg, target = _farm(tmp_path)
    db = tmp_path / "d.db"
    cmd = [
        sys.executable, "-m", "sorter.cli", "run", "--config", str(cfg), "--video", str(video),
        "--truth", str(truth), "--realtime", "--serial", "sim://?gates=9", "--json",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        _wait_rows(db, proc, 2)
        cand = swapped_model(tmp_path / "cand.tflite")
        code, out, err = _model("promote", str(cand), "--config", str(cfg), "--pid", str(proc.pid))
        assert code == 0 and f"sent SIGHUP to {proc.pid}" in out, err
        _wait_rows(db, proc, 9)
        renamed_model(tmp_path / "bad.tflite")
        os.replace(tmp_path / "bad.tflite", target)
        os.kill(proc.pid, signal.SIGHUP)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    card = summary["scorecard"]
    assert (card["items"], card["decided"], card["missed"], card["duplicated"]) == (18, 18, 0, 0)
    statuses = summary["statuses"]  # fired, or rejected by the policy (no SORT): no other fate
    assert summary["items"] == 18 and sum(statuses.values()) == 18, statuses
    assert set(statuses) <= {"fired", "rejected"} and statuses.get("fired", 0) > 0
    reloads = summary["model"]["reloads"]
    assert [r["ok"] for r in reloads] == [True, False], reloads
    assert "labels do not match" in reloads[1]["error"]
    assert "model reload refused" in err
    rows = read_decisions(db)
    assert len(rows) == 18 and len({r["item"] for r in rows}) == 18
    assert {r["model_id"] for r in rows} == {model_id(BUNDLED), model_id(cand)}
    lines = [json.loads(x) for x in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert len(lines) == 18 and len({x["item"] for x in lines}) == 18  # one final line each


def _wait_rows(db: Path, proc: subprocess.Popen[str], n: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if db.exists() and len(read_decisions(db)) >= n:
                return
        except Exception:  # the log is being created
            pass
        time.sleep(0.05)
    raise AssertionError(f"the replay did not decide {n} items in time (rc {proc.poll()})")
