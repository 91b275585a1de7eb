"""Regenerate the classifier fixtures in tests/data/classifier/ (and build tiny runs for tests).

    .venv/bin/python tests/data/make_classifier_fixtures.py

Writes, from a synthetic three-grade dataset (deterministic pictures, 16x16 pixels):
- images/<grade>/*.png      a few known images per grade, in a folder-per-grade tree
- tiny-int8.tflite (+ .json) an int8 model exported by training.export with its metadata
- tiny-nometa.tflite        the same network converted without any metadata
- golden.json               the classifier's probabilities for each image (the golden data)

The test suite imports `make_run` from here to train a tiny run folder for export tests.
Regenerate the fixtures after a deliberate change to export or the classifier, and review
the diff of golden.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

GRADES = ("long", "round", "bent")
"""Three synthetic grades, told apart by shape (so the net needs its convolutions)."""
SIZE = 16
"""Image height and width in pixels."""
HERE = Path(__file__).resolve().parent
OUT = HERE / "classifier"


def synth_image(grade: int, rng: np.random.Generator) -> np.ndarray:
    """A 16x16 RGB uint8 picture: a green item of the grade's shape on a grey tray."""
    img = np.full((SIZE, SIZE, 3), 90, dtype=np.int16)
    img += rng.integers(-20, 21, size=(SIZE, SIZE, 3), dtype=np.int16)
    cy, cx = rng.integers(6, 10, size=2)
    green = np.array([40, 150 + int(rng.integers(-30, 30)), 50], dtype=np.int16)
    if grade == 0:  # long horizontal bar
        img[cy - 1 : cy + 2, 2:14] = green
    elif grade == 1:  # compact blob
        img[cy - 3 : cy + 3, cx - 3 : cx + 3] = green
    else:  # bent: an L shape
        img[cy - 1 : cy + 2, 2:9] = green
        img[2 : cy + 2, 7:10] = green
    return np.clip(img, 0, 255).astype(np.uint8)


def write_dataset(root: Path, per_grade: int, seed: int) -> list[tuple[str, str]]:
    """Write per_grade PNGs per grade under root/<grade>/; returns [(relpath, grade)]."""
    import cv2

    rng = np.random.default_rng(seed)
    items: list[tuple[str, str]] = []
    for g, name in enumerate(GRADES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_grade):
            rel = f"{name}/{name}_{i:03d}.png"
            img = synth_image(g, rng)
            cv2.imwrite(str(root / rel), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            items.append((rel, name))
    return items


def build_keras_model(n_classes: int, seed: int = 0):  # type: ignore[no-untyped-def]
    """Plain Keras: raw uint8 input, rescaling inside, conv/pool/flatten/dense, dropout."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inp = keras.Input((SIZE, SIZE, 3), dtype="uint8", name="image")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inp)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(name="pool1")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(16, activation="relu", name="fc1")(x)
    x = layers.Dropout(0.2, name="dropout")(x)
    out = layers.Dense(n_classes, activation="softmax", name="grades")(x)
    return keras.Model(inp, out, name="tiny")


def make_run(run_dir: Path, *, per_grade: int = 40, epochs: int = 12, seed: int = 0) -> Path:
    """Train a tiny model on a synthetic dataset and write a run folder per the contract."""
    import keras

    from training import data as D

    data_dir = run_dir.parent / f"{run_dir.name}-data"
    items = write_dataset(data_dir, per_grade, seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(items))
    n_val = len(items) // 5
    n_test = len(items) // 10
    val = [items[i] for i in order[:n_val]]
    test = [items[i] for i in order[n_val : n_val + n_test]]
    train = [items[i] for i in order[n_val + n_test :]]
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "labels.txt").write_text("\n".join(GRADES) + "\n")
    split = {"root": str(data_dir), "train": train, "val": val, "test": test}
    (run_dir / "split.json").write_text(json.dumps(split))
    config = {
        "arch": "tiny",
        "input_size": [SIZE, SIZE],
        "seed": seed,
        "field_of_view_mm": [120.0, 100.0],
        "data_dir": str(data_dir),
        "dataset_fingerprint": f"synthetic-{seed}-{per_grade}",
    }
    (run_dir / "config.json").write_text(json.dumps(config))
    x, y = D.load_split_images(run_dir, "train")
    model = build_keras_model(len(GRADES), seed)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=16, verbose=0)
    model.save(run_dir / "model.keras")
    xv, yv = D.load_split_images(run_dir, "val")
    acc = float(np.mean(model.predict(xv, verbose=0).argmax(axis=1) == yv))
    (run_dir / "metrics.json").write_text(
        json.dumps({"labels": list(GRADES), "val": {"accuracy": acc}})
    )
    return run_dir


def main() -> None:
    import shutil
    import tempfile

    from sorter.grading.classifier import Classifier
    from training.export import ExportOptions, convert, export_graph, export_run, load_run

    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(Path(tmp) / "run", per_grade=60, epochs=15, seed=1)
        opts = ExportOptions(
            quantize=True, out=OUT / "tiny-int8.tflite", attribution="synthetic test images"
        )
        result = export_run(run, opts)
        print(f"exported {result.path}: {[f.as_dict() for f in result.fidelity]}")
        plain = convert(export_graph(load_run(run).model, "float32"), None)
        (OUT / "tiny-nometa.tflite").write_bytes(plain)
    images = OUT / "images"
    shutil.rmtree(images, ignore_errors=True)
    write_dataset(images, per_grade=3, seed=99)
    clf = Classifier(OUT / "tiny-int8.tflite")
    golden = {}
    for path in sorted(images.rglob("*.png")):
        from sorter.perception.preprocess import load_image

        probs = clf.classify_crops([load_image(path)])[0]
        golden[path.relative_to(OUT).as_posix()] = [round(float(p), 6) for p in probs]
    (OUT / "golden.json").write_text(
        json.dumps({"labels": list(clf.labels), "probs": golden}, indent=1) + "\n"
    )
    print(f"wrote {OUT}/golden.json for {len(golden)} images")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent.parent))
    main()
