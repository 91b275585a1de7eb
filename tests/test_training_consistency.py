"""training.consistency: the Jensen-Shannon term between two renders of one picture, the
paired pool pipeline it needs, and a tiny run trained with it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from sorter.errors import ConfigError
from tests.test_training_data import make_grade_tree
from training import camera_augment as A
from training.train import TrainConfig, train


def test_pair_consistency_adds_the_js_term_to_cross_entropy() -> None:
    import keras

    from training.consistency import PairConsistency

    base = keras.losses.SparseCategoricalCrossentropy()
    loss = PairConsistency(base, weight=12.0)
    y = np.array([0, 0], np.int32)
    same = np.array([[0.8, 0.2], [0.8, 0.2]], np.float32)
    assert float(loss(y, same)) == pytest.approx(-math.log(0.8), rel=1e-5)  # JS of equals is 0
    apart = np.array([[0.8, 0.2], [0.2, 0.8]], np.float32)
    kl = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)  # each row against the mean
    ce = (-math.log(0.8) - math.log(0.2)) / 2
    assert float(loss(y, apart)) == pytest.approx(ce + 12.0 * kl, rel=1e-5)
    again = PairConsistency.from_config(loss.get_config())  # a saved run's compile config
    assert again.weight == 12.0 and float(again(y, apart)) == pytest.approx(float(loss(y, apart)))


def test_paired_pool_puts_a_different_render_of_the_same_picture_beside_each_view() -> None:
    n, k = 10, 4
    pool = np.zeros((1 + k, n, 4, 4, 3), np.uint8)
    for v in range(1 + k):
        pool[v, :, :, :, 0] = v  # channel 0: which view
        pool[v, :, :, :, 1] = np.arange(n)[:, None, None]  # channel 1: which picture
    ds = A.pool_dataset(pool, np.arange(n), clean_fraction=0.4, batch_size=4, seed=3, pairs=True)
    firsts, seconds, pictures = [], [], []
    for _ in range(20):
        for xb, yb in ds:
            xb, yb = xb.numpy(), yb.numpy()
            assert len(xb) % 2 == 0 and len(xb) <= 8
            view, pic = xb[:, 0, 0, 0], xb[:, 0, 0, 1]
            assert np.array_equal(pic, yb)  # labels follow their rows
            assert np.array_equal(pic[0::2], pic[1::2])  # rows 2i, 2i+1: one picture
            assert np.all(view[1::2] >= 1) and np.all(view[0::2] != view[1::2])
            firsts.extend(view[0::2])
            seconds.extend(view[1::2])
            pictures.extend(pic[0::2])
    assert sorted(pictures) == sorted(list(range(n)) * 20)  # every picture once per epoch
    assert 0.25 < np.mean(np.array(firsts) == 0) < 0.55  # the usual clean share first
    assert set(seconds) == set(range(1, 1 + k))  # every render serves as the second


def test_consistency_needs_the_renders(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--consistency 1\.0: needs the camera renders"):
        train(TrainConfig(data_dir=tmp_path, out=tmp_path / "r", camera=None, consistency=1.0))
    with pytest.raises(ConfigError, match=r"--consistency -1\.0: must be 0 or more"):
        train(TrainConfig(data_dir=tmp_path, out=tmp_path / "r", consistency=-1.0))


def test_consistency_is_refused_with_multi_worker_before_any_cluster_is_joined(
    tmp_path: Path,
) -> None:
    cfg = TrainConfig(
        data_dir=tmp_path,
        out=tmp_path / "r",
        multi_worker=True,
        early_stopping=False,
        consistency=1.0,
    )
    with pytest.raises(ConfigError, match=r"--multi-worker does not train with --consistency"):
        train(cfg)
    assert not (tmp_path / "r").exists()


def test_a_tiny_run_trains_with_the_consistency_term_and_saves(tmp_path: Path) -> None:
    data = make_grade_tree(tmp_path / "data", per_grade=8, size=12)
    r = train(
        TrainConfig(
            data_dir=data,
            out=tmp_path / "run",
            epochs=2,
            batch_size=8,
            val_fraction=0.25,
            consistency=12.0,
            reports=False,
            robustness=False,
            verbose=0,
        )
    )
    cfg = json.loads((r.run_dir / "config.json").read_text())
    assert cfg["consistency"] == 12.0
    history = json.loads((r.run_dir / "history.json").read_text())
    assert len(history["loss"]) == 2 and all(math.isfinite(v) for v in history["loss"])
    import keras

    model = keras.saving.load_model(r.run_dir / "model.keras")  # compiled, with its loss
    assert model.loss.weight == 12.0
