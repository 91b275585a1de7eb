"""Compare recipes on one dataset over several seeds (how the default arch was chosen).

    python -m training.compare data/c9 --out runs/compare --seeds 1 2 \\
        --recipe pi-cnn --recipe deep-mnist --recipe deep-mnist-literal

With ``--folds K`` it cross-validates instead (training.cv: int8 accuracy and robustness
on each held-out fold). Otherwise each run makes its own stratified split from its seed:
80% train, 10% validation (early stopping, checkpoint choice) and 10% test (scored once,
never used for choices). One JSON line per run goes to OUT/results.jsonl as soon as the run
ends; the table is printed at the end (mean and spread of the held-out accuracy over seeds).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from dataclasses import dataclass
from pathlib import Path

from training import cv
from training.model import AugmentConfig
from training.train import TrainConfig, train


@dataclass(frozen=True)
class Recipe:
    """One way of training a network (what `--recipe` names)."""

    arch: str
    """Network (training.model.ARCHS)."""
    augment: bool = True
    """Training-time augmentation on (the default AugmentConfig) or off."""
    independent_flips: bool = False
    """AugmentConfig.independent_flips (mirror images too, not only 180-degree turns)."""
    learning_rate: float | None = None
    """Adam learning rate; None -> the arch's default."""
    label_smoothing: float = 0.0
    """Cross-entropy label smoothing."""
    schedule: str = "plateau"
    """Learning-rate schedule (training.train.SCHEDULES)."""


RECIPES: dict[str, Recipe] = {
    "pi-cnn": Recipe("pi-cnn"),
    "pi-cnn-noaug": Recipe("pi-cnn", augment=False),
    "pi-cnn-ls-cos": Recipe("pi-cnn", label_smoothing=0.1, schedule="cosine"),
    "pi-cnn-flips": Recipe("pi-cnn", independent_flips=True),
    "deep-mnist": Recipe("deep-mnist", learning_rate=3e-4),
    "deep-mnist-literal": Recipe("deep-mnist", augment=False, learning_rate=1e-4),
    "softmax": Recipe("softmax", augment=False),
}
"""recipe name -> how it trains."""


def run(
    data_dir: Path, out: Path, recipes: list[str], seeds: list[int], epochs: int, patience: int
) -> None:
    """Train every recipe for every seed; append one JSON line per run to OUT/results.jsonl."""
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    for seed in seeds:
        for name in recipes:
            rec = RECIPES[name]
            res = train(
                TrainConfig(
                    data_dir=data_dir,
                    out=out / f"{name}-s{seed}",
                    arch=rec.arch,
                    epochs=epochs,
                    patience=patience,
                    learning_rate=rec.learning_rate,
                    label_smoothing=rec.label_smoothing,
                    schedule=rec.schedule,
                    seed=seed,
                    val_fraction=0.1,
                    test_fraction=0.1,
                    augment=(
                        AugmentConfig(independent_flips=rec.independent_flips)
                        if rec.augment
                        else AugmentConfig.off()
                    ),
                    reports=False,
                    verbose=2,
                )
            )
            row = {
                "recipe": name,
                "seed": seed,
                "params": res.params,
                "val": res.val_accuracy,
                "test": res.test_accuracy,
                "epochs": res.epochs_run,
                "seconds": round(res.seconds, 1),
            }
            with results.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
    table(results)


def table(results: Path) -> None:
    """Print the markdown table of OUT/results.jsonl (mean and spread over seeds)."""
    rows = [json.loads(ln) for ln in results.read_text().splitlines() if ln.strip()]
    print("| recipe | params | val acc | held-out acc (mean ± spread) | seeds | epochs | s/run |")
    print("|---|---|---|---|---|---|---|")
    for name in dict.fromkeys(r["recipe"] for r in rows):
        rs = [r for r in rows if r["recipe"] == name]
        te = [r["test"] for r in rs]
        va = [r["val"] for r in rs]
        spread = (max(te) - min(te)) / 2
        print(
            f"| {name} | {rs[0]['params']:,} | {statistics.mean(va):.1%} "
            f"| {statistics.mean(te):.1%} ± {spread:.1%} | {len(rs)} "
            f"| {statistics.mean(r['epochs'] for r in rs):.0f} "
            f"| {statistics.mean(r['seconds'] for r in rs):.0f} |"
        )


def flip_average_scores(run_dir: Path) -> dict[str, float]:
    """Float accuracy of a run's model on its val and test splits: plain, averaged with its
    180-degree turn ("+180"), and averaged over all four flip views ("+flips"); see
    `training.model.flip_average`."""
    from training.data import load_split_images
    from training.evaluate import load_run_model
    from training.model import flip_average, inference_model
    from training.train import predict

    infer = inference_model(load_run_model(run_dir), batch_size=None)
    models = {
        "": infer,
        "+180": flip_average(infer, ("id", "hv")),
        "+flips": flip_average(infer),
    }
    out: dict[str, float] = {}
    for split in ("val", "test"):
        x, y = load_split_images(run_dir, split)
        if len(x):
            for tag, m in models.items():
                out[split + tag] = float((predict(m, x).argmax(1) == y).mean())
    return out


def int8_size_and_latency(run_dir: Path, repeats: int = 300) -> tuple[int, float]:
    """Convert a run to a full-int8 LiteRT model (uint8 in) and time one-image inference.

    Returns (model bytes, median milliseconds per image at one thread). A quick estimate for
    the comparison; the shipped export (and its accuracy check) is sorter-export's job.
    """
    import time

    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from training.data import load_split_images
    from training.evaluate import load_run_model
    from training.model import inference_model

    infer = inference_model(load_run_model(run_dir), batch_size=1)
    x, _ = load_split_images(run_dir, "val")

    def representative() -> object:
        for img in x[:100]:
            yield [img[None]]

    conv = tf.lite.TFLiteConverter.from_keras_model(infer)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.uint8
    blob = conv.convert()
    interp = Interpreter(model_content=blob, num_threads=1)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]["index"]
    times = []
    for i in range(repeats):
        interp.set_tensor(inp, x[i % len(x)][None])
        t = time.perf_counter()
        interp.invoke()
        times.append(time.perf_counter() - t)
    return len(blob), 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--out", type=Path, default=Path("runs/compare"))
    ap.add_argument("--recipe", action="append", choices=sorted({*RECIPES, *cv.CV_RECIPES}))
    ap.add_argument("--folds", type=int, default=0, help="k-fold cross-validation (int8)")
    ap.add_argument("--fold-list", type=int, nargs="+", help="only these folds (default all)")
    ap.add_argument(
        "--attach",
        type=Path,
        help="with --folds and one --recipe: write its cross-validation into this run folder",
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--patience", type=int, default=20)
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--latency", type=Path, nargs="+", help="run folders to convert and time")
    ap.add_argument(
        "--flip-average",
        type=Path,
        nargs="+",
        help="run folders to score with and without test-time flip averaging",
    )
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if a.latency:
        for rd in a.latency:
            size, ms = int8_size_and_latency(rd)
            print(f"{rd}: int8 {size / 1e6:.2f} MB, {ms:.3f} ms/image (1 thread, median)")
        return
    if a.flip_average:
        for rd in a.flip_average:
            scores = flip_average_scores(rd)
            print(f"{rd}: " + ", ".join(f"{k} {v:.2%}" for k, v in scores.items()))
        return
    if a.folds:
        if a.attach:
            cv.attach(a.out, (a.recipe or ["camera"])[0], a.attach)
            return
        if a.table_only:
            cv.table(a.out / "results.jsonl")
            return
        folds = a.fold_list if a.fold_list is not None else list(range(a.folds))
        cv.run(a.data_dir, a.out, a.recipe or ["camera"], a.folds, folds, a.epochs)
        return
    if a.table_only:
        table(a.out / "results.jsonl")
        return
    run(a.data_dir, a.out, a.recipe or ["pi-cnn", "deep-mnist"], a.seeds, a.epochs, a.patience)


if __name__ == "__main__":
    main()
