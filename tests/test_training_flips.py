"""Flip augmentation, test-time flip averaging (in Keras and in the int8 export) and the
label-smoothing / cosine-schedule training options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sorter.errors import ConfigError
from tests.test_training_data import make_grade_tree
from training.export import ExportOptions, export_run, graph_report
from training.model import AugmentConfig, build_model, flip_average, inference_model
from training.train import TrainConfig, train

pytestmark = pytest.mark.slow

ONLY_FLIPS = {"shift": 0, "rotate_deg": 0, "brightness": 0, "contrast": 0, "camera": False}


def _views_seen(independent: bool) -> set[str]:
    """Which flip views the augmentation produces for one asymmetric image over 40 draws."""
    aug = AugmentConfig(independent_flips=independent, **ONLY_FLIPS)  # type: ignore[arg-type]
    model = build_model("softmax", (4, 4), 2, augment=aug, seed=3)
    front = [la for la in model.layers if la.name.startswith(("rescale", "aug_"))]
    img = np.arange(4 * 4 * 3, dtype=np.float32).reshape(1, 4, 4, 3)
    views = {
        "id": img,
        "h": img[:, :, ::-1],
        "v": img[:, ::-1],
        "hv": img[:, ::-1, ::-1],
    }
    seen: set[str] = set()
    for _ in range(40):
        x = img / 255.0
        for layer in front[1:]:
            x = np.asarray(layer(x, training=True))
        seen |= {k for k, v in views.items() if np.allclose(x, v / 255.0)}
    return seen


def test_independent_flips_show_mirror_images() -> None:
    assert _views_seen(independent=True) == {"id", "h", "v", "hv"}
    # Keras' RandomFlip("horizontal_and_vertical") flips both axes or neither: no mirrors.
    assert _views_seen(independent=False) == {"id", "hv"}


def test_flip_average_is_flip_invariant_and_keeps_identity() -> None:
    infer = inference_model(build_model("pi-cnn", (12, 12), 3, augment=False), batch_size=None)
    x = np.random.default_rng(0).integers(0, 256, (5, 12, 12, 3), dtype=np.uint8)
    tta = flip_average(infer)
    p = np.asarray(tta(x))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(tta(x[:, :, ::-1].copy())), p, atol=1e-5)
    np.testing.assert_allclose(np.asarray(tta(x[:, ::-1].copy())), p, atol=1e-5)
    plain = np.asarray(infer(x))
    assert not np.allclose(plain, p, atol=1e-5)
    np.testing.assert_allclose(np.asarray(flip_average(infer, ("id",))(x)), plain, atol=1e-6)
    with pytest.raises(ValueError, match="choose from id, h, v, hv"):
        flip_average(infer, ("up",))


@pytest.fixture(scope="module")
def smooth_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pi-cnn, two epochs with label smoothing and a cosine schedule, on 3 generated grades."""
    root = tmp_path_factory.mktemp("smooth")
    data = make_grade_tree(root / "data", per_grade=10, size=12)
    r = train(
        TrainConfig(
            data_dir=data,
            out=root / "run",
            epochs=2,
            batch_size=8,
            val_fraction=0.2,
            label_smoothing=0.1,
            schedule="cosine",
            augment=AugmentConfig(independent_flips=True),
            reports=False,
            verbose=0,
        )
    )
    return r.run_dir


def test_label_smoothing_and_cosine_are_recorded(smooth_run: Path) -> None:
    cfg = json.loads((smooth_run / "config.json").read_text())
    assert cfg["label_smoothing"] == 0.1 and cfg["schedule"] == "cosine"
    assert cfg["augment"]["independent_flips"] is True
    hist = json.loads((smooth_run / "history.json").read_text())
    assert len(hist["loss"]) == 2 and "val_accuracy" in hist


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("schedule", "step", "--schedule step"),
        ("label_smoothing", 1.0, "--label-smoothing"),
        ("weight_decay", -0.1, "--weight-decay"),
    ],
)
def test_bad_training_options_are_config_errors(
    tmp_path: Path, field: str, value: object, message: str
) -> None:
    cfg = TrainConfig(data_dir=tmp_path, **{field: value})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=message):
        train(cfg)


def test_int8_export_with_flip_averaging(smooth_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "tta.tflite"
    res = export_run(
        smooth_run,
        ExportOptions(out=out, calibration_images=30, flip_views=("id", "h", "v", "hv")),
        progress=lambda _msg: None,
    )
    assert res.metadata.extra["test_time_flip_views"] == ["id", "h", "v", "hv"]
    assert res.metadata.input_dtype == "uint8"
    (val,) = res.fidelity
    assert val.agreement >= 0.8  # int8 vs the flip-averaged float model
    ops, problems = graph_report(out.read_bytes())
    assert "REVERSE_V2" in ops and problems == []
    with pytest.raises(ConfigError, match="unknown view"):
        export_run(smooth_run, ExportOptions(out=tmp_path / "x.tflite", flip_views=("up",)))


def test_run_scores_itself_with_its_test_views_and_export_builds_them_in(
    smooth_run: Path, tmp_path: Path
) -> None:
    from training.data import load_split_images
    from training.evaluate import load_run_model
    from training.export_cli import _views
    from training.train import predict

    cfg = json.loads((smooth_run / "config.json").read_text())
    assert cfg["test_views"] == ["id", "hv"]  # the default: the image and its 180-degree turn
    x, y = load_split_images(smooth_run, "val")
    infer = inference_model(load_run_model(smooth_run), batch_size=None)
    tta = predict(flip_average(infer, ("id", "hv")), x).argmax(axis=1)
    metrics = json.loads((smooth_run / "metrics.json").read_text())
    assert metrics["val"]["accuracy"] == pytest.approx(float(np.mean(tta == y)))

    res = export_run(
        smooth_run, ExportOptions(out=tmp_path / "own.tflite"), progress=lambda _m: None
    )
    assert res.metadata.extra["test_time_flip_views"] == ["id", "hv"]
    assert "REVERSE_V2" in graph_report((tmp_path / "own.tflite").read_bytes())[0]
    res = export_run(
        smooth_run,
        ExportOptions(out=tmp_path / "none.tflite", flip_views=()),
        progress=lambda _m: None,
    )
    assert res.metadata.extra["test_time_flip_views"] == []
    assert "REVERSE_V2" not in graph_report((tmp_path / "none.tflite").read_bytes())[0]
    assert _views(None) is None and _views("none") == () and _views("id,hv") == ("id", "hv")


def test_teachers_give_soft_targets_averaged_over_their_own_test_views(tmp_path: Path) -> None:
    """Distillation asks each teacher as it scores itself: a run whose config.json names
    test views is averaged over them; one without (older runs) is asked once."""
    from training.train import _teacher_probs

    model = build_model("softmax", (4, 4), 3, augment=False, seed=1)
    pool = np.random.default_rng(0).integers(0, 256, (2, 5, 4, 4, 3), dtype=np.uint8)
    flat = pool.reshape(-1, 4, 4, 3)
    plain = np.asarray(inference_model(model, batch_size=None)(flat))
    turned = np.asarray(inference_model(model, batch_size=None)(flat[:, ::-1, ::-1]))
    with_views, without = tmp_path / "tta", tmp_path / "old"
    for run, cfg in ((with_views, {"test_views": ["id", "hv"]}), (without, {})):
        run.mkdir()
        model.save(run / "model.keras")
        (run / "config.json").write_text(json.dumps(cfg))
    got = _teacher_probs((with_views,), pool)
    assert got.shape == (2, 5, 3)
    np.testing.assert_allclose(got.reshape(-1, 3), (plain + turned) / 2, atol=1e-5)
    np.testing.assert_allclose(_teacher_probs((without,), pool).reshape(-1, 3), plain, atol=1e-5)
    assert not np.allclose(plain, turned, atol=1e-3)  # the views do differ
