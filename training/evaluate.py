"""Score a trained run on any folder-per-grade tree with (a subset of) the same grades.

Writes OUT/metrics.json in the run's metrics format (``{"labels": [...], "test": {...}}``,
plus ``data_dir`` and ``split``), OUT/confusion.png and OUT/errors.png. OUT defaults to
RUN_DIR/eval-<data folder name>/.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from sorter.errors import DatasetError, ModelError
from sorter.grading.metrics import compute_metrics, most_confused_pairs
from training import data as D
from training import reports
from training.model import inference_model
from training.train import predict

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """What `evaluate_run` found and wrote."""

    out_dir: Path
    """Folder holding metrics.json and the pictures."""
    metrics: dict[str, Any]
    """The metrics.json document."""
    confused: list[tuple[str, str, int]]
    """Most confused (true, predicted, count) pairs."""


def load_run_model(run_dir: Path) -> keras.Model:
    """The run's model.keras, as a ModelError naming the file when it cannot be loaded."""
    path = run_dir / "model.keras"
    if not path.is_file():
        raise ModelError(f"{path}: not found; is {run_dir} a finished sorter-train run?")
    try:
        return keras.saving.load_model(path, compile=False)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise ModelError(f"{path}: cannot load the model ({err}); re-run sorter-train") from err


def evaluate_run(
    run_dir: str | Path,
    data_dir: str | Path,
    *,
    out: Path | None = None,
    split: str | None = None,
    robustness: bool = False,
) -> EvalResult:
    """Score `run_dir`'s model on `data_dir` and write the metrics.

    For a tree with train/val/test subfolders, `split` chooses one (default: test, else val).
    With `robustness`, also the camera-path corruption suite (robustness.json/.md/.png).
    """
    rd = Path(run_dir)
    labels = D.read_labels(rd)
    input_size = D.read_input_size(rd)
    scan = D.scan_dataset(data_dir, min_per_grade=1, min_grades=1)
    if scan.presplit:
        available = {s.given_split for s in scan.samples}
        chosen = split or ("test" if "test" in available else "val")
        if chosen not in available:
            raise DatasetError(f"{scan.root}: no {chosen}/ images to evaluate")
        samples = [s for s in scan.samples if s.given_split == chosen]
    else:
        chosen = split or "all"
        samples = scan.samples
    unknown = sorted({s.label for s in samples} - set(labels))
    if unknown:
        raise DatasetError(
            f"{scan.root}: grade folder(s) {unknown} are not grades of the model in {rd} "
            f"({', '.join(labels)}); rename or remove them"
        )
    items = [(s.relpath, s.label) for s in samples]
    x, y = D.load_arrays(scan.root, items, labels, input_size, scan.decoded)
    model = inference_model(load_run_model(rd), batch_size=None)
    y_pred = predict(model, x).argmax(axis=1)
    result = compute_metrics(y, y_pred, labels)
    doc: dict[str, Any] = {
        "labels": labels,
        "data_dir": str(scan.root),
        "split": chosen,
        "dataset_fingerprint": scan.fingerprint(),
        "test": result,
    }
    out_dir = out or rd / f"eval-{scan.root.name}"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(doc, indent=1) + "\n")
    reports.plot_confusion(result["confusion"], labels, out_dir / "confusion.png", scan.root.name)
    reports.plot_errors(x, y, y_pred, labels, out_dir / "errors.png")
    if robustness:
        from training import robustness as R

        rob = R.robustness(lambda b: predict(model, b), x, y, seed=0)
        rob["split"], rob["model"] = f"{scan.root.name} ({chosen})", "float (Keras)"
        R.write_report(rob, out_dir)
        doc["robustness"] = R.summary(rob)
    log.info("evaluation written to %s", out_dir)
    return EvalResult(out_dir, doc, most_confused_pairs(result["confusion"], labels, 3))
