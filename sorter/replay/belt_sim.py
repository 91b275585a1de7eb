"""A conveyor belt to test against: a video of items riding a belt, with its ground truth.

Each item is a training image (which shows the item in its tray, a fixed field of view of
`field_of_view_mm`), scaled to `window_px = field_of_view_mm * px_per_mm` and pasted on a
textured orange belt moving left to right. The camera is imperfect: slow lighting drift, mild
blur, sensor noise and mp4 compression. The video starts with `lead_in_s` of empty belt, so
the belt can be calibrated from the video itself (`sorter calibrate-belt --video ...`).

Beside `OUT.mp4` goes `OUT.json` (docs/INTERFACES.md):
`{"fps", "size", "speed_px_s", "line_x", "px_per_mm", "window_px", "empty_frames", "items":
[{"id", "label", "t_line", "source", "y", "centres"}], ...}` where `t_line` is when the
item's centre crosses `line_x`, on the video's timeline (frame index / fps), and `centres`
lists `[frame, cx, cy]`, the centre of the item's tile as rendered, for every frame it is
wholly in view (pixel i covers [i, i+1): a frame W wide spans [0, W), its centre is W / 2).
Deterministic for a seed.

A belt at an angle in the image (`belt_angle_deg`, a camera not square to the belt): the
belt scene is rendered as usual on a canvas larger than the frame and turned about the
decision line's centre point (line_x, H / 2) into the frame, before the camera's effects
(the motion blur of `Realism.exposure_ms` stays along the image's x axis); `centres` and
`t_line` are then of the turned picture (the line runs across the belt through that
point); the truth says `belt_angle_deg`. 0, the default, renders exactly as before.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sorter.errors import ConfigError, DatasetError, SourceError
from sorter.perception.preprocess import IMAGE_SUFFIXES, load_image
from sorter.replay.realism import CameraModel, Realism, item_sprite, sprite_centre
from sorter.replay.speed_profile import SpeedProfile, arrivals

log = logging.getLogger(__name__)

ATTRIBUTION = "CUCUMBER-9 dataset (c) Workpiles, CC BY 4.0"
MIN_GAP_PX = 16
"""Smallest belt gap left between neighbouring items after jitter."""
CODECS = {"mp4v": ".mp4", "MJPG": ".avi"}
"""Video codecs (FourCC) and the container each needs (OpenCV writes MJPG only in .avi)."""


@dataclass
class BeltSimConfig:
    """What the simulated belt and camera look like."""

    fps: float = 30.0
    """Frame rate of the video."""
    size: tuple[int, int] = (640, 480)
    """Frame size (width, height) in pixels."""
    speed_px_s: float = 400.0
    """Belt speed in pixels per second (left to right)."""
    items_per_second: float | None = None
    """Items passing the line per second; sets the spacing (speed / rate). Default 2.5."""
    spacing_px: float | None = None
    """Centre-to-centre spacing in pixels (instead of items_per_second)."""
    count: int | None = None
    """Items on the belt; None = every selected image once. More than the images repeats them."""
    seed: int = 0
    """Seed for the order, jitter, texture and noise."""
    noise: float = 3.0
    """Camera noise: standard deviation in 0-255 levels."""
    jitter_px: float = 12.0
    """Random offset of each item along (limited by spacing) and across the belt."""
    lighting_drift: float = 0.06
    """Slow brightness drift amplitude (fraction; 0.06 = plus or minus 6%)."""
    drift_period_s: float = 15.0
    """Period of the brightness drift in seconds."""
    blur_sigma: float = 0.7
    """Mild lens/motion blur (Gaussian sigma in pixels; 0 = none)."""
    field_of_view_mm: tuple[float, float] = (250.0, 250.0)
    """Field of view (w, h) each training image shows: the crop rule in the model metadata."""
    px_per_mm: float = 0.48
    """Camera scale at the belt; 250 mm * 0.48 = a 120 px item window at 640x480."""
    limit_per_grade: int | None = None
    """Use at most this many images per grade (the first after sorting by name)."""
    split_file: Path | None = None
    """Only images listed here: a run's split.json (see `split`) or a text file of relpaths."""
    split: str = "test"
    """Which list of a split.json to use."""
    lead_in_s: float = 1.0
    """Seconds of empty belt before the first item enters (for calibration)."""
    line_x: float | None = None
    """Decision line x in pixels; None = frame centre."""
    codec: str = "mp4v"
    """FourCC of the video codec (mp4v works with every OpenCV wheel)."""
    subpixel: bool = False
    """Place items at their exact (fractional) position, edges area-mixed with the belt;
    False pastes them at whole pixels."""
    realism: Realism = field(default_factory=Realism)
    """Carriers (trays, cups, bare belt) and camera effects (sorter.replay.realism)."""
    speed_profile: str = ""
    """The belt's speed over time as a factor of speed_px_s, "T:F,T:F,..." (linear between;
    sorter.replay.speed_profile); empty: constant speed."""
    gate_distances_mm: tuple[float, ...] = tuple(200.0 + 100.0 * i for i in range(9))
    """Distances past the line (mm) at which the truth gives each item's arrival time (the
    default config's gates)."""
    belt_angle_deg: float = 0.0
    """The belt's direction in the image, degrees from the x axis (y down; see the module
    docstring); 0: along x."""

    @property
    def window_px(self) -> tuple[int, int]:
        """Item window (w, h) in pixels."""
        return (
            max(1, round(self.field_of_view_mm[0] * self.px_per_mm)),
            max(1, round(self.field_of_view_mm[1] * self.px_per_mm)),
        )

    def resolved_spacing(self) -> float:
        """Centre-to-centre spacing in pixels, from spacing_px or items_per_second."""
        if self.spacing_px is not None and self.items_per_second is not None:
            raise ConfigError("give --spacing or --items-per-second, not both")
        if self.spacing_px is not None:
            spacing = float(self.spacing_px)
        else:
            rate = 2.5 if self.items_per_second is None else float(self.items_per_second)
            if rate <= 0:
                raise ConfigError(f"--items-per-second must be positive, got {rate}")
            spacing = self.speed_px_s / rate
        width = self.window_px[0] + 2 * self.realism.margin_px()  # with a tray's rim
        need = width + MIN_GAP_PX
        if spacing < need:
            raise ConfigError(
                f"items {width} px wide at {spacing:.0f} px spacing would overlap "
                f"(need at least {need} px): raise --speed or lower --items-per-second"
            )
        return spacing

    def profile(self) -> SpeedProfile:
        """The parsed speed profile (ConfigError for a bad one)."""
        return _parse_profile(self.speed_profile)

    def check(self) -> None:
        """Raise ConfigError for settings that cannot make a video."""
        self.profile()
        w, h = self.size
        if w < 16 or h < 16:
            raise ConfigError(f"--size {w}x{h} is too small; use at least 16x16")
        if self.fps <= 0 or self.speed_px_s <= 0:
            raise ConfigError("--fps and --speed must be positive")
        if self.window_px[1] > h:
            raise ConfigError(
                f"item window {self.window_px[0]}x{self.window_px[1]} px does not fit a {w}x{h} "
                "frame: lower px_per_mm or use a larger --size"
            )
        if self.count is not None and self.count < 1:
            raise ConfigError(f"--count must be at least 1, got {self.count}")
        if not -30.0 <= self.belt_angle_deg <= 30.0:
            raise ConfigError(
                f"--belt-angle {self.belt_angle_deg:g}: use an angle from -30 to 30 degrees"
            )
        if self.codec not in CODECS:
            raise ConfigError(f"--codec {self.codec!r}: use one of {', '.join(CODECS)}")
        self.realism.check()
        self.resolved_spacing()


@functools.lru_cache(maxsize=8)
def _parse_profile(text: str) -> SpeedProfile:
    return SpeedProfile.parse(text)


def travel_px(cfg: BeltSimConfig, t: float) -> float:
    """How far the belt has moved (px) at time t: speed * t, or along the speed profile."""
    if not cfg.speed_profile:
        return cfg.speed_px_s * t
    return cfg.speed_px_s * cfg.profile().integral(t)


def time_at_px(cfg: BeltSimConfig, px: float) -> float:
    """When the belt has moved `px` (the inverse of travel_px)."""
    if not cfg.speed_profile:
        return px / cfg.speed_px_s
    return cfg.profile().time_at(px / cfg.speed_px_s)


def canvas_margin(cfg: BeltSimConfig) -> int:
    """Pixels of belt scene rendered beyond each side of the frame so that the turned scene
    fills it (0 for a belt along x)."""
    if cfg.belt_angle_deg == 0:
        return 0
    w, h = cfg.size
    corners = np.array([[0.0, 0.0], [w, 0.0], [0.0, h], [w, h]])
    back = _turn_points(cfg, corners, inverse=True)
    over = max(-back[:, 0].min(), back[:, 0].max() - w, -back[:, 1].min(), back[:, 1].max() - h)
    return max(0, math.ceil(over)) + 2


def _turn_matrix(cfg: BeltSimConfig) -> tuple[np.ndarray, np.ndarray]:
    """(R, c): the turn by belt_angle_deg about the decision line's centre point c."""
    a = math.radians(cfg.belt_angle_deg)
    line_x = cfg.line_x if cfg.line_x is not None else cfg.size[0] / 2
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return rot, np.array([line_x, cfg.size[1] / 2])


def _turn_points(cfg: BeltSimConfig, pts: np.ndarray, *, inverse: bool = False) -> np.ndarray:
    """Belt-scene points (N x 2, pixel i covers [i, i+1)) where the camera sees them, or
    (inverse) the other way."""
    rot, c = _turn_matrix(cfg)
    r = rot.T if inverse else rot
    return np.asarray((np.asarray(pts, dtype=np.float64) - c) @ r.T + c)


def image_point(cfg: BeltSimConfig, x: float, y: float) -> tuple[float, float]:
    """A point of the belt scene in the camera's image (itself for a belt along x)."""
    if cfg.belt_angle_deg == 0:
        return x, y
    p = _turn_points(cfg, np.array([[x, y]]))[0]
    return float(p[0]), float(p[1])


def _turn(canvas: np.ndarray, cfg: BeltSimConfig, m: int) -> np.ndarray:
    """The camera's frame of a canvas of the belt scene with `m` px beyond each side."""
    rot, c = _turn_matrix(cfg)
    # OpenCV's pixel centres are at integers: ours at i + 0.5; the canvas is offset by m
    c0 = c - 0.5
    shift = c0 - rot @ c0 - rot @ np.array([m, m], dtype=np.float64)
    mat = np.hstack([rot, shift[:, None]]).astype(np.float64)
    return cv2.warpAffine(canvas, mat, cfg.size, flags=cv2.INTER_LINEAR)


@dataclass
class SimItem:
    """One item on the simulated belt (the truth the scorecard checks against)."""

    id: int
    """Item number, from 1, in the order they reach the line."""
    label: str
    """True grade (the folder the image came from)."""
    t_line: float
    """Seconds (video timeline) when the item's centre crosses the decision line."""
    source: str
    """Image path relative to the data folder."""
    y: float
    """Centre y of the item in the frame."""
    x0: float = field(default=0.0, repr=False)
    """Centre x at t = 0 (internal)."""
    carrier_colour: str = field(default="", repr=False)
    """Colour of its tray or cup (realism.carrier tray/cup)."""
    dx: float = field(default=0.0, repr=False)
    """Offset of the rendered item's centre from its picture's centre (bare belt)."""
    dy: float = field(default=0.0, repr=False)
    """Offset in y."""


@dataclass
class BeltSimResult:
    """What simulate_belt wrote."""

    video: Path
    """The mp4 file."""
    truth: Path
    """The ground-truth JSON beside it."""
    items: list[SimItem]
    """Items, in line order."""
    frames: int
    """Frames written."""


def list_images(
    data_dir: str | Path,
    *,
    limit_per_grade: int | None = None,
    split_file: str | Path | None = None,
    split: str = "test",
) -> list[tuple[str, str]]:
    """(relpath, grade) for the images of a folder-per-grade tree, sorted by path."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder; give a folder with one sub-folder per grade")
    wanted: set[str] | None = None
    if split_file is not None:
        wanted = _read_split(Path(split_file), split)
    out: list[tuple[str, str]] = []
    for grade_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(
            p for p in grade_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        rels = [p.relative_to(root).as_posix() for p in files]
        if wanted is not None:
            rels = [r for r in rels if r in wanted]
        if limit_per_grade is not None:
            rels = rels[:limit_per_grade]
        out.extend((r, grade_dir.name) for r in rels)
    if not out:
        what = f" listed in {split_file}" if split_file is not None else ""
        raise DatasetError(
            f"{root}: no images{what} in grade sub-folders (expected {root}/<grade>/*.png)"
        )
    return out


def _read_split(path: Path, split: str) -> set[str]:
    try:
        text = path.read_text()
    except OSError as err:
        raise DatasetError(f"{path}: cannot read split file ({err.strerror})") from err
    if path.suffix == ".json":
        try:
            data = json.loads(text)
            rows = data[split]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DatasetError(
                f"{path}: not a split.json with a {split!r} list ({err}); give a run's "
                "split.json or a text file with one relpath per line"
            ) from err
        return {str(r[0]) if isinstance(r, list) else str(r) for r in rows}
    return {line.strip() for line in text.splitlines() if line.strip()}


def make_belt_texture(height: int, period: int, rng: np.random.Generator) -> np.ndarray:
    """An orange PVC belt, seamless along x with the given period: HxPx3 float32 RGB.

    Orange because nothing in the trays is orange: the trays are grey-blue (dark grey at
    some bottoms) and cucumbers green, so the whole tray stands out from the belt.
    """
    base = np.array([190.0, 104.0, 48.0], dtype=np.float32)
    white = rng.normal(0.0, 1.0, (height, period)).astype(np.float32)
    tiled = np.concatenate([white] * 3, axis=1)
    smooth = cv2.GaussianBlur(tiled, (0, 0), 6.0)[:, period : 2 * period]
    coarse = (smooth * (5.0 / max(1e-6, float(smooth.std())))).astype(np.float32)
    grain = rng.normal(0.0, 3.0, (height, period)).astype(np.float32)
    tex = base[None, None, :] + (coarse + grain)[:, :, None]
    # Faint joints across the belt every ~period / 2 pixels.
    for x in (period // 4, 3 * period // 4):
        tex[:, x : x + 3, :] -= 10.0
    return tex


def _schedule(
    images: list[tuple[str, str]], cfg: BeltSimConfig, rng: np.random.Generator
) -> list[SimItem]:
    n = cfg.count if cfg.count is not None else len(images)
    order: list[int] = []
    while len(order) < n:
        order.extend(int(i) for i in rng.permutation(len(images)))
    order = order[:n]
    w, h = cfg.size
    win_w, win_h = cfg.window_px
    spacing = cfg.resolved_spacing()
    line_x = cfg.line_x if cfg.line_x is not None else w / 2
    m = cfg.realism.margin_px()  # a tray's or cup's rim beyond the field of view
    slack = max(0.0, (spacing - win_w - 2 * m - MIN_GAP_PX) / 2)
    along = min(cfg.jitter_px, slack)
    across = max(0.0, min(cfg.jitter_px, h / 2 - win_h / 2 - m - 2))
    first_x0 = -win_w / 2 - cfg.speed_px_s * cfg.lead_in_s - along
    items: list[SimItem] = []
    for i, idx in enumerate(order):
        rel, label = images[idx]
        x0 = first_x0 - i * spacing + float(rng.uniform(-along, along))
        y = h / 2 + float(rng.uniform(-across, across))
        t_line = time_at_px(cfg, line_x - x0)
        items.append(SimItem(i + 1, label, round(t_line, 6), rel, round(y, 2), x0))
    return items


def _paste(frame: np.ndarray, sprite: np.ndarray, left: int, top: int) -> None:
    """Composite a premultiplied RGBA sprite onto the frame at a whole-pixel position."""
    h, w = frame.shape[:2]
    th, tw = sprite.shape[:2]
    x0, y0 = max(0, left), max(0, top)
    x1, y1 = min(w, left + tw), min(h, top + th)
    if x1 <= x0 or y1 <= y0:
        return
    part = sprite[y0 - top : y1 - top, x0 - left : x1 - left]
    a = part[:, :, 3:]
    frame[y0:y1, x0:x1] = part[:, :, :3] + (1.0 - a) * frame[y0:y1, x0:x1]


def placement(item: SimItem, t: float, cfg: BeltSimConfig) -> tuple[float, float]:
    """(left, top) edge of the item's sprite at time t: whole pixels unless cfg.subpixel.

    The sprite is the field of view (window_px) plus the carrier's margin on each side."""
    m = cfg.realism.margin_px()
    win_w, win_h = cfg.window_px
    left = item.x0 + travel_px(cfg, t) - win_w / 2 - m
    top = item.y - win_h / 2 - m
    if cfg.subpixel:
        return left, top
    return math.floor(left + 0.5), math.floor(top + 0.5)


def true_centre(item: SimItem, t: float, cfg: BeltSimConfig) -> tuple[float, float]:
    """The item's centre as rendered at time t (pixel i covers [i, i+1)): the centre of its
    picture, or for a bare belt the centre of the produce."""
    left, top = placement(item, t, cfg)
    m = cfg.realism.margin_px()
    win_w, win_h = cfg.window_px
    return left + m + win_w / 2 + item.dx, top + m + win_h / 2 + item.dy


def centres_by_frame(
    items: list[SimItem], cfg: BeltSimConfig, n_frames: int
) -> dict[int, list[list[float]]]:
    """Per item id: [frame, cx, cy] for every frame its tile is wholly in view."""
    w, h = cfg.size
    win_w, win_h = cfg.window_px
    out: dict[int, list[list[float]]] = {}
    for item in items:
        rows = []
        for k in range(n_frames):
            cx, cy = true_centre(item, k / cfg.fps, cfg)
            if cfg.belt_angle_deg != 0:
                if _tile_in_view(cfg, cx, cy):
                    rows.append([k, *image_point(cfg, cx, cy)])
                continue
            inside_x = cx - win_w / 2 >= 0 and cx + win_w / 2 <= w
            if inside_x and cy - win_h / 2 >= 0 and cy + win_h / 2 <= h:
                rows.append([k, cx, cy])
        out[item.id] = rows
    return out


def _tile_in_view(cfg: BeltSimConfig, cx: float, cy: float) -> bool:
    """True when the turned tile centred at belt-scene point (cx, cy) is wholly in view."""
    hw, hh = cfg.window_px[0] / 2, cfg.window_px[1] / 2
    corners = np.array(
        [[cx - hw, cy - hh], [cx + hw, cy - hh], [cx - hw, cy + hh], [cx + hw, cy + hh]]
    )
    p = _turn_points(cfg, corners)
    w, h = cfg.size
    return bool(
        (p[:, 0] >= 0).all()
        and (p[:, 0] <= w).all()
        and (p[:, 1] >= 0).all()
        and (p[:, 1] <= h).all()
    )


def _paste_shifted(frame: np.ndarray, sprite: np.ndarray, left: float, top: float) -> None:
    """Composite a premultiplied RGBA sprite with its top-left edge at a fractional
    (left, top): edge pixels are the area-weighted mix of sprite and belt, as a camera
    sees a continuous position."""
    il, it = math.floor(left), math.floor(top)
    fx, fy = left - il, top - it
    th, tw = sprite.shape[:2]
    shift = np.array([[1, 0, fx], [0, 1, fy]], dtype=np.float32)
    shifted = cv2.warpAffine(
        sprite, shift, (tw + 1, th + 1), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0, 0)
    )
    _paste(frame, shifted, il, it)


def render_frame(
    t: float,
    texture: np.ndarray,
    tiles: dict[str, np.ndarray],
    items: list[SimItem],
    cfg: BeltSimConfig,
    rng: np.random.Generator | None,
) -> np.ndarray:
    """The camera's view at time t (RGB uint8), before video compression.

    `tiles` are the items' sprites (`prepare`; key `sprite_key(item, cfg)`). `rng` None
    renders a clean frame: no noise (the belt, drift, blur and camera effects stay).
    """
    m = canvas_margin(cfg)
    w = cfg.size[0] + 2 * m
    period = texture.shape[1]
    offset = round(travel_px(cfg, t))
    cols = (np.arange(w) - m - offset) % period
    frame = texture[:, cols].copy()
    for item in items:
        sprite = tiles[sprite_key(item, cfg)]
        left, top = placement(item, t, cfg)
        left, top = left + m, top + m
        if left >= w or left + sprite.shape[1] <= 0:
            continue
        if cfg.subpixel:
            _paste_shifted(frame, sprite, left, top)
        else:
            _paste(frame, sprite, int(left), int(top))
    if m:
        frame = _turn(frame, cfg, m)
    gain = 1.0 + cfg.lighting_drift * math.sin(2 * math.pi * t / cfg.drift_period_s)
    frame *= gain
    if cfg.blur_sigma > 0:
        frame = cv2.GaussianBlur(frame, (0, 0), cfg.blur_sigma)
    frame = _camera(cfg).apply(frame, t)
    if rng is not None and cfg.noise > 0:
        frame += rng.standard_normal(frame.shape, dtype=np.float32) * np.float32(cfg.noise)
    return np.clip(frame + 0.5, 0, 255).astype(np.uint8)


def prepare(
    data_dir: str | Path, cfg: BeltSimConfig
) -> tuple[np.ndarray, dict[str, np.ndarray], list[SimItem], np.random.Generator]:
    """Everything but the frames: belt texture, scaled item tiles, schedule, noise RNG."""
    cfg.check()
    root = Path(data_dir)
    images = list_images(
        root, limit_per_grade=cfg.limit_per_grade, split_file=cfg.split_file, split=cfg.split
    )
    rng = np.random.default_rng(cfg.seed)
    items = _schedule(images, cfg, rng)
    tiles = _sprites(root, items, cfg)
    m = canvas_margin(cfg)
    texture = make_belt_texture(cfg.size[1] + 2 * m, max(1024, 2 * (cfg.size[0] + 2 * m)), rng)
    return texture, tiles, items, rng


def sprite_key(item: SimItem, cfg: BeltSimConfig) -> str:
    """Key of an item's sprite in `prepare`'s tiles: pictures are shared unless carried."""
    return item.source if cfg.realism.carrier == "none" else f"{item.id}:{item.source}"


def _sprites(root: Path, items: list[SimItem], cfg: BeltSimConfig) -> dict[str, np.ndarray]:
    """Each item's sprite: its picture at camera scale in its carrier (realism.item_sprite).

    Carrier colours come from their own random stream, so the belt, order and noise of a
    seed are the same with and without carriers."""
    pictures: dict[str, np.ndarray] = {}
    sprites: dict[str, np.ndarray] = {}
    colour_rng = np.random.default_rng([cfg.seed, 1])
    palette = list(cfg.realism.carrier_colours)
    for item in items:
        if item.source not in pictures:
            img = load_image(root / item.source)
            # The camera sees a continuous scene: smooth up-scaling, not blocky pixels.
            pictures[item.source] = cv2.resize(
                img, cfg.window_px, interpolation=cv2.INTER_LINEAR
            ).astype(np.float32)
        key = sprite_key(item, cfg)
        if key in sprites:
            continue
        item.carrier_colour = str(colour_rng.choice(palette))
        sprite = item_sprite(pictures[item.source], cfg.realism, item.carrier_colour)
        sprites[key] = sprite
        if cfg.realism.carrier == "bare":
            sx, sy = sprite_centre(sprite)
            item.dx, item.dy = sx - sprite.shape[1] / 2, sy - sprite.shape[0] / 2
    return sprites


_CAMERAS: dict[tuple[Any, ...], CameraModel] = {}


def _camera(cfg: BeltSimConfig) -> CameraModel:
    """The camera effects of cfg.realism (vignetting map cached per frame size)."""
    key = (cfg.size, cfg.speed_px_s, tuple(sorted(asdict(cfg.realism).items())))
    cam = _CAMERAS.get(key)
    if cam is None:
        _CAMERAS.clear()
        cam = _CAMERAS[key] = CameraModel(cfg.realism, cfg.size, cfg.speed_px_s)
    return cam


_NUMBER_LIST = re.compile(r"\[\s*(-?[\d.eE+-]+(?:,\s*-?[\d.eE+-]+)*)\s*\]")


def _dumps(doc: dict[str, Any]) -> str:
    """JSON with one key per line but short number lists (centres, sizes) on one line."""
    text = json.dumps(doc, indent=1)

    def one_line(m: re.Match[str]) -> str:
        return "[" + ", ".join(part.strip() for part in m.group(1).split(",")) + "]"

    return _NUMBER_LIST.sub(one_line, text)


def _truth_items(
    items: list[SimItem], centres: dict[int, list[list[float]]], cfg: BeltSimConfig, line_x: float
) -> list[dict[str, Any]]:
    """The truth's items in line order, each with its rendered centres and its true arrival
    time at each of cfg.gate_distances_mm (sorter.replay.speed_profile.arrivals)."""
    return [
        {
            "id": it.id,
            "label": it.label,
            "t_line": it.t_line,
            "source": it.source,
            "y": it.y,
            "centres": centres[it.id],
            "arrivals": arrivals(
                cfg.profile(), cfg.speed_px_s, it.x0, line_x, cfg.px_per_mm, cfg.gate_distances_mm
            ),
        }
        for it in sorted(items, key=lambda it: it.t_line)
    ]


def simulate_belt(
    data_dir: str | Path,
    out_mp4: str | Path,
    config: BeltSimConfig | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> BeltSimResult:
    """Write the belt video and its truth JSON (same name, .json). See the module docstring.

    `progress(done, total)` is called after each frame when given.
    """
    cfg = config or BeltSimConfig()
    out = Path(out_mp4)
    cfg.check()
    suffix = CODECS[cfg.codec]
    if out.suffix.lower() != suffix:
        raise ConfigError(
            f"{out}: a {cfg.codec} video needs a {suffix} file name (OpenCV would silently "
            f"write another codec); name it {out.with_suffix(suffix).name}"
        )
    texture, tiles, items, rng = prepare(data_dir, cfg)
    w, h = cfg.size
    win_w = cfg.window_px[0]
    last = min(items, key=lambda it: it.x0)
    first = max(items, key=lambda it: it.x0)
    m = canvas_margin(cfg)  # a turned belt shows more of it in the frame's corners
    t_end = time_at_px(cfg, w + m + win_w / 2 - last.x0)
    n_frames = math.ceil(t_end * cfg.fps) + 1
    t_enter = time_at_px(cfg, max(0.0, -m - win_w / 2 - first.x0))
    empty_frames = max(0, math.ceil(t_enter * cfg.fps) - 1)

    out.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter.fourcc(*cfg.codec), cfg.fps, (w, h))
    if not writer.isOpened():
        raise SourceError(
            f"{out}: cannot write a {cfg.codec} video here (check the folder is writable and "
            f"the name ends in {suffix})"
        )
    try:
        for k in range(n_frames):
            frame = render_frame(k / cfg.fps, texture, tiles, items, cfg, rng)
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            if progress is not None:
                progress(k + 1, n_frames)
    finally:
        writer.release()

    truth_path = out.with_suffix(".json")
    centres = centres_by_frame(items, cfg, n_frames)
    line_x = cfg.line_x if cfg.line_x is not None else w / 2
    truth = {
        "fps": cfg.fps,
        "size": list(cfg.size),
        "speed_px_s": cfg.speed_px_s,
        "line_x": cfg.line_x if cfg.line_x is not None else w / 2,
        "px_per_mm": cfg.px_per_mm,
        "field_of_view_mm": list(cfg.field_of_view_mm),
        "window_px": list(cfg.window_px),
        "spacing_px": cfg.resolved_spacing(),
        "frames": n_frames,
        "empty_frames": empty_frames,
        "direction": "left-to-right",
        **({"belt_angle_deg": cfg.belt_angle_deg} if cfg.belt_angle_deg else {}),
        "seed": cfg.seed,
        "speed_profile": cfg.profile().as_list(),
        "data_dir": str(data_dir),  # as given (relative in the shipped demo truth)
        "settings": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in asdict(cfg).items()
            if k not in ("size", "field_of_view_mm")
            and not (k == "belt_angle_deg" and v == 0)  # the truth of a belt along x as before
        },
        "attribution": ATTRIBUTION,
        "centre_convention": "pixel i covers [i, i+1); a frame W wide spans [0, W)",
        "items": _truth_items(items, centres, cfg, line_x),
    }
    truth_path.write_text(_dumps(truth) + "\n")
    log.info("%s: %d frames, %d items", out, n_frames, len(items))
    return BeltSimResult(out, truth_path, items, n_frames)
