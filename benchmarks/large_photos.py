"""Large photos of mixed sizes through a DEFAULT `sorter-train`: time and sanity.

    python -m benchmarks.large_photos [--data data/c9] [--work /tmp/large] [--limit 0]

Makes a synthetic "large photo" tree from a folder-per-grade tree (CUCUMBER-9 by default):
each image up-scaled (bicubic) to a random size around 300x250 (w 260-340, h 220-280,
so aspects vary too), saved as JPEG, split 80/20 into train/ and test/. Then runs
`sorter-train DATA --out RUN --quiet` with every default (input size, epochs, time budget,
class weights) in a fresh process, timed, and prints the input size it chose, the epochs it
planned and ran, the wall time and the test accuracy and balanced accuracy. A sanity check
of the large-photo path (the images are blown-up 32x32 photos, so accuracy says nothing
about real large photos).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import typer

from sorter.perception.preprocess import IMAGE_SUFFIXES, load_image

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def make_tree(src: Path, dest: Path, seed: int = 0, limit: int = 0) -> dict[str, int]:
    """Up-scaled copies of `src`'s images in dest/train/<grade> and dest/test/<grade>."""
    rng = np.random.default_rng(seed)
    counts = {"train": 0, "test": 0}
    for grade in sorted(p for p in src.iterdir() if p.is_dir()):
        files = sorted(p for p in grade.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if limit:
            files = files[:limit]
        for i, f in enumerate(rng.permutation(len(files))):
            img = load_image(files[f])
            w, h = int(rng.integers(260, 341)), int(rng.integers(220, 281))
            big = cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC)
            split = "test" if i % 5 == 0 else "train"
            out = dest / split / grade.name / f"{files[f].stem}.jpg"
            out.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(
                str(out), cv2.cvtColor(big, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90]
            )
            counts[split] += 1
    return counts


@app.command()
def main(
    data: Path = typer.Option(Path("data/c9"), help="Folder-per-grade source tree."),
    work: Path = typer.Option(Path("runs/large-photos"), help="Scratch folder."),
    limit: int = typer.Option(0, help="At most this many images per grade (0: all)."),
) -> None:
    """Build the tree, train with defaults, print the figures."""
    tree = work / "tree"
    if not tree.is_dir():
        counts = make_tree(data, tree, limit=limit)
        typer.echo(f"tree: {counts['train']} train / {counts['test']} test photos in {tree}")
    run = work / f"run-{time.strftime('%H%M%S')}"
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "training.cli", str(tree), "--out", str(run), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.monotonic() - t0
    (work / "train.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        typer.echo(proc.stderr[-2000:], err=True)
        raise typer.Exit(proc.returncode)
    cfg = json.loads((run / "config.json").read_text())
    m = json.loads((run / "metrics.json").read_text())["test"]
    typer.echo(
        f"input {cfg['input_size'][0]}x{cfg['input_size'][1]} (h x w), epochs planned "
        f"{cfg['epochs_planned']} run {cfg['epochs_run']} at {cfg['seconds_per_epoch']} s, "
        f"wall {wall / 60:.1f} min; test accuracy {m['accuracy']:.1%}, balanced "
        f"{m['balanced_accuracy']:.1%}; Pi 4 estimate {cfg['device_estimate']['pi4_1t_ms']} ms"
    )
    for line in proc.stderr.splitlines():
        if "WARNING" in line and ("photos up to" in line or "time budget" in line):
            typer.echo(line)


if __name__ == "__main__":
    app()
