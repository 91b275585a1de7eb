"""Where the plain belt's gap comes from: the clean camera path alone, and whether it is
recoverable by sharpening the model input.

    python -m benchmarks.camera_path_gap RUN [RUN ...] [--amounts 0.25,0.5,1] [--out F.md]

RUN is a cross-validation fold's run folder (`sorter-train cv ... --fold K`): its
model-int8.tflite is scored through the device classifier on the fold's held-out images
(split.json), clean and through `training.corruptions.CAMERA_CLEAN` (up-scaled onto the
belt, cropped, shrunk back: nothing else wrong), each with and without an unsharp mask of
the model input (`amount` x (image - Gaussian blur, sigma 1 px at model scale)). Also
counts the items whose grade the clean camera path changes. A diagnostic: the loop does not
sharpen, and an amount read off one fold would be tuning to it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import typer

from benchmarks import machine

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def unsharp(images: np.ndarray, amount: float, sigma: float = 1.0) -> np.ndarray:
    """`images` (N, h, w, 3) uint8 with `amount` x (image - blur) added; 0 is the identity."""
    if amount == 0:
        return images
    out = np.empty_like(images)
    for i, im in enumerate(images):
        f = im.astype(np.float32)
        blur = cv2.GaussianBlur(f, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
        out[i] = np.clip(f + amount * (f - blur) + 0.5, 0, 255).astype(np.uint8)
    return out


def gap_row(predict: Any, x: np.ndarray, y: np.ndarray, amounts: list[float]) -> dict[str, Any]:
    """Accuracies clean / camera path for each sharpening amount, and the grades changed."""
    from training import corruptions as C

    cam = C.apply(C.CAMERA_CLEAN, x, 0)
    top: dict[str, dict[float, np.ndarray]] = {"clean": {}, "camera": {}}
    for a in [0.0, *amounts]:
        top["clean"][a] = np.asarray(predict(unsharp(x, a))).argmax(axis=1)
        top["camera"][a] = np.asarray(predict(unsharp(cam, a))).argmax(axis=1)
    return {
        "images": len(x),
        "changed": int(np.sum(top["clean"][0.0] != top["camera"][0.0])),
        "grey_levels": float(np.abs(x.astype(np.int16) - cam.astype(np.int16)).mean()),
        **{key: {a: float(np.mean(t == y)) for a, t in by.items()} for key, by in top.items()},
    }


def table(rows: dict[str, dict[str, Any]], amounts: list[float]) -> str:
    """Markdown: one line per run and input (clean, camera path), one column per amount."""
    heads = ["unsharpened", *[f"unsharp {a:g}" for a in amounts]]
    lines = [
        "| run | input | " + " | ".join(heads) + " | grades changed by the camera path |",
        "|---|---|" + "---|" * (len(heads) + 1),
    ]
    for name, r in rows.items():
        for key, what in (("clean", "clean image"), ("camera", "clean camera path")):
            cells = [f"{100 * r[key][a]:.1f}%" for a in [0.0, *amounts]]
            extra = (
                f"{r['changed']} of {r['images']} (mean {r['grey_levels']:.2f} grey levels)"
                if key == "camera"
                else ""
            )
            lines.append(f"| {name} | {what} | " + " | ".join(cells) + f" | {extra} |")
    return "\n".join(lines)


@app.command()
def main(
    runs: list[Path] = typer.Argument(
        ..., help="Fold run folders (with model-int8.tflite, split.json)."
    ),
    amounts: str = typer.Option("0.25,0.5,1", help="Unsharp amounts, comma-separated."),
    out: Path | None = typer.Option(None, help="Write the table (markdown) here too."),
) -> None:
    """Score each fold's int8 model clean and through the clean camera path, sharpened or not."""
    from sorter.grading.classifier import Classifier
    from training.data import load_split_images

    try:
        amount_list = [float(a) for a in amounts.split(",") if a.strip()]
    except ValueError:
        typer.echo(f"error: --amounts {amounts!r}: not numbers; pass e.g. --amounts 0.25,0.5,1")
        raise typer.Exit(2) from None
    if any(not np.isfinite(a) or a < 0 for a in amount_list):
        typer.echo(f"error: --amounts {amounts!r}: amounts are >= 0; pass e.g. 0.25,0.5,1")
        raise typer.Exit(2)
    rows: dict[str, dict[str, Any]] = {}
    for run in runs:
        model = run / "model-int8.tflite"
        if not model.exists() or not (run / "split.json").exists():
            typer.echo(f"error: {run}: no model-int8.tflite or split.json; pass a fold's run")
            raise typer.Exit(2)
        x, y = load_split_images(run, "test")
        clf = Classifier(model, num_threads=2)
        rows[run.name] = gap_row(clf.classify, x, np.asarray(y), amount_list)
        print(f"{run.name}: done", flush=True)
    info = machine.describe()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    doc = (
        f"# Camera-path gap ({when})\n\nMachine: {info['cpu']}, {info['cores']} cores, "
        f"{info['memory']}, {info['os']}, Python {info['python']}.\n\nCommand: "
        f"`python -m benchmarks.camera_path_gap {' '.join(sys.argv[1:])}`\n\n"
        f"{table(rows, amount_list)}\n"
    )
    print(doc)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(doc, encoding="utf-8")


if __name__ == "__main__":
    app()
