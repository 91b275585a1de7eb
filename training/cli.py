"""`sorter-train`: train a grading model, import CUCUMBER-9, evaluate a run. Thin: parse and
delegate to training.train / training.cucumber9 / training.evaluate.

    sorter-train DATA_DIR [--out DIR] [--arch pi-cnn] ...      train (the main form)
    sorter-train import-cucumber9 SRC DEST                     batches -> folder-per-grade PNGs
    sorter-train evaluate RUN_DIR DATA_DIR [--robustness]      score a run on another tree
    sorter-train cv DATA_DIR --folds 5 --recipe camera         cross-validate (int8)
    sorter-train finetune RUN_DIR DATA_DIR [--out DIR]         teach a run the belt's crops

Typer cannot mix a default command with sub-commands, so `main` dispatches: a known
sub-command name as the first argument goes to the sub-app, anything else to `train`.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import typer

from sorter import native
from sorter.errors import SorterError
from training.defaults import BASE_EPOCHS, DEFAULT_BUDGET_MIN, DEFAULTS

log = logging.getLogger(__name__)

# Quiet TensorFlow's C++ start-up chatter before anything imports it (set by the user wins).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SUBCOMMANDS = ("import-cucumber9", "evaluate", "cv", "finetune")
_TRAIN_EXTRA_MODULES = frozenset({"tensorflow", "keras", "matplotlib", "tensorboard"})

train_app = typer.Typer(
    name="sorter-train",
    help=(
        "Train a produce-grading CNN on a folder-per-grade image tree. Other commands: "
        "'sorter-train import-cucumber9 SRC DEST', 'sorter-train evaluate RUN_DIR DATA_DIR', "
        "'sorter-train cv DATA_DIR', 'sorter-train finetune RUN_DIR DATA_DIR'."
    ),
    add_completion=False,
    pretty_exceptions_enable=False,
)
tools_app = typer.Typer(
    name="sorter-train",
    help="sorter-train helpers: import-cucumber9, evaluate, cv, finetune.",
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
)


def _setup_logging(verbose: bool) -> None:
    """Debug logging with --verbose, which also shows TensorFlow's own start-up notices."""
    native.set_verbose(verbose)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )


def _size(text: str | None, flag: str) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        parts = [int(p) for p in text.lower().replace("x", ",").split(",")]
        if len(parts) == 1:
            parts *= 2
        h, w = parts
    except ValueError as err:
        raise SorterError(f"{flag} {text!r}: give HxW (e.g. 32x32) or one number") from err
    return (h, w)


def _fov(text: str) -> tuple[float, float]:
    try:
        parts = [float(p) for p in text.lower().replace("x", ",").split(",")]
        if len(parts) == 1:
            parts *= 2
        w, h = parts
    except ValueError as err:
        raise SorterError(
            f"--field-of-view-mm {text!r}: give WIDTHxHEIGHT in mm (e.g. 250x250)"
        ) from err
    return (w, h)


@train_app.command()
def train(
    data_dir: Path = typer.Argument(..., help="Folder of grade folders (or train/ val/ test/)."),
    out: Path | None = typer.Option(None, help="Run folder (default: runs/<time>-<arch>)."),
    arch: str = typer.Option("pi-cnn", help="Network: pi-cnn, deep-mnist or softmax."),
    epochs: int = typer.Option(DEFAULTS.epochs, help="Epochs (the time budget may cut them)."),
    batch_size: int = typer.Option(DEFAULTS.batch_size, help="Images per step."),
    learning_rate: float | None = typer.Option(None, help="Adam rate (default: per arch)."),
    seed: int = typer.Option(0, help="Seed for split, weights, shuffle, augmentation."),
    val_fraction: float = typer.Option(
        DEFAULTS.val_fraction, help="Per-grade validation share if no val/ (0: train on all)."
    ),
    test_fraction: float = typer.Option(0.0, help="Per-grade test share if no test/."),
    folds: int = typer.Option(0, help="k-fold split: hold out fold --fold of this many."),
    fold: int = typer.Option(0, help="Which fold is the test split (with --folds)."),
    input_size: str | None = typer.Option(
        None, help="HxW model input (default: native; ~1024 px for large photos)."
    ),
    field_of_view_mm: str = typer.Option(
        "250x250", help="WxH mm of belt one training image shows (the device crops this)."
    ),
    time_budget_min: float = typer.Option(
        DEFAULT_BUDGET_MIN, help="Minutes for the whole run; epochs are cut to fit (0: none)."
    ),
    schedule: str = typer.Option(DEFAULTS.schedule, help="Learning rate: cosine or plateau."),
    early_stopping: bool = typer.Option(
        DEFAULTS.early_stopping,
        "--early-stopping/--no-early-stopping",
        help="Stop on validation loss and keep the best weights.",
    ),
    patience: int = typer.Option(20, help="Early-stopping patience in epochs."),
    no_augment: bool = typer.Option(False, "--no-augment", help="No augmentation at all."),
    camera_augment: bool = typer.Option(
        True,
        "--camera-augment/--no-camera-augment",
        help="Render training images through a randomised camera path (belt, rim, blur, codec).",
    ),
    scale_jitter: float = typer.Option(0.0, help="Size change +- fraction (size grades!)."),
    cutout: float = typer.Option(
        0.0,
        help="Chance a camera render lays the produce, cut out, on another surround (the "
        "training background or a belt/carrier colour; 0: off).",
        min=0.0,
        max=1.0,
    ),
    class_weight_power: float = typer.Option(
        DEFAULTS.class_weight_power, help="Class weights ** this (1 balanced, 0 none)."
    ),
    weight_decay: float = typer.Option(
        DEFAULTS.weight_decay, help="Decoupled weight decay of the kernels (0: plain Adam)."
    ),
    consistency: float = typer.Option(
        0.0,
        help="Weight of a Jensen-Shannon term between two camera renders of each picture "
        "(training.consistency; each step shows every picture twice; 0: off).",
        min=0.0,
    ),
    teacher: list[Path] = typer.Option([], help="Run folder to distil from (repeatable)."),
    ensemble: int = typer.Option(
        DEFAULTS.ensemble, help="Train N teachers, distil them into one model (0: off)."
    ),
    mixed_precision: bool = typer.Option(False, "--mixed-precision", help="float16 compute."),
    multi_gpu: bool = typer.Option(False, "--multi-gpu", help="tf.distribute.MirroredStrategy."),
    multi_worker: bool = typer.Option(
        False, "--multi-worker", help="Several machines: MultiWorkerMirroredStrategy (TF_CONFIG)."
    ),
    no_reports: bool = typer.Option(False, "--no-reports", help="Skip the report pictures."),
    quiet: bool = typer.Option(False, "--quiet", help="One line per epoch, no progress bar."),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Debug logging, and TensorFlow's own notices."
    ),
) -> None:
    """Train on DATA_DIR and write a run folder (model, labels, config, split, metrics, reports)."""
    _setup_logging(verbose)
    with native.native_notices_captured():  # TensorFlow's oneDNN / absl notices at import
        from training.camera_augment import CameraAugmentConfig
        from training.train import TrainConfig, train_ensemble
        from training.train import train as run_training

    aug, cam = _augmentation(no_augment, camera_augment, scale_jitter)
    cfg = TrainConfig(
        data_dir=data_dir,
        out=out,
        arch=arch,
        input_size=_size(input_size, "--input-size"),
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        folds=folds,
        fold=fold,
        augment=aug,
        camera=cam if cam is None else CameraAugmentConfig(scale=scale_jitter, cutout_p=cutout),
        early_stopping=early_stopping,
        patience=patience,
        schedule=schedule,
        time_budget_min=time_budget_min or None,
        class_weight_power=class_weight_power,
        weight_decay=weight_decay,
        consistency=consistency,
        teachers=tuple(teacher),
        mixed_precision=mixed_precision,
        multi_gpu=multi_gpu,
        multi_worker=multi_worker,
        field_of_view_mm=_fov(field_of_view_mm),
        reports=not no_reports,
        verbose=2 if quiet else 1,
    )
    r = train_ensemble(cfg, ensemble) if ensemble else run_training(cfg)
    typer.echo(f"run: {r.run_dir}")
    acc, where = (
        (r.val_accuracy, "validation") if r.val_accuracy is not None else (r.test_accuracy, "test")
    )
    if acc is None:
        typer.echo(f"no validation or test images ({r.epochs_run} epochs, {r.seconds:.0f} s)")
    else:
        bal = "" if r.balanced_accuracy is None else f", balanced {r.balanced_accuracy:.1%}"
        typer.echo(
            f"{where} accuracy: {acc:.1%}{bal} ({r.epochs_run} epochs, "
            f"{r.params:,} params, {r.seconds:.0f} s)"
        )
    if r.test_accuracy is not None and r.val_accuracy is not None:
        typer.echo(f"test accuracy: {r.test_accuracy:.1%}")
    if r.mean_corruption is not None:
        typer.echo(f"mean accuracy under camera corruptions: {r.mean_corruption:.1%}")
    _echo_confused(r.confused)


def _augmentation(no_augment: bool, camera: bool, scale: float) -> tuple[Any, Any]:
    """(Keras AugmentConfig, camera pool on?) for the command-line switches."""
    from training.model import AugmentConfig

    if no_augment:
        return AugmentConfig.off(), None
    if camera:
        return AugmentConfig.with_camera_pool(), True
    return AugmentConfig(scale=scale), None


def _echo_confused(pairs: list[tuple[str, str, int]]) -> None:
    if not pairs:
        typer.echo("most confused grades: none")
        return
    text = ", ".join(f"{t} -> {p} ({n})" for t, p, n in pairs)
    typer.echo(f"most confused grades (true -> predicted): {text}")


@tools_app.command("import-cucumber9")
def import_cucumber9(
    src: Path = typer.Argument(..., help="Folder with batches.meta and data_batch_1..5."),
    dest: Path = typer.Argument(..., help="New folder for the <grade>/*.png tree."),
    force: bool = typer.Option(False, "--force", help="Write into a non-empty DEST."),
) -> None:
    """Convert the CIFAR-style CUCUMBER-9 batches (safely unpickled) into PNG grade folders."""
    _setup_logging(False)
    from training.cucumber9 import import_cucumber9 as do_import

    summary = do_import(src, dest, force=force)
    for split, counts in summary.counts.items():
        total = sum(counts.values())
        per = ", ".join(f"{g} {n}" for g, n in counts.items())
        typer.echo(f"{split}: {total} images ({per})")
    typer.echo(f"wrote {summary.dest}")


@tools_app.command("evaluate")
def evaluate(
    run_dir: Path = typer.Argument(..., help="A sorter-train run folder."),
    data_dir: Path = typer.Argument(..., help="Folder-per-grade tree with the run's grades."),
    out: Path | None = typer.Option(None, help="Output folder (default: RUN_DIR/eval-<name>)."),
    split: str | None = typer.Option(None, help="For train/val/test trees: which subtree."),
    robustness: bool = typer.Option(
        False, "--robustness", help="Also score the camera-path corruption suite."
    ),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Debug logging, and TensorFlow's own notices."
    ),
) -> None:
    """Score a trained run on DATA_DIR; writes metrics.json, confusion.png, errors.png (and
    robustness.json/.md/.png with --robustness)."""
    _setup_logging(verbose)
    with native.native_notices_captured():  # TensorFlow's oneDNN / absl notices at import
        from training.evaluate import evaluate_run

    r = evaluate_run(run_dir, data_dir, out=out, split=split, robustness=robustness)
    res = r.metrics["test"]
    typer.echo(f"accuracy on {r.metrics['data_dir']}: {res['accuracy']:.1%} ({res['n']} images)")
    rob = r.metrics.get("robustness")
    if rob is not None:
        typer.echo(
            f"camera path: clean {rob['camera_clean']:.1%}, mean corruption "
            f"{rob['mean_corruption']:.1%} (worst {rob['worst_kind']}), scale "
            + ", ".join(f"{k} {v:.1%}" for k, v in rob["scale"].items())
        )
    _echo_confused(r.confused)
    typer.echo(f"wrote {r.out_dir}")


@tools_app.command("cv")
def cross_validate(
    data_dir: Path = typer.Argument(..., help="Folder of grade folders."),
    out: Path = typer.Option(Path("runs/cv"), help="Folder for the fold runs and results.jsonl."),
    recipe: list[str] = typer.Option(["camera"], help="Recipe(s) of training.cv.CV_RECIPES."),
    folds: int = typer.Option(5, help="Number of folds."),
    fold: list[int] = typer.Option([], help="Only these folds (repeatable; default all)."),
    epochs: int = typer.Option(BASE_EPOCHS, help="Epochs per fold run (x the recipe's factor)."),
) -> None:
    """Cross-validate recipes: train per fold, export int8, score accuracy and robustness."""
    _setup_logging(False)
    from training import cv

    unknown = [r for r in recipe if r not in cv.CV_RECIPES]
    if unknown:
        raise SorterError(f"--recipe {unknown[0]}: unknown; choose from {', '.join(cv.CV_RECIPES)}")
    cv.run(data_dir, out, list(recipe), folds, list(fold) or list(range(folds)), epochs)


@tools_app.command("finetune")
def finetune(
    run_dir: Path = typer.Argument(..., help="The sorter-train run folder to start from."),
    data_dir: Path = typer.Argument(..., help="Reviewed belt crops, one folder per grade."),
    out: Path | None = typer.Option(None, help="Run folder (default: runs/<time>-finetune)."),
    epochs: int = typer.Option(20, help="Planned epochs (the time budget may cut them)."),
    time_budget_min: float = typer.Option(5.0, help="Minutes for the whole run (0: none)."),
    learning_rate: float = typer.Option(3e-4, help="Adam rate at the start (cosine decay)."),
    old_per_grade: int = typer.Option(60, help="Original training images mixed in per grade."),
    belt_share: float = typer.Option(0.5, help="Share of the sample weight on belt crops."),
    belt_val_fraction: float = typer.Option(0.2, help="Belt crops held out per grade."),
    seed: int = typer.Option(0, help="Seed for the samples, the hold-out and the shuffle."),
    no_reports: bool = typer.Option(False, "--no-reports", help="Skip the report pictures."),
    quiet: bool = typer.Option(False, "--quiet", help="One line per epoch, no progress bar."),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Debug logging, and TensorFlow's own notices."
    ),
) -> None:
    """Start from RUN_DIR's weights and train on DATA_DIR's belt crops mixed with a sample of
    the original training images; writes a normal run folder (sorter-export exports it)."""
    _setup_logging(verbose)
    with native.native_notices_captured():
        from training.finetune import FinetuneConfig
        from training.finetune import finetune as do_finetune

    r = do_finetune(
        FinetuneConfig(
            run_dir=run_dir,
            data_dir=data_dir,
            out=out,
            epochs=epochs,
            time_budget_min=time_budget_min or None,
            learning_rate=learning_rate,
            old_per_grade=old_per_grade,
            belt_share=belt_share,
            belt_val_fraction=belt_val_fraction,
            seed=seed,
            reports=not no_reports,
            verbose=2 if quiet else 1,
        )
    )
    typer.echo(f"run: {r.run_dir}")
    typer.echo(
        f"{r.belt_train} belt crops (+{r.belt_held_out} held out) and {r.old_sample} original "
        f"images, {r.epochs_run} epochs, {r.fit_seconds:.0f} s training, {r.seconds:.0f} s in all"
    )
    for key, what in (("val", "original validation"), ("test", "held-out belt crops")):
        now, was = r.accuracy.get(key), r.before.get(key)
        if now is not None and was is not None:
            typer.echo(f"{what}: {now:.1%} (base model {was:.1%})")


def run(argv: list[str]) -> int:
    """Dispatch `argv` (without the program name); returns the exit status.

    Usage errors are reported by typer (exit 2); a SorterError becomes one `error: ...` line
    and exit 2.
    """
    sub = bool(argv) and argv[0] in SUBCOMMANDS
    app = tools_app if sub else train_app
    try:
        app(args=argv, prog_name="sorter-train")
    except SorterError as err:
        typer.echo(f"error: {err}", err=True)
        return err.exit_code
    except ImportError as err:
        if err.name not in _TRAIN_EXTRA_MODULES:
            raise
        typer.echo(
            f"error: {err.name}: not installed; install the training extra "
            "(pip install -e '.[train]')",
            err=True,
        )
        return 2
    except SystemExit as ex:
        return ex.code if isinstance(ex.code, int) else (0 if ex.code is None else 1)
    return 0


def main() -> None:
    """Console-script entry point (`sorter-train`)."""
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
