"""`sorter-export`: turn a sorter-train run into a .tflite model for the device, and check it."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from sorter import native
from sorter.errors import SorterError

app = typer.Typer(
    name="sorter-export",
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def export(
    run_dir: Annotated[
        Path | None,
        typer.Argument(help="Run folder from sorter-train (default: the newest under --runs)."),
    ] = None,
    quantize: Annotated[
        bool,
        typer.Option(
            "--quantize/--float",
            help="Full-integer int8 (uint8 raw-pixel input) or a float32 model.",
        ),
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Output .tflite (default: <run>/model-int8.tflite)."),
    ] = None,
    calibration_images: Annotated[
        int, typer.Option(help="Training images (stratified) used to calibrate int8 ranges.")
    ] = 1000,
    threshold: Annotated[
        float, typer.Option(help="Largest allowed accuracy drop vs the float model, in points.")
    ] = 1.0,
    force: Annotated[
        bool, typer.Option("--force", help="Write the model even if it fails the threshold.")
    ] = False,
    runs: Annotated[Path, typer.Option(help="Where to look for the newest run.")] = Path("runs"),
    flip_average: Annotated[
        str | None,
        typer.Option(
            help="Test-time flip views averaged inside the model, comma-separated from id, h, "
            "v, hv (e.g. id,h,v,hv); 'none' for none. Default: the run's own (test_views in "
            "its config.json; id,hv for a default sorter-train run)."
        ),
    ] = None,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="Debug logging, and TensorFlow's and LiteRT's own notices."
        ),
    ] = False,
    robustness: Annotated[
        bool,
        typer.Option(
            "--robustness/--no-robustness",
            help="Score the exported model under the camera-path corruption suite.",
        ),
    ] = True,
) -> None:
    """Export a trained run to TFLite with its metadata, and compare it with the Keras model."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    native.set_verbose(verbose)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    with native.native_notices_captured(stdout=True, keep_other=False):  # TF's import banners
        from training.export import ExportOptions, export_run, newest_run

    def progress(msg: str) -> None:
        typer.echo(f"  {msg}", err=True)

    try:
        run = run_dir if run_dir is not None else newest_run(runs)
        opts = ExportOptions(
            quantize=quantize,
            out=out,
            calibration_images=calibration_images,
            threshold_points=threshold,
            force=force,
            flip_views=_views(flip_average),
            robustness=robustness,
        )
        result = export_run(run, opts, progress=progress)
    except SorterError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(err.exit_code) from err
    mode = result.metadata.quantization.get("mode", "?")
    typer.echo(f"wrote {result.path} ({result.size_bytes / 1024:.1f} KB, {mode})")
    typer.echo(f"metadata {result.sidecar} (also embedded in the model)")
    for f in result.fidelity:
        typer.echo(
            f"{f.split:>5}: float {f.float_accuracy:.2%}  {mode} {f.exported_accuracy:.2%}  "
            f"({-f.drop_points:+.1f} points)  agreement {f.agreement:.2%}  "
            f"mean |dp| {f.mean_abs_prob_diff:.4f}  [{f.images} images]"
        )
    rob = result.metadata.extra.get("robustness")
    if isinstance(rob, dict):
        typer.echo(
            f"robustness ({rob.get('split')}, {rob.get('images')} images): camera path "
            f"{rob['camera_clean']:.2%}, mean corruption {rob['mean_corruption']:.2%} "
            f"(worst {rob['worst_kind']}), scale "
            + ", ".join(f"{k} {v:.1%}" for k, v in rob["scale"].items())
        )
    if result.forced:
        typer.echo(
            f"warning: accuracy drop beyond {threshold:g} points; written (--force)", err=True
        )


def _views(flip_average: str | None) -> tuple[str, ...] | None:
    """--flip-average: None keeps the run's own views; 'none' (or empty) is none."""
    if flip_average is None:
        return None
    views = tuple(v.strip() for v in flip_average.split(",") if v.strip())
    return () if views == ("none",) else views


def main() -> None:
    app()


if __name__ == "__main__":
    main()
