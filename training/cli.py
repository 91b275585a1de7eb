"""`sorter-train`: train a grading model, import CUCUMBER-9, evaluate a run. Thin: parse and
delegate to training.train / training.cucumber9 / training.evaluate.

    sorter-train DATA_DIR [--out DIR] [--arch pi-cnn] ...      train (the main form)
    sorter-train import-cucumber9 SRC DEST                     batches -> folder-per-grade PNGs
    sorter-train evaluate RUN_DIR DATA_DIR                     score a run on another tree

Typer cannot mix a default command with sub-commands, so `main` dispatches: a known
sub-command name as the first argument goes to the sub-app, anything else to `train`.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import typer

from sorter import native
from sorter.errors import SorterError

log = logging.getLogger(__name__)

# Quiet TensorFlow's C++ start-up chatter before anything imports it (set by the user wins).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SUBCOMMANDS = ("import-cucumber9", "evaluate")
_TRAIN_EXTRA_MODULES = frozenset({"tensorflow", "keras", "matplotlib", "tensorboard"})

train_app = typer.Typer(
    name="sorter-train",
    help=(
        "Train a produce-grading CNN on a folder-per-grade image tree. Other commands: "
        "'sorter-train import-cucumber9 SRC DEST', 'sorter-train evaluate RUN_DIR DATA_DIR'."
    ),
    add_completion=False,
    pretty_exceptions_enable=False,
)
tools_app = typer.Typer(
    name="sorter-train",
    help="sorter-train helpers: import-cucumber9, evaluate.",
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
    epochs: int = typer.Option(150, help="Maximum epochs (early stopping ends sooner)."),
    batch_size: int = typer.Option(32, help="Images per step."),
    learning_rate: float | None = typer.Option(None, help="Adam rate (default: per arch)."),
    seed: int = typer.Option(0, help="Seed for split, weights, shuffle, augmentation."),
    val_fraction: float = typer.Option(0.1, help="Per-grade validation share if no val/."),
    test_fraction: float = typer.Option(0.0, help="Per-grade test share if no test/."),
    input_size: str | None = typer.Option(None, help="HxW model input (default: native size)."),
    field_of_view_mm: str = typer.Option(
        "250x250", help="WxH mm of belt one training image shows (the device crops this)."
    ),
    patience: int = typer.Option(20, help="Early-stopping patience in epochs."),
    no_augment: bool = typer.Option(False, "--no-augment", help="No augmentation at all."),
    no_camera_augment: bool = typer.Option(
        False, "--no-camera-augment", help="Keep flips/shifts, drop noise/blur/scale jitter."
    ),
    scale_jitter: float = typer.Option(0.04, help="Zoom +- fraction (keep it a few %)."),
    mixed_precision: bool = typer.Option(False, "--mixed-precision", help="float16 compute."),
    multi_gpu: bool = typer.Option(False, "--multi-gpu", help="tf.distribute.MirroredStrategy."),
    no_reports: bool = typer.Option(False, "--no-reports", help="Skip the report pictures."),
    quiet: bool = typer.Option(False, "--quiet", help="One line per epoch, no progress bar."),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Debug logging, and TensorFlow's own notices."
    ),
) -> None:
    """Train on DATA_DIR and write a run folder (model, labels, config, split, metrics, reports)."""
    _setup_logging(verbose)
    with native.native_notices_captured():  # TensorFlow's oneDNN / absl notices at import
        from training.model import AugmentConfig
        from training.train import TrainConfig
        from training.train import train as run_training

    aug = AugmentConfig.off() if no_augment else AugmentConfig(scale=scale_jitter)
    if no_camera_augment:
        aug.camera = False
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
        augment=aug,
        patience=patience,
        mixed_precision=mixed_precision,
        multi_gpu=multi_gpu,
        field_of_view_mm=_fov(field_of_view_mm),
        reports=not no_reports,
        verbose=2 if quiet else 1,
    )
    r = run_training(cfg)
    typer.echo(f"run: {r.run_dir}")
    typer.echo(
        f"validation accuracy: {r.val_accuracy:.1%} ({r.epochs_run} epochs, "
        f"{r.params:,} params, {r.seconds:.0f} s)"
    )
    if r.test_accuracy is not None:
        typer.echo(f"test accuracy: {r.test_accuracy:.1%}")
    _echo_confused(r.confused)


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
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Debug logging, and TensorFlow's own notices."
    ),
) -> None:
    """Score a trained run on DATA_DIR; writes metrics.json, confusion.png, errors.png."""
    _setup_logging(verbose)
    with native.native_notices_captured():  # TensorFlow's oneDNN / absl notices at import
        from training.evaluate import evaluate_run

    r = evaluate_run(run_dir, data_dir, out=out, split=split)
    res = r.metrics["test"]
    typer.echo(f"accuracy on {r.metrics['data_dir']}: {res['accuracy']:.1%} ({res['n']} images)")
    _echo_confused(r.confused)
    typer.echo(f"wrote {r.out_dir}")


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
