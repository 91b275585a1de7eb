"""Datasets for training: folder-per-grade trees, checks, splits and the split manifest.

Accepted layouts (class names are the grade folder names, sorted; folders whose names start
with ``_`` or ``.``, such as ``_review/`` from ``sorter run --save-crops``, are skipped):

- ``DATA_DIR/<grade>/*.png|jpg|jpeg|bmp``: a stratified, seeded validation split (and an
  optional test split) is made here and recorded in ``split.json``;
- ``DATA_DIR/train/<grade>``, ``DATA_DIR/val/<grade>`` and optional ``DATA_DIR/test/<grade>``:
  the user's own split; with ``train`` and ``test`` but no ``val``, validation is carved
  from ``train`` and ``test`` is only evaluated.

Every image is decoded once through `sorter.perception.preprocess` (the same path as the device), so
corrupt files are found before training starts; they are listed and skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sorter.errors import DatasetError, ImageError
from sorter.perception.preprocess import IMAGE_SUFFIXES, load_image, to_model_input

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MIN_IMAGES_PER_GRADE = 5
"""A grade folder with fewer images than this is an error (too few to learn or validate)."""
_KEEP_DECODED_MAX_SIDE = 256
"""Decoded images up to this side are kept in memory between the scan and the resize."""


@dataclass
class Sample:
    """One labelled image file."""

    relpath: str
    """Path relative to the dataset root, with forward slashes."""
    label: str
    """Grade name (its folder name)."""
    size: int
    """File size in bytes (part of the dataset fingerprint)."""
    shape: tuple[int, int]
    """(height, width) of the decoded image."""
    given_split: str | None = None
    """"train", "val" or "test" when the tree is already split, else None."""


@dataclass
class DatasetScan:
    """What was found under a dataset root, after the checks."""

    root: Path
    """Absolute dataset root."""
    labels: list[str]
    """Grade names in class-index order (sorted folder names)."""
    samples: list[Sample]
    """Every readable image."""
    corrupt: list[Path] = field(default_factory=list)
    """Image-named files that could not be decoded (skipped)."""
    ignored: list[Path] = field(default_factory=list)
    """Files that are not images by suffix (ignored)."""
    presplit: bool = False
    """True when the tree had train/val/test subfolders."""
    decoded: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    """Decoded small images by relpath (a cache so each file is decoded once)."""

    def counts(self, split: str | None = None) -> dict[str, int]:
        """Images per grade (in `labels` order), optionally for one given split."""
        c = Counter(s.label for s in self.samples if split is None or s.given_split == split)
        return {g: c.get(g, 0) for g in self.labels}

    def native_size(self) -> tuple[int, int]:
        """The images' common (h, w), or the most common one when sizes differ."""
        shapes = Counter(s.shape for s in self.samples)
        (h, w), _ = shapes.most_common(1)[0]
        if len(shapes) > 1:
            log.info("images have %d different sizes; resizing all to %dx%d", len(shapes), h, w)
        return (h, w)

    def fingerprint(self) -> str:
        """sha256 over sorted (relpath, size, label): identifies the dataset a model saw."""
        h = hashlib.sha256()
        for s in sorted(self.samples, key=lambda s: s.relpath):
            h.update(f"{s.relpath}\0{s.size}\0{s.label}\n".encode())
        return h.hexdigest()


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES


SKIP_PREFIXES = ("_", ".")
"""Folders whose names start with these are not grades (e.g. ``_review/``, which
``sorter run --save-crops`` writes for low-confidence crops awaiting a person's check,
or ``.cache/``); they are skipped with a note."""


def _grade_dirs(root: Path) -> list[Path]:
    dirs = sorted((d for d in root.iterdir() if d.is_dir()), key=lambda d: d.name)
    skipped = [d.name for d in dirs if d.name.startswith(SKIP_PREFIXES)]
    if skipped:
        log.info(
            "%s: skipping folder(s) %s (names starting with '_' or '.' are not grades)",
            root,
            ", ".join(f"{n}/" for n in skipped),
        )
    return [d for d in dirs if not d.name.startswith(SKIP_PREFIXES)]


def _scan_grade(
    scan: DatasetScan, grade_dir: Path, grade: str, split: str | None
) -> tuple[int, list[Path]]:
    n = 0
    nested: list[Path] = []
    for p in sorted(grade_dir.rglob("*")):
        if p.is_dir() or p.name.startswith("."):
            if p.is_dir():
                nested.append(p)
            continue
        if not _is_image(p):
            scan.ignored.append(p)
            continue
        try:
            img = load_image(p)
        except ImageError as err:
            log.warning("skipping %s", err)
            scan.corrupt.append(p)
            continue
        rel = p.relative_to(scan.root).as_posix()
        h, w = img.shape[:2]
        scan.samples.append(Sample(rel, grade, p.stat().st_size, (h, w), split))
        if max(h, w) <= _KEEP_DECODED_MAX_SIDE:
            scan.decoded[rel] = img
        n += 1
    return n, nested


def scan_dataset(
    data_dir: str | Path, *, min_per_grade: int = MIN_IMAGES_PER_GRADE, min_grades: int = 2
) -> DatasetScan:
    """Find, decode and check every image under `data_dir`.

    Raises DatasetError for a missing root, fewer than `min_grades` grades, or a grade with
    fewer than `min_per_grade` readable images. Corrupt images are skipped (listed, counted);
    non-image files are ignored with a note.
    """
    root = Path(data_dir).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"{data_dir}: dataset folder not found; give a folder of grade folders")
    top = _grade_dirs(root)
    names = {d.name for d in top}
    presplit = "train" in names and (bool(names & {"val", "test"}) or names == {"train"})
    scan = DatasetScan(root=root, labels=[], samples=[], presplit=presplit)
    if presplit:
        extra = [d.name for d in top if d.name not in SPLITS]
        if extra:
            raise DatasetError(
                f"{root}: has train/ beside other folders {extra}; use either grade folders "
                "or train/, val/ and test/ subfolders, not both"
            )
        scan.labels = [d.name for d in _grade_dirs(root / "train")]
        for split in SPLITS:
            split_dir = root / split
            if not split_dir.is_dir():
                continue
            for g in _grade_dirs(split_dir):
                if g.name not in scan.labels:
                    raise DatasetError(
                        f"{g}: grade '{g.name}' is not in train/ ({', '.join(scan.labels)}); "
                        "every grade needs training images"
                    )
                _scan_grade(scan, g, g.name, split)
        for p in root.iterdir():
            if p.is_file():
                scan.ignored.append(p)
    else:
        scan.labels = [d.name for d in top]
        for p in root.iterdir():
            if p.is_file():
                scan.ignored.append(p)
        for g in top:
            _, nested = _scan_grade(scan, g, g.name, None)
            if nested:
                log.info("%s: images in subfolders are counted as grade '%s'", g, g.name)
    _check(scan, min_per_grade, min_grades)
    return scan


def _check(scan: DatasetScan, min_per_grade: int, min_grades: int) -> None:
    where = scan.root / "train" if scan.presplit else scan.root
    if len(scan.labels) < min_grades:
        raise DatasetError(
            f"{where}: found {len(scan.labels)} grade folder(s) {scan.labels}; need at least "
            f"{min_grades} (one folder of images per grade)"
        )
    if not scan.samples:
        raise DatasetError(f"{where}: no readable images (.png/.jpg/.jpeg/.bmp) in grade folders")
    counts = scan.counts("train" if scan.presplit else None)
    few = {g: n for g, n in counts.items() if n < min_per_grade}
    if few:
        g, n = next(iter(few.items()))
        raise DatasetError(
            f"{where / g}: grade '{g}' has {n} readable image(s); need at least {min_per_grade} "
            f"per grade (add images or remove the folder){_more(len(few) - 1)}"
        )
    if scan.corrupt:
        log.warning(
            "skipped %d unreadable image file(s): %s",
            len(scan.corrupt),
            ", ".join(str(p) for p in scan.corrupt[:10])
            + (" ..." if len(scan.corrupt) > 10 else ""),
        )
    if scan.ignored:
        log.info(
            "ignored %d non-image file(s) (not .png/.jpg/.jpeg/.bmp), e.g. %s",
            len(scan.ignored),
            scan.ignored[0],
        )


def _more(n: int) -> str:
    return f" ({n} more grade(s) too small)" if n > 0 else ""


# --- splits -------------------------------------------------------------------------------


Split = dict[str, list[tuple[str, str]]]
"""{"train"|"val"|"test": [(relpath, label), ...]}"""


def stratified_split(
    items: list[tuple[str, str]], fractions: dict[str, float], seed: int
) -> dict[str, list[tuple[str, str]]]:
    """Split (relpath, label) items per grade: each named split gets round(n * fraction)
    (at least 1) of every grade, the rest is "train". Reproducible for a given seed."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[tuple[str, str]]] = {"train": [], **{k: [] for k in fractions}}
    by_label: dict[str, list[tuple[str, str]]] = {}
    for it in sorted(items):
        by_label.setdefault(it[1], []).append(it)
    for label in sorted(by_label):
        group = by_label[label]
        order = rng.permutation(len(group))
        start = 0
        for name, frac in fractions.items():
            if frac <= 0:
                continue
            k = max(1, round(len(group) * frac))
            if start + k >= len(group):
                raise DatasetError(
                    f"grade '{label}' has {len(group)} images, too few for a {frac:.0%} "
                    f"{name} split; lower --val-fraction/--test-fraction or add images"
                )
            out[name].extend(group[i] for i in order[start : start + k])
            start += k
        out["train"].extend(group[i] for i in order[start:])
    return {k: sorted(v) for k, v in out.items()}


def make_split(scan: DatasetScan, *, val_fraction: float, test_fraction: float, seed: int) -> Split:
    """The train/val/test split for a scan (given subtrees are respected)."""
    for name, frac in (("--val-fraction", val_fraction), ("--test-fraction", test_fraction)):
        if not 0 <= frac < 0.9:
            raise DatasetError(f"{name} {frac} must be in [0, 0.9)")
    if not scan.presplit:
        if val_fraction <= 0:
            raise DatasetError("--val-fraction must be > 0 when the dataset has no val/ folder")
        items = [(s.relpath, s.label) for s in scan.samples]
        return stratified_split(items, {"val": val_fraction, "test": test_fraction}, seed)
    given: Split = {k: [] for k in SPLITS}
    for s in scan.samples:
        given[str(s.given_split)].append((s.relpath, s.label))
    if not given["val"]:
        if val_fraction <= 0:
            raise DatasetError(f"{scan.root}: no val/ folder and --val-fraction is 0")
        carved = stratified_split(given["train"], {"val": val_fraction}, seed)
        given["train"], given["val"] = carved["train"], carved["val"]
    return {k: sorted(v) for k, v in given.items()}


def class_weights(split_train: list[tuple[str, str]], labels: list[str]) -> dict[int, float]:
    """Balanced class weights n / (k * n_c) for the training split."""
    c = Counter(lab for _, lab in split_train)
    n, k = sum(c.values()), len(labels)
    return {i: n / (k * c[g]) if c[g] else 0.0 for i, g in enumerate(labels)}


def imbalance_ratio(split_train: list[tuple[str, str]]) -> float:
    """Largest over smallest grade count in the training split."""
    c = Counter(lab for _, lab in split_train)
    return max(c.values()) / max(1, min(c.values()))


# --- arrays ---------------------------------------------------------------------------------


def load_arrays(
    root: Path,
    items: list[tuple[str, str]],
    labels: list[str],
    input_size: tuple[int, int],
    cache: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode (via the cache when given) and resize items to (N, h, w, 3) uint8 + int labels."""
    index = {g: i for i, g in enumerate(labels)}
    h, w = input_size
    x = np.empty((len(items), h, w, 3), dtype=np.uint8)
    y = np.empty((len(items),), dtype=np.int64)
    for i, (rel, lab) in enumerate(items):
        if lab not in index:
            raise DatasetError(f"{root / rel}: grade '{lab}' is not one of the model's grades")
        img = cache.get(rel) if cache is not None else None
        if img is None:
            img = load_image(root / rel)
        x[i] = to_model_input(img, (h, w))
        y[i] = index[lab]
    return x, y


def write_split(path: Path, root: Path, split: Split) -> None:
    """Write the split manifest (``split.json``) as the run-folder contract says."""
    doc = {"root": str(root), **{k: [list(t) for t in split.get(k, [])] for k in SPLITS}}
    path.write_text(json.dumps(doc, indent=1) + "\n")


def read_split(run_dir: Path) -> tuple[Path, Split]:
    """Read a run's ``split.json``: (dataset root, split)."""
    path = run_dir / "split.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise DatasetError(f"{path}: not found; is {run_dir} a sorter-train run folder?") from err
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: not valid JSON ({err}); re-run sorter-train") from err
    split = {k: [(str(a), str(b)) for a, b in doc.get(k, [])] for k in SPLITS}
    return Path(doc["root"]), split


def read_labels(run_dir: Path) -> list[str]:
    """The grades of a run, in class-index order, from ``labels.txt``."""
    path = run_dir / "labels.txt"
    try:
        return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    except FileNotFoundError as err:
        raise DatasetError(f"{path}: not found; is {run_dir} a sorter-train run folder?") from err


def read_input_size(run_dir: Path) -> tuple[int, int]:
    """The (h, w) model input size from a run's ``config.json``."""
    path = run_dir / "config.json"
    try:
        h, w = json.loads(path.read_text())["input_size"]
    except FileNotFoundError as err:
        raise DatasetError(f"{path}: not found; is {run_dir} a sorter-train run folder?") from err
    except (KeyError, ValueError, TypeError) as err:
        raise DatasetError(f"{path}: no valid 'input_size' [h, w]; re-run sorter-train") from err
    return int(h), int(w)


def load_split_images(run_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Load one split of a run ("train", "val" or "test") through `sorter.perception.preprocess`.

    Returns (images uint8 N x h x w x 3 at the run's input size, int64 label indices into
    the run's labels.txt).
    """
    if split not in SPLITS:
        raise DatasetError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")
    rd = Path(run_dir)
    root, sp = read_split(rd)
    return load_arrays(root, sp[split], read_labels(rd), read_input_size(rd))
