"""The training pictures' background, recorded for the loop's `[locate] surround = "model"`.

`sorter-train` writes `background.json` in the run folder (from its training images) and
`sorter-export` copies it into the exported model's metadata (`background`; computed from
the run's training split when an older run folder has no file).
`sorter.perception.surround` says what is recorded and how the loop fills with it.

A model exported before this was recorded can be given it without retraining, from the
pictures it was trained on:

    python -m training.background MODEL.tflite DATA [--split-file RUN/split.json] [--out OUT]

(every image under DATA, or the run's training split), which rewrites the embedded
metadata and the sidecar (MODEL itself unless --out).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import typer

from sorter.errors import SorterError
from sorter.perception.surround import Background
from training import data as D

BACKGROUND_FILE = "background.json"
"""The run folder's background (Background.as_dict)."""


def write_background(run_dir: Path, images: np.ndarray) -> dict[str, Any] | None:
    """Write `run_dir`/background.json from the training images (None when there are none)."""
    if len(images) == 0:
        return None
    doc = Background.of_images(images).as_dict()
    (Path(run_dir) / BACKGROUND_FILE).write_text(json.dumps(doc) + "\n")
    return doc


def of_run(run_dir: Path) -> dict[str, Any] | None:
    """The run's background: its background.json, else computed from its training split."""
    path = Path(run_dir) / BACKGROUND_FILE
    if path.is_file():
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise SorterError(f"{path}: not valid JSON ({err}); delete it to recompute") from err
        Background.from_dict(doc, str(path))
        return dict(doc)
    x, _ = D.load_split_images(run_dir, "train")
    return Background.of_images(x).as_dict() if len(x) else None


def attach(model: Path, images: np.ndarray, out: Path | None = None) -> Path:
    """Record the background of `images` in `model`'s metadata (embedded and sidecar)."""
    from sorter.grading.metadata import ModelMetadata, sidecar_path
    from training.export import embed_metadata

    meta = ModelMetadata.load(model)
    extra = {**meta.extra, "background": Background.of_images(images).as_dict()}
    meta = ModelMetadata(**{**meta.__dict__, "extra": extra})
    target = out or model
    target.write_bytes(embed_metadata(model.read_bytes(), meta.to_json().encode()))
    sidecar_path(target).write_text(meta.to_json() + "\n")
    ModelMetadata.load(target)
    return target


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def main(
    model: Path = typer.Argument(..., help="The exported .tflite."),
    data: Path = typer.Argument(..., help="The grade tree it was trained on."),
    split_file: Path | None = typer.Option(None, help="A run's split.json: its train split."),
    out: Path | None = typer.Option(None, help="Write here instead of rewriting MODEL."),
) -> None:
    """Record the training pictures' background in an exported model's metadata."""
    from sorter.grading.metadata import ModelMetadata
    from sorter.replay.belt_sim import list_images

    try:
        size = ModelMetadata.load(model).input_size
        if split_file is not None:
            root, sp = D.read_split(split_file.parent)
            items = sp["train"]
        else:
            root, items = data, list_images(data)
        labels = sorted({lab for _, lab in items})
        x, _ = D.load_arrays(Path(root), items, labels, (int(size[0]), int(size[1])))
        target = attach(model, x, out)
    except SorterError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    typer.echo(f"{target}: background of {len(x)} training pictures recorded")


if __name__ == "__main__":
    app()
