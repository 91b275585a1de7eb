"""`sorter classify` (grade image files) and `sorter bench` (invoke latency on this machine)."""

from __future__ import annotations

import json
import logging
import os
import platform
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from sorter.commands.common import VerboseOpt, apply_verbose
from sorter.errors import ImageError, SorterError
from sorter.grading.classifier import Classifier, collect_images, measure_latency
from sorter.grading.metrics import Confusion
from sorter.perception.preprocess import load_image

log = logging.getLogger(__name__)

ModelOpt = Annotated[
    Path | None,
    typer.Option(
        "--model",
        "-m",
        help="Exported .tflite model (default: $SORTER_MODEL, then the bundled model).",
    ),
]


def register(app: typer.Typer) -> None:
    """Add `classify` and `bench` to the `sorter` command line."""
    app.command("classify")(classify)
    app.command("bench")(bench)


def _fail(err: SorterError) -> typer.Exit:
    typer.echo(f"error: {err}", err=True)
    return typer.Exit(err.exit_code)


def classify(
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders (searched deeply).")],
    model: ModelOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Write JSON lines {path, label, confidence, scores}.")
    ] = False,
    threads: Annotated[int, typer.Option(help="Interpreter threads.")] = 1,
    verbose: VerboseOpt = False,
) -> None:
    """Grade images: one line per image (file, grade, confidence).

    For a folder-per-grade tree (folders named after the model's grades) it also prints the
    accuracy and the confusion matrix (to stderr with --json, so stdout stays JSON lines).
    """
    apply_verbose(verbose)
    try:
        clf = Classifier(model, num_threads=threads)
        items = collect_images(paths, clf.labels)
    except SorterError as err:
        raise _fail(err) from err
    if not items:
        raise _fail(ImageError(f"no images (.png/.jpg/.bmp) found in {', '.join(map(str, paths))}"))
    confusion = Confusion.empty(clf.labels)
    skipped = 0
    for item in items:
        try:
            image = load_image(item.path)
        except ImageError as err:
            skipped += 1
            typer.echo(f"skipped: {err}", err=True)
            continue
        probs = clf.classify_crops([image])[0]
        best = int(np.argmax(probs))
        label, confidence = clf.labels[best], float(probs[best])
        if item.truth is not None:
            confusion.add(item.truth, label)
        if as_json:
            scores = {name: round(float(p), 6) for name, p in zip(clf.labels, probs, strict=True)}
            record = {
                "path": str(item.path),
                "label": label,
                "confidence": round(confidence, 6),
                "scores": scores,
            }
            typer.echo(json.dumps(record))
        else:
            typer.echo(f"{item.path}\t{label}\t{confidence:.3f}")
    if confusion.total:
        typer.echo(_confusion_text(confusion, len(items) - skipped), err=as_json)
    if skipped:
        typer.echo(f"{skipped} unreadable image(s) skipped", err=True)
        if skipped == len(items):
            raise typer.Exit(2)


def _confusion_text(confusion: Confusion, graded: int) -> str:
    labels = confusion.labels
    width = max(5, *(len(x) for x in labels)) + 1
    lines = [
        f"accuracy {confusion.accuracy:.1%} on {confusion.total} images in grade folders"
        + (
            f" ({graded - confusion.total} without a grade folder)"
            if graded > confusion.total
            else ""
        ),
        "confusion (rows true, columns predicted):",
        " " * width + "".join(f"{x:>{width}}" for x in labels),
    ]
    for name, row in zip(labels, confusion.matrix, strict=True):
        lines.append(f"{name:>{width}}" + "".join(f"{int(v):>{width}}" for v in row))
    return "\n".join(lines)


def machine_info() -> dict[str, str]:
    """CPU model, cores, OS, Python and runtime versions: what a latency figure depends on."""
    cpu = platform.processor() or platform.machine()
    try:
        fields: dict[str, str] = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
        # x86: "model name"; Raspberry Pi: "Model" (board) or "Hardware" (SoC).
        cpu = next((fields[k] for k in ("model name", "Model", "Hardware") if fields.get(k)), cpu)
    except OSError:
        log.debug("no /proc/cpuinfo; using platform.processor()")
    info = {
        "cpu": cpu,
        "cores": str(os.cpu_count() or "?"),
        "os": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
    }
    for dist in ("ai-edge-litert", "tflite-runtime", "numpy"):
        try:
            info[dist] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            continue
    return info


def bench(
    model: ModelOpt = None,
    max_threads: Annotated[
        int, typer.Option("--threads", help="Measure at 1..N threads (default: all cores).")
    ] = 0,
    runs: Annotated[int, typer.Option(help="Timed invokes per thread count.")] = 300,
    warmup: Annotated[int, typer.Option(help="Untimed invokes first.")] = 30,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Invoke latency (median, p99) and throughput of the model at 1..N threads."""
    apply_verbose(verbose)
    n = max_threads or (os.cpu_count() or 1)
    try:
        clf = Classifier(model)
        stats = [
            measure_latency(clf.model_path, t, runs=runs, warmup=warmup) for t in range(1, n + 1)
        ]
    except SorterError as err:
        raise _fail(err) from err
    info = machine_info()
    size_kb = clf.model_path.stat().st_size / 1024
    if as_json:
        out = {
            "model": str(clf.model_path),
            "size_kb": round(size_kb, 1),
            "input_size": list(clf.input_size),
            "machine": info,
            "results": [s.__dict__ for s in stats],
        }
        typer.echo(json.dumps(out))
        return
    h, w = clf.input_size
    typer.echo(
        f"model   {clf.model_path} ({size_kb:.0f} KB, input {h}x{w}x3 {clf.metadata.input_dtype})"
    )
    typer.echo("machine " + ", ".join(f"{k} {v}" for k, v in info.items()))
    typer.echo(f"{'threads':>7}  {'median ms':>9}  {'p99 ms':>8}  {'images/s':>9}  (runs {runs})")
    for s in stats:
        typer.echo(
            f"{s.threads:>7}  {s.median_ms:>9.3f}  {s.p99_ms:>8.3f}  {s.throughput_ips:>9.0f}"
        )
