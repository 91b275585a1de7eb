"""Measuring one item from its FULL-resolution mask: sub-pixel centre, length, width, bend.

The locator finds items at half scale (fast); its bounding-box centre is good to about a
pixel. `measure` refines it: it rebuilds the item's mask at full resolution in a small
region around the detection (`Locator.mask_full`, the same belt rule), keeps the largest
blob (holes filled), reads how much of each edge pixel the item covers from its colour
(`coverage`: a threshold would bias the centre towards the fainter edge) and takes the
centre of the coverage's image moments. `crop_at` then cuts the model's fixed window at
that sub-pixel centre (`cv2.getRectSubPix`, bilinear). On simulated belts the centre is
within about 0.1 px of the truth on average (tests/test_measure.py; benchmarks/README.md).

Pixel convention, everywhere in this module and in `Detection`: pixel column i covers
[i, i+1), so its centre is i + 0.5; a frame W pixels wide spans [0, W) and its centre is
W / 2. (OpenCV's moments and getRectSubPix put pixel centres at integers; the 0.5 is added
or removed at the two places they are called, nowhere else.)

Shape, from the PRODUCE inside the item's blob: when items ride in trays or cups the blob
is the tray, so the produce is taken as the blob's pixels with excess green
2G - R - B > `MeasureConfig.green_min` (a standard vegetation index; cucumbers are green,
most trays and belts are not), its largest part that is not a ring (a green cup's or
tray's rim is as green as produce, but its outline encloses far more than its pixels);
when too few pixels are green (the item is not green, or lies on a bare belt and is the
blob itself) the shape is the blob's.
On that mask:
- the main axis is the principal axis of its pixel coordinates (PCA);
- length_px = its extent along the main axis (end to end, pixel edges included: a
  straight run of n pixels is n long); a chord length, not the arc along a curve;
- width_px = its largest thickness across the main axis, over the middle 80% of the
  length (the tapered tips and stalk ignored), measured per 1-pixel slice perpendicular
  to the main axis;
- bend_px = the medial line's largest distance from its chord: the medial line is the
  mean position of each 1-pixel slice across the axis (smoothed over 5% of the length),
  the chord joins its points at 5% and 95% of the length;
  0 for a straight item, about the sagitta for a curved one.
Pixels here are full-resolution camera pixels; converting them to millimetres (camera
scale, lens) is the caller's business.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from sorter.perception.surround import MIN_CARRIER_FRACTION, Background, fill_surround
from sorter.perception.vision import Detection


class FullMasker(Protocol):
    """What `measure` needs from a locator (sorter.perception.vision.Locator)."""

    def mask_full(self, image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray: ...


@dataclass(frozen=True)
class MeasureConfig:
    """Tunables of `measure` (defaults suit CUCUMBER-9 trays on a belt)."""

    margin_px: int = 8
    """Region searched around the detection's box, in full-resolution pixels."""
    green_min: float = 20.0
    """Excess green 2G - R - B (0-255 levels) above which a pixel is produce."""
    band_px: int = 2
    """Pixels each side of the belt rule's edge whose coverage is read from their colour."""
    produce_min_fraction: float = 0.02
    """Fewer produce pixels than this fraction of the blob: the shape is the blob's."""


@dataclass(frozen=True)
class Shape:
    """Main-axis geometry of a mask, in pixels (see the module docstring)."""

    length_px: float
    """Extent along the main axis."""
    width_px: float
    """Largest thickness across the main axis over the middle 80% of the length."""
    bend_px: float
    """Largest distance of the medial line from its chord."""
    angle_deg: float
    """Main axis angle from the image x axis, degrees in (-90, 90], y pointing down."""
    area_px: float
    """Pixels in the mask."""


@dataclass(frozen=True)
class Measurement:
    """One item measured from its full-resolution mask (see `measure`)."""

    cx: float
    """Sub-pixel centre x of the item's blob (pixel i covers [i, i+1))."""
    cy: float
    """Sub-pixel centre y of the item's blob."""
    area_px: float
    """Blob area (holes filled), full-resolution pixels."""
    shape: Shape
    """Length, width, bend and angle of the produce (or of the blob, see shape_from)."""
    shape_from: str
    """"produce" (the green part of the blob) or "item" (the whole blob)."""
    refined: bool = True
    """False when no full-resolution blob was found: the centre is the detection's."""

    @property
    def length_px(self) -> float:
        """Main-axis length in pixels (shape.length_px)."""
        return self.shape.length_px

    @property
    def width_px(self) -> float:
        """Width in pixels (shape.width_px)."""
        return self.shape.width_px

    @property
    def bend_px(self) -> float:
        """Bend in pixels (shape.bend_px)."""
        return self.shape.bend_px


EMPTY_SHAPE = Shape(0.0, 0.0, 0.0, 0.0, 0.0)

CORE_MARGIN_PX = 3
"""`produce_reaching_out`: how far inside the carrier's interior produce must be to count
as the item's (the rim's edge pixels, mixed by blur and motion, are nearer than this)."""


def _largest_filled(mask: np.ndarray) -> np.ndarray | None:
    """The largest external blob of a 0/255 mask, holes filled (0/255), or None."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    best = max(contours, key=cv2.contourArea)
    out = np.zeros_like(mask)
    cv2.drawContours(out, [best], -1, 255, thickness=cv2.FILLED)
    return out


RING_FILL_RATIO = 2.0
"""A green part whose outline encloses more than this many times its own pixels is a ring
round something (a green cup's or tray's rim), not produce (`_largest_solid`)."""


def _largest_solid(mask: np.ndarray) -> np.ndarray | None:
    """The largest connected part of a 0/255 mask that is not a ring (its filled area at
    most RING_FILL_RATIO times its own pixels), holes filled (0/255), or None. A part
    inside another's hole (a cucumber in a green cup) counts on its own."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    best, best_area = None, 0
    for i in np.argsort(-stats[1:, cv2.CC_STAT_AREA]) + 1:
        own = int(stats[i, cv2.CC_STAT_AREA])
        if own <= best_area // 2:  # cannot beat the best even filled to the ratio
            break
        filled = _largest_filled((labels == i).astype(np.uint8) * 255)
        area = int(np.count_nonzero(filled)) if filled is not None else 0
        if area > best_area and area <= RING_FILL_RATIO * own:
            best, best_area = filled, area
    return best


def centre_of(weights: np.ndarray) -> tuple[float, float] | None:
    """Centre (x, y) of a weight image (a 0/1 or 0/255 mask, or float32 coverage), pixel i
    covering [i, i+1); None when it is all zero."""
    m = cv2.moments(weights.astype(np.float32), binaryImage=False)
    if m["m00"] <= 0:
        return None
    # OpenCV's pixel i sits at coordinate i; in our convention its centre is i + 0.5.
    return m["m10"] / m["m00"] + 0.5, m["m01"] / m["m00"] + 0.5


def shape_of(mask: np.ndarray) -> Shape:
    """Length, width, bend and angle of a 0/non-0 mask (the module docstring says how)."""
    ys, xs = np.nonzero(mask)
    n = len(xs)
    if n < 3:
        return Shape(float(n), float(n), 0.0, 0.0, float(n))
    pts = np.stack([xs, ys], axis=1).astype(np.float64)
    mean = pts.mean(axis=0)
    cov = np.cov((pts - mean).T)
    evals, evecs = np.linalg.eigh(cov)
    axis = evecs[:, int(np.argmax(evals))]
    if axis[0] < 0 or (axis[0] == 0 and axis[1] < 0):
        axis = -axis
    normal = np.array([-axis[1], axis[0]])
    u = (pts - mean) @ axis
    v = (pts - mean) @ normal
    length = float(u.max() - u.min() + 1.0)
    bins = np.floor(u - u.min()).astype(np.int64)
    nb = int(bins.max()) + 1
    vmin = np.full(nb, np.inf)
    vmax = np.full(nb, -np.inf)
    np.minimum.at(vmin, bins, v)
    np.maximum.at(vmax, bins, v)
    have = np.isfinite(vmin)
    idx = np.nonzero(have)[0]
    thick = vmax[idx] - vmin[idx] + 1.0
    vsum = np.zeros(nb)
    np.add.at(vsum, bins, v)
    mid = vsum[idx] / np.bincount(bins, minlength=nb)[idx]
    width = float(thick.max())
    inner = (idx >= 0.1 * nb) & (idx <= 0.9 * nb)
    if inner.any():
        width = float(thick[inner].max())
    bend = _bend(idx.astype(np.float64), mid, nb)
    angle = math.degrees(math.atan2(axis[1], axis[0]))
    if angle <= -90.0:
        angle += 180.0
    elif angle > 90.0:
        angle -= 180.0
    return Shape(length, width, bend, angle, float(n))


def _bend(u: np.ndarray, mid: np.ndarray, nb: int) -> float:
    """Largest distance of the medial points (u, mid) from the chord at 5% and 95%."""
    keep = (u >= 0.05 * (nb - 1)) & (u <= 0.95 * (nb - 1))
    if keep.sum() < 3:
        return 0.0
    u, mid = u[keep], mid[keep]
    # Smooth over about 5% of the length: pixel steps along a slanted edge are not bend.
    n = max(1, int(0.05 * nb) // 2)
    if len(mid) > 2 * n + 2:
        kernel = np.ones(2 * n + 1) / (2 * n + 1)
        mid = np.convolve(mid, kernel, mode="valid")
        u = u[n:-n]
    p0 = np.array([u[0], mid[0]])
    p1 = np.array([u[-1], mid[-1]])
    d = p1 - p0
    norm = float(np.hypot(d[0], d[1]))
    if norm <= 0:
        return 0.0
    dist = np.abs(d[0] * (mid - p0[1]) - d[1] * (u - p0[0])) / norm
    return float(dist.max())


def produce_mask(rgb: np.ndarray, within: np.ndarray, green_min: float) -> np.ndarray:
    """Pixels of `within` (0/255) whose excess green 2G - R - B exceeds `green_min`."""
    x = rgb.astype(np.int16)
    exg = 2 * x[:, :, 1] - x[:, :, 0] - x[:, :, 2]
    green = ((exg > green_min) & (within > 0)).astype(np.uint8) * 255
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    return cv2.morphologyEx(green, cv2.MORPH_OPEN, kernel)


def _local_mean(roi: np.ndarray, where: np.ndarray, sigma: float) -> np.ndarray:
    """Per-pixel mean colour of the `where` pixels nearby (normalised Gaussian blur)."""
    w = where.astype(np.float32)
    num = cv2.GaussianBlur(roi.astype(np.float32) * w[:, :, None], (0, 0), sigma)
    den = cv2.GaussianBlur(w, (0, 0), sigma)
    return num / np.maximum(den, 1e-6)[:, :, None]


def coverage(roi: np.ndarray, blob: np.ndarray, band: int) -> np.ndarray:
    """How much of each pixel the item covers (float32 0-1): 1 inside `blob` (0/255), 0 on
    the belt, and near the blob's edge (within `band` pixels) the pixel's colour placed
    between the local belt colour and the item's own colour next to it.

    A threshold puts an edge where the colour crosses it, which is nearer the belt on a
    strong edge than on a faint one (a light tray's top against a dark tray bottom): a
    bias of a few tenths of a pixel. A pixel half covered by the item is half way between
    the two colours whatever the contrast (blur and the camera's mixing are linear), so
    the moments of the coverage give an unbiased centre.
    """
    b = blob > 0
    if band <= 0:
        return b.astype(np.float32)
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band + 1,) * 2)
    outer = cv2.dilate(blob, k) > 0
    inner = cv2.erode(blob, k) > 0
    far_belt = cv2.erode((~outer).astype(np.uint8), k) > 0
    out = b.astype(np.float32)
    edge = outer & ~inner
    if not far_belt.any() or not inner.any() or not edge.any():
        return out
    sigma = 2.0 * band + 2.0
    belt = _local_mean(roi, far_belt, sigma)[edge]
    # The item's own colour from a thin ring just inside its edge only: deeper in, a
    # tray's or cup's rim gives way to the picture inside it (light at the top of the
    # tray, dark at the bottom), which would bias the colour one way on each side.
    ring = inner & ~(
        cv2.erode(blob, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (4 * band + 1,) * 2)) > 0
    )
    item = _local_mean(roi, ring if ring.any() else inner, sigma)[edge]
    x = roi[edge].astype(np.float32)
    d = item - belt
    den = (d * d).sum(axis=1)
    alpha = ((x - belt) * d).sum(axis=1) / np.maximum(den, 1e-6)
    # Where item and belt look alike, colour says nothing: keep the belt rule's answer.
    out[edge] = np.where(den >= 100.0, np.clip(alpha, 0.0, 1.0), out[edge])
    return out


def measure(
    image: np.ndarray,
    detection: Detection,
    locator: FullMasker,
    config: MeasureConfig | None = None,
) -> Measurement:
    """Measure the item `detection` points at in `image` (HxWx3 uint8 RGB, full size).

    `locator` gives the full-resolution mask (sorter.perception.vision.Locator.mask_full).
    The centre is the moment centre of the blob around the detection, holes filled;
    when no blob is found there, the detection's own centre with `refined` False.
    """
    return measure_blob(image, detection, locator, config)[0]


def measure_blob(
    image: np.ndarray,
    detection: Detection,
    locator: FullMasker,
    config: MeasureConfig | None = None,
) -> tuple[Measurement, np.ndarray | None, tuple[int, int]]:
    """`measure`, plus the item's filled blob (0/255 uint8, None if none) and the (x0, y0)
    of its region in the image (for `fill_rim` through a lens, sorter.perception.lens)."""
    return _measure(image, detection, locator, config or MeasureConfig())


def _measure(
    image: np.ndarray, detection: Detection, locator: FullMasker, cfg: MeasureConfig
) -> tuple[Measurement, np.ndarray | None, tuple[int, int]]:
    """`measure`, plus the item's filled blob (0/255, None if none) and its (x0, y0)."""
    m = cfg.margin_px
    x0, y0 = max(0, detection.x - m), max(0, detection.y - m)
    box = (x0, y0, detection.x + detection.w + m, detection.y + detection.h + m)
    coarse = locator.mask_full(image, box)
    roi = image[y0 : y0 + coarse.shape[0], x0 : x0 + coarse.shape[1]]
    blob = _largest_filled(coarse) if coarse.size else None
    centre = centre_of(coverage(roi, blob, cfg.band_px)) if blob is not None else None
    if blob is None or centre is None:
        unrefined = Measurement(detection.cx, detection.cy, 0.0, EMPTY_SHAPE, "item", False)
        return unrefined, None, (x0, y0)
    area = float(np.count_nonzero(blob))
    green = produce_mask(roi, blob, cfg.green_min)
    produce = _largest_solid(green) if np.count_nonzero(green) else None
    if produce is not None and np.count_nonzero(produce) >= cfg.produce_min_fraction * area:
        shape, source = shape_of(produce), "produce"
    else:
        shape, source = shape_of(blob), "item"
    return Measurement(centre[0] + x0, centre[1] + y0, area, shape, source), blob, (x0, y0)


def item_view(
    image: np.ndarray,
    detection: Detection,
    locator: FullMasker,
    window_px: tuple[int, int],
    *,
    rim_px: float = 0.0,
    background: Background | None = None,
    config: MeasureConfig | None = None,
) -> tuple[np.ndarray, Measurement]:
    """The model's window of one item, centred by `measure`, and the measurement.

    With `rim_px` > 0 (the carrier's rim width, `[locate] rim_mm` at the camera's scale),
    the window's pixels outside the carrier's interior (the item's blob, which is the
    carrier with its rim, shrunk by exactly the rim) are filled in, except produce pixels
    (excess green, as for the shape): a cup's rim and the belt in the window's corners, or
    a tray's rim reaching into the view, then look like the tray the model saw in
    training, and a long item's tips stay. They are filled from the interior
    (`cv2.inpaint`). With `background` (`[locate] surround = "model"`: the model's
    training background, sorter.perception.surround) the same is done whatever the rim
    (the belt round the blob too), and when the window shows no carrier (produce on the
    bare belt, see `fill_rim`) everything round the produce is replaced by the background,
    the edge's mixed pixels keeping their produce share (`fill_surround`).
    """
    cfg = config or MeasureConfig()
    measured, blob, (x0, y0) = _measure(image, detection, locator, cfg)
    crop = crop_at(image, measured.cx, measured.cy, window_px)
    r = round(rim_px)
    if blob is None or (r <= 0 and background is None):
        return crop, measured
    if r > 0:  # shrink the whole blob (it may reach beyond the window), then cut the window
        blob = shrink(blob, r)
    centre = (measured.cx - x0 - 0.5, measured.cy - y0 - 0.5)
    inside = cv2.getRectSubPix(blob.astype(np.float32), (crop.shape[1], crop.shape[0]), centre)
    return fill_rim(crop, inside > 127, cfg, background), measured


def shrink(blob: np.ndarray, r: int) -> np.ndarray:
    """A 0/255 mask eroded by a disc of radius `r` px (outside the mask counts as out)."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    return cv2.erode(blob, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)


def fill_rim(
    crop: np.ndarray,
    interior: np.ndarray,
    config: MeasureConfig | None = None,
    background: Background | None = None,
) -> np.ndarray:
    """The crop with its pixels outside `interior` (bool, the carrier's inside in the
    crop's pixels), produce pixels excepted (`produce_reaching_out`), inpainted from the
    interior;
    with `background`, when the crop shows no carrier (less than MIN_CARRIER_FRACTION of
    it is interior that is not produce: produce on the bare belt), everything outside the
    interior and the produce replaced by it instead (`fill_surround`); `item_view`'s fill."""
    cfg = config or MeasureConfig()
    # Never paint over the produce: a long cucumber reaches the window's edge.
    produce = produce_reaching_out(crop, interior, cfg)
    if background is not None:
        carrier = np.count_nonzero(interior & ~produce)
        if carrier < MIN_CARRIER_FRACTION * interior.size:  # produce on the bare belt
            return fill_surround(crop, interior | produce, background, float(cfg.band_px))
    hole = (~interior & ~produce).astype(np.uint8)
    if not hole.any() or not interior.any():
        return crop
    return cv2.inpaint(crop, hole, 3, cv2.INPAINT_TELEA)


def produce_reaching_out(
    crop: np.ndarray, interior: np.ndarray, config: MeasureConfig | None = None
) -> np.ndarray:
    """The crop's produce pixels (excess green, bool) that `fill_rim` must not paint over:
    the parts of the produce mask connected to produce deep inside the carrier (`interior`
    eroded by CORE_MARGIN_PX, clear of the rim's mixed edge pixels). A long cucumber's tip
    reaching over the rim is connected to its body and kept; a green cup's or tray's rim,
    which is as green as produce by the excess-green rule, is not connected to anything
    inside and is filled like any other rim. With no interior at all (the bare belt) every
    produce pixel counts."""
    cfg = config or MeasureConfig()
    whole = np.full(crop.shape[:2], 255, np.uint8)
    produce = produce_mask(crop, whole, cfg.green_min)
    if not interior.any():
        return produce > 0
    core = shrink(interior.astype(np.uint8) * 255, CORE_MARGIN_PX) > 0
    n, labels = cv2.connectedComponents(produce, connectivity=8)
    if n <= 1:
        return produce > 0
    inside = np.unique(labels[core & (produce > 0)])
    keep = np.zeros(n, bool)
    keep[inside[inside > 0]] = True
    return np.asarray(keep[labels])


def crop_at(image: np.ndarray, cx: float, cy: float, window_px: tuple[int, int]) -> np.ndarray:
    """A fixed (w, h) window centred on the sub-pixel point (cx, cy), bilinear.

    The window covers [cx - w/2, cx + w/2) x [cy - h/2, cy + h/2) (pixel i covers
    [i, i+1)); outside the frame the border pixels are replicated. HxWx3 uint8 RGB copy.
    """
    w, h = int(window_px[0]), int(window_px[1])
    if w < 1 or h < 1:
        raise ValueError(f"crop window must be at least 1x1, got {w}x{h}")
    # getRectSubPix samples its first pixel at centre - (size - 1) / 2 in OpenCV's
    # convention (pixel i at i): ours is i + 0.5, so the centre it needs is ours - 0.5.
    return cv2.getRectSubPix(image, (w, h), (float(cx) - 0.5, float(cy) - 0.5))
