"""sorter-export: real int8 and float exports of a tiny trained run, checked independently."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from tensorflow.lite.python import schema_py_generated as schema_fb
from tensorflow.lite.tools import flatbuffer_utils
from typer.testing import CliRunner

from sorter.errors import DatasetError, ModelError
from sorter.grading.classifier import Classifier
from sorter.grading.metadata import METADATA_NAME, ModelMetadata, read_embedded_metadata
from training import data as D
from training import export as E
from training.export_cli import app as export_app

pytestmark = pytest.mark.slow


def _fixtures_module() -> ModuleType:
    path = Path(__file__).parent / "data" / "make_classifier_fixtures.py"
    spec = importlib.util.spec_from_file_location("make_classifier_fixtures", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


FIX = _fixtures_module()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny run trained for real on synthetic three-grade images (shared, read-only)."""
    return FIX.make_run(tmp_path_factory.mktemp("runs") / "tiny-run", per_grade=40, epochs=12)


@pytest.fixture(scope="module")
def int8_export(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> E.ExportResult:
    out = tmp_path_factory.mktemp("out") / "tiny-int8.tflite"
    return E.export_run(run_dir, E.ExportOptions(quantize=True, out=out))


def _interpreter_probs(path: Path, images: np.ndarray) -> np.ndarray:
    """Run a .tflite directly on LiteRT (not through sorter's Classifier), dequantising by hand."""
    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    rows = []
    for image in images:
        interp.set_tensor(inp["index"], image[None].astype(inp["dtype"]))
        interp.invoke()
        raw = interp.get_tensor(out["index"])[0]
        scale, zp = out["quantization"]
        rows.append((raw.astype(np.float64) - zp) * scale if scale else raw.astype(np.float64))
    return np.array(rows)


def test_int8_export_is_integer_only_with_raw_pixel_input(int8_export: E.ExportResult) -> None:
    data = int8_export.path.read_bytes()
    ops, problems = E.graph_report(data)
    assert problems == []
    assert {"CONV_2D", "FULLY_CONNECTED", "SOFTMAX"} <= set(ops)
    interp = Interpreter(model_path=str(int8_export.path))
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    assert inp["dtype"] == np.uint8 and list(inp["shape"]) == [1, 16, 16, 3]
    assert inp["quantization"] == (1.0, 0)  # raw pixels in, no float maths on the device
    assert out["dtype"] == np.uint8
    for t in interp.get_tensor_details():
        assert t["dtype"] in (np.uint8, np.int8, np.int32), t["name"]


def test_metadata_travels_with_the_model(int8_export: E.ExportResult, run_dir: Path) -> None:
    meta = ModelMetadata.load(int8_export.path)
    assert meta.labels == FIX.GRADES
    assert meta.input_size == (16, 16)
    assert meta.color_order == "RGB" and meta.input_dtype == "uint8"
    assert meta.crop.rule == "fixed-window" and meta.crop.window_mm == (120.0, 100.0)
    assert meta.dataset_fingerprint == "synthetic-0-40"
    assert meta.source_run == run_dir.name == "tiny-run"  # a name, not a machine path
    assert meta.attribution == "CUCUMBER-9 dataset (c) Workpiles, CC BY 4.0"
    assert meta.quantization["mode"] == "int8"
    assert meta.quantization["input"] == {"scale": 1.0, "zero_point": 0}
    assert meta.quantization["output"]["scale"] == pytest.approx(1 / 256)
    assert meta.quantization["calibration_images"] == 84  # all 28 training images per grade
    assert set(meta.metrics) == {"val", "test", "threshold_points"}
    # robustness of the exported model itself, on the validation images, in the metadata
    rob = meta.extra["robustness"]
    assert rob["model"] == "int8 (LiteRT)" and rob["split"] == "val"
    assert rob["images"] == meta.metrics["val"]["images"]
    assert rob["clean"] == pytest.approx(meta.metrics["val"]["exported_accuracy"], abs=1e-4)
    assert len(rob["per_kind"]) == 10 and set(rob["scale"]) == {"x0.95", "x0.98", "x1.02", "x1.05"}
    assert 0.0 <= rob["mean_corruption"] <= 1.0
    # the training pictures' background, for [locate] surround = "model"
    from sorter.perception.surround import Background
    from training import data as D

    bg = Background.from_dict(meta.extra["background"])
    x_train, _ = D.load_split_images(run_dir, "train")
    assert bg.images == len(x_train) == 84
    assert np.allclose(bg.grid, Background.of_images(x_train).grid, atol=0.05)
    # the sidecar is the same document as the embedded copy
    sidecar = json.loads(int8_export.sidecar.read_text())
    assert sidecar == meta.to_dict()
    assert int8_export.size_bytes == int8_export.path.stat().st_size


def test_fidelity_figures_match_a_direct_evaluation(
    int8_export: E.ExportResult, run_dir: Path
) -> None:
    import keras

    model = keras.saving.load_model(run_dir / "model.keras", compile=False)
    meta = ModelMetadata.load(int8_export.path)
    for split in ("val", "test"):
        x, y = D.load_split_images(run_dir, split)
        ref = model.predict(x, verbose=0)
        got = _interpreter_probs(int8_export.path, x)
        m = meta.metrics[split]
        assert m["images"] == len(y)
        assert m["float_accuracy"] == pytest.approx(np.mean(ref.argmax(1) == y), abs=1e-6)
        assert m["exported_accuracy"] == pytest.approx(np.mean(got.argmax(1) == y), abs=1e-6)
        assert m["agreement"] == pytest.approx(np.mean(ref.argmax(1) == got.argmax(1)), abs=1e-6)
        assert m["mean_abs_prob_diff"] == pytest.approx(np.mean(np.abs(ref - got)), abs=1e-5)
        # int8 output steps are 1/256; a faithful model stays within a few steps on average
        assert m["mean_abs_prob_diff"] < 0.05
    summary = next(f for f in int8_export.fidelity if f.split == "val")
    assert summary.drop_points <= 1.0


def test_float_export_keeps_uint8_input_and_matches_keras(run_dir: Path, tmp_path: Path) -> None:
    import keras

    out = tmp_path / "tiny-float.tflite"
    result = E.export_run(run_dir, E.ExportOptions(quantize=False, out=out))
    meta = ModelMetadata.load(out)
    assert meta.quantization["mode"] == "float"
    assert (meta.input_dtype, meta.output_dtype) == ("uint8", "float32")
    x, _ = D.load_split_images(run_dir, "val")
    ref = keras.saving.load_model(run_dir / "model.keras", compile=False).predict(x, verbose=0)
    np.testing.assert_allclose(Classifier(out).classify(x), ref, atol=1e-5)
    assert all(f.agreement == 1.0 for f in result.fidelity)
    with pytest.raises(ModelError, match="not integer-only"):
        E.check_integer_only(out.read_bytes())


def test_bad_calibration_fails_the_fidelity_check_unless_forced(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_load = D.load_split_images

    def black_training_images(rd: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
        x, y = real_load(rd, split)
        return (np.zeros_like(x), y) if split == "train" else (x, y)

    monkeypatch.setattr(E.D, "load_split_images", black_training_images)
    out = tmp_path / "bad.tflite"
    with pytest.raises(E.FidelityError, match="points below the float model") as info:
        E.export_run(run_dir, E.ExportOptions(quantize=True, out=out))
    assert "--calibration-images" in str(info.value) and "--force" in str(info.value)
    assert not out.exists()
    forced = E.export_run(run_dir, E.ExportOptions(quantize=True, out=out, force=True))
    assert forced.forced and out.exists()
    assert max(f.drop_points for f in forced.fidelity) > 1.0


def test_pinning_the_input_scale_is_exact(run_dir: Path) -> None:
    run = E.load_run(run_dir)
    x, _ = D.load_split_images(run_dir, "val")
    narrow = np.clip(x, 60, 150)  # calibration never sees 0 or 255
    raw = E.convert(E.export_graph(run.model, "float32"), narrow)
    before = E.io_quantization(raw)["input"]
    assert before["scale"] != 1.0
    pinned = E.io_quantization(E.pin_raw_pixel_input(raw))["input"]
    assert (pinned["scale"], pinned["zero_point"]) == (1.0, 0)
    # the pinned model on raw pixels == the original model on explicitly quantised pixels
    a = _run_bytes(E.pin_raw_pixel_input(raw), narrow, None)
    b = _run_bytes(raw, narrow, (before["scale"], before["zero_point"]))
    assert np.mean(np.abs(a - b)) <= 2.0  # at most a couple of output steps of rounding


def _run_bytes(data: bytes, images: np.ndarray, quant: tuple[float, int] | None) -> np.ndarray:
    interp = Interpreter(model_content=data)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    rows = []
    for image in images:
        v = image[None].astype(np.float64)
        if quant is not None:
            v = np.clip(np.rint(v / quant[0] + quant[1]), 0, 255)
        interp.set_tensor(inp["index"], v.astype(np.uint8))
        interp.invoke()
        rows.append(interp.get_tensor(out["index"])[0].astype(np.float64))
    return np.array(rows)


def test_embedded_metadata_round_trip_and_replacement(int8_export: E.ExportResult) -> None:
    data = int8_export.path.read_bytes()
    meta = ModelMetadata.load(int8_export.path)
    assert ModelMetadata.from_dict(meta.to_dict()) == meta
    # our pure-Python reader agrees with TensorFlow's flatbuffer parser
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    tf_entries = {m.name.decode(): bytes(model.buffers[m.buffer].data) for m in model.metadata}
    assert read_embedded_metadata(data) == tf_entries
    # re-embedding replaces our entry instead of adding a second one
    again = E.embed_metadata(data, b'{"x": 1}')
    names = [
        m.name.decode()
        for m in schema_fb.ModelT.InitFromObj(schema_fb.Model.GetRootAsModel(again, 0)).metadata
    ]
    assert names.count(METADATA_NAME) == 1
    assert read_embedded_metadata(again)[METADATA_NAME] == b'{"x": 1}'
    assert b'"source_run"' in data and b'"source_run"' not in again  # the old JSON is gone


def test_stratified_calibration_sample_covers_every_grade() -> None:
    y = np.array([0] * 50 + [1] * 5 + [2] * 45)
    idx = E.stratified_sample(y, 30, seed=3)
    counts = np.bincount(y[idx], minlength=3)
    assert counts.tolist() == [10, 5, 10]
    assert np.array_equal(idx, E.stratified_sample(y, 30, seed=3))


def test_bad_run_folders_are_clear_errors(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such run folder"):
        E.load_run(tmp_path / "nope")
    partial = tmp_path / "partial"
    shutil.copytree(run_dir, partial)
    (partial / "labels.txt").write_text("a\nb\n")
    with pytest.raises(ModelError, match=r"outputs 3 grades but labels\.txt lists 2"):
        E.load_run(partial)
    (partial / "model.keras").write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="cannot load the Keras model"):
        E.load_run(partial)
    (partial / "model.keras").unlink()
    with pytest.raises(ModelError, match=r"model\.keras: not found"):
        E.load_run(partial)
    with pytest.raises(DatasetError, match="no run folders"):
        E.newest_run(tmp_path / "empty")


def test_cli_exports_newest_run_and_reports(run_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli.tflite"
    res = runner.invoke(export_app, ["--runs", str(run_dir.parent), "--quantize", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert f"wrote {out}" in res.stdout and "KB, int8)" in res.stdout
    assert "val: float" in res.stdout and "agreement" in res.stdout
    assert out.exists() and out.with_suffix(".json").exists()

    res = runner.invoke(export_app, [str(tmp_path / "missing-run")])
    assert res.exit_code == 2
    assert res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1
    assert "Traceback" not in res.output


def test_cli_fidelity_failure_exits_3(run_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "strict.tflite"
    # a negative threshold demands that the int8 model beat the float one: it cannot
    res = runner.invoke(export_app, [str(run_dir), "--quantize", "-o", str(out), "--threshold=-5"])
    assert res.exit_code == 3
    assert "error: int8 accuracy on" in res.stderr and "nothing written" in res.stderr
    assert not out.exists()
