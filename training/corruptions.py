"""The camera path as the sorting loop sees it, and a fixed, seeded suite of its corruptions.

On the belt a model-input image (a fixed field of view of a tray) reaches the model like
this: the camera sees the tray at `factor` times the model's resolution (32 px -> a 96 px
item window; 0.48 px/mm x 250 mm = 120 px is 3.75x), on a dark or orange belt, through a
lens (defocus), during an exposure (motion blur along the belt), with sensor noise,
lighting and white-balance drift, a video codec (mp4v, MJPG) of MOVING content; the locator
finds the item's centre to about a pixel; the window is cropped and shrunk back with
`sorter.perception.preprocess.to_model_input` (area interpolation). `render` does exactly
that for one image with the given `View`; `SUITE` holds the fixed corruptions the
robustness report uses, each at 3 severities, plus scale errors reported apart (`SCALE_SUITE`):
scale is what the size grades are made of, so it is measured (calibration), not trained
away.

Pure numpy/OpenCV (no TensorFlow): the same functions serve the training-time camera
augmentation (`training.camera_augment`). Everything is deterministic for a seed.
"""

from __future__ import annotations

import math
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from sorter.perception.preprocess import to_model_input

FACTOR = 3.0
"""Camera pixels per model pixel in the suite (32 px model input -> 96 px item window)."""
BELTS: dict[str, tuple[float, float, float]] = {
    "orange": (190.0, 104.0, 48.0),
    "dark": (38.0, 38.0, 42.0),
}
"""Belt colours (RGB) of the suite: the simulator's orange PVC and a dark rubber belt."""
RIM_RGB = (28.0, 30.0, 34.0)
"""A tray's dark edge."""
MARGIN = 0.25
"""Belt around the item window in the rendered canvas, as a fraction of the window."""


@dataclass(frozen=True)
class View:
    """One rendering of an image through the camera path (all lengths in CAMERA pixels
    unless named `_model`; 0 / 1 / None means "off")."""

    factor: float = FACTOR
    """Camera pixels per model pixel (the item window is factor x the model input)."""
    belt: tuple[float, float, float] = BELTS["orange"]
    """Belt colour (RGB 0-255) seen where the window leaves the tray."""
    belt_texture: float = 4.0
    """Standard deviation of the belt's coarse texture, in levels."""
    dx_model: float = 0.0
    """Locator error along x, in MODEL pixels (the window is off-centre; belt fills in)."""
    dy_model: float = 0.0
    """Locator error along y, in model pixels."""
    rotate_deg: float = 0.0
    """Item rotated on the belt (belt fills the corners)."""
    scale: float = 1.0
    """Item size in the window relative to training (camera px/mm calibration error)."""
    scale_fill: str = "edge"
    """What surrounds a shrunk item: "edge" (the tray goes on) or "belt"."""
    rim_px: float = 0.0
    """Width of a dark tray rim at the window's edge (the tray is smaller than the window)."""
    rim_rgb: tuple[float, float, float] = RIM_RGB
    """Colour of the rim."""
    belt_band_px: float = 0.0
    """Width of belt showing outside the rim, at the window's edge."""
    motion_px: float = 0.0
    """Motion blur along the belt (x): exposure x speed, in camera pixels."""
    defocus_px: float = 0.0
    """Defocus: radius of the lens' disk blur, in camera pixels."""
    gain: float = 1.0
    """Overall brightness (lighting drift)."""
    wb: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Per-channel (R, G, B) gains (white-balance drift)."""
    noise: float = 0.0
    """Sensor noise, standard deviation in levels at camera resolution."""
    jpeg_quality: int | None = None
    """JPEG round trip of the camera window at this quality."""
    flip180: bool = False
    """The item lies the other way round (a 180-degree turn, label-preserving)."""
    cup_fill: bool = False
    """The item rides in a round cup whose opening is the window's width, and the loop
    fills the window's corners as `[locate] rim_mm` does: everything outside the opening,
    produce excepted, inpainted from inside it (`sorter.perception.measure.fill_rim`)."""


def _window(shape: tuple[int, ...], factor: float) -> tuple[int, int]:
    """(h, w) camera window for a model input of `shape` (h, w, ...)."""
    return max(1, round(shape[0] * factor)), max(1, round(shape[1] * factor))


def _belt(h: int, w: int, rgb: tuple[float, float, float], texture: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.empty((h, w, 3), np.float32)
    base[:] = np.asarray(rgb, np.float32)
    if texture > 0:
        noise = rng.standard_normal((h, w)).astype(np.float32)
        coarse = np.asarray(cv2.GaussianBlur(noise, (0, 0), 3.0), np.float32)
        base += (coarse * np.float32(texture / max(1e-6, float(coarse.std()))))[:, :, None]
    return base


def _disk(radius: float) -> np.ndarray:
    r = max(0.5, radius)
    n = math.ceil(r) * 2 + 1
    yy, xx = np.mgrid[:n, :n] - n // 2
    k = np.clip(r + 0.5 - np.hypot(xx, yy), 0.0, 1.0).astype(np.float32)
    return np.asarray(k / k.sum(), np.float32)


def _motion(length: float) -> np.ndarray:
    n = math.ceil(length) | 1
    k = np.zeros((1, n), np.float32)
    half = length / 2
    for i in range(n):
        x = i - n // 2
        k[0, i] = np.clip(half + 0.5 - abs(x), 0.0, 1.0)
    return np.asarray(k / k.sum(), np.float32)


def canvas(image: np.ndarray, view: View, seed: int = 0) -> tuple[np.ndarray, tuple[int, int]]:
    """The camera's view around one item, before crop: float32 RGB canvas and the window
    (h, w). The item's centre is the canvas centre; belt all around."""
    img = np.ascontiguousarray(image[::-1, ::-1]) if view.flip180 else image
    wh, ww = _window(img.shape, view.factor)
    mh, mw = math.ceil(wh * MARGIN) + 2, math.ceil(ww * MARGIN) + 2
    ch, cw = wh + 2 * mh, ww + 2 * mw
    out = _belt(ch, cw, view.belt, view.belt_texture, seed)
    # The tray as the camera sees it: smooth up-scaling (a continuous scene), as belt_sim does.
    tile = cv2.resize(img, (ww, wh), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    tray = np.ones((wh, ww), np.float32)
    band = view.belt_band_px + view.rim_px
    if band > 0:
        yy, xx = np.mgrid[:wh, :ww].astype(np.float32)
        edge = np.minimum(np.minimum(xx + 0.5, ww - xx - 0.5), np.minimum(yy + 0.5, wh - yy - 0.5))
        rim = np.clip(edge - view.belt_band_px, 0, 1)[..., None]
        inner = np.clip(edge - band, 0, 1)[..., None]
        tile = inner * tile + (rim - inner) * np.asarray(view.rim_rgb, np.float32)
        tray = rim[..., 0]
    if view.scale != 1.0 or view.rotate_deg:
        m = cv2.getRotationMatrix2D(((ww - 1) / 2, (wh - 1) / 2), view.rotate_deg, view.scale)
        m[:, 2] += (mw, mh)
        edge_mode = view.scale_fill == "edge" and not view.rotate_deg and band <= 0
        if edge_mode:
            full = cv2.warpAffine(
                tile, m, (cw, ch), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
            )
            return _camera(full, view, seed), (wh, ww)
        alpha = cv2.warpAffine(tray, m, (cw, ch), flags=cv2.INTER_LINEAR)[..., None]
        moved = cv2.warpAffine(tile, m, (cw, ch), flags=cv2.INTER_LINEAR)
        out = out * (1 - alpha) + moved  # `moved` is premultiplied by the tray's coverage
    else:
        t = tray[..., None]
        region = out[mh : mh + wh, mw : mw + ww]
        out[mh : mh + wh, mw : mw + ww] = region * (1 - t) + (tile if band > 0 else t * tile)
    return _camera(out, view, seed), (wh, ww)


def _camera(frame: np.ndarray, view: View, seed: int) -> np.ndarray:
    """Lens, exposure, light and sensor on a float32 canvas."""
    if view.defocus_px > 0:
        frame = cv2.filter2D(frame, -1, _disk(view.defocus_px), borderType=cv2.BORDER_REPLICATE)
    if view.motion_px > 1:
        frame = cv2.filter2D(frame, -1, _motion(view.motion_px), borderType=cv2.BORDER_REPLICATE)
    if view.gain != 1.0 or view.wb != (1.0, 1.0, 1.0):
        frame = frame * (np.asarray(view.wb, np.float32) * np.float32(view.gain))
    if view.noise > 0:
        rng = np.random.default_rng(seed + 1)
        frame = frame + rng.standard_normal(frame.shape, dtype=np.float32) * np.float32(view.noise)
    return np.asarray(frame, np.float32)


def crop(frame: np.ndarray, window: tuple[int, int], view: View) -> np.ndarray:
    """The item window the loop cuts (centre off by the view's locator error), uint8."""
    wh, ww = window
    cy = (frame.shape[0] - 1) / 2 + view.dy_model * view.factor
    cx = (frame.shape[1] - 1) / 2 + view.dx_model * view.factor
    win = cv2.getRectSubPix(frame, (ww, wh), (cx, cy))
    out = np.clip(win + 0.5, 0, 255).astype(np.uint8)
    if view.jpeg_quality is not None:
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(view.jpeg_quality)])
        if ok:
            out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if view.cup_fill:
        out = cup_corners_filled(out, -view.dx_model * view.factor, -view.dy_model * view.factor)
    return out


def cup_corners_filled(window: np.ndarray, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    """`window` (uint8 RGB) as the loop gives it for an item in a round cup: outside the
    circle of the window's width (centred `dx`, `dy` px off the window's centre, where the
    cup is when the locator is off), produce excepted, filled from inside the circle."""
    from sorter.perception.measure import fill_rim

    h, w = window.shape[:2]
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    r = min(h, w) / 2
    inside = (xx - (w - 1) / 2 - dx) ** 2 + (yy - (h - 1) / 2 - dy) ** 2 <= r * r
    return fill_rim(window, inside)


def render(image: np.ndarray, view: View, seed: int = 0) -> np.ndarray:
    """`image` (model input, uint8 RGB h x w) as the model sees it through the camera path."""
    frame, window = canvas(image, view, seed)
    return to_model_input(crop(frame, window, view), image.shape[:2])


# --- video codecs of moving content -----------------------------------------------------------

CODECS = {"mp4v": ".mp4", "MJPG": ".avi"}
"""FourCC -> container the OpenCV wheels can write and read back."""


def codec_round_trip(
    images: np.ndarray,
    views: list[View],
    codec: str,
    speed_px: float,
    seed: int = 0,
    frames: int = 5,
) -> np.ndarray:
    """Render every image, lay the canvases out in a mosaic moving along x by `speed_px`
    camera pixels per frame, encode `frames` frames with `codec`, decode, and cut each item's
    window from the middle frame (a P-frame for mp4v). Returns model inputs (N, h, w, 3)."""
    rendered = [
        canvas(img, v, seed + i) for i, (img, v) in enumerate(zip(images, views, strict=True))
    ]
    ch, cw = rendered[0][0].shape[:2]
    pad = math.ceil(speed_px * frames) + 8
    cols = max(1, min(len(rendered), 6))
    rows = -(-len(rendered) // cols)
    height = (rows * ch + 15) // 16 * 16
    width = (cols * cw + pad + 15) // 16 * 16
    base = np.zeros((height, width, 3), np.float32)
    base[:] = np.asarray(views[0].belt, np.float32)
    for i, (frame, _) in enumerate(rendered):
        r, c = divmod(i, cols)
        base[r * ch : (r + 1) * ch, c * cw : (c + 1) * cw] = frame
    mid = frames // 2
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"clip{CODECS[codec]}"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*codec), 30.0, (width, height))
        if not writer.isOpened():
            raise RuntimeError(f"OpenCV cannot write {codec} video here")
        for k in range(frames):
            m = np.array([[1, 0, k * speed_px], [0, 1, 0]], np.float32)
            f = cv2.warpAffine(base, m, (width, height), borderMode=cv2.BORDER_REPLICATE)
            writer.write(cv2.cvtColor(np.clip(f + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
        writer.release()
        cap = cv2.VideoCapture(str(path))
        got = None
        for _ in range(mid + 1):
            ok, got = cap.read()
            if not ok:
                raise RuntimeError(f"{codec} clip did not decode")
        cap.release()
    assert got is not None
    decoded = cv2.cvtColor(got, cv2.COLOR_BGR2RGB).astype(np.float32)
    out = np.empty_like(images)
    for i, ((_, window), v) in enumerate(zip(rendered, views, strict=True)):
        r, c = divmod(i, cols)
        x0 = c * cw + mid * speed_px
        cell = cv2.getRectSubPix(decoded, (cw, ch), (x0 + (cw - 1) / 2, r * ch + (ch - 1) / 2))
        out[i] = to_model_input(
            crop(cell, window, replace(v, jpeg_quality=None)), images.shape[1:3]
        )
    return out


# --- the fixed suite --------------------------------------------------------------------------


@dataclass(frozen=True)
class Corruption:
    """One cell of the robustness table: a kind of camera change at one severity."""

    kind: str
    """Family (misalign, rim, mp4v, ...)."""
    severity: int
    """1 (mild) .. 3 (strong)."""
    label: str
    """What the severity means, for the table (e.g. "1 px")."""
    make: Callable[[np.random.Generator], View]
    """A View for one image, drawing the per-image parts (direction, sign) from the rng."""
    codec: tuple[str, float] | None = None
    """(fourcc, camera px per frame) for codec round trips of moving content."""

    @property
    def name(self) -> str:
        return f"{self.kind}/{self.severity}"


def _belt_of(rng: np.random.Generator) -> tuple[float, float, float]:
    return BELTS["orange"] if rng.random() < 0.5 else BELTS["dark"]


def _misalign(px: float) -> Callable[[np.random.Generator], View]:
    def make(rng: np.random.Generator) -> View:
        a = rng.uniform(0, 2 * math.pi)
        return View(belt=_belt_of(rng), dx_model=px * math.cos(a), dy_model=px * math.sin(a))

    return make


def _signed(field: str, amount: float) -> Callable[[np.random.Generator], View]:
    def make(rng: np.random.Generator) -> View:
        s = 1.0 if rng.random() < 0.5 else -1.0
        if field == "gain":
            return View(gain=1.0 + s * amount)
        return View(wb=(1.0 + s * amount, 1.0, 1.0 - s * amount))

    return make


def _fixed(**kw: object) -> Callable[[np.random.Generator], View]:
    def make(rng: np.random.Generator) -> View:
        return View(belt=_belt_of(rng), **kw)  # type: ignore[arg-type]

    return make


def _suite() -> tuple[Corruption, ...]:
    c: list[Corruption] = []
    for i, px in enumerate((0.5, 1.0, 2.0), 1):
        c.append(Corruption("misalign", i, f"{px:g} px", _misalign(px)))
    for i, (rim, band) in enumerate(((2.0, 0.0), (4.0, 0.0), (2.0, 6.0)), 1):
        what = f"rim {rim:g} px" + (f" + belt {band:g} px" if band else "") + " @96"
        c.append(Corruption("rim", i, what, _fixed(rim_px=rim, belt_band_px=band)))
    for i, speed in enumerate((4.0, 13.0, 26.0), 1):
        c.append(Corruption("mp4v", i, f"{speed:g} px/frame", _fixed(), ("mp4v", speed)))
    for i, speed in enumerate((4.0, 13.0, 26.0), 1):
        c.append(Corruption("mjpg", i, f"{speed:g} px/frame", _fixed(), ("MJPG", speed)))
    for i, q in enumerate((75, 50, 30), 1):
        c.append(Corruption("jpeg", i, f"q{q}", _fixed(jpeg_quality=q)))
    for i, n in enumerate((3.0, 6.0, 12.0), 1):
        c.append(Corruption("motion-blur", i, f"{n:g} px @96", _fixed(motion_px=n)))
    for i, r in enumerate((1.0, 2.0, 3.0), 1):
        c.append(Corruption("defocus", i, f"r {r:g} px @96", _fixed(defocus_px=r)))
    for i, s in enumerate((4.0, 8.0, 16.0), 1):
        c.append(Corruption("noise", i, f"sigma {s:g} @96", _fixed(noise=s)))
    for i, g in enumerate((0.05, 0.1, 0.2), 1):
        c.append(Corruption("brightness", i, f"x1±{g:g}", _signed("gain", g)))
    for i, g in enumerate((0.05, 0.1, 0.2), 1):
        c.append(Corruption("white-balance", i, f"R/B ±{g:g}", _signed("wb", g)))
    return tuple(c)


def _scales() -> tuple[Corruption, ...]:
    out = []
    for i, s in enumerate((0.95, 0.98, 1.02, 1.05), 1):
        out.append(Corruption("scale", i, f"x{s:g}", _fixed(scale=s)))
    return tuple(out)


SUITE: tuple[Corruption, ...] = _suite()
"""The corruptions whose mean is the robustness figure (9 kinds x 3 severities)."""
SCALE_SUITE: tuple[Corruption, ...] = _scales()
"""Scale errors (x0.95, x0.98, x1.02, x1.05), reported apart as scale sensitivity."""
CAMERA_CLEAN = Corruption("camera", 0, "clean camera path", _fixed())
"""The camera path with nothing wrong: up-scaled, on the belt, cropped, shrunk back."""


def _key(c: Corruption, seed: int) -> int:
    return zlib.crc32(f"{c.name}:{seed}".encode())


def apply(c: Corruption, images: np.ndarray, seed: int = 0) -> np.ndarray:
    """`images` (N, h, w, 3) uint8 through corruption `c`; the same output for the same seed."""
    rng = np.random.default_rng(_key(c, seed))
    views = [c.make(rng) for _ in range(len(images))]
    base = _key(c, seed) % 100_000
    if c.codec is not None:
        fourcc, speed = c.codec
        out = np.empty_like(images)
        for start in range(0, len(images), 24):
            sl = slice(start, start + 24)
            out[sl] = codec_round_trip(images[sl], views[sl], fourcc, speed, base + start)
        return out
    return np.stack(
        [render(img, v, base + i) for i, (img, v) in enumerate(zip(images, views, strict=True))]
    )
