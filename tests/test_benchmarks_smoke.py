"""The benchmark harness at tiny sizes, so it cannot rot: every figure must be produced.

Runs `python -m benchmarks --smoke` as a user would (a subprocess from the repository
root) and checks the table, the JSON and the machine description. Nothing about speed is
asserted: benchmarks are not tests. A figure may be "not available" only while a part it
measures is genuinely absent from this checkout (its `missing()` says why); a figure whose
parts exist must produce rows, and no figure may fail.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.runner import FIGURES

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "cucumber-9" / "prototype_1"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    if not DATA.exists():
        pytest.fail(f"CUCUMBER-9 data missing at {DATA}; the smoke benchmark trains on it")
    out = tmp_path_factory.mktemp("bench")
    md, js = out / "smoke.md", out / "smoke.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--out", str(md), "--json", str(js)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert js.exists(), f"no JSON written; exit {proc.returncode}\n{proc.stderr[-3000:]}"
    return {
        "proc": proc,
        "md": md.read_text(encoding="utf-8"),
        "json": json.loads(js.read_text(encoding="utf-8")),
    }


def test_all_nine_figures_in_order(smoke: dict[str, object]) -> None:
    figures = smoke["json"]["figures"]  # type: ignore[index]
    assert [f["number"] for f in figures] == list(range(1, 10))
    assert [f["title"] for f in figures] == [m.TITLE for m in FIGURES]


@pytest.mark.parametrize("module", FIGURES, ids=lambda m: f"figure{m.NUMBER}")
def test_figure_produced_when_its_parts_exist(smoke: dict[str, object], module: object) -> None:
    fig = smoke["json"]["figures"][module.NUMBER - 1]  # type: ignore[index, attr-defined]
    assert fig["status"] != "error", f"figure {fig['number']} failed: {fig['reason']}"
    if fig["status"] == "n/a":
        why = module.missing()  # type: ignore[attr-defined]
        assert why, f"figure {fig['number']} says n/a ({fig['reason']}) but its parts exist"
        return
    assert fig["status"] == "ok"
    assert fig["rows"], "an ok figure must have rows"
    for row in fig["rows"]:
        assert row["measure"] and row["value"], row
        if not row["value"].startswith("not available"):
            assert any(ch.isdigit() for ch in row["value"]), row


def test_markdown_table_and_machine(smoke: dict[str, object]) -> None:
    md = str(smoke["md"])
    assert "| # | figure | measured | value | baseline (same run) |" in md
    for n in range(1, 10):
        assert f"\n| {n} | " in md
    assert "## Machine" in md and "- cpu: " in md and "- python: " in md
    assert "mode: smoke" in md
    proc = smoke["proc"]
    assert proc.returncode == 0, proc.stderr[-3000:]  # type: ignore[attr-defined]


def test_bad_option_is_one_line_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--data", "/nonexistent/c9", "--smoke"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert "error: CUCUMBER-9 data not found at /nonexistent/c9" in proc.stderr
    assert "Traceback" not in proc.stderr
