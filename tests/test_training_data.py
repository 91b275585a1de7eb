"""Dataset scanning, checks and splits for sorter-train (no TensorFlow needed)."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from sorter.errors import DatasetError
from training import data as D

COLOURS = {"blue": (0, 0, 255), "green": (0, 255, 0), "red": (255, 0, 0)}
"""Grade name -> RGB colour of the generated images (sorted names = class order)."""


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    """Write an RGB uint8 image (OpenCV wants BGR)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def make_grade_tree(
    root: Path, per_grade: int = 8, size: int = 16, seed: int = 0, grades: dict | None = None
) -> Path:
    """A folder-per-grade tree of noisy single-colour squares, easy to learn."""
    rng = np.random.default_rng(seed)
    for name, colour in (grades or COLOURS).items():
        for i in range(per_grade):
            img = np.clip(
                np.array(colour, dtype=np.int16) * 0.7 + rng.integers(0, 60, (size, size, 3)),
                0,
                255,
            ).astype(np.uint8)
            write_rgb(root / name / f"{name}_{i:03d}.png", img)
    return root


def test_scan_finds_grades_sorted_and_native_size(tmp_path: Path) -> None:
    make_grade_tree(tmp_path, per_grade=6, size=20)
    scan = D.scan_dataset(tmp_path)
    assert scan.labels == ["blue", "green", "red"]
    assert scan.counts() == {"blue": 6, "green": 6, "red": 6}
    assert scan.native_size() == (20, 20)
    assert not scan.presplit and not scan.corrupt and not scan.ignored


def test_corrupt_image_listed_and_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_grade_tree(tmp_path, per_grade=6)
    bad = tmp_path / "red" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    empty = tmp_path / "green" / "empty.jpg"
    empty.write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="training.data"):
        scan = D.scan_dataset(tmp_path)
    assert sorted(scan.corrupt) == sorted([bad.resolve(), empty.resolve()])
    assert scan.counts() == {"blue": 6, "green": 6, "red": 6}
    assert "skipped 2 unreadable image file(s)" in caplog.text
    assert str(bad.resolve()) in caplog.text


def test_non_image_files_ignored_with_note(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_grade_tree(tmp_path, per_grade=5)
    (tmp_path / "red" / "notes.txt").write_text("picked on Tuesday")
    (tmp_path / "README.md").write_text("my cucumbers")
    with caplog.at_level(logging.INFO, logger="training.data"):
        scan = D.scan_dataset(tmp_path)
    assert len(scan.ignored) == 2
    assert "ignored 2 non-image file(s)" in caplog.text
    assert scan.counts()["red"] == 5


def test_underscore_and_dot_folders_are_not_grades(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_grade_tree(tmp_path, per_grade=5)
    # what `sorter run --save-crops` leaves beside the grade folders: low-confidence crops
    make_grade_tree(tmp_path / "_review", per_grade=2, grades={"red": (255, 0, 0)})
    make_grade_tree(tmp_path / ".thumbs", per_grade=1, grades={"blue": (0, 0, 255)})
    with caplog.at_level(logging.INFO, logger="training.data"):
        scan = D.scan_dataset(tmp_path)
    assert scan.labels == ["blue", "green", "red"]
    assert scan.counts() == {"blue": 5, "green": 5, "red": 5}
    assert not any(s.relpath.startswith(("_review", ".thumbs")) for s in scan.samples)
    assert "skipping folder(s) .thumbs/, _review/" in caplog.text


def test_underscore_folders_skipped_inside_a_split_tree(tmp_path: Path) -> None:
    make_grade_tree(tmp_path / "train", per_grade=6)
    make_grade_tree(tmp_path / "val", per_grade=2)
    make_grade_tree(tmp_path / "train" / "_review", per_grade=1, grades={"red": (255, 0, 0)})
    (tmp_path / "_notes").mkdir()
    scan = D.scan_dataset(tmp_path)
    assert scan.presplit
    assert scan.labels == ["blue", "green", "red"]
    assert scan.counts("train") == {"blue": 6, "green": 6, "red": 6}


def test_too_few_images_in_a_grade_is_an_error(tmp_path: Path) -> None:
    make_grade_tree(tmp_path, per_grade=6)
    for p in sorted((tmp_path / "green").iterdir())[2:]:
        p.unlink()
    with pytest.raises(DatasetError, match=r"green: grade 'green' has 2 readable image\(s\)"):
        D.scan_dataset(tmp_path)


def test_corrupt_files_do_not_count_towards_the_minimum(tmp_path: Path) -> None:
    make_grade_tree(tmp_path, per_grade=4)
    (tmp_path / "red" / "bad.png").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="grade 'blue' has 4"):
        D.scan_dataset(tmp_path)


def test_fewer_than_two_grades_is_an_error(tmp_path: Path) -> None:
    make_grade_tree(tmp_path, per_grade=6, grades={"only": (10, 200, 10)})
    with pytest.raises(DatasetError, match="need at least 2"):
        D.scan_dataset(tmp_path)
    with pytest.raises(DatasetError, match="not found"):
        D.scan_dataset(tmp_path / "nope")


def test_grayscale_rgba_and_mixed_sizes_are_converted(tmp_path: Path) -> None:
    make_grade_tree(tmp_path, per_grade=5, size=16)
    gray = np.full((24, 30), 77, dtype=np.uint8)
    assert cv2.imwrite(str(tmp_path / "blue" / "gray.png"), gray)
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[..., 2] = 200  # red in BGRA
    rgba[..., 3] = 128
    assert cv2.imwrite(str(tmp_path / "red" / "alpha.png"), rgba)
    scan = D.scan_dataset(tmp_path)
    assert scan.native_size() == (16, 16)  # the most common size wins
    items = [(s.relpath, s.label) for s in scan.samples]
    x, y = D.load_arrays(scan.root, items, scan.labels, (16, 16), scan.decoded)
    assert x.shape == (17, 16, 16, 3) and x.dtype == np.uint8
    by_name = {rel: i for i, (rel, _) in enumerate(items)}
    assert np.all(x[by_name["blue/gray.png"]] == 77)
    assert tuple(x[by_name["red/alpha.png"]][0, 0]) == (200, 0, 0)
    assert y[by_name["red/alpha.png"]] == scan.labels.index("red")


def test_split_is_stratified_and_reproducible(tmp_path: Path) -> None:
    make_grade_tree(tmp_path, per_grade=20)
    scan = D.scan_dataset(tmp_path)
    a = D.make_split(scan, val_fraction=0.2, test_fraction=0.1, seed=3)
    b = D.make_split(scan, val_fraction=0.2, test_fraction=0.1, seed=3)
    c = D.make_split(scan, val_fraction=0.2, test_fraction=0.1, seed=4)
    assert a == b
    assert a["val"] != c["val"]
    assert Counter(lab for _, lab in a["val"]) == {"blue": 4, "green": 4, "red": 4}
    assert Counter(lab for _, lab in a["test"]) == {"blue": 2, "green": 2, "red": 2}
    everything = a["train"] + a["val"] + a["test"]
    assert len(everything) == 60 and len(set(everything)) == 60


def test_split_too_small_for_fraction(tmp_path: Path) -> None:
    make_grade_tree(tmp_path, per_grade=5)
    scan = D.scan_dataset(tmp_path)
    with pytest.raises(DatasetError, match="too few"):
        D.make_split(scan, val_fraction=0.6, test_fraction=0.3, seed=0)


def test_presplit_train_val_test(tmp_path: Path) -> None:
    make_grade_tree(tmp_path / "train", per_grade=6)
    make_grade_tree(tmp_path / "val", per_grade=2, seed=1)
    make_grade_tree(tmp_path / "test", per_grade=3, seed=2)
    scan = D.scan_dataset(tmp_path)
    assert scan.presplit
    split = D.make_split(scan, val_fraction=0.1, test_fraction=0.0, seed=0)
    assert {k: len(v) for k, v in split.items()} == {"train": 18, "val": 6, "test": 9}
    assert all(rel.startswith("val/") for rel, _ in split["val"])


def test_presplit_train_test_carves_val_from_train(tmp_path: Path) -> None:
    make_grade_tree(tmp_path / "train", per_grade=10)
    make_grade_tree(tmp_path / "test", per_grade=3, seed=2)
    scan = D.scan_dataset(tmp_path)
    split = D.make_split(scan, val_fraction=0.2, test_fraction=0.0, seed=0)
    assert len(split["val"]) == 6 and len(split["train"]) == 24 and len(split["test"]) == 9
    assert all(rel.startswith("train/") for rel, _ in split["val"])
    assert all(rel.startswith("test/") for rel, _ in split["test"])


def test_train_folder_alone_is_a_split_tree(tmp_path: Path) -> None:
    make_grade_tree(tmp_path / "train", per_grade=10)
    scan = D.scan_dataset(tmp_path)
    assert scan.presplit and scan.labels == ["blue", "green", "red"]
    split = D.make_split(scan, val_fraction=0.2, test_fraction=0.0, seed=0)
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (24, 6, 0)


def test_presplit_unknown_grade_in_test_is_an_error(tmp_path: Path) -> None:
    make_grade_tree(tmp_path / "train", per_grade=6)
    make_grade_tree(tmp_path / "test", per_grade=2, grades={"purple": (128, 0, 128)})
    with pytest.raises(DatasetError, match="'purple' is not in train/"):
        D.scan_dataset(tmp_path)


def test_fingerprint_tracks_files_and_labels(tmp_path: Path) -> None:
    make_grade_tree(tmp_path, per_grade=6)
    f1 = D.scan_dataset(tmp_path).fingerprint()
    assert f1 == D.scan_dataset(tmp_path).fingerprint()
    (tmp_path / "red" / "red_000.png").rename(tmp_path / "blue" / "red_000.png")
    assert D.scan_dataset(tmp_path).fingerprint() != f1


def test_class_weights_compensate_imbalance(tmp_path: Path) -> None:
    items = [(f"a/{i}", "a") for i in range(30)] + [(f"b/{i}", "b") for i in range(10)]
    w = D.class_weights(items, ["a", "b"])
    assert w[0] == pytest.approx(40 / (2 * 30)) and w[1] == pytest.approx(40 / (2 * 10))
    assert w[0] * 30 == pytest.approx(w[1] * 10)
    assert D.imbalance_ratio(items) == 3.0


def test_split_manifest_round_trip(tmp_path: Path) -> None:
    make_grade_tree(tmp_path / "ds", per_grade=6)
    scan = D.scan_dataset(tmp_path / "ds")
    split = D.make_split(scan, val_fraction=0.34, test_fraction=0.0, seed=1)
    run = tmp_path / "run"
    run.mkdir()
    D.write_split(run / "split.json", scan.root, split)
    (run / "labels.txt").write_text("blue\ngreen\nred\n")
    (run / "config.json").write_text(json.dumps({"input_size": [8, 12]}))
    doc = json.loads((run / "split.json").read_text())
    assert doc["root"] == str(scan.root) and doc["test"] == []
    x, y = D.load_split_images(run, "val")
    assert x.shape == (len(split["val"]), 8, 12, 3)
    assert [scan.labels[i] for i in y] == [lab for _, lab in split["val"]]
    with pytest.raises(DatasetError, match="unknown split"):
        D.load_split_images(run, "holdout")
