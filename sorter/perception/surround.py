"""What the model's window shows around the produce: as the camera saw it, or the
background of the model's own training pictures.

A model learns its grades from pictures that all share one surround (CUCUMBER-9: the
cucumber on a light tray, lit from above, so light at the top and darker at the bottom).
On a belt where the produce rides on something else (a bare dark belt, a cup of another
colour) the window round it is out of everything the model has seen. `[locate] surround =
"model"` makes the window look like its training pictures instead: every pixel outside the
item (the produce's full-resolution mask in the window; its edge pixels unmixed, see
`fill_surround`) is replaced by the training pictures' background, which `sorter-export`
records in the model's metadata (`background`, `Background.of_images`):

- what is background in a training picture: its pixels whose excess green 2G - R - B is
  at most `GREEN_MIN` (the rule sorter.perception.measure uses for produce);
- what is recorded: for each cell of a GRID x GRID grid over the picture, the per-channel
  median of those pixels over all training pictures (cells with too few such pixels take
  the overall median), plus the overall median and the spread (median absolute deviation)
  per channel. At fill time the grid is resized (bilinear) to the window.

The produce's own pixels are never changed (weight exactly 1 under the mask), so its
extent in the window, hence the size grades, stay as the camera saw them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from sorter.errors import ConfigError, ModelError

SURROUNDS = ("keep", "model")
"""[locate] surround: keep (the window as the camera saw it) or model (training background)."""

GRID = 8
"""Cells per side of the recorded background."""
GREEN_MIN = 20.0
"""Excess green 2G - R - B above which a training pixel is produce, not background."""
MIN_CELL_PIXELS = 16
"""A grid cell with fewer background pixels than this over all pictures takes the median."""
MIN_CARRIER_FRACTION = 0.1
"""With less of the window showing the item's carrier (its blob's pixels that are not
produce), the item lies on the bare belt: the surround is the training background; with
more, the carrier is there to fill from (sorter.perception.measure.item_view)."""
RULE = (
    "per-channel median of the training pictures' pixels with excess green 2G-R-B <= 20, "
    "per cell of an 8x8 grid over the picture (overall median where a cell has too few)"
)


@dataclass(frozen=True)
class Background:
    """The training pictures' background (see the module docstring)."""

    grid: np.ndarray
    """(GRID, GRID, 3) float32 per-cell median RGB, rows from the picture's top."""
    median: tuple[float, float, float]
    """Overall per-channel median RGB of the background pixels."""
    spread: tuple[float, float, float]
    """Per-channel median absolute deviation of the background pixels."""
    images: int
    """How many pictures it was taken from."""

    def image(self, size: tuple[int, int]) -> np.ndarray:
        """The background as an (h, w, 3) float32 RGB picture; `size` is (w, h)."""
        w, h = int(size[0]), int(size[1])
        return np.asarray(cv2.resize(self.grid, (w, h), interpolation=cv2.INTER_LINEAR))

    def as_dict(self) -> dict[str, Any]:
        """The metadata entry (JSON-ready)."""
        return {
            "rule": RULE,
            "grid": np.round(self.grid, 1).tolist(),
            "median": [round(v, 1) for v in self.median],
            "spread": [round(v, 1) for v in self.spread],
            "images": self.images,
        }

    @classmethod
    def from_dict(cls, doc: Any, source: str = "model") -> Background:
        """Read the metadata entry back; ModelError naming `source` when it is malformed."""
        try:
            grid = np.asarray(doc["grid"], dtype=np.float32)
            median = tuple(float(v) for v in doc["median"])
            spread = tuple(float(v) for v in doc["spread"])
            images = int(doc["images"])
        except (KeyError, TypeError, ValueError) as err:
            raise ModelError(
                f"{source}: metadata 'background' is malformed ({err}); re-export the model"
            ) from err
        if grid.ndim != 3 or grid.shape[2] != 3 or not np.isfinite(grid).all():
            raise ModelError(
                f"{source}: metadata 'background' grid has shape {list(grid.shape)}, "
                "not (n, n, 3) finite values; re-export the model"
            )
        if len(median) != 3 or len(spread) != 3:
            raise ModelError(f"{source}: metadata 'background' needs 3 channels; re-export it")
        return cls(
            grid, (median[0], median[1], median[2]), (spread[0], spread[1], spread[2]), images
        )

    @classmethod
    def of_images(cls, images: Sequence[np.ndarray] | np.ndarray) -> Background:
        """The background of training pictures (HxWx3 uint8 RGB, all one size)."""
        if len(images) == 0:
            raise ValueError("no pictures to take the background from")
        x: np.ndarray = np.stack([np.asarray(img) for img in images])
        if x.ndim != 4 or x.shape[3] != 3:
            raise ValueError(f"pictures must be HxWx3, got {list(x.shape[1:])}")
        bg = np.stack([background_mask(x[i]) for i in range(len(x))])
        pool = x[bg].astype(np.float32)
        if len(pool) == 0:
            raise ValueError("the pictures have no background pixels (all excess green)")
        median = np.median(pool, axis=0)
        spread = np.median(np.abs(pool - median), axis=0)
        h, w = int(x.shape[1]), int(x.shape[2])
        ys = [round(i * h / GRID) for i in range(GRID + 1)]
        xs = [round(i * w / GRID) for i in range(GRID + 1)]
        grid = np.empty((GRID, GRID, 3), np.float32)
        for gy in range(GRID):
            for gx in range(GRID):
                cell = (slice(None), slice(ys[gy], ys[gy + 1]), slice(xs[gx], xs[gx + 1]))
                px = x[cell][bg[cell]]
                grid[gy, gx] = np.median(px, axis=0) if len(px) >= MIN_CELL_PIXELS else median
        return cls(
            grid,
            (float(median[0]), float(median[1]), float(median[2])),
            (float(spread[0]), float(spread[1]), float(spread[2])),
            len(x),
        )


def background_mask(rgb: np.ndarray) -> np.ndarray:
    """True where a picture's pixel is background (excess green at most GREEN_MIN)."""
    x = rgb.astype(np.int16)
    exg = 2 * x[:, :, 1] - x[:, :, 0] - x[:, :, 2]
    return np.asarray(exg <= GREEN_MIN)


def _local_mean(image: np.ndarray, where: np.ndarray, sigma: float) -> np.ndarray:
    """Per-pixel mean colour of the `where` pixels nearby (normalised Gaussian blur)."""
    w = where.astype(np.float32)
    num = cv2.GaussianBlur(image.astype(np.float32) * w[:, :, None], (0, 0), sigma)
    den = cv2.GaussianBlur(w, (0, 0), sigma)
    return np.asarray(num / np.maximum(den, 1e-6)[:, :, None], dtype=np.float32)


def fill_surround(
    crop: np.ndarray, mask: np.ndarray, background: Background, band_px: float = 2.0
) -> np.ndarray:
    """The window `crop` (HxWx3 uint8 RGB) with what lies round the item `mask` (HxW,
    0/non-0) replaced by `background`; the item's pixels are unchanged.

    Pixels within `band_px` of the mask may be partly item (its edge, mixed by the lens
    and the resampling): each is taken as a mix a * item + (1 - a) * surround of the
    item's colour next to it and the surround's just beyond the band, and its surround
    share is swapped for the background (pixel + (1 - a) * (background - surround)), so
    the item's edge, hence its extent, stays where the camera saw it. Farther pixels are
    the background."""
    h, w = crop.shape[:2]
    if mask.shape != (h, w):
        raise ValueError(f"mask is {mask.shape}, the crop {(h, w)}")
    item = mask > 0
    bg = background.image((w, h))
    out = np.clip(np.rint(bg), 0, 255).astype(np.uint8)
    if not item.any():
        return out
    out[item] = crop[item]
    dist = cv2.distanceTransform((~item).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    edge = (dist > 0) & (dist <= band_px)
    beyond = (dist > band_px + 1.0) & (dist <= band_px + 4.0)
    if not edge.any() or not beyond.any():
        return out
    sigma = 2.0 * band_px + 2.0
    x = crop[edge].astype(np.float32)
    own = _local_mean(crop, item, sigma)[edge]
    sur = _local_mean(crop, beyond, sigma)[edge]
    d = own - sur
    den = (d * d).sum(axis=1)
    a = np.clip(((x - sur) * d).sum(axis=1) / np.maximum(den, 1e-6), 0.0, 1.0)
    a = np.where(den >= 100.0, a, 0.0)[:, None]  # item and surround alike: surround
    swapped = x + (1.0 - a) * (bg[edge] - sur)
    out[edge] = np.clip(np.rint(swapped), 0, 255).astype(np.uint8)
    return out


def model_background(surround: str, classifier: Any) -> Background | None:
    """The background to fill with for `[locate] surround` (None for "keep"): the one the
    classifier's model metadata records. ConfigError when "model" and the model has none."""
    if surround != "model":
        return None
    meta = getattr(classifier, "metadata", None)
    extra = getattr(meta, "extra", None) or {}
    source = str(getattr(classifier, "model_path", "the model"))
    doc = extra.get("background")
    if doc is None:
        raise ConfigError(
            f'locate.surround: "model" needs the training background in the model\'s '
            f"metadata, and {source} has none (exported before it was recorded); re-export "
            'it with sorter-export, or set locate.surround = "keep"'
        )
    return Background.from_dict(doc, source)
