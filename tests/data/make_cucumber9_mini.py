"""Regenerate tests/data/cucumber9_mini/ from the shared CUCUMBER-9 prototype_1 batches.

    .venv/bin/python tests/data/make_cucumber9_mini.py ../shared/data/cucumber-9/prototype_1

Keeps the first 12 images of each grade from data_batch_1 (108 images) in the published
format: a protocol-2 pickle of a dict with planar R,G,B rows, numpy 1 module names
(``numpy.core.multiarray``) as in the original files, and a copy of batches.meta.
CUCUMBER-9 dataset (c) Workpiles, CC BY 4.0.
"""

from __future__ import annotations

import pickle
import shutil
import sys
from pathlib import Path

import numpy as np

from training.cucumber9 import safe_load

PER_GRADE = 12


def main(src: Path, dest: Path) -> None:
    batch = safe_load(src / "data_batch_1")
    labels = np.asarray(batch["labels"])
    keep: list[int] = []
    for grade in range(int(labels.max()) + 1):
        keep.extend(np.flatnonzero(labels == grade)[:PER_GRADE].tolist())
    keep.sort()
    rows = np.concatenate([[3 * i, 3 * i + 1, 3 * i + 2] for i in keep])
    mini = {
        "batch_label": "mini batch for tests (from training batch 1)",
        "labels": [int(labels[i]) for i in keep],
        "data": np.ascontiguousarray(batch["data"][rows]),
        "filenames": [batch["filenames"][i] for i in keep],
    }
    blob = pickle.dumps(mini, protocol=2)
    # Write the numpy-1 module name the published batches use (GLOBAL is plain text).
    blob = blob.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "data_batch_1").write_bytes(blob)
    shutil.copyfile(src / "batches.meta", dest / "batches.meta")
    print(f"wrote {len(keep)} images to {dest}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(__file__).parent / "cucumber9_mini")
