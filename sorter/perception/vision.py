"""Finding items on the belt, and cutting the fixed window of belt the model grades.

Pure array code: frames in, detections out; no cameras here.

Two ways to tell item from belt (`LocatorConfig.method`, the config's `[locate] method`):
- "color" (the default): an HSV range the BELT falls in (no calibration); anything outside
  it is item.
- "background": a per-pixel model of the EMPTY belt (mean and spread over a few seconds of
  frames of the moving, empty belt, learned by `sorter calibrate-belt`); a pixel far from it
  is item. A global brightness gain is estimated every frame, so slow lighting drift does
  not turn the whole belt into "item".

Blobs too small or too large are ignored; blobs touching the frame edge are flagged, since
only a full view can be graded. `crop_window` cuts a FIXED window of belt centred on the item
(never the item's bounding box: five cucumber grades are sizes).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from sorter.errors import ConfigError
from sorter.fields import FieldError, check_fields, choices, rng
from sorter.perception.surround import SURROUNDS

log = logging.getLogger(__name__)

METHODS = ("color", "background")


@dataclass(frozen=True)
class Detection:
    """One item found in a frame, in full-resolution pixels."""

    cx: float
    """Centre x of the blob's bounding box."""
    cy: float
    """Centre y of the blob's bounding box."""
    x: int
    """Left of the bounding box."""
    y: int
    """Top of the bounding box."""
    w: int
    """Width of the bounding box."""
    h: int
    """Height of the bounding box."""
    area: float
    """Blob area (holes filled) in pixels."""
    edges: tuple[str, ...] = ()
    """Frame edges the blob touches: any of "left", "right", "top", "bottom"."""

    @property
    def touches_edge(self) -> bool:
        """True when the item is cut by the frame: not a full view."""
        return bool(self.edges)


@dataclass
class LocatorConfig:
    """Finding items against the belt (the config file's [locate])."""

    method: str = field(default="color", metadata=choices(*METHODS))
    """color: pixels outside the belt's HSV range are item; background: compare with the
    learned empty belt (more robust; needs `sorter calibrate-belt`)."""
    background: str = ""
    """Empty-belt model (.npz) for method = background; `sorter calibrate-belt` writes it."""
    min_area_px: float = field(default=1500.0, metadata=rng(0.0))
    """Blobs smaller than this (pixels) are ignored (dirt, noise)."""
    max_area_px: float = field(default=60000.0, metadata=rng(1.0))
    """Blobs larger than this (pixels) are ignored (a hand, a shadow across the belt)."""
    scale: float = field(default=0.5, metadata=rng(0.05, 1.0))
    """Detection runs on the frame scaled by this factor (speed); results are full size."""
    threshold: float = field(default=25.0, metadata=rng(0.0, 255.0))
    """Background: a pixel differing from the belt by more than this (0-255) is item."""
    spread_k: float = field(default=2.5, metadata=rng(0.0, 100.0))
    """Background: multiples of the empty belt's own per-pixel spread still counted as belt."""
    belt_hsv_lower: tuple[int, int, int] = field(default=(5, 110, 60), metadata=rng(0, 255))
    """Color: lower HSV bound of BELT pixels (OpenCV ranges: H 0-179, S and V 0-255);
    anything outside the belt's range is item. Default: an orange belt."""
    belt_hsv_upper: tuple[int, int, int] = field(default=(25, 255, 255), metadata=rng(0, 255))
    """Color: upper HSV bound of belt pixels."""
    open_px: int = field(default=3, metadata=rng(0, 100))
    """Opening kernel (pixels at detection scale) that removes speckle."""
    close_px: int = field(default=5, metadata=rng(0, 100))
    """Closing kernel (pixels at detection scale) that joins an item's parts."""
    edge_margin_px: int = field(default=2, metadata=rng(0, 100))
    """A blob within this many pixels of the frame border touches the edge (not graded)."""
    compensate_gain: bool = True
    """Background: follow global brightness drift."""
    refine: bool = True
    """Centre each crop to a fraction of a pixel from the item's full-resolution mask
    (sorter.perception.measure); false = the half-scale bounding box's centre."""
    rim_mm: float = field(default=0.0, metadata=rng(0.0, 1000.0))
    """Width of the rim of the trays or cups items ride in, in mm (0: none, or the picture
    fills the view). With refine, the crop's pixels outside the carrier's interior (a cup's
    rim and the belt in the window's corners) are filled in from the interior."""
    surround: str = field(default="keep", metadata=choices(*SURROUNDS))
    """What the crop shows round the produce: keep (as the camera saw it) or model (with
    refine: everything outside the produce replaced by the background of the model's
    training pictures, recorded in its metadata; for produce on a bare belt or in carriers
    unlike the training pictures' trays; overrides rim_mm)."""

    def __post_init__(self) -> None:
        check_fields(self, "locate")
        if self.min_area_px >= self.max_area_px:
            raise FieldError(
                "locate",
                "min_area_px",
                f"must be smaller than locate.max_area_px ({self.min_area_px:g} >= "
                f"{self.max_area_px:g})",
            )


@dataclass
class BackgroundModel:
    """The empty belt: per-pixel mean and spread of RGB over calibration frames."""

    mean: np.ndarray
    """HxWx3 float32 mean of the empty belt."""
    spread: np.ndarray
    """HxWx3 float32 standard deviation of the empty belt (texture moving past, noise)."""
    frames: int = 0
    """How many frames it was learned from."""

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the frames it was learned from."""
        return int(self.mean.shape[1]), int(self.mean.shape[0])

    @classmethod
    def learn(cls, frames: Iterable[np.ndarray]) -> BackgroundModel:
        """Learn from RGB uint8 frames of the empty belt (running mean and variance)."""
        n = 0
        mean: np.ndarray | None = None
        m2: np.ndarray | None = None
        for image in frames:
            x = image.astype(np.float32)
            if mean is None or m2 is None:
                mean = np.zeros_like(x)
                m2 = np.zeros_like(x)
            elif x.shape != mean.shape:
                raise ConfigError(
                    f"calibration frames change size ({x.shape[1]}x{x.shape[0]} after "
                    f"{mean.shape[1]}x{mean.shape[0]}); use one camera setting"
                )
            n += 1
            delta = x - mean
            mean += delta / n
            m2 += delta * (x - mean)
        if mean is None or m2 is None or n < 2:
            raise ConfigError("belt calibration needs at least 2 frames of the empty belt")
        return cls(mean=mean, spread=np.sqrt(m2 / (n - 1)).astype(np.float32), frames=n)

    def save(self, path: str | Path) -> Path:
        """Write to a compressed .npz file (float16: plenty for 0-255 levels)."""
        p = Path(path)
        if p.suffix != ".npz":
            p = p.with_suffix(".npz")
        p.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            p,
            mean=self.mean.astype(np.float16),
            spread=self.spread.astype(np.float16),
            frames=np.int64(self.frames),
        )
        return p

    @classmethod
    def load(cls, path: str | Path) -> BackgroundModel:
        """Read a file written by `save`; ConfigError naming the file when it is not one."""
        p = Path(path)
        try:
            with np.load(p) as data:
                mean = data["mean"].astype(np.float32)
                spread = data["spread"].astype(np.float32)
                frames = int(data["frames"])
        except FileNotFoundError as err:
            raise ConfigError(
                f"{p}: belt calibration not found; make one with `sorter calibrate-belt`"
            ) from err
        except (OSError, ValueError, KeyError) as err:
            raise ConfigError(
                f"{p}: not a belt calibration file ({err}); re-run `sorter calibrate-belt`"
            ) from err
        if mean.ndim != 3 or mean.shape[2] != 3 or spread.shape != mean.shape:
            raise ConfigError(f"{p}: belt calibration has shape {mean.shape}; re-run calibration")
        return cls(mean=mean, spread=spread, frames=frames)


@dataclass
class _ScaledBackground:
    mean: np.ndarray
    tolerance: np.ndarray
    median_gray: float


class Locator:
    """Finds items in RGB frames. `locate(image) -> list[Detection]`, sorted by x."""

    def __init__(
        self, config: LocatorConfig | None = None, background: BackgroundModel | None = None
    ) -> None:
        self.config = config or LocatorConfig()
        self.background = background
        if self.config.method == "background" and background is None:
            raise ConfigError(
                "locator method 'background' needs a belt calibration; make one with "
                "`sorter calibrate-belt` or use method 'color'"
            )
        self._scaled: _ScaledBackground | None = None
        self._scaled_for: tuple[int, int] | None = None
        self._gain = 1.0
        c = self.config
        self._open = cv2.getStructuringElement(cv2.MORPH_RECT, (max(1, c.open_px),) * 2)
        self._close = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (max(1, c.close_px),) * 2)

    def _small(self, image: np.ndarray) -> np.ndarray:
        s = self.config.scale
        if s >= 1.0:
            return image
        h, w = image.shape[:2]
        size = (max(1, round(w * s)), max(1, round(h * s)))
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA)

    def _background_at(self, shape: tuple[int, int]) -> _ScaledBackground:
        assert self.background is not None
        if self._scaled is None or self._scaled_for != shape:
            bg = self.background
            h, w = shape
            mean = cv2.resize(bg.mean, (w, h), interpolation=cv2.INTER_AREA)
            spread = cv2.resize(bg.spread, (w, h), interpolation=cv2.INTER_AREA)
            tol = (self.config.spread_k * spread + self.config.threshold).astype(np.float32)
            gray = cv2.cvtColor(np.clip(mean + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_RGB2GRAY)
            self._scaled = _ScaledBackground(mean, tol, float(np.median(gray[::4, ::4])))
            self._scaled_for = shape
        return self._scaled

    def mask(self, image: np.ndarray) -> np.ndarray:
        """Item mask (uint8 0/255) at detection scale, after morphology."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected HxWx3 uint8 RGB, got {image.shape} {image.dtype}")
        small = self._small(image)
        c = self.config
        if c.method == "background":
            bg = self._background_at(small.shape[:2])
            self._gain = 1.0
            if c.compensate_gain and bg.median_gray > 1.0:
                gray = cv2.cvtColor(small[::4, ::4], cv2.COLOR_RGB2GRAY)
                self._gain = float(np.clip(np.median(gray) / bg.median_gray, 0.5, 2.0))
            raw = _differs(small, bg.mean, bg.tolerance, self._gain)
        else:
            raw = self._not_belt(small)
        out = cv2.morphologyEx(raw, cv2.MORPH_OPEN, self._open)
        return cv2.morphologyEx(out, cv2.MORPH_CLOSE, self._close)

    def _not_belt(self, image: np.ndarray) -> np.ndarray:
        c = self.config
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        belt = cv2.inRange(hsv, np.array(c.belt_hsv_lower), np.array(c.belt_hsv_upper))
        return cv2.bitwise_not(belt)

    def mask_full(self, image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """Item mask (uint8 0/255) at FULL resolution inside `box` = (x0, y0, x1, y1).

        The same rule as `mask` (for method background, the brightness gain of the last
        `mask`/`locate` call), with the morphology kernels scaled to full resolution
        (odd sizes, so the opening and closing do not shift the mask).
        The box is clipped to the frame; the result has the clipped box's shape.
        """
        H, W = image.shape[:2]
        x0, y0 = max(0, box[0]), max(0, box[1])
        x1, y1 = min(W, box[2]), min(H, box[3])
        roi = image[y0:y1, x0:x1]
        if roi.size == 0:
            return np.zeros((max(0, y1 - y0), max(0, x1 - x0)), np.uint8)
        c = self.config
        if c.method == "background":
            assert self.background is not None
            bg = self.background
            if bg.mean.shape[:2] != (H, W):
                raise ConfigError(
                    f"belt calibration is {bg.size[0]}x{bg.size[1]} but frames are {W}x{H}; "
                    "re-run `sorter calibrate-belt` with this camera setting"
                )
            tol = c.spread_k * bg.spread[y0:y1, x0:x1] + c.threshold
            raw = _differs(roi, bg.mean[y0:y1, x0:x1], tol, self._gain)
        else:
            raw = self._not_belt(roi)
        op = cv2.getStructuringElement(cv2.MORPH_RECT, (_odd(c.open_px / c.scale),) * 2)
        cl = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (_odd(c.close_px / c.scale),) * 2)
        out = cv2.morphologyEx(raw, cv2.MORPH_OPEN, op)
        return cv2.morphologyEx(out, cv2.MORPH_CLOSE, cl)

    def locate(self, image: np.ndarray) -> list[Detection]:
        """Items in the frame, left to right; blobs outside the size limits are dropped."""
        mask = self.mask(image)
        H, W = image.shape[:2]
        sy = H / mask.shape[0]
        sx = W / mask.shape[1]
        c = self.config
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        found: list[Detection] = []
        for contour in contours:
            area = float(cv2.contourArea(contour)) * sx * sy
            if not c.min_area_px <= area <= c.max_area_px:
                continue
            bx, by, bw, bh = cv2.boundingRect(contour)
            x0, y0 = round(bx * sx), round(by * sy)
            x1, y1 = min(W, round((bx + bw) * sx)), min(H, round((by + bh) * sy))
            m = c.edge_margin_px
            edges = tuple(
                name
                for name, hit in (
                    ("left", x0 <= m),
                    ("right", x1 >= W - m),
                    ("top", y0 <= m),
                    ("bottom", y1 >= H - m),
                )
                if hit
            )
            found.append(
                Detection(
                    cx=(x0 + x1) / 2,
                    cy=(y0 + y1) / 2,
                    x=x0,
                    y=y0,
                    w=x1 - x0,
                    h=y1 - y0,
                    area=area,
                    edges=edges,
                )
            )
        found.sort(key=lambda d: (d.cx, d.cy))
        return found


def _odd(size: float) -> int:
    """The odd kernel size nearest `size` (an even kernel's anchor shifts the mask)."""
    return 2 * max(0, round((size - 1) / 2)) + 1


def _differs(image: np.ndarray, mean: np.ndarray, tolerance: np.ndarray, gain: float) -> np.ndarray:
    """|image - gain * belt| > gain * tolerance in any channel, as uint8 0/255."""
    ref = cv2.convertScaleAbs(mean, alpha=gain)
    tol = cv2.convertScaleAbs(tolerance, alpha=gain)
    over = cv2.compare(cv2.absdiff(image, ref), tol, cv2.CMP_GT)
    r, g, b = cv2.split(over)
    return cv2.max(cv2.max(r, g), b)


def window_px(window_mm: tuple[float, float], px_per_mm: float) -> tuple[int, int]:
    """The crop window (w, h) in pixels for a field of view in mm at the belt's scale."""
    if px_per_mm <= 0:
        raise ConfigError(f"px_per_mm must be positive, got {px_per_mm}")
    return max(1, round(window_mm[0] * px_per_mm)), max(1, round(window_mm[1] * px_per_mm))


def crop_window(image: np.ndarray, cx: float, cy: float, window_px: tuple[int, int]) -> np.ndarray:
    """A fixed (w, h) window of the frame centred on (cx, cy), edge-replicated outside it.

    Returns an hxwx3 uint8 RGB array (a copy; safe to keep after the frame is gone).
    """
    w, h = int(window_px[0]), int(window_px[1])
    if w < 1 or h < 1:
        raise ValueError(f"crop window must be at least 1x1, got {w}x{h}")
    H, W = image.shape[:2]
    x0 = int(np.floor(cx - w / 2 + 0.5))
    y0 = int(np.floor(cy - h / 2 + 0.5))
    # Source region clamped to the frame (at least one pixel, so replication has a source).
    sx0 = min(max(x0, 0), W - 1)
    sy0 = min(max(y0, 0), H - 1)
    sx1 = max(min(x0 + w, W), sx0 + 1)
    sy1 = max(min(y0 + h, H), sy0 + 1)
    region = image[sy0:sy1, sx0:sx1]
    left, top = sx0 - x0, sy0 - y0
    right, bottom = w - left - region.shape[1], h - top - region.shape[0]
    if left == top == right == bottom == 0:
        return region.copy()
    return cv2.copyMakeBorder(
        region,
        max(0, top),
        max(0, bottom),
        max(0, left),
        max(0, right),
        cv2.BORDER_REPLICATE,
    )[:h, :w]


@dataclass
class CalibrationSummary:
    """What `sorter calibrate-belt` learned, for the operator."""

    frames: int
    """Frames of empty belt used."""
    size: tuple[int, int]
    """(width, height) of those frames."""
    mean_level: float
    """Mean belt brightness (0-255)."""
    mean_spread: float
    """Mean per-pixel spread (0-255): texture and noise the locator will ignore."""
    path: str = ""
    """Where the calibration was saved."""
    warnings: list[str] = field(default_factory=list)
    """Things worth checking (e.g. a belt so textured items may hide in it)."""


def summarize(model: BackgroundModel, path: str | Path = "") -> CalibrationSummary:
    """Human-facing numbers about a learned belt."""
    mean_spread = float(model.spread.mean())
    warnings = []
    if mean_spread > 25:
        warnings.append(
            f"the empty belt varies a lot (mean spread {mean_spread:.0f} levels): were items "
            "or hands in view during calibration? If not, consider method 'color'"
        )
    return CalibrationSummary(
        frames=model.frames,
        size=model.size,
        mean_level=float(model.mean.mean()),
        mean_spread=mean_spread,
        path=str(path),
        warnings=warnings,
    )
