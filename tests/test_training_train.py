"""Real (small) training runs on CPU: run folder contract, models, evaluate, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.test_training_data import make_grade_tree
from training.cli import run as cli_run
from training.cucumber9 import import_cucumber9
from training.data import load_split_images
from training.evaluate import evaluate_run, load_run_model
from training.model import AugmentConfig, build_model, inference_model, is_training_only
from training.train import TrainConfig, train

pytestmark = pytest.mark.slow

MINI = Path(__file__).parent / "data" / "cucumber9_mini"
REPORTS = ("confusion.png", "curves.png", "errors.png", "filters.png", "feature_maps.png")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pi-cnn trained for two epochs on 3 generated grades (16x16), with all reports."""
    root = tmp_path_factory.mktemp("tiny")
    data = make_grade_tree(root / "data", per_grade=10, size=16)
    result = train(
        TrainConfig(
            data_dir=data,
            out=root / "run",
            arch="pi-cnn",
            epochs=2,
            batch_size=8,
            val_fraction=0.2,
            test_fraction=0.2,
            field_of_view_mm=(300.0, 200.0),
            verbose=0,
        )
    )
    assert result.run_dir == (root / "run").resolve()
    assert 0.0 <= result.val_accuracy <= 1.0 and result.epochs_run == 2
    return result.run_dir


def test_run_folder_contract(tiny_run: Path) -> None:
    for name in ("model.keras", "labels.txt", "config.json", "split.json", "metrics.json"):
        assert (tiny_run / name).is_file(), name
    for name in (*REPORTS, "history.json", "params.txt"):
        assert (tiny_run / name).is_file(), name
    assert any((tiny_run / "tensorboard").rglob("*tfevents*"))
    assert not (tiny_run / "best.weights.h5").exists()
    assert (tiny_run / "labels.txt").read_text() == "blue\ngreen\nred\n"
    cfg = json.loads((tiny_run / "config.json").read_text())
    assert cfg["arch"] == "pi-cnn" and cfg["input_size"] == [16, 16]
    assert cfg["field_of_view_mm"] == [300.0, 200.0]
    assert len(cfg["dataset_fingerprint"]) == 64
    assert cfg["augment"]["flip"] is True and cfg["seed"] == 0 and cfg["batch"] == 8
    split = json.loads((tiny_run / "split.json").read_text())
    assert {len(split[k]) for k in ("val", "test")} == {6} and len(split["train"]) == 18
    assert "total params" in (tiny_run / "params.txt").read_text()
    history = json.loads((tiny_run / "history.json").read_text())
    assert len(history["loss"]) == 2 and "val_accuracy" in history


def test_metrics_json_matches_its_confusion(tiny_run: Path) -> None:
    m = json.loads((tiny_run / "metrics.json").read_text())
    assert m["labels"] == ["blue", "green", "red"]
    for split in ("val", "test"):
        cm = np.array(m[split]["confusion"])
        assert cm.shape == (3, 3) and cm.sum() == 6
        assert m[split]["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
        assert set(m[split]["per_class"]["red"]) == {"precision", "recall", "f1", "support"}


def test_saved_model_and_inference_copy(tiny_run: Path) -> None:
    model = load_run_model(tiny_run)
    assert model.inputs[0].dtype == "uint8"
    assert any(is_training_only(layer) for layer in model.layers)
    x, y = load_split_images(tiny_run, "val")
    assert x.shape == (6, 16, 16, 3) and x.dtype == np.uint8 and y.dtype == np.int64
    infer = inference_model(model, batch_size=1)
    assert tuple(infer.inputs[0].shape) == (1, 16, 16, 3)
    assert not any(is_training_only(layer) for layer in infer.layers)
    want = np.asarray(model(x, training=False))
    got = np.concatenate([np.asarray(infer(x[i : i + 1])) for i in range(len(x))])
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)


def test_augmentation_only_in_training() -> None:
    model = build_model("deep-mnist", (16, 16), 3, augment=AugmentConfig(), seed=1)
    names = [layer.name for layer in model.layers]
    assert {"aug_flip", "aug_noise", "aug_blur", "aug_scale"} <= set(names)
    x = np.random.default_rng(0).integers(0, 255, (4, 16, 16, 3), dtype=np.uint8)
    a, b = np.asarray(model(x, training=False)), np.asarray(model(x, training=False))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(np.asarray(model(x, training=True)), a)
    plain = build_model("deep-mnist", (16, 16), 3, augment=False)
    assert not any(n.startswith("aug_") for n in (layer.name for layer in plain.layers))
    no_cam = build_model("pi-cnn", (16, 16), 3, augment=AugmentConfig(camera=False))
    assert "aug_noise" not in [layer.name for layer in no_cam.layers]


def test_deep_mnist_is_the_literal_network() -> None:
    model = build_model("deep-mnist", (32, 32), 9, augment=False)
    convs = [la for la in model.layers if isinstance(la, keras.layers.Conv2D)]
    assert [(c.filters, c.kernel_size) for c in convs] == [(32, (5, 5)), (64, (5, 5))]
    assert model.get_layer("fc1").units == 1024
    assert model.get_layer("dropout").rate == 0.5
    assert model.count_params() == 4_258_249
    assert build_model("pi-cnn", (32, 32), 9).count_params() < 500_000


def test_softmax_learns_separable_colours(tmp_path: Path) -> None:
    data = make_grade_tree(tmp_path / "data", per_grade=10, size=8)
    r = train(
        TrainConfig(
            data_dir=data,
            out=tmp_path / "run",
            arch="softmax",
            epochs=40,
            batch_size=8,
            learning_rate=0.02,
            val_fraction=0.3,
            augment=AugmentConfig.off(),
            patience=40,
            reports=False,
            verbose=0,
        )
    )
    assert r.val_accuracy == 1.0
    assert r.confused == []


def test_mixed_precision_and_mirrored_strategy_flags(tmp_path: Path) -> None:
    data = make_grade_tree(tmp_path / "data", per_grade=6, size=8)
    r = train(
        TrainConfig(
            data_dir=data,
            out=tmp_path / "run",
            arch="pi-cnn",
            epochs=1,
            batch_size=6,
            val_fraction=0.34,
            mixed_precision=True,
            multi_gpu=True,
            reports=False,
            verbose=0,
        )
    )
    assert keras.mixed_precision.global_policy().name == "float32"  # restored
    model = load_run_model(r.run_dir)
    assert model.get_layer("grades").dtype_policy.compute_dtype == "float32"
    assert model.get_layer("conv1a").dtype_policy.compute_dtype == "float16"
    infer = inference_model(model)
    assert infer.get_layer("conv1a").dtype_policy.compute_dtype == "float32"


def test_cucumber9_slice_train_and_evaluate(tmp_path: Path) -> None:
    """Import the published-format mini batch, train deep-mnist briefly, evaluate the run."""
    import_cucumber9(MINI, tmp_path / "c9")
    r = train(
        TrainConfig(
            data_dir=tmp_path / "c9",
            out=tmp_path / "run",
            arch="deep-mnist",
            epochs=2,
            test_fraction=0.17,
            val_fraction=0.17,
            verbose=0,
        )
    )
    m = json.loads((r.run_dir / "metrics.json").read_text())
    assert len(m["labels"]) == 9 and np.array(m["val"]["confusion"]).sum() == 18
    assert r.test_accuracy is not None and 0.0 <= r.test_accuracy <= 1.0
    cfg = json.loads((r.run_dir / "config.json").read_text())
    assert cfg["input_size"] == [32, 32] and cfg["field_of_view_mm"] == [250.0, 250.0]
    ev = evaluate_run(r.run_dir, tmp_path / "c9", out=tmp_path / "eval")
    res = ev.metrics["test"]
    assert res["n"] == 108 and np.array(res["confusion"]).sum() == 108
    assert ev.metrics["labels"] == m["labels"]
    assert (tmp_path / "eval" / "metrics.json").is_file()
    assert (tmp_path / "eval" / "confusion.png").is_file()


def test_cli_import_train_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_run(["import-cucumber9", str(MINI), str(tmp_path / "c9")]) == 0
    assert "all: 108 images" in capsys.readouterr().out
    argv = [str(tmp_path / "c9"), "--out", str(tmp_path / "run"), "--arch", "softmax"]
    assert cli_run([*argv, "--epochs", "1", "--no-reports", "--quiet", "--no-augment"]) == 0
    out = capsys.readouterr().out
    assert f"run: {(tmp_path / 'run').resolve()}" in out
    assert "validation accuracy:" in out and "most confused grades" in out
    assert cli_run(["evaluate", str(tmp_path / "run"), str(tmp_path / "c9")]) == 0
    assert "accuracy on" in capsys.readouterr().out


def test_cli_user_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_run([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "missing" in err
    make_grade_tree(tmp_path / "one", per_grade=6, grades={"only": (1, 2, 3)})
    assert cli_run([str(tmp_path / "one")]) == 2
    assert "need at least 2" in capsys.readouterr().err
    make_grade_tree(tmp_path / "two", per_grade=6)
    assert cli_run([str(tmp_path / "two"), "--arch", "resnet999"]) == 2
    assert "unknown network" in capsys.readouterr().err
    assert cli_run(["evaluate", str(tmp_path / "two"), str(tmp_path / "two")]) == 2
    assert "labels.txt: not found" in capsys.readouterr().err
    assert cli_run(["import-cucumber9", str(tmp_path), str(tmp_path / "x")]) == 2
    assert "no data_batch_* files" in capsys.readouterr().err
