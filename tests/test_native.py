"""Native libraries' notices (LiteRT's XNNPACK line, TensorFlow's oneDNN/absl banners) are
silenced unless --verbose, and nothing else written to stderr is lost."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sorter import native

DATA = Path(__file__).parent / "data" / "classifier"
XNNPACK = "XNNPACK delegate"


def _classify(*extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != native.VERBOSE_ENV}
    model = str(DATA / "tiny-int8.tflite")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "sorter.cli",
            "classify",
            "--model",
            model,
            *extra,
            str(DATA / "images"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


def test_classify_prints_no_xnnpack_line_by_default() -> None:
    quiet = _classify()
    assert quiet.returncode == 0, quiet.stderr
    graded = [line for line in quiet.stdout.splitlines() if line.count("\t") == 2]
    assert len(graded) == 9  # every image graded
    assert XNNPACK not in quiet.stderr + quiet.stdout
    # the line is real and comes back with --verbose (so the check above is not vacuous)
    loud = _classify("--verbose")
    assert loud.returncode == 0, loud.stderr
    assert XNNPACK in loud.stderr


def test_notices_are_dropped_and_other_lines_kept(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(native.VERBOSE_ENV, raising=False)
    monkeypatch.setattr(native, "_verbose", None)
    with native.native_notices_captured():
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        os.write(2, b"I0000 00:00:1.0 123 port.cc:153] oneDNN custom operations are on.\n")
        os.write(2, b"ERROR: something the user must see\n")
    err = capfd.readouterr().err
    assert err == "ERROR: something the user must see\n"
    native.set_verbose(True)
    with native.native_notices_captured():
        os.write(2, b"INFO: shown when verbose\n")
    assert capfd.readouterr().err == "INFO: shown when verbose\n"


def test_a_failing_block_still_restores_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    native.set_verbose(False)
    with pytest.raises(RuntimeError), native.native_notices_captured():
        os.write(2, b"WARNING: kept\n")
        raise RuntimeError("boom")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "WARNING: kept\nafter\n"
    native.set_verbose(False)


@pytest.mark.slow
def test_train_and_export_print_no_tensorflow_notices(tmp_path: Path) -> None:
    """sorter-train and sorter-export in fresh processes (where TensorFlow's import-time
    oneDNN and absl notices would appear): none of it on the terminal."""
    from tests.fakes.belt_data import make_grade_tree

    data = make_grade_tree(tmp_path / "data", per_grade=6)
    env = {k: v for k, v in os.environ.items() if k != native.VERBOSE_ENV}
    run = tmp_path / "run"
    flags = ["--epochs", "1", "--no-reports", "--quiet", "--no-augment"]
    train = subprocess.run(
        [sys.executable, "-m", "training.cli", str(data), "--out", str(run), *flags],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )
    assert train.returncode == 0, train.stderr
    export = subprocess.run(
        [sys.executable, "-m", "training.export_cli", str(run), "--quantize"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )
    assert export.returncode == 0, export.stderr
    for out in (train.stderr, export.stderr, export.stdout):
        assert "oneDNN" not in out and "absl::InitializeLog" not in out, out
        assert XNNPACK not in out, out
    assert "wrote" in export.stdout  # the export's own report is still there
