"""`sorter-train --multi-worker`: two local CPU workers on loopback train one model under
MultiWorkerMirroredStrategy (TF_CONFIG); the chief writes the run folder, the worker's copy
is removed; both saw the same synchronised training; bad TF_CONFIG is a one-line error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from firmware_bridge.emulator import free_port
from sorter.errors import ConfigError
from tests.test_training_data import make_grade_tree
from training.multiworker import Cluster, cluster_from_env

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def _tf_config(ports: list[int], index: int) -> str:
    return json.dumps(
        {
            "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
            "task": {"type": "worker", "index": index},
        }
    )


def test_two_cpu_workers_train_one_model(tmp_path: Path) -> None:
    data = make_grade_tree(tmp_path / "data", per_grade=8, size=16)
    ports = [free_port(), free_port()]
    procs = []
    for index in (0, 1):
        env = {**os.environ, "TF_CONFIG": _tf_config(ports, index), "CUDA_VISIBLE_DEVICES": ""}
        cmd = [
            sys.executable, "-m", "training.cli", str(data), "--out", str(tmp_path / "run"),
            "--multi-worker", "--epochs", "1", "--batch-size", "8", "--no-reports", "--quiet",
            "--no-camera-augment", "--seed", "3",
        ]  # fmt: skip
        procs.append(
            subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env
            )
        )
    try:
        outs = [p.communicate(timeout=400) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    run = tmp_path / "run"
    for name in ("model.keras", "config.json", "history.json", "metrics.json", "labels.txt"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["multi_worker"] is True and config["epochs_run"] == 1
    # the worker's own run folder (a temporary one) is gone
    worker_run = next(x for x in outs[1][0].splitlines() if x.startswith("run: "))[5:]
    assert worker_run != str(run.resolve()) and not Path(worker_run).exists()
    # one synchronised training: both workers logged the same all-worker epoch
    epochs = [[x for x in err.splitlines() if "epoch 1/1" in x][-1] for _, err in outs]
    assert "all workers" in epochs[0] and epochs[0].split(": ", 1)[1] == epochs[1].split(": ", 1)[1]
    assert "tasks have crashed" not in outs[0][1]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "TF_CONFIG is not set"),
        ("{not json", "TF_CONFIG is not valid"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}', "not in"),
        ('{"cluster": {"worker": ["a:1"]}}', "TF_CONFIG is not valid"),
    ],
)
def test_bad_tf_config_is_one_clear_error(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        cluster_from_env({"TF_CONFIG": text} if text else {})


def test_the_chief_is_worker_zero_or_the_chief_task() -> None:
    two = '{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": %d}}'
    assert cluster_from_env({"TF_CONFIG": two % 0}) == Cluster(2, "worker", 0)
    assert cluster_from_env({"TF_CONFIG": two % 0}).is_chief
    assert not cluster_from_env({"TF_CONFIG": two % 1}).is_chief
    chief = (
        '{"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}'
    )
    c = cluster_from_env({"TF_CONFIG": chief})
    assert c.is_chief and c.workers == 2
