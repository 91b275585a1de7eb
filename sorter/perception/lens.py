"""The camera's lens and the belt plane, from `sorter calibrate-camera` (the config's [lens]).

`LensConfig` holds what the calibration measured: the intrinsics (fx, fy, cx, cy, in
OpenCV's pixel convention: pixel centres at integers), the distortion (k1, k2, p1, p2,
k3), the image size it was made at, its reprojection error and date, and the belt plane's
scale and direction as measured then. `Lens` applies it to one frame size (the
intrinsics scale with the frame) without ever undistorting a whole frame:

- `undistort_points` / `undistort_detection`: where a detection would be in the ideal
  (pinhole) image whose intrinsics are the same fx, fy, cx, cy. The tracker, the decision
  line and the crops all work in that image, where the belt's scale is the same
  everywhere for a camera square to the belt;
- `crop`: the model's fixed window of belt, cut from the ideal image around a point of it
  (one `cv2.remap` of the window only);
- `stretch`: how many ideal pixels one camera pixel is at a point, along a direction (to
  convert a length measured on the camera's mask into ideal pixels, then mm).

Pixel convention outside this module is sorter.perception.measure's (pixel i covers
[i, i+1)); the 0.5 to OpenCV's convention is added and removed here only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from sorter.fields import check_fields, rng
from sorter.perception.measure import FullMasker, Measurement, fill_rim, measure_blob, shrink
from sorter.perception.surround import Background
from sorter.perception.vision import Detection


@dataclass
class LensConfig:
    """Camera lens and belt plane measured by `sorter calibrate-camera` (the config's [lens]).
    Written by the command; empty date: no calibration, frames are used as they are."""

    date: str = ""
    """When the calibration was made (UTC, ISO 8601); empty: not calibrated."""
    width: int = field(default=0, metadata=rng(0, 8192))
    """Image width the calibration was made at (intrinsics scale to the camera's width)."""
    height: int = field(default=0, metadata=rng(0, 8192))
    """Image height the calibration was made at."""
    fx: float = field(default=0.0, metadata=rng(0.0, 1e6))
    """Focal length in pixels, x (0: not calibrated)."""
    fy: float = field(default=0.0, metadata=rng(0.0, 1e6))
    """Focal length in pixels, y."""
    cx: float = field(default=0.0, metadata=rng(-1e5, 1e5))
    """Principal point x, pixels (OpenCV convention: pixel centres at integers)."""
    cy: float = field(default=0.0, metadata=rng(-1e5, 1e5))
    """Principal point y, pixels."""
    dist: tuple[float, float, float, float, float] = field(
        default=(0.0, 0.0, 0.0, 0.0, 0.0), metadata=rng(-1000.0, 1000.0)
    )
    """Distortion coefficients k1, k2, p1, p2, k3 (OpenCV's model)."""
    reprojection_px: float = field(default=0.0, metadata=rng(0.0, 1000.0))
    """RMS reprojection error of the lens calibration, pixels."""
    views: int = field(default=0, metadata=rng(0, 10000))
    """Board views the lens calibration used."""
    belt_px_per_mm: float = field(default=0.0, metadata=rng(0.0, 100.0))
    """Belt-plane scale measured with the board flat on the belt (belt.px_per_mm was set to
    it), pixels per mm of the undistorted image; the reference of the scale check."""
    belt_angle_deg: float = field(default=0.0, metadata=rng(-180.0, 180.0))
    """Belt direction's angle from the image x axis, degrees (y down), as measured; the
    tracker follows the belt along it (0: along the image axis of belt.direction)."""

    def __post_init__(self) -> None:
        check_fields(self, "lens")

    @property
    def calibrated(self) -> bool:
        """True when the section holds a lens calibration."""
        return self.fx > 0 and self.fy > 0 and self.width > 0 and self.height > 0


class Lens:
    """A calibration applied to frames of `frame_size` (w, h); see the module docstring."""

    def __init__(self, config: LensConfig, frame_size: tuple[int, int]) -> None:
        if not config.calibrated:
            raise ValueError("Lens needs a calibrated LensConfig")
        self.config = config
        sx = frame_size[0] / config.width
        sy = frame_size[1] / config.height
        # Scaling a frame maps OpenCV coordinate u to (u + 0.5) * s - 0.5.
        self.K = np.array(
            [
                [config.fx * sx, 0.0, (config.cx + 0.5) * sx - 0.5],
                [0.0, config.fy * sy, (config.cy + 0.5) * sy - 0.5],
                [0.0, 0.0, 1.0],
            ]
        )
        self.dist = np.asarray(config.dist, dtype=np.float64)
        self.frame_size = frame_size

    def undistort_points(self, pts: np.ndarray) -> np.ndarray:
        """Camera-image points (N x 2, pixel i covers [i, i+1)) in the ideal image."""
        p = np.asarray(pts, dtype=np.float64).reshape(-1, 1, 2) - 0.5
        out = cv2.undistortPoints(p, self.K, self.dist, P=self.K)
        return np.asarray(out.reshape(-1, 2) + 0.5)

    def distort_points(self, pts: np.ndarray) -> np.ndarray:
        """Ideal-image points (N x 2) where the camera sees them (the inverse)."""
        p = np.asarray(pts, dtype=np.float64).reshape(-1, 2) - 0.5
        fx, fy, cx, cy = self.K[0, 0], self.K[1, 1], self.K[0, 2], self.K[1, 2]
        x = (p[:, 0] - cx) / fx
        y = (p[:, 1] - cy) / fy
        k1, k2, p1, p2, k3 = self.dist
        r2 = x * x + y * y
        radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
        xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        return np.stack([xd * fx + cx, yd * fy + cy], axis=1) + 0.5

    def undistort_point(self, x: float, y: float) -> tuple[float, float]:
        """One camera-image point in the ideal image."""
        u = self.undistort_points(np.array([[x, y]]))[0]
        return float(u[0]), float(u[1])

    def undistort_detection(self, d: Detection) -> Detection:
        """The detection in the ideal image: its centre moved, its box the bounding box of
        the moved corners and edge midpoints (edges it touches are kept)."""
        x0, y0, x1, y1 = d.x, d.y, d.x + d.w, d.y + d.h
        mx, my = (x0 + x1) / 2, (y0 + y1) / 2
        ring = np.array(
            [[x0, y0], [mx, y0], [x1, y0], [x1, my], [x1, y1], [mx, y1], [x0, y1], [x0, my]],
            dtype=np.float64,
        )
        moved = self.undistort_points(np.vstack([[[d.cx, d.cy]], ring]))
        c, box = moved[0], moved[1:]
        bx0, by0 = np.floor(box.min(axis=0))
        bx1, by1 = np.ceil(box.max(axis=0))
        return replace(
            d,
            cx=float(c[0]),
            cy=float(c[1]),
            x=int(bx0),
            y=int(by0),
            w=max(1, int(bx1 - bx0)),
            h=max(1, int(by1 - by0)),
        )

    def crop(self, image: np.ndarray, cx: float, cy: float, window: tuple[int, int]) -> np.ndarray:
        """The (w, h) window of the ideal image centred on its point (cx, cy), bilinear;
        outside the frame the border is replicated. HxWx3 uint8 copy."""
        mx, my = self.window_maps(cx, cy, window)
        return cv2.remap(image, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    def window_maps(
        self, cx: float, cy: float, window: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """For each pixel of the (w, h) window of the ideal image centred on (cx, cy), where
        the camera saw it: (map_x, map_y) float32 in OpenCV's convention (for cv2.remap)."""
        w, h = int(window[0]), int(window[1])
        if w < 1 or h < 1:
            raise ValueError(f"crop window must be at least 1x1, got {w}x{h}")
        xs = cx - w / 2 + 0.5 + np.arange(w, dtype=np.float64)
        ys = cy - h / 2 + 0.5 + np.arange(h, dtype=np.float64)
        gx, gy = np.meshgrid(xs, ys)
        src = self.distort_points(np.stack([gx.ravel(), gy.ravel()], axis=1)) - 0.5
        return src[:, 0].reshape(h, w).astype(np.float32), src[:, 1].reshape(h, w).astype(
            np.float32
        )

    def item_view(
        self,
        image: np.ndarray,
        detection: Detection,
        locator: FullMasker,
        window: tuple[int, int],
        *,
        rim_px: float = 0.0,
        background: Background | None = None,
    ) -> tuple[np.ndarray, Measurement, tuple[float, float]]:
        """`sorter.perception.measure.item_view` through the lens: the item measured on the
        camera's image (`detection` as the camera saw it), the window cut from the ideal
        image at its undistorted centre, and with `rim_px` > 0 (in ideal pixels) the
        carrier's rim filled in exactly as on an undistorted belt: the item's blob carried
        into the ideal image, shrunk by the rim there, the rest inpainted (`fill_rim`;
        with `background`, [locate] surround = "model", rim or not, and replaced by the
        background when the crop shows no carrier).
        Returns (crop, measurement in camera pixels, centre in the ideal image)."""
        m, blob, (x0, y0) = measure_blob(image, detection, locator)
        cx, cy = self.undistort_point(m.cx, m.cy)
        crop = self.crop(image, cx, cy, window)
        r = round(rim_px)
        if blob is None or (r <= 0 and background is None):
            return crop, m, (cx, cy)
        # As on an undistorted belt: the blob on the ideal image's own pixel grid around the
        # item (a margin beyond the window for the shrinking), shrunk there by the rim, then
        # sampled at the window's pixels like `measure.item_view` does.
        w, h = int(window[0]), int(window[1])
        pad = r + 2
        gx0, gy0 = math.floor(cx - w / 2) - pad, math.floor(cy - h / 2) - pad
        gw, gh = w + 2 * pad + 1, h + 2 * pad + 1
        mx, my = self.window_maps(gx0 + gw / 2, gy0 + gh / 2, (gw, gh))
        grid = cv2.remap(
            blob.astype(np.float32),
            mx - x0,
            my - y0,
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0.0,
        )
        inside = np.where(grid > 127, 255, 0).astype(np.uint8)
        if r > 0:
            inside = shrink(inside, r)
        sampled = cv2.getRectSubPix(
            inside.astype(np.float32), (w, h), (cx - gx0 - 0.5, cy - gy0 - 0.5)
        )
        return fill_rim(crop, sampled > 127, background=background), m, (cx, cy)

    def stretch(self, x: float, y: float, angle_deg: float, step: float = 2.0) -> float:
        """Ideal pixels per camera pixel at camera point (x, y) along `angle_deg` (image
        axes, y down): how much a short length there grows when undistorted."""
        a = math.radians(angle_deg)
        dx, dy = math.cos(a) * step / 2, math.sin(a) * step / 2
        p = self.undistort_points(np.array([[x - dx, y - dy], [x + dx, y + dy]]))
        return float(np.hypot(*(p[1] - p[0])) / step)


def make_lens(config: LensConfig, frame_size: tuple[int, int]) -> Lens | None:
    """The Lens for this frame size, or None when [lens] holds no calibration."""
    return Lens(config, frame_size) if config.calibrated else None
