"""sorter-train finetune: a tiny run taught a few belt crops (bigger than its input, one grade
with none), written as a normal run folder that sorter-export exports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sorter.errors import DatasetError
from tests.test_training_data import COLOURS, make_grade_tree
from training import export as E
from training.cli import run as cli_run
from training.data import load_split_images
from training.finetune import FinetuneConfig, finetune
from training.train import TrainConfig, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("base")
    data = make_grade_tree(root / "data", per_grade=10, size=16)
    return train(
        TrainConfig(
            data_dir=data,
            out=root / "run",
            epochs=2,
            batch_size=8,
            val_fraction=0.2,
            camera=None,
            reports=False,
            robustness=False,
            verbose=0,
        )
    ).run_dir


@pytest.fixture
def belt(tmp_path: Path) -> Path:
    """Belt crops: 48x48 (bigger than the 16x16 input), darker ('another light'), two of the
    three grades, one with only 4 crops; plus the folders a review leaves that are not grades."""
    colours = {g: tuple(int(0.6 * c) for c in COLOURS[g]) for g in ("green", "red")}
    make_grade_tree(tmp_path / "belt", per_grade=12, size=48, seed=3, grades=colours)
    for extra in sorted((tmp_path / "belt" / "red").iterdir())[4:]:
        extra.unlink()
    make_grade_tree(
        tmp_path / "belt" / "_not_produce", per_grade=2, size=48, grades={"x": (9, 9, 9)}
    )
    (tmp_path / "belt" / "_review_log.jsonl").write_text("{}\n")
    return tmp_path / "belt"


def test_finetune_writes_a_run_folder_from_belt_crops_and_old_data(
    base_run: Path, belt: Path, tmp_path: Path
) -> None:
    r = finetune(
        FinetuneConfig(
            run_dir=base_run,
            data_dir=belt,
            out=tmp_path / "ft",
            epochs=2,
            batch_size=8,
            old_per_grade=4,
            time_budget_min=None,
            verbose=0,
        )
    )
    ft = r.run_dir
    # green: 12 crops -> 2 held out (20%); red: 4 -> 1 held out; blue: none on the belt
    assert (r.belt_train, r.belt_held_out, r.old_sample, r.epochs_run) == (13, 3, 12, 2)
    for name in ("model.keras", "labels.txt", "config.json", "split.json", "metrics.json"):
        assert (ft / name).is_file(), name
    for name in ("robustness.json", "history.json", "confusion.png", "errors.png"):
        assert (ft / name).is_file(), name
    assert (ft / "labels.txt").read_text() == (base_run / "labels.txt").read_text()
    split = json.loads((ft / "split.json").read_text())
    base_split = json.loads((base_run / "split.json").read_text())
    assert len(split["val"]) == len(base_split["val"]) == 6  # the original validation split
    assert all(Path(p).is_absolute() for p, _ in split["val"])
    assert sorted(lab for _, lab in split["test"]) == ["green", "green", "red"]
    assert not any("_not_produce" in p for p, _ in split["train"])
    train_labels = [lab for _, lab in split["train"]]
    assert train_labels.count("blue") == 4  # the grade with no crops keeps its old images
    metrics = json.loads((ft / "metrics.json").read_text())
    assert metrics["val"]["n"] == 6 and metrics["test"]["n"] == 3
    assert set(metrics["finetune"]["before"]) == {"val", "test"}
    assert r.accuracy["test"] == pytest.approx(metrics["test"]["accuracy"])
    config = json.loads((ft / "config.json").read_text())
    assert config["input_size"] == [16, 16] and config["arch"] == "pi-cnn"
    info = config["finetune"]
    assert info["base_run"] == str(base_run) and info["belt_data_dir"] == str(belt.resolve())
    assert len(info["belt_dataset_fingerprint"]) == 64 and info["old_sample"] == 12
    assert json.loads((ft / "robustness.json").read_text())["split"] == "val"
    # belt crops were resized to the model input by the shared preprocessing
    x, _ = load_split_images(ft, "test")
    assert x.shape == (3, 16, 16, 3)
    # and it exports like any run
    exported = E.export_run(ft, E.ExportOptions(quantize=True, out=tmp_path / "ft.tflite"))
    assert exported.path.is_file()
    assert {f.split for f in exported.fidelity} == {"val", "test"}


def test_cli_prints_both_accuracies_and_refuses_foreign_grades(
    base_run: Path, belt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ft-cli"
    args = ["finetune", str(base_run), str(belt), "--out", str(out), "--epochs", "1"]
    assert cli_run([*args, "--old-per-grade", "2", "--no-reports", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "original validation:" in text and "held-out belt crops:" in text
    assert "(base model" in text and (out / "model.keras").is_file()
    # a grade the run does not know: one line, nothing written
    make_grade_tree(belt, per_grade=3, size=48, grades={"purple": (120, 0, 120)})
    assert cli_run(["finetune", str(base_run), str(belt), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "purple" in err and "not grades of the run" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_no_crops_at_all_is_a_clear_error(base_run: Path, tmp_path: Path) -> None:
    (tmp_path / "empty" / "green").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no readable images"):
        finetune(FinetuneConfig(run_dir=base_run, data_dir=tmp_path / "empty"))
