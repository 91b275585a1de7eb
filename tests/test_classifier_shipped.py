"""The shipped default model (models/cucumber9-int8.tflite) loads and says what it is."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sorter.grading.classifier import DEFAULT_MODEL_NAME, Classifier
from sorter.grading.metadata import sidecar_path

MODEL = Path(__file__).resolve().parent.parent / "models" / DEFAULT_MODEL_NAME


@pytest.fixture(scope="module")
def shipped(monkeypatch_module: pytest.MonkeyPatch) -> Classifier:
    monkeypatch_module.delenv("SORTER_MODEL", raising=False)
    return Classifier()  # found without --model: the checkout's models/ folder


@pytest.fixture(scope="module")
def monkeypatch_module():  # type: ignore[no-untyped-def]
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_default_model_is_the_shipped_int8_model(shipped: Classifier) -> None:
    assert shipped.model_path.resolve() == MODEL
    meta = shipped.metadata
    assert shipped.labels == ("2L", "2S", "BL", "BM", "BS", "C", "L", "M", "S")
    assert shipped.input_size == (32, 32)
    assert (meta.input_dtype, meta.output_dtype, meta.color_order) == ("uint8", "uint8", "RGB")
    assert meta.quantization["mode"] == "int8"
    assert meta.quantization["input"] == {"scale": 1.0, "zero_point": 0}
    assert meta.crop.rule == "fixed-window" and meta.crop.window_mm == (250.0, 250.0)
    assert "CUCUMBER-9" in meta.attribution and "CC BY 4.0" in meta.attribution
    assert len(meta.dataset_fingerprint) == 64


def test_shipped_model_passed_its_fidelity_check(shipped: Classifier) -> None:
    val = shipped.metadata.metrics["val"]
    drop = 100 * (val["float_accuracy"] - val["exported_accuracy"])
    assert drop <= shipped.metadata.metrics["threshold_points"]
    assert val["images"] >= 200 and val["agreement"] >= 0.95
    assert json.loads(sidecar_path(MODEL).read_text()) == shipped.metadata.to_dict()


def test_shipped_model_gives_probabilities(shipped: Classifier) -> None:
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in [(32, 32), (90, 70)]]
    probs = shipped.classify_crops(crops)
    assert probs.shape == (2, 9)
    assert np.all(probs >= 0) and np.all(np.abs(probs.sum(axis=1) - 1) <= 9 / 256)
