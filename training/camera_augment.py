"""Training for the camera: each training image rendered through a RANDOMISED camera path.

The same path as the robustness suite (`training.corruptions`), with every setting drawn at
random per render: camera scale (item window 2.5-4x the model input), belt colour (orange,
dark or any), a locator error with belt-coloured fill (sub-pixel, up to `shift_px`), a small
rotation on the belt, a tray rim and belt inside the window, motion blur along the belt,
defocus, lighting and white-balance drift, sensor noise, JPEG or a video-codec round trip of
moving content. Scale is NOT jittered by default: the size grades are scale.

`build_pool` renders `variants` versions of every training image once, before training
(OpenCV; a few seconds per thousand images), and `pool_dataset` makes the tf.data pipeline
that shows, each epoch, either the clean image (with probability `clean_fraction`) or one of
its renders, drawn at random. Keras layers in the model add the 180-degree turn on top.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from training import corruptions as C

log = logging.getLogger(__name__)


@dataclass
class CameraAugmentConfig:
    """How the training images are rendered through the randomised camera path (the
    defaults are the default recipe's, chosen by cross-validation: training.cv)."""

    variants: int = 12
    """Renders kept per training image (the pool; 0 turns camera rendering off). Twelve
    measured better than six (training.cv, camera-mild-long-v12-wd)."""
    clean_fraction: float = 0.4
    """Chance that an epoch shows an image as it is, not one of its renders."""
    factor: tuple[float, float] = (2.5, 4.0)
    """Range of the camera window size, in multiples of the model input."""
    shift_px: float = 2.0
    """Largest locator error per axis, in model pixels (belt-coloured fill)."""
    rotate_deg: float = 6.0
    """Largest rotation of the item on the belt, either way (belt-coloured corners)."""
    scale: float = 0.0
    """Largest size change (fraction). 0: the size grades are scale; measure it instead."""
    rim_p: float = 0.25
    """Chance of a tray rim (and belt) inside the window."""
    rim_px: float = 6.0
    """Largest rim width, in camera pixels (belt outside it up to as wide again)."""
    motion_px: float = 12.0
    """Largest motion blur along the belt, in camera pixels."""
    defocus_px: float = 2.5
    """Largest defocus radius, in camera pixels."""
    gain: float = 0.1
    """Largest brightness change (fraction)."""
    white_balance: float = 0.08
    """Largest red/blue white-balance drift (fraction)."""
    noise: float = 12.0
    """Largest sensor noise, in levels at camera resolution."""
    jpeg_p: float = 0.2
    """Chance of a JPEG round trip (quality 25-90)."""
    codec_p: float = 0.15
    """Chance of an mp4v or MJPG round trip of moving content."""
    cutout_p: float = 0.0
    """Chance that a render first cuts the produce out of its picture (excess green, the
    loop's produce rule) and lays it on another surround: half of them on the training
    pictures' own median background (what `[locate] surround = "model"` gives the model),
    half on a random belt or carrier colour, centred (as the loop's window is on produce
    found on a bare belt). 0 (the default): off."""
    cup_p: float = 0.0
    """Chance that a render shows the window of an item in a round cup, its corners filled
    from the cup's opening as the loop fills them (`[locate] rim_mm`; View.cup_fill): the
    picture's corners, which a cup hides, then carry nothing to learn. 0 (the default): off."""
    max_pool_mb: float = 800.0
    """Fewer variants are kept when the pool would need more memory than this."""

    def as_dict(self) -> dict[str, Any]:
        """For config.json."""
        return asdict(self)


def _belt(rng: np.random.Generator) -> tuple[float, float, float]:
    u = rng.random()
    if u < 0.35:
        base = np.asarray(C.BELTS["orange"])
    elif u < 0.7:
        base = np.asarray(C.BELTS["dark"])
    else:
        base = rng.uniform(10, 230, 3)
    r, g, b = (float(v) for v in np.clip(base + rng.normal(0, 8, 3), 0, 255))
    return (r, g, b)


def random_view(rng: np.random.Generator, cfg: CameraAugmentConfig) -> C.View:
    """One random camera path."""
    rim = band = 0.0
    if rng.random() < cfg.rim_p:
        rim = rng.uniform(0.5, cfg.rim_px)
        band = rng.uniform(0.0, cfg.rim_px) if rng.random() < 0.5 else 0.0
    rim_rgb = tuple(float(v) for v in rng.uniform(10, 90, 3)) if rng.random() < 0.7 else _belt(rng)
    s = cfg.white_balance
    jpeg = int(rng.integers(25, 91)) if rng.random() < cfg.jpeg_p else None
    return C.View(
        factor=float(rng.uniform(*cfg.factor)),
        belt=_belt(rng),
        belt_texture=float(rng.uniform(0, 8)),
        dx_model=float(rng.uniform(-cfg.shift_px, cfg.shift_px)),
        dy_model=float(rng.uniform(-cfg.shift_px, cfg.shift_px)),
        rotate_deg=float(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg)),
        scale=float(1 + rng.uniform(-cfg.scale, cfg.scale)) if cfg.scale > 0 else 1.0,
        scale_fill="belt",
        rim_px=float(rim),
        rim_rgb=(rim_rgb[0], rim_rgb[1], rim_rgb[2]),
        belt_band_px=float(band),
        motion_px=float(rng.uniform(0, cfg.motion_px)) if rng.random() < 0.5 else 0.0,
        defocus_px=float(rng.uniform(0, cfg.defocus_px)) if rng.random() < 0.4 else 0.0,
        gain=float(1 + rng.uniform(-cfg.gain, cfg.gain)),
        wb=(
            float(1 + rng.uniform(-s, s)),
            float(1 + rng.uniform(-s / 3, s / 3)),
            float(1 + rng.uniform(-s, s)),
        ),
        noise=float(rng.uniform(0, cfg.noise)),
        jpeg_quality=jpeg,
        # Drawn only when on, so that recipes without cups keep their random stream.
        cup_fill=bool(cfg.cup_p > 0 and rng.random() < cfg.cup_p),
    )


def pool_variants(n_images: int, shape: tuple[int, ...], cfg: CameraAugmentConfig) -> int:
    """How many renders per image fit `max_pool_mb` (at most `cfg.variants`)."""
    per = float(np.prod(shape)) * n_images / 1e6
    fit = int(cfg.max_pool_mb // max(per, 1e-9)) - 1
    k = max(0, min(cfg.variants, fit))
    if k < cfg.variants:
        log.warning(
            "camera augmentation: %d renders per image instead of %d (memory cap %.0f MB)",
            k,
            cfg.variants,
            cfg.max_pool_mb,
        )
    return k


def produce_alpha(picture: np.ndarray) -> np.ndarray:
    """How much of each pixel of a training picture (h, w, 3) uint8 is produce (float32
    0-1): its excess-green 2G - R - B > 20 parts (each at least a tenth of the largest),
    holes filled, the edge feathered by half a pixel."""
    import cv2

    x = picture.astype(np.int16)
    green = ((2 * x[:, :, 1] - x[:, :, 0] - x[:, :, 2]) > 20).astype(np.uint8) * 255
    contours, _ = cv2.findContours(green, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    mask = np.zeros(picture.shape[:2], np.uint8)
    if contours:
        areas = [float(cv2.contourArea(c)) for c in contours]
        big = [c for c, a in zip(contours, areas, strict=True) if a >= 0.1 * max(areas)]
        cv2.drawContours(mask, big, -1, 255, thickness=cv2.FILLED)
    alpha = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), 0.5)
    return np.asarray(np.maximum(alpha, mask / 255.0), dtype=np.float32)


def cut_out(picture: np.ndarray, background: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The produce of `picture`, moved so that its centre is the picture's (the loop
    centres its window on what it finds, and on a bare belt that is the produce), laid on
    the training background `background` (float32 (h, w, 3)) with a little noise, or
    (half the time) on a random belt colour."""
    import cv2

    h, w = picture.shape[:2]
    if rng.random() < 0.5:
        surround = background + rng.normal(0.0, 3.0, background.shape)
    else:
        surround = np.empty((h, w, 3), np.float32)
        surround[:] = _belt(rng)
        surround += rng.normal(0.0, float(rng.uniform(0, 8)), surround.shape)
    alpha = produce_alpha(picture)
    m = cv2.moments(alpha)
    img = picture.astype(np.float32)
    if m["m00"] > 0:  # centre of mass (pixel i covers [i, i+1)) to the picture's centre
        dx = w / 2 - (m["m10"] / m["m00"] + 0.5)
        dy = h / 2 - (m["m01"] / m["m00"] + 0.5)
        shift = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]], np.float32)
        img = np.asarray(cv2.warpAffine(img, shift, (w, h), flags=cv2.INTER_LINEAR), np.float32)
        alpha = cv2.warpAffine(alpha, shift, (w, h), flags=cv2.INTER_LINEAR)
    a = np.clip(alpha, 0.0, 1.0)[:, :, None]
    out = a * img + (1.0 - a) * surround
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def render_batch(
    x: np.ndarray,
    cfg: CameraAugmentConfig,
    rng: np.random.Generator,
    background: np.ndarray | None = None,
) -> np.ndarray:
    """One random render of every image of `x` (N, h, w, 3) uint8 (`background`: the
    training pictures' background at their size, for `cfg.cutout_p`)."""
    out = np.empty_like(x)
    if cfg.cutout_p > 0 and background is not None:
        x = x.copy()
        for i in np.flatnonzero(rng.random(len(x)) < cfg.cutout_p):
            x[i] = cut_out(x[i], background, rng)
    views = [random_view(rng, cfg) for _ in range(len(x))]
    coded = rng.random(len(x)) < cfg.codec_p
    for i in np.flatnonzero(~coded):
        out[i] = C.render(x[i], views[i], int(rng.integers(1 << 30)))
    idx = np.flatnonzero(coded)
    for start in range(0, len(idx), 24):
        part = idx[start : start + 24]
        fourcc = "mp4v" if rng.random() < 0.6 else "MJPG"
        speed = float(rng.uniform(2, 30))
        # One mosaic shares one camera scale (a clip has one camera).
        factor = views[part[0]].factor
        vs = [C.View(**{**asdict(views[i]), "factor": factor, "jpeg_quality": None}) for i in part]
        out[part] = C.codec_round_trip(x[part], vs, fourcc, speed, int(rng.integers(1 << 30)))
    return out


def build_pool(
    x: np.ndarray, cfg: CameraAugmentConfig, seed: int, time_limit_s: float | None = None
) -> np.ndarray:
    """(1 + k, N, h, w, 3) uint8: the clean images, then k renders of each. With
    `time_limit_s`, rendering stops after the first render that ends past it (at least one
    is kept), with a warning: a large dataset keeps its epochs inside the time budget."""
    k = pool_variants(len(x), x.shape[1:], cfg)
    pool = np.empty((1 + k, *x.shape), dtype=np.uint8)
    pool[0] = x
    rng = np.random.default_rng(seed + 7919)
    background = None
    if cfg.cutout_p > 0 and len(x):
        from sorter.perception.surround import Background

        background = Background.of_images(x).image((x.shape[2], x.shape[1]))
    t0 = time.monotonic()
    for v in range(k):
        pool[1 + v] = render_batch(x, cfg, rng, background)
        spent = time.monotonic() - t0
        if time_limit_s is not None and spent > time_limit_s and v + 1 < k:
            log.warning(
                "camera augmentation: %d renders per image instead of %d (%.0f s, over the "
                "%.0f s share of the time budget for rendering)",
                v + 1,
                k,
                spent,
                time_limit_s,
            )
            return pool[: v + 2]
    return pool


def pool_dataset(
    pool: np.ndarray,
    y: np.ndarray,
    clean_fraction: float,
    batch_size: int,
    seed: int,
    pairs: bool = False,
) -> Any:
    """tf.data: each epoch every image once, shuffled, clean or one random render. `y` is
    (N,) labels, (N, C) targets, or (1 + k, N, C) targets per pool image. `pairs`: each
    image twice, side by side (rows 2i, 2i+1: that view, then a different render; batches
    of 2 x batch_size), for `training.consistency.PairConsistency`."""
    import tensorflow as tf

    n_var = pool.shape[0] - 1
    images = tf.constant(pool)
    labels = tf.constant(y)
    n = pool.shape[1]

    per_view = y.ndim == 3  # soft targets per pool image (distillation): (1 + k, N, C)

    def pick(i: Any, r: Any) -> tuple[Any, Any]:
        """A batch: indices i (B,), random r (B,) -> images (B, h, w, 3), targets."""
        if n_var == 0:
            k = tf.zeros_like(i)
        else:
            u = tf.cast(r % 10_000, tf.float32) / 10_000.0
            k = tf.where(u < clean_fraction, tf.zeros_like(i), 1 + (r // 10_000) % n_var)
        if pairs:  # a second, different render: rows interleaved (view, other render)
            r2 = r // (10_000 * max(n_var, 1))
            if n_var > 1:  # any render after a clean view, else one of the n_var - 1 others
                k2 = 1 + tf.where(k == 0, r2 % n_var, (k + r2 % (n_var - 1)) % n_var)
            else:
                k2 = tf.fill(tf.shape(k), tf.constant(n_var, k.dtype))
            k = tf.reshape(tf.stack([k, k2], axis=1), [-1])
            i = tf.repeat(i, 2)
        ki = tf.stack([k, i], axis=1)
        return tf.gather_nd(images, ki), (
            tf.gather_nd(labels, ki) if per_view else tf.gather(labels, i)
        )

    idx = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True)
    rnd = tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True).map(tf.abs)
    return (
        tf.data.Dataset.zip(idx, rnd)
        .batch(batch_size)
        .map(pick, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )


def describe(cfg: CameraAugmentConfig) -> str:
    """One line for the log."""
    return (
        f"camera augmentation: {cfg.variants} renders/image, clean {cfg.clean_fraction:.0%}, "
        f"window x{cfg.factor[0]:g}-{cfg.factor[1]:g}, shift ±{cfg.shift_px:g} px, "
        f"rotation ±{cfg.rotate_deg:g}°, scale ±{100 * cfg.scale:g}%"
        + (f", produce cut out on other surrounds {cfg.cutout_p:.0%}" if cfg.cutout_p else "")
        + (f", cup corners filled {cfg.cup_p:.0%}" if cfg.cup_p else "")
    )
