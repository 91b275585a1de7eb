"""What makes a simulated belt look like a camera over a real belt (options of belt_sim).

Two kinds, kept apart from the belt's motion and timing:
- carriers (`item_sprite`): what each item rides in. "none" pastes the picture as it is
  (its photographed tray fills the field of view); "tray" puts it in a rectangular tray
  with a rim of `rim_px` round the field of view (`rim_inside_px` of it overlapping the
  picture's edge: a tray a little smaller than the field of view); "cup" shows it through
  a round cup whose opening is the field of view's width (the window's corners then show
  the cup's rim and the belt); "bare" lays the produce alone (cut out of its picture by
  excess green, with its dark edge) on the bare belt. Tray and cup colours are drawn per
  item from `carrier_colours`.
- the camera (`CameraModel.apply`): motion blur from the exposure time (the belt moves
  `speed * exposure` pixels while the shutter is open), vignetting (brightness falling
  off towards the corners) and white-balance drift (red and blue gains drifting in
  opposite directions). The codec is belt_sim's `codec` (mp4v or MJPG).

A sprite is an (h, w, 4) float32 array: RGB premultiplied by alpha, then alpha (0-1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from sorter.errors import ConfigError

CARRIERS = ("none", "tray", "cup", "bare")

COLOURS: dict[str, tuple[float, float, float]] = {
    "black": (28.0, 28.0, 30.0),
    "dark": (62.0, 64.0, 70.0),
    "grey": (128.0, 128.0, 132.0),
    "white": (232.0, 232.0, 228.0),
    "blue": (40.0, 72.0, 160.0),
    "green": (46.0, 120.0, 74.0),
}
"""Carrier colours (RGB); none of them is in the orange belt's colour range."""


@dataclass
class Realism:
    """Realism options of the simulated belt (all off by default)."""

    carrier: str = "none"
    """What items ride in: none (the picture as is), tray, cup or bare (produce alone)."""
    carrier_colours: tuple[str, ...] = ("black", "dark", "grey", "white", "blue", "green")
    """Colours trays and cups are drawn from, per item (names of COLOURS)."""
    rim_px: float = 6.0
    """Tray or cup rim width outside the field of view, pixels."""
    rim_inside_px: float = 0.0
    """How far the tray's rim reaches into the field of view, pixels."""
    exposure_ms: float = 0.0
    """Shutter time: motion blur of speed * exposure pixels along the belt (0 = none)."""
    vignetting: float = 0.0
    """Brightness lost at the frame's corners (fraction; 0.25 = 25% darker)."""
    white_balance_drift: float = 0.0
    """Red and blue gain drift amplitude (fraction, opposite phases)."""
    white_balance_period_s: float = 23.0
    """Period of the white-balance drift, seconds."""

    def check(self) -> None:
        """Raise ConfigError for options that cannot be rendered."""
        if self.carrier not in CARRIERS:
            raise ConfigError(f"--carrier {self.carrier!r}: use one of {', '.join(CARRIERS)}")
        unknown = [c for c in self.carrier_colours if c not in COLOURS]
        if unknown or not self.carrier_colours:
            raise ConfigError(
                f"--carrier-colours {','.join(self.carrier_colours)}: use names from "
                f"{', '.join(COLOURS)}"
            )
        values = {
            "--rim": self.rim_px,
            "--rim-inside": self.rim_inside_px,
            "--exposure-ms": self.exposure_ms,
            "--vignetting": self.vignetting,
            "--white-balance-drift": self.white_balance_drift,
        }
        for flag, v in values.items():
            if not math.isfinite(v) or v < 0:
                raise ConfigError(f"{flag} {v}: must be a finite number >= 0")
        if self.vignetting >= 1 or self.white_balance_drift >= 1:
            raise ConfigError("--vignetting and --white-balance-drift must be below 1")
        if self.white_balance_period_s <= 0:
            raise ConfigError("white_balance_period_s must be positive")

    def margin_px(self) -> int:
        """How far a sprite reaches beyond the field of view on each side."""
        return math.ceil(self.rim_px) if self.carrier in ("tray", "cup") else 0


def _rgba(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float32)[:, :, None]
    return np.concatenate([rgb.astype(np.float32) * a, a], axis=2)


def _radius_map(h: int, w: int) -> np.ndarray:
    """Distance of each pixel centre from the sprite's centre."""
    ys = np.arange(h, dtype=np.float32)[:, None] + 0.5 - h / 2
    xs = np.arange(w, dtype=np.float32)[None, :] + 0.5 - w / 2
    return np.asarray(np.sqrt(xs * xs + ys * ys), dtype=np.float32)


def item_sprite(picture: np.ndarray, realism: Realism, colour_name: str) -> np.ndarray:
    """The item as it is pasted on the belt: its picture (float32 RGB, the field of view
    at camera scale) in its carrier of colour `colour_name` (a COLOURS key), as
    premultiplied RGBA centred on the item."""
    h, w = picture.shape[:2]
    kind = realism.carrier
    if kind == "none":
        return _rgba(picture, np.ones((h, w), np.float32))
    if kind == "bare":
        return _bare(picture)
    colour = np.array(COLOURS[colour_name], np.float32)
    m = realism.margin_px()
    H, W = h + 2 * m, w + 2 * m
    out = np.empty((H, W, 3), np.float32)
    out[:] = colour
    inner = picture.copy()
    if kind == "tray":
        r_in = round(realism.rim_inside_px)
        if r_in > 0:
            inner[:r_in], inner[-r_in:] = colour, colour
            inner[:, :r_in], inner[:, -r_in:] = colour, colour
        out[m : m + h, m : m + w] = inner
        # Rounded outer corners, radius = the rim.
        alpha = np.ones((H, W), np.float32)
        rad = max(1.0, float(m))
        for cy, cx in ((rad, rad), (rad, W - rad), (H - rad, rad), (H - rad, W - rad)):
            ys = np.arange(H, dtype=np.float32)[:, None] + 0.5 - cy
            xs = np.arange(W, dtype=np.float32)[None, :] + 0.5 - cx
            corner = (np.abs(ys) <= rad) & (np.abs(xs) <= rad)
            corner &= ((ys < 0) == (cy < H / 2)) & ((xs < 0) == (cx < W / 2))
            fall = np.clip(rad + 0.5 - np.sqrt(xs * xs + ys * ys), 0.0, 1.0)
            alpha = np.where(corner, np.minimum(alpha, fall), alpha)
        return _rgba(out, alpha)
    # cup: the picture through a round opening as wide as the field of view.
    r = _radius_map(H, W)
    opening = np.clip(min(h, w) / 2 + 0.5 - r, 0.0, 1.0)[:, :, None]
    out[m : m + h, m : m + w] = (
        opening[m : m + h, m : m + w] * picture + (1 - opening[m : m + h, m : m + w]) * colour
    )
    alpha = np.clip(min(h, w) / 2 + realism.rim_px + 0.5 - r, 0.0, 1.0)
    return _rgba(out, alpha)


def _bare(picture: np.ndarray) -> np.ndarray:
    """The produce alone: its picture's excess-green pixels and, next to them (within
    `BARE_EDGE_FRACTION` of the field of view), the pixels darker than the tray around
    (below `BARE_EDGE_DARK` of its local brightness): the produce's dark edge, where the
    skin turns from the light and excess green falls under the threshold, and its contact
    shadow. Cut by excess green alone the produce came out about a picture pixel thinner
    all round than the camera saw it (a smaller size grade). Edges feathered by a pixel."""
    p = picture
    exg = 2 * p[:, :, 1] - p[:, :, 0] - p[:, :, 2]
    mask = (exg > 20.0).astype(np.uint8) * 255
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask)
    if n > 1:
        biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        mask = (labels == biggest).astype(np.uint8) * 255
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    if mask.any():
        mask = _with_dark_edge(p, mask)
    alpha = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), 0.8)
    return _rgba(p, alpha)


BARE_EDGE_FRACTION = 1 / 32
"""How far from the green pixels `_bare` looks for the produce's dark edge: one pixel of
a 32 px picture (CUCUMBER-9's), as a fraction of the field of view's width."""
BARE_EDGE_DARK = 0.85
"""A pixel next to the produce darker than this fraction of the tray's local brightness
is the produce's dark edge or its contact shadow (`_bare`)."""


def _with_dark_edge(p: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`mask` (0/255) plus the dark pixels round it (see `_bare`)."""
    ring = max(1, round(BARE_EDGE_FRACTION * p.shape[1]))
    near = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * ring + 1,) * 2))
    wide = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (4 * ring + 1,) * 2))
    luma = p @ np.array([0.299, 0.587, 0.114], np.float32)
    tray = (wide == 0).astype(np.float32)  # the tray well clear of the produce
    sigma = 0.08 * p.shape[1]
    num = cv2.GaussianBlur(luma * tray, (0, 0), sigma)
    local = num / np.maximum(cv2.GaussianBlur(tray, (0, 0), sigma), 1e-3)
    edge = (near > 0) & (luma < BARE_EDGE_DARK * local) & (tray.sum() > 0)
    out = np.where(edge | (mask > 0), 255, 0).astype(np.uint8)
    return cv2.morphologyEx(out, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))


def sprite_centre(sprite: np.ndarray) -> tuple[float, float]:
    """Centre (x, y) of a sprite's alpha, pixel i covering [i, i+1), sprite coordinates."""
    m = cv2.moments(np.ascontiguousarray(sprite[:, :, 3]))
    if m["m00"] <= 0:
        return sprite.shape[1] / 2, sprite.shape[0] / 2
    return m["m10"] / m["m00"] + 0.5, m["m01"] / m["m00"] + 0.5


@dataclass
class CameraModel:
    """Vignetting, motion blur and white-balance drift of one video's camera."""

    realism: Realism
    """The options."""
    size: tuple[int, int]
    """Frame (width, height)."""
    speed_px_s: float
    """Belt speed (motion blur length = speed * exposure)."""
    _vignette: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        v = self.realism.vignetting
        if v > 0:
            w, h = self.size
            r = _radius_map(h, w) / math.hypot(w / 2, h / 2)
            self._vignette = (1.0 - v * r * r)[:, :, None].astype(np.float32)

    def blur_px(self) -> float:
        """Motion blur length along the belt, pixels."""
        return self.speed_px_s * self.realism.exposure_ms / 1000.0

    def apply(self, frame: np.ndarray, t: float) -> np.ndarray:
        """The frame (float32 RGB) as this camera records it at time t (before noise)."""
        length = self.blur_px()
        if length > 1.0:
            frame = cv2.filter2D(frame, -1, _box_kernel(length), borderType=cv2.BORDER_REFLECT)
        if self._vignette is not None:
            frame = frame * self._vignette
        wb = self.realism.white_balance_drift
        if wb > 0:
            s = wb * math.sin(2 * math.pi * t / self.realism.white_balance_period_s)
            frame = frame * np.array([1 + s, 1.0, 1 - s], np.float32)
        return frame


def _box_kernel(length: float) -> np.ndarray:
    """A 1 x n horizontal box of `length` pixels (fractional ends), summing to 1."""
    n = math.ceil(length)
    if n % 2 == 0:
        n += 1
    k = np.zeros((1, n), np.float32)
    half = length / 2
    centres = np.arange(n, dtype=np.float32) - (n - 1) / 2
    k[0] = np.clip(half + 0.5 - np.abs(centres), 0.0, 1.0)
    return k / k.sum()
