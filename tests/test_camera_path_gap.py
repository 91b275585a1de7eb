"""benchmarks.camera_path_gap: the unsharp mask and the gap row on a tiny fixture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from benchmarks.camera_path_gap import app, gap_row, table, unsharp


def _edge_images(n: int = 4) -> np.ndarray:
    x = np.full((n, 32, 32, 3), 60, np.uint8)
    x[:, :, 16:] = 180
    return x


def test_unsharp_zero_is_identity_and_positive_steepens_an_edge() -> None:
    x = _edge_images()
    assert unsharp(x, 0.0) is x
    s = unsharp(x, 0.5)
    assert s.dtype == np.uint8 and s.shape == x.shape
    assert s[0, 10, 15, 0] < 60 < 180 < s[0, 10, 16, 0]  # overshoot on both sides
    assert np.array_equal(s[:, :, :8], x[:, :, :8])  # flat parts untouched


def test_gap_row_scores_clean_and_camera_path_with_a_stand_in_model() -> None:
    x = _edge_images(6)
    x[3:] = 200  # a second class: flat bright
    y = np.array([0, 0, 0, 1, 1, 1])

    calls = []

    def predict(b: np.ndarray) -> np.ndarray:
        calls.append(len(b))
        bright = b.reshape(len(b), -1).mean(axis=1) > 150
        return np.stack([~bright, bright], axis=1).astype(np.float32)

    row = gap_row(predict, x, y, [0.5])
    assert row["images"] == 6
    assert calls == [6] * 4  # clean and camera path, each unsharpened and at 0.5: once each
    assert row["clean"][0.0] == 1.0 and row["clean"][0.5] == 1.0
    assert 0.0 <= row["camera"][0.0] <= 1.0
    assert row["changed"] == round(6 * (1 - row["camera"][0.0]))
    text = table({"f0": row}, [0.5])
    assert "| f0 | clean image | 100.0% | 100.0% |" in text
    assert "clean camera path" in text


def test_bad_amounts_are_a_one_line_error(tmp_path: Path) -> None:
    for bad in ("abc", "0.5,-1"):
        res = CliRunner().invoke(app, [str(tmp_path), "--amounts", bad])
        assert res.exit_code == 2, res.output
        assert res.output.startswith("error: --amounts") and res.output.count("\n") == 1
        assert "Traceback" not in res.output
