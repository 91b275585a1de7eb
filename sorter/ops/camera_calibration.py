"""Camera calibration with a printed ChArUco board (`sorter calibrate-camera`).

Two sets of pictures of one board (OpenCV's `cv2.aruco.CharucoBoard`: squares x rows,
square and marker sizes in mm, an ArUco dictionary):

1. the LENS views: the board held at several angles and places in the picture. Each view's
   ChArUco corners (`cv2.aruco.CharucoDetector.detectBoard`) are matched to the board's
   corner positions (`CharucoBoard.matchImagePoints`) and `cv2.calibrateCamera` fits the
   intrinsics and the distortion (k1, k2, p1, p2, k3); its RMS reprojection error is kept;
2. the BELT views: the board lying flat on the belt. Their corners are undistorted with
   that lens (`cv2.undistortPoints`, into the ideal image with the same intrinsics) and a
   homography from the board (mm) to the image is fitted per view. The belt's scale
   (px per mm) is the square root of the homography's Jacobian determinant at the board's
   centre (the mean over the views); the belt direction is the direction the board's
   centre moved between belt views when it moved (the belt carried it), else the board's
   x axis (lay its long side along the belt).

Every failure is one line saying what to do: an unreadable file, a board not found (sizes
or dictionary wrong, board not in view), a blurred picture (the Laplacian's variance over
the board is low), too few usable views.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sorter.errors import ConfigError
from sorter.perception.lens import Lens, LensConfig

MIN_LENS_VIEWS = 4
"""Fewer lens views than this cannot pin the distortion down."""
MIN_CORNERS = 6
"""A view with fewer ChArUco corners than this is not used."""
MIN_SHARPNESS = 15.0
"""Variance of the Laplacian over the board below this: the picture is too blurred."""
MIN_MOVE_PX = 20.0
"""The board's centre must move this far between belt views to give the belt direction."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
"""Files of an --images folder that are read."""


class CalibrationError(ConfigError):
    """A calibration input that cannot be used (one line: what and what to do)."""


@dataclass(frozen=True)
class BoardSpec:
    """The printed ChArUco board."""

    squares: tuple[int, int] = (7, 5)
    """Squares across x rows (`--squares 7x5`)."""
    square_mm: float = 30.0
    """Side of one chessboard square, mm."""
    marker_mm: float = 22.0
    """Side of one ArUco marker, mm."""
    dictionary: str = "DICT_5X5_100"
    """OpenCV ArUco dictionary name."""

    def board(self) -> Any:
        """The cv2.aruco.CharucoBoard (corner positions in mm)."""
        if self.squares[0] < 2 or self.squares[1] < 2:
            raise CalibrationError(
                f"--squares {self.squares[0]}x{self.squares[1]}: need 2x2 or more"
            )
        if not 0 < self.marker_mm < self.square_mm:
            raise CalibrationError(
                f"--marker-mm {self.marker_mm:g}: must be above 0 and below --square-mm "
                f"{self.square_mm:g} (measure the printed board)"
            )
        code = getattr(cv2.aruco, self.dictionary, None)
        if not self.dictionary.startswith("DICT_") or not isinstance(code, int):
            names = [n for n in dir(cv2.aruco) if n.startswith("DICT_")]
            raise CalibrationError(
                f"--dictionary {self.dictionary!r}: unknown; use one of {', '.join(names[:8])}..."
            )
        dictionary = cv2.aruco.getPredefinedDictionary(code)
        return cv2.aruco.CharucoBoard(self.squares, self.square_mm, self.marker_mm, dictionary)


def parse_squares(text: str) -> tuple[int, int]:
    """`7x5` -> (7, 5); CalibrationError otherwise."""
    parts = text.lower().replace(" ", "").split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise CalibrationError(f"--squares {text!r}: give squares across x rows, e.g. 7x5")
    return int(parts[0]), int(parts[1])


@dataclass
class View:
    """One picture of the board: its ChArUco corners matched to the board."""

    source: str
    """File name (or camera frame)."""
    size: tuple[int, int]
    """Image (w, h)."""
    image_points: np.ndarray
    """N x 1 x 2 corner positions in the picture (OpenCV pixel convention)."""
    object_points: np.ndarray
    """N x 1 x 3 the same corners on the board, mm (z = 0)."""
    sharpness: float
    """Variance of the Laplacian over the board."""


@dataclass
class Result:
    """What `sorter calibrate-camera` measured."""

    lens: LensConfig
    """The lens (and, with belt views, the belt plane)."""
    px_per_mm: float | None = None
    """Belt-plane scale, or None without belt views."""
    belt_angle_deg: float | None = None
    """Belt direction in the image, or None without belt views."""
    angle_from: str = ""
    """"motion" (the board moved between belt views) or "board" (its x axis)."""
    scale_spread: float = 0.0
    """Largest relative difference between one belt view's scale and the mean."""
    per_view_px: list[float] = field(default_factory=list)
    """RMS reprojection error of each lens view, px."""
    skipped: list[str] = field(default_factory=list)
    """Lens pictures not used, each with why."""

    def as_json(self) -> dict[str, Any]:
        """The `--json` output."""
        c = self.lens
        return {
            "px_per_mm": self.px_per_mm,
            "reprojection_px": c.reprojection_px,
            "belt_angle_deg": self.belt_angle_deg,
            "angle_from": self.angle_from or None,
            "scale_spread": self.scale_spread,
            "fx": c.fx,
            "fy": c.fy,
            "cx": c.cx,
            "cy": c.cy,
            "dist": list(c.dist),
            "width": c.width,
            "height": c.height,
            "views": c.views,
            "date": c.date,
            "skipped": self.skipped,
        }


def read_image(path: Path) -> np.ndarray:
    """A picture as grey levels; CalibrationError naming the file."""
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise CalibrationError(f"{path}: cannot read this image; give a PNG or JPEG picture")
    return image


def image_files(folder: Path) -> list[Path]:
    """The pictures in an --images folder, sorted by name."""
    if not folder.is_dir():
        raise CalibrationError(f"--images {folder}: not a folder; give the folder of board views")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CalibrationError(
            f"--images {folder}: no pictures (.png/.jpg) in it; put the board views there"
        )
    return files


def sharpness(gray: np.ndarray, points: np.ndarray | None = None) -> float:
    """Variance of the Laplacian, over the points' bounding box when given."""
    region = gray
    if points is not None and len(points):
        p = points.reshape(-1, 2)
        x0, y0 = np.floor(p.min(axis=0)).astype(int)
        x1, y1 = np.ceil(p.max(axis=0)).astype(int) + 1
        region = gray[max(0, y0) : max(y0 + 2, y1), max(0, x0) : max(x0 + 2, x1)]
    return float(cv2.Laplacian(region, cv2.CV_64F).var())


def detect_view(gray: np.ndarray, board: Any, source: str) -> View:
    """The board's corners in one picture; CalibrationError (board not found, blurred)."""
    detector = cv2.aruco.CharucoDetector(board)
    corners, ids, markers, _ = detector.detectBoard(gray)
    h, w = gray.shape[:2]
    n = 0 if ids is None else len(ids)
    if n < MIN_CORNERS:
        sharp = sharpness(gray)
        if sharp < MIN_SHARPNESS:
            raise CalibrationError(
                f"{source}: too blurred to find the board (sharpness {sharp:.0f} < "
                f"{MIN_SHARPNESS:g}); focus the lens and hold the board still"
            )
        found = 0 if markers is None else len(markers)
        raise CalibrationError(
            f"{source}: ChArUco board not found ({found} markers, {n} corners); check "
            "--squares, --dictionary and that the whole board is in view and evenly lit"
        )
    obj, img = board.matchImagePoints(corners, ids)
    sharp = sharpness(gray, img)
    if sharp < MIN_SHARPNESS:
        raise CalibrationError(
            f"{source}: too blurred (sharpness {sharp:.0f} < {MIN_SHARPNESS:g} over the "
            "board); focus the lens, light the belt better or shorten the exposure"
        )
    return View(source, (w, h), img.astype(np.float32), obj.astype(np.float32), sharp)


def _same_size(views: Sequence[View], what: str) -> tuple[int, int]:
    sizes = {v.size for v in views}
    if len(sizes) > 1:
        raise CalibrationError(
            f"{what}: pictures of different sizes {sorted(sizes)}; take every view at the "
            "camera's working resolution"
        )
    return views[0].size


def calibrate_lens(
    views: Sequence[View], skipped: Sequence[str] = ()
) -> tuple[LensConfig, list[float]]:
    """Intrinsics and distortion from the lens views (cv2.calibrateCamera)."""
    if len(views) < MIN_LENS_VIEWS:
        why = f" ({'; '.join(skipped)})" if skipped else ""
        raise CalibrationError(
            f"only {len(views)} usable board view(s){why}: need at least {MIN_LENS_VIEWS}; "
            "add pictures of the board at several angles, covering the corners of the picture"
        )
    size = _same_size(views, "--images")
    objs = [v.object_points for v in views]
    imgs = [v.image_points for v in views]
    rms, K, dist, rvecs, tvecs = cv2.calibrateCamera(objs, imgs, size, None, None)
    errors = []
    for o, i, r, t in zip(objs, imgs, rvecs, tvecs, strict=True):
        proj, _ = cv2.projectPoints(o, r, t, K, dist)
        diff = proj.reshape(-1, 2) - i.reshape(-1, 2)
        errors.append(float(np.sqrt(np.mean(np.sum(diff**2, axis=1)))))
    d = [float(x) for x in np.asarray(dist).ravel()[:5]] + [0.0] * 5
    lens = LensConfig(
        date=dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        width=size[0],
        height=size[1],
        fx=float(K[0, 0]),
        fy=float(K[1, 1]),
        cx=float(K[0, 2]),
        cy=float(K[1, 2]),
        dist=(d[0], d[1], d[2], d[3], d[4]),
        reprojection_px=round(float(rms), 4),
        views=len(views),
    )
    return lens, errors


def _jacobian(H: np.ndarray, x: float, y: float) -> np.ndarray:
    """d(image)/d(board) of the homography at board point (x, y)."""
    p = H @ np.array([x, y, 1.0])
    w = p[2]
    u, v = p[0] / w, p[1] / w
    return np.array(
        [
            [(H[0, 0] - u * H[2, 0]) / w, (H[0, 1] - u * H[2, 1]) / w],
            [(H[1, 0] - v * H[2, 0]) / w, (H[1, 1] - v * H[2, 1]) / w],
        ]
    )


def belt_plane(views: Sequence[View], lens: LensConfig) -> Result:
    """The belt's scale and direction from the belt views (see the module docstring)."""
    size = _same_size(views, "--belt")
    if size != (lens.width, lens.height):
        raise CalibrationError(
            f"--belt pictures are {size[0]}x{size[1]} but the lens was calibrated at "
            f"{lens.width}x{lens.height}; take both at the camera's working resolution"
        )
    ideal = Lens(lens, size)
    scales, centres, axes = [], [], []
    for v in views:
        pts = ideal.undistort_points(v.image_points.reshape(-1, 2) + 0.5) - 0.5
        H, _ = cv2.findHomography(v.object_points.reshape(-1, 3)[:, :2], pts, 0)
        if H is None:
            raise CalibrationError(f"{v.source}: board corners degenerate; retake the picture")
        mid = v.object_points.reshape(-1, 3)[:, :2].mean(axis=0)
        J = _jacobian(H, float(mid[0]), float(mid[1]))
        scales.append(math.sqrt(abs(float(np.linalg.det(J)))))
        c = H @ np.array([mid[0], mid[1], 1.0])
        centres.append(c[:2] / c[2])
        axes.append(math.degrees(math.atan2(J[1, 0], J[0, 0])))
    px_per_mm = float(np.mean(scales))
    spread = float(max(abs(s / px_per_mm - 1) for s in scales))
    angle, source = _belt_angle(np.array(centres), axes)
    lens = LensConfig(
        **{**lens.__dict__, "belt_px_per_mm": round(px_per_mm, 6), "belt_angle_deg": angle}
    )
    return Result(lens, round(px_per_mm, 6), angle, source, round(spread, 6))


def _belt_angle(centres: np.ndarray, axes: Sequence[float]) -> tuple[float, str]:
    """From the board's motion across views when it moved, else its x axis; degrees."""
    if len(centres) >= 2 and float(np.linalg.norm(centres[-1] - centres[0])) >= MIN_MOVE_PX:
        d = centres - centres.mean(axis=0)
        _, _, vt = np.linalg.svd(d, full_matrices=False)
        direction = vt[0] if float(np.dot(vt[0], centres[-1] - centres[0])) >= 0 else -vt[0]
        return round(math.degrees(math.atan2(direction[1], direction[0])), 3), "motion"
    a = float(np.mean(axes))
    return round(a, 3), "board"


def load_views(paths: Sequence[Path], board: Any, *, strict: bool) -> tuple[list[View], list[str]]:
    """Detect the board in every picture. `strict`: the first failure is an error (belt
    views); else failures are skipped with their reasons (lens views)."""
    views: list[View] = []
    skipped: list[str] = []
    for path in paths:
        try:
            views.append(detect_view(read_image(path), board, str(path)))
        except CalibrationError as err:
            if strict:
                raise
            skipped.append(str(err).split(";")[0])
    return views, skipped


def calibrate(
    board: BoardSpec,
    lens_images: Sequence[Path],
    belt_images: Sequence[Path],
    *,
    lens: LensConfig | None = None,
) -> Result:
    """The whole calibration. Without `lens_images` the given (earlier) `lens` is used;
    without `belt_images` only the lens is measured."""
    b = board.board()
    per_view: list[float] = []
    skipped: list[str] = []
    if lens_images:
        views, skipped = load_views(lens_images, b, strict=False)
        lens, per_view = calibrate_lens(views, skipped)
    elif lens is None or not lens.calibrated:
        raise CalibrationError(
            "no lens views: give --images DIR (the board at several angles) or --camera N; "
            "the config has no [lens] calibration to reuse"
        )
    if not belt_images:
        return Result(lens, per_view_px=per_view, skipped=skipped)
    belt_views, _ = load_views(belt_images, b, strict=True)
    out = belt_plane(belt_views, lens)
    out.per_view_px, out.skipped = per_view, skipped
    return out


def config_edits(result: Result) -> dict[str, dict[str, Any]]:
    """What goes into the config file: every [lens] key, and belt.px_per_mm."""
    c = result.lens
    edits: dict[str, dict[str, Any]] = {"lens": {k: getattr(c, k) for k in c.__dataclass_fields__}}
    if result.px_per_mm is not None:
        edits["belt"] = {"px_per_mm": result.px_per_mm}
    return edits


def capture_views(
    index: int, settings: Any, count: int, out_dir: Path, interval_s: float = 2.0
) -> list[Path]:
    """Save `count` frames of camera `index` (sorter.perception.sources.CameraSettings), one
    every `interval_s` (move the board between them), under `out_dir`; returns their paths."""
    import time

    from sorter.perception.sources import CameraSource

    out_dir.mkdir(parents=True, exist_ok=True)
    saved: list[Path] = []
    last = 0.0
    with CameraSource(index, settings) as source:
        for frame in source:
            if time.monotonic() - last < interval_s:
                continue
            last = time.monotonic()
            path = out_dir / f"view-{len(saved):02d}.png"
            cv2.imwrite(str(path), cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
            saved.append(path)
            if len(saved) >= count:
                break
    return saved
