"""The training recipe's pieces: k-fold splits, the time budget, the default input size for
large photos, the device estimate, and runs that carry their robustness report."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.test_training_data import make_grade_tree, write_rgb
from training import budget as B
from training import data as D
from training.cli import run as cli_run
from training.folds import fold_split, make_split
from training.inputs import class_weights, default_input_size
from training.train import TrainConfig, train


def _items(per: dict[str, int]) -> list[tuple[str, str]]:
    return [(f"{g}/{i:03d}.png", g) for g, n in per.items() for i in range(n)]


def test_every_image_is_held_out_in_exactly_one_fold() -> None:
    items = _items({"a": 23, "b": 17, "c": 30})
    seen: list[str] = []
    for k in range(5):
        sp = fold_split(items, 5, k, seed=3)
        assert not {r for r, _ in sp["test"]} & {r for r, _ in sp["train"]}
        assert len(sp["train"]) + len(sp["test"]) == len(items) and sp["val"] == []
        for g, n in (("a", 23), ("b", 17), ("c", 30)):  # stratified: n/5 per grade, +-1
            assert abs(sum(lab == g for _, lab in sp["test"]) - n / 5) <= 1
        seen += [r for r, _ in sp["test"]]
    assert sorted(seen) == sorted(r for r, _ in items)
    carved = fold_split(items, 5, 0, seed=3, val_fraction=0.1)
    assert 4 <= len(carved["val"]) <= 8 and not {*carved["val"]} & {*carved["test"]}


def test_val_fraction_zero_trains_on_everything(tmp_path: Path) -> None:
    make_grade_tree(tmp_path, per_grade=6)
    scan = D.scan_dataset(tmp_path)
    sp = make_split(scan, val_fraction=0.0, test_fraction=0.0, seed=0)
    assert len(sp["train"]) == 18 and sp["val"] == [] and sp["test"] == []


def test_large_photos_get_about_1024_pixels_at_their_aspect(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(0)
    for g in ("ripe", "green"):
        for i, (h, w) in enumerate([(250, 300), (240, 310), (262, 326), (250, 300), (230, 280)]):
            write_rgb(tmp_path / g / f"{i}.jpg", rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    scan = D.scan_dataset(tmp_path)
    with caplog.at_level(logging.WARNING):
        size = default_input_size(scan)
    assert size == (28, 36)  # h x w: the median 250x300 photo at ~1024 pixels
    assert "28x36" in caplog.text and "--input-size" in caplog.text
    small = make_grade_tree(tmp_path / "small", per_grade=5, size=32)
    assert default_input_size(D.scan_dataset(small)) == (32, 32)


def test_weight_decay_shrinks_kernels_only() -> None:
    import keras

    from training.train import make_optimizer

    kernel = keras.Variable(np.full((3, 3), 2.0, np.float32), name="kernel")
    gamma = keras.Variable(np.ones(3, np.float32), name="gamma")
    bias = keras.Variable(np.ones(3, np.float32), name="bias")
    opt = make_optimizer(1e-2, weight_decay=0.5)
    for _ in range(3):  # zero gradients: Adam moves nothing, only the decay acts
        opt.apply_gradients(
            [(np.zeros((3, 3), np.float32), kernel)]
            + [(np.zeros(3, np.float32), v) for v in (gamma, bias)]
        )
    assert np.allclose(kernel.numpy(), 2.0 * (1 - 0.5 * 1e-2) ** 3)
    assert np.allclose(gamma.numpy(), 1.0) and np.allclose(bias.numpy(), 1.0)
    plain = keras.Variable(np.full(2, 2.0, np.float32), name="kernel")
    make_optimizer(1e-2).apply_gradients([(np.zeros(2, np.float32), plain)])
    assert np.allclose(plain.numpy(), 2.0)


def test_class_weights_power() -> None:
    split = _items({"a": 90, "b": 10})
    full = class_weights(split, ["a", "b"], power=1.0)
    half = class_weights(split, ["a", "b"], power=0.5)
    assert full[1] / full[0] == pytest.approx(9.0) and half[1] / half[0] == pytest.approx(3.0)


def test_epoch_budget_cuts_the_plan_once_it_has_measured(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    now = {"t": 0.0}

    def fake() -> float:
        return now["t"]

    monkeypatch.setattr(B.time, "monotonic", fake)
    plan = B.EpochBudget(epochs=100, budget_s=60.0, spent_s=10.0)
    for epoch in range(100):
        plan.start_epoch()
        now["t"] += 5.0 if epoch else 9.0  # the first epoch also builds the graph
        if plan.end_epoch():
            break
    assert plan.epochs == len(plan.epoch_s) == 9  # 10 s spent + 9 + 8 x 5 = 59 s <= 60
    assert plan.per_epoch() == 5.0
    assert "over the 1-min time budget" in caplog.text and "training 9 epochs" in caplog.text
    free = B.EpochBudget(epochs=3, budget_s=None)
    ends = []
    for _ in range(3):
        free.start_epoch()
        now["t"] += 100.0
        ends.append(free.end_epoch())
    assert ends == [False, False, True] and free.epochs == 3


def test_device_estimate_warns_past_five_ms(caplog: pytest.LogCaptureFixture) -> None:
    from training.model import build_model, inference_model

    small = inference_model(build_model("pi-cnn", (32, 32), 9, augment=False), batch_size=1)
    with caplog.at_level(logging.WARNING):
        est = B.check_device(small, 2)  # the default: the crop and its 180-degree turn
    assert 3.0 < est["pi4_1t_ms"] < B.PI4_LIMIT_MS and "Raspberry Pi" not in caplog.text
    big = inference_model(build_model("pi-cnn", (96, 96), 9, augment=False), batch_size=1)
    with caplog.at_level(logging.WARNING):
        assert B.check_device(big)["pi4_1t_ms"] > B.PI4_LIMIT_MS
    assert "Raspberry Pi 4 core" in caplog.text and "--input-size" in caplog.text
    # test-time averaging over two views doubles the arithmetic
    assert B.device_estimate(small, 2)[0] == 2 * B.count_macs(small)


@pytest.mark.slow
def test_default_recipe_run_writes_robustness_and_evaluate_recomputes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_grade_tree(tmp_path / "data", per_grade=10, size=16)
    r = train(
        TrainConfig(
            data_dir=data,
            out=tmp_path / "run",
            epochs=3,
            batch_size=8,
            val_fraction=0.3,
            time_budget_min=30,
            verbose=0,
        )
    )
    rob = json.loads((r.run_dir / "robustness.json").read_text())
    assert rob["split"] == "val" and rob["images"] == 9
    assert rob["clean"] == pytest.approx(r.val_accuracy)
    assert r.mean_corruption == pytest.approx(rob["mean_corruption"])
    assert (r.run_dir / "robustness.md").is_file() and (r.run_dir / "robustness.png").is_file()
    cfg = json.loads((r.run_dir / "config.json").read_text())
    assert cfg["camera_augment"]["variants"] == 12 and cfg["schedule"] == "cosine"
    assert cfg["epochs_planned"] == 3 and cfg["device_estimate"]["pi4_1t_ms"] > 0
    assert cli_run(["evaluate", str(r.run_dir), str(data), "--robustness"]) == 0
    out = capsys.readouterr().out
    assert "mean corruption" in out and "x0.95" in out
    ev = tmp_path / "run" / "eval-data"
    again = json.loads((ev / "robustness.json").read_text())
    assert again["images"] == 30 and set(again["kinds"]) == set(rob["kinds"])


@pytest.mark.slow
def test_fold_run_on_all_but_one_fold(tmp_path: Path) -> None:
    data = make_grade_tree(tmp_path / "data", per_grade=10, size=12)
    r = train(
        TrainConfig(
            data_dir=data,
            out=tmp_path / "f1",
            epochs=1,
            batch_size=8,
            val_fraction=0.0,
            folds=5,
            fold=1,
            reports=False,
            verbose=0,
        )
    )
    split = json.loads((r.run_dir / "split.json").read_text())
    assert len(split["test"]) == 6 and len(split["train"]) == 24 and split["val"] == []
    assert r.val_accuracy is None and r.test_accuracy is not None
    assert json.loads((r.run_dir / "robustness.json").read_text())["split"] == "test"


def test_default_training_is_the_cross_validated_default_recipe(tmp_path: Path) -> None:
    from training.cv import CV_RECIPES, DEFAULT_RECIPE
    from training.defaults import BASE_EPOCHS, DEFAULTS

    rec = CV_RECIPES[DEFAULT_RECIPE]
    cfg = TrainConfig(data_dir=tmp_path)  # what `sorter-train DATA` trains
    assert cfg.camera == rec.camera and cfg.augment == rec.augment
    assert cfg.epochs == round(BASE_EPOCHS * rec.epochs_factor)
    assert (cfg.schedule, cfg.batch_size, cfg.early_stopping) == (
        rec.schedule,
        rec.batch_size,
        rec.early_stopping,
    )
    assert (cfg.weight_decay, cfg.ema, cfg.label_smoothing, cfg.widths, cfg.test_views) == (
        rec.weight_decay,
        rec.ema,
        rec.label_smoothing,
        rec.widths,
        rec.flip_views,
    )
    assert rec.ensemble == DEFAULTS.ensemble and not rec.teachers and rec.arch == cfg.arch
    from training.model import PI_CNN_WIDTHS

    assert DEFAULTS.widths == PI_CNN_WIDTHS  # `pi-cnn` names the default network


def test_a_distilled_recipe_takes_its_fold_teacher_and_new_renders_on_the_same_fold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`camera-narrow18-tta-xl-v12-wd-ba` learns from its teacher's run of the same fold,
    on renders seeded apart from the teacher's (seed_offset), the fold split unchanged."""
    import training.train as T
    from training import cv

    seen: list[Any] = []
    monkeypatch.setattr(T, "train", seen.append)
    name = "camera-narrow18-tta-xl-v12-wd-ba"
    with pytest.raises(RuntimeError, match="teacher runs missing"):
        cv.train_fold(tmp_path, tmp_path, name, 2, 5, 60, 7)
    teacher = tmp_path / "camera-narrow18-tta-xl-v12-wd-f2"
    teacher.mkdir()
    (teacher / "model.keras").write_bytes(b"")
    cv.train_fold(tmp_path, tmp_path, name, 2, 5, 60, 7)
    (cfg,) = seen
    assert (cfg.seed, cfg.split_seed, cfg.fold, cfg.folds) == (8, 7, 2, 5)
    assert cfg.teachers == (teacher,) and cfg.epochs == 240
