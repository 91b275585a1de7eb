"""The model input size a dataset gets when none is asked for, and class weights.

Small images (longest side up to `LARGE_SIDE`, e.g. CUCUMBER-9's 32x32) are used at their
own (most common) size. Larger photos get **about 32x32 = 1024 pixels at the photos' median
aspect** (sides rounded to multiples of 4; a 300x250 photo becomes 28x36, h x w), each photo
shrunk whole, as one fixed field of view, so sizes stay comparable between photos. Why: the
default network's cost grows with the pixels; at ~1024 it stays within the Raspberry Pi 4's
5 ms per crop on one core (estimate, training.budget) and trains in seconds per thousand
images per epoch on two CPU cores, where a photo's own size (262x326) took 7 minutes an
epoch and a model far too big for a Pi. `--input-size HxW` overrides it.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np

from training import data as D

log = logging.getLogger(__name__)

LARGE_SIDE = 48
"""Images with a longer side above this are "large photos" (see the module docstring)."""
LARGE_PIXELS = 1024
"""Pixels (h x w) of the default input for large photos."""
CLASS_WEIGHT_POWER = 0.5
"""Class weight = (n / (k * n_c)) ** power: 1 balances the grades fully (best balanced
accuracy, at some cost in plain accuracy on skewed data), 0 ignores imbalance; 0.5 is the
usual compromise."""


def _round4(v: float) -> int:
    return max(8, round(v / 4.0) * 4)


def default_input_size(scan: D.DatasetScan) -> tuple[int, int]:
    """(h, w) for a dataset: native when small, else the median aspect at LARGE_SIDE."""
    shapes = Counter(s.shape for s in scan.samples)
    longest = max(max(hw) for hw in shapes)
    if longest <= LARGE_SIDE:
        return scan.native_size()
    hs = np.array([s.shape[0] for s in scan.samples], dtype=np.float64)
    ws = np.array([s.shape[1] for s in scan.samples], dtype=np.float64)
    h, w = float(np.median(hs)), float(np.median(ws))
    k = (LARGE_PIXELS / (h * w)) ** 0.5
    size = (_round4(h * k), _round4(w * k))
    log.warning(
        "photos up to %dx%d px (median %.0fx%.0f, %d sizes): training at %dx%d (h x w), about "
        "%d pixels at the median aspect, each photo shrunk whole (one field of view), so the "
        "network fits a Raspberry Pi's 5 ms per crop and the time budget; --input-size HxW "
        "to choose",
        max(s.shape[0] for s in scan.samples),
        max(s.shape[1] for s in scan.samples),
        h,
        w,
        len(shapes),
        *size,
        LARGE_PIXELS,
    )
    return size


def class_weights(
    split_train: list[tuple[str, str]], labels: list[str], power: float = CLASS_WEIGHT_POWER
) -> dict[int, float]:
    """Class weights (n / (k * n_c)) ** power for the training split (0 for absent grades)."""
    full = D.class_weights(split_train, labels)
    return {i: (w**power if w > 0 else 0.0) for i, w in full.items()}
