"""Small stand-ins the pipeline tests share: a synthetic folder-per-grade dataset whose grade
is a colour, a classifier that grades by that colour (same interface as
sorter.grading.classifier.Classifier), and belts made from them with the real `simulate_belt`.

Also a child-process entry point (`child_main`) for the kill -9 test, and the test that the
stand-in classifier grades the source images perfectly (the reference accuracy the
end-to-end scorecards are compared with).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sorter.perception.preprocess import load_image, to_model_input
from sorter.replay.belt_sim import BeltSimConfig, simulate_belt

GRADES = ("2L", "BM", "BL", "M", "S", "L", "2S", "BS", "C")
# One RGB colour per grade, far from each other and from the orange belt (hue 10-50 deg).
PALETTE = np.array(
    [
        (30, 60, 200),  # blue
        (30, 160, 40),  # green
        (150, 40, 170),  # purple
        (20, 150, 150),  # teal
        (200, 30, 90),  # crimson
        (40, 40, 40),  # near black
        (90, 200, 230),  # sky
        (120, 120, 60),  # olive
        (230, 110, 200),  # pink
    ],
    dtype=np.float32,
)


def make_dataset(root: Path, per_grade: int = 3, size: int = 32) -> Path:
    """A folder-per-grade tree: a light tray with a coloured bar whose colour is the grade."""
    rng = np.random.default_rng(0)
    for g, grade in enumerate(GRADES):
        folder = root / grade
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_grade):
            img = np.full((size, size, 3), 215, np.uint8)
            img += rng.integers(0, 10, img.shape, dtype=np.uint8)
            c = size // 2
            img[c - 5 : c + 5, 5 : size - 5] = PALETTE[g].astype(np.uint8)
            cv2.imwrite(str(folder / f"{grade}_{i}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return root


@dataclass(frozen=True)
class _Crop:
    window_mm: tuple[float, float] = (250.0, 250.0)


@dataclass(frozen=True)
class _Meta:
    crop: _Crop = field(default_factory=_Crop)


class ColourClassifier:
    """Grades a (N, 32, 32, 3) uint8 batch by the colour of the centre of each image."""

    labels = GRADES
    input_size = (32, 32)
    metadata = _Meta()
    model_path = "stand-in colour classifier"

    def __init__(self, sharpness: float = 12.0) -> None:
        self.sharpness = sharpness
        self.calls = 0

    def classify(self, batch: np.ndarray) -> np.ndarray:
        assert batch.dtype == np.uint8 and batch.shape[1:] == (32, 32, 3), batch.shape
        self.calls += 1
        centre = batch[:, 13:19, 8:24].reshape(batch.shape[0], -1, 3).astype(np.float32)
        mean = centre.mean(axis=1)
        d = np.linalg.norm(mean[:, None, :] - PALETTE[None], axis=2)
        z = -d / self.sharpness
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)

    def classify_crops(self, crops: list[np.ndarray]) -> np.ndarray:
        return self.classify(np.stack([to_model_input(c, self.input_size) for c in crops]))


def make_belt(
    root: Path, name: str = "belt", *, per_grade: int = 2, **kwargs: Any
) -> tuple[Path, Path]:
    """A belt video + truth from the colour dataset (small and quick by default)."""
    data = make_dataset(root / "data", per_grade=per_grade)
    cfg = BeltSimConfig(
        seed=kwargs.pop("seed", 1), lead_in_s=kwargs.pop("lead_in_s", 0.3), **kwargs
    )
    result = simulate_belt(data, root / f"{name}.mp4", cfg)
    return Path(result.video), Path(result.truth)


def reference_accuracy(truth_path: Path, data_dir: Path) -> float:
    """The stand-in classifier's accuracy on the truth items' source images."""
    truth = json.loads(truth_path.read_text())
    clf = ColourClassifier()
    ok = 0
    for it in truth["items"]:
        img = to_model_input(load_image(data_dir / it["source"]), clf.input_size)
        ok += int(clf.labels[int(np.argmax(clf.classify(img[None])[0]))] == it["label"])
    return ok / len(truth["items"])


def test_colour_classifier_grades_the_source_images(tmp_path: Path) -> None:
    data = make_dataset(tmp_path)
    clf = ColourClassifier()
    for g, grade in enumerate(GRADES):
        for path in sorted((data / grade).glob("*.png")):
            probs = clf.classify(to_model_input(load_image(path), (32, 32))[None])[0]
            assert int(np.argmax(probs)) == g
            assert probs[g] > 0.6 and abs(float(probs.sum()) - 1.0) < 1e-5


def child_main() -> None:
    """`python -c 'from tests.test_pipeline_standins import child_main; child_main()' ARGS`:
    run the real loop on a video with the colour classifier (for the kill -9 test).
    ARGS: VIDEO DB MODE JSONL."""
    from sorter.config import Config
    from sorter.monitor.audit import DecisionLog
    from sorter.monitor.status import Status
    from sorter.replay.truth import run_with_truth
    from sorter.runtime.runner import RunOptions

    video, db, mode, jsonl = sys.argv[1:5]
    truth = Path(video).with_suffix(".json")
    opts = RunOptions(
        video=Path(video),
        mode=mode,
        dry_run=True,
        classifier=ColourClassifier(),
        progress=lambda st: print(f"frame {st.frames}", flush=True),
    )
    result = run_with_truth(Config(), opts, DecisionLog(db, jsonl_path=jsonl), Status(), truth)
    print(json.dumps(result.summary, default=str), flush=True)
