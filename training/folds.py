"""Splits beyond train/val/test: stratified k-fold cross-validation and "train on all".

`fold_split(items, folds, fold, seed, val_fraction)` makes fold `fold` of a stratified,
seeded k-fold partition the test split (scored once, never used for choices), optionally
carves a validation split from the rest, and trains on what is left. Every image is in the
test split of exactly one fold.
"""

from __future__ import annotations

import numpy as np

from sorter.errors import DatasetError
from training import data as D


def fold_of(items: list[tuple[str, str]], folds: int, seed: int) -> dict[str, int]:
    """relpath -> fold index, stratified per grade (each grade dealt round-robin)."""
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[tuple[str, str]]] = {}
    for it in sorted(items):
        by_label.setdefault(it[1], []).append(it)
    out: dict[str, int] = {}
    offset = 0
    for label in sorted(by_label):
        group = by_label[label]
        if len(group) < folds:
            raise DatasetError(
                f"grade '{label}' has {len(group)} images, fewer than --folds {folds}"
            )
        for rank, i in enumerate(rng.permutation(len(group))):
            out[group[i][0]] = (rank + offset) % folds
        offset += len(group)
    return out


def fold_split(
    items: list[tuple[str, str]], folds: int, fold: int, seed: int, val_fraction: float = 0.0
) -> D.Split:
    """Train / val / test for one fold of a `folds`-fold cross-validation."""
    if folds < 2 or not 0 <= fold < folds:
        raise DatasetError(f"--fold {fold} of --folds {folds}: need folds >= 2, 0 <= fold < folds")
    where = fold_of(items, folds, seed)
    test = sorted(it for it in items if where[it[0]] == fold)
    rest = sorted(it for it in items if where[it[0]] != fold)
    if val_fraction > 0:
        carved = D.stratified_split(rest, {"val": val_fraction}, seed)
        return {"train": carved["train"], "val": carved["val"], "test": test}
    return {"train": rest, "val": [], "test": test}


def make_split(
    scan: D.DatasetScan,
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    folds: int = 0,
    fold: int = 0,
) -> D.Split:
    """`training.data.make_split`, plus k-fold splits and val_fraction 0 (train on all)."""
    items = [(s.relpath, s.label) for s in scan.samples]
    if folds:
        if scan.presplit:
            raise DatasetError(f"{scan.root}: --folds needs a plain grade-folder tree, not train/")
        return fold_split(items, folds, fold, seed, val_fraction)
    if val_fraction == 0 and not scan.presplit:
        if test_fraction > 0:
            return {**D.stratified_split(items, {"test": test_fraction}, seed), "val": []}
        return {"train": sorted(items), "val": [], "test": []}
    return D.make_split(scan, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
