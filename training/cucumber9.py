"""Import the CIFAR-style CUCUMBER-9 batches into a folder-per-grade tree of PNGs.

The batches are Python pickles. They are read with `SafeUnpickler`, which resolves only
the few globals a pickled numpy array needs (under numpy 1 and numpy 2 module names), so
a pickle that asks for anything else (``os.system`` via ``__reduce__``...) is refused
before any of it runs.

Pixel layout (NOT CIFAR-10's): in a batch's ``data`` (3N x 1024 uint8), rows 3i, 3i+1 and
3i+2 are the R, G and B planes of image i, so a batch decodes as
``data.reshape(N, 3, 32, 32).transpose(0, 2, 3, 1)``.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sorter.errors import DatasetError

log = logging.getLogger(__name__)

IMAGE_SIDE = 32
"""CUCUMBER-9 images are 32x32 RGB."""

# (module, name) pairs a numpy-array pickle needs; nothing else is ever resolved.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("builtins", "dict"),
        ("builtins", "list"),
        ("builtins", "tuple"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "bytearray"),
        ("__builtin__", "dict"),
        ("__builtin__", "list"),
        ("__builtin__", "tuple"),
        ("_codecs", "encode"),
    }
)


class UnsafePickleError(DatasetError):
    """A pickle asked for a global outside the allow-list."""


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in `ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"refusing to unpickle {module}.{name}: only numpy arrays and builtin "
                "containers are allowed in a dataset batch; the file is not a plain data batch"
            )
        if module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            from numpy._core import multiarray  # numpy 2 name; numpy.core is a shim

            return getattr(multiarray, name)
        if module == "__builtin__":
            module = "builtins"
        return super().find_class(module, name)


def safe_load(path: Path) -> Any:
    """Unpickle `path` with `SafeUnpickler` (latin1 for Python 2 strings)."""
    try:
        with path.open("rb") as fh:
            return SafeUnpickler(fh, encoding="latin1").load()
    except UnsafePickleError as err:
        raise UnsafePickleError(f"{path}: {err}") from err
    except OSError as err:
        raise DatasetError(f"{path}: cannot read ({err.strerror}); check the path") from err
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise DatasetError(f"{path}: not a readable CUCUMBER-9 batch ({err})") from err


@dataclass
class Batch:
    """One decoded CUCUMBER-9 batch."""

    images: np.ndarray
    """N x 32 x 32 x 3 uint8 RGB."""
    labels: np.ndarray
    """N int class indices into the label names."""
    filenames: list[str] = field(default_factory=list)
    """Original file names (e.g. ``2L_00170.jpg``), one per image."""


def decode_batch(obj: Any, source: Path) -> Batch:
    """Turn an unpickled batch dict into images (planar R,G,B rows -> HxWx3)."""
    if not isinstance(obj, dict) or "data" not in obj or "labels" not in obj:
        raise DatasetError(f"{source}: not a CUCUMBER-9 batch (needs 'data' and 'labels' keys)")
    data = np.asarray(obj["data"])
    labels = np.asarray(obj["labels"], dtype=np.int64)
    side = IMAGE_SIDE * IMAGE_SIDE
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != side or data.shape[0] % 3:
        raise DatasetError(
            f"{source}: 'data' must be uint8 with 3 rows of {side} per image, "
            f"got {data.dtype} {data.shape}"
        )
    n = data.shape[0] // 3
    if labels.shape != (n,):
        raise DatasetError(f"{source}: {labels.shape[0]} labels for {n} images")
    images = data.reshape(n, 3, IMAGE_SIDE, IMAGE_SIDE).transpose(0, 2, 3, 1)
    names = [str(f) for f in obj.get("filenames", [])] or [f"{i:05d}" for i in range(n)]
    return Batch(images=np.ascontiguousarray(images), labels=labels, filenames=names)


def load_label_names(src: Path) -> list[str]:
    """The grade names, in class-index order, from ``batches.meta``; each must be a plain
    folder name (they become DEST/<grade>/), else DatasetError naming the file and label."""
    path = src / "batches.meta"
    meta = safe_load(path)
    if not isinstance(meta, dict) or "label_names" not in meta:
        raise DatasetError(f"{path}: no 'label_names' list")
    names = [str(n) for n in meta["label_names"]]
    for name in names:
        problem = _folder_name_problem(name)
        if problem:
            raise DatasetError(
                f"{path}: label name {name!r} {problem}; it would be a folder outside or "
                "across the destination: fix the label names (plain names like '2L')"
            )
    return names


def _folder_name_problem(name: str) -> str | None:
    """Why `name` is not a plain, single folder name, or None."""
    if name in ("", ".", ".."):
        return "is empty, '.' or '..'"
    if "/" in name or "\\" in name or "\x00" in name:
        return "holds a path separator or NUL"
    if Path(name).is_absolute() or Path(name).name != name:
        return "is a path, not a folder name"
    return None


@dataclass
class ImportSummary:
    """What `import_cucumber9` wrote."""

    dest: Path
    """The folder-per-grade tree written."""
    counts: dict[str, dict[str, int]]
    """Images written per split ("all" or "train"/"test") and grade."""


def import_cucumber9(src: str | Path, dest: str | Path, *, force: bool = False) -> ImportSummary:
    """Write SRC's batches as DEST/<grade>/<name>.png.

    When SRC also holds a ``test_batch``, the training batches go to DEST/train/<grade> and
    the test batch to DEST/test/<grade> (the layout `sorter-train` reads as a given split).
    """
    src_p, dest_p = Path(src), Path(dest)
    if not src_p.is_dir():
        raise DatasetError(f"{src_p}: not a folder; give the folder holding data_batch_1..5")
    train_files = sorted(src_p.glob("data_batch_*"))
    if not train_files:
        raise DatasetError(f"{src_p}: no data_batch_* files; is this a CUCUMBER-9 folder?")
    if dest_p.exists() and any(dest_p.iterdir()) and not force:
        raise DatasetError(f"{dest_p}: folder is not empty; choose a new folder or pass --force")
    names = load_label_names(src_p)
    test_file = src_p / "test_batch"
    groups = (
        {"train": train_files, "test": [test_file]} if test_file.exists() else {"": train_files}
    )
    counts: dict[str, dict[str, int]] = {}
    for split, files in groups.items():
        root = dest_p / split if split else dest_p
        per_grade = counts.setdefault(split or "all", {n: 0 for n in names})
        for f in files:
            batch = decode_batch(safe_load(f), f)
            for img, lab, fname in zip(batch.images, batch.labels, batch.filenames, strict=True):
                if not 0 <= lab < len(names):
                    raise DatasetError(f"{f}: label {lab} outside the {len(names)} grades")
                grade = names[lab]
                # only the file name's stem: a name like ../../x.jpg stays inside DEST
                out = root / grade / (Path(fname.replace("\\", "/")).stem + ".png")
                if dest_p.resolve() not in out.resolve().parents:
                    raise DatasetError(
                        f"{f}: file name {fname!r} would be written outside {dest_p}"
                    )
                out.parent.mkdir(parents=True, exist_ok=True)
                if not cv2.imwrite(str(out), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
                    raise DatasetError(f"{out}: cannot write PNG; check permissions and space")
                per_grade[grade] += 1
        log.info("imported %d images into %s", sum(per_grade.values()), root)
    return ImportSummary(dest=dest_p, counts=counts)
