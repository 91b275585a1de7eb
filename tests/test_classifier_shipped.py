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
    metrics = shipped.metadata.metrics
    # Trained on all 2475 images: the int8-vs-float check ran on them (no validation split).
    split = metrics["val"] if "val" in metrics else metrics["train"]
    drop = 100 * (split["float_accuracy"] - split["exported_accuracy"])
    assert drop <= metrics["threshold_points"]
    assert split["images"] >= 200 and split["agreement"] >= 0.95
    assert json.loads(sidecar_path(MODEL).read_text()) == shipped.metadata.to_dict()


def test_shipped_model_carries_its_cross_validation_and_robustness(shipped: Classifier) -> None:
    extra = shipped.metadata.extra
    cv = extra["cross_validation"]
    assert cv["folds"] == 5 and 1 <= cv["folds_run"] <= 5
    assert 0.5 < cv["int8"]["mean"] <= 1 and cv["int8"]["std"] >= 0
    rob = extra["robustness"]  # pooled over the held-out folds: 495 images each
    assert rob["images"] == 495 * cv["folds_run"] and "cross-validation" in rob["split"]
    assert len(rob["per_kind"]) == 10 and set(rob["scale"]) == {"x0.95", "x0.98", "x1.02", "x1.05"}
    assert shipped.metadata.source_run == "c9-default"  # the run folder's name, no machine path


def test_shipped_model_gives_probabilities(shipped: Classifier) -> None:
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in [(32, 32), (90, 70)]]
    probs = shipped.classify_crops(crops)
    assert probs.shape == (2, 9)
    assert np.all(probs >= 0) and np.all(np.abs(probs.sum(axis=1) - 1) <= 9 / 256)
