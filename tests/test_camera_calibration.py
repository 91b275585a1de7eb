"""`sorter calibrate-camera`: ChArUco pictures rendered through a distorting lens at a known
scale give back the scale, the lens and the belt direction; the result survives a round
trip through the config file (comments kept); bad input is one line saying what to do;
the loop's undistortion of points and crops."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from sorter.cli import app
from sorter.config import example_toml, load_config, parse_config
from sorter.ops import camera_calibration as cc
from sorter.ops.config_edit import set_keys, write_keys
from sorter.perception.lens import Lens, LensConfig
from sorter.perception.vision import Detection
from tests.fakes.charuco_render import Renderer

SIZE = (800, 600)
K = np.array([[760.0, 0.0, 402.5], [0.0, 760.0, 296.0], [0.0, 0.0, 1.0]])
DIST = np.array([-0.27, 0.085, 0.0007, -0.0005, 0.0])
BELT_Z_MM = 500.0
TRUE_PX_PER_MM = 760.0 / BELT_Z_MM  # pinhole scale of a plane square to the camera
BELT_ANGLE = 4.0  # the belt runs 4 degrees off the image x axis
LENS_POSES = [  # (tilt about x, tilt about y, spin, where the centre is seen)
    (25, 0, 0, (250, 200)),
    (-25, 0, 10, (550, 200)),
    (0, 25, -10, (250, 400)),
    (0, -25, 5, (550, 400)),
    (20, 20, 0, (400, 300)),
    (-20, 15, 15, (180, 330)),
    (15, -20, -15, (620, 260)),
    (0, 0, 30, (400, 300)),
    (30, -10, 0, (400, 170)),
]


@pytest.fixture(scope="module")
def views(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Lens views in lens/, two belt views (the board carried 220 px along the belt)."""
    root = tmp_path_factory.mktemp("charuco")
    r = Renderer(cc.BoardSpec().board(), SIZE, K, DIST)
    (root / "lens").mkdir()
    for i, (tx, ty, spin, centre) in enumerate(LENS_POSES):
        rv, tv = r.tilted_pose(430.0, centre, tx, ty, spin)
        cv2.imwrite(str(root / "lens" / f"view{i}.png"), r.render(rv, tv, seed=i))
    a = math.radians(BELT_ANGLE)
    for i, s in enumerate((-110.0, 110.0)):
        centre = (400 + s * math.cos(a), 300 + s * math.sin(a))
        rv, tv = r.flat_pose(BELT_Z_MM, centre, BELT_ANGLE)
        cv2.imwrite(str(root / f"belt{i}.png"), r.render(rv, tv, seed=50 + i))
    return root


def _belt(root: Path) -> list[Path]:
    return [root / "belt0.png", root / "belt1.png"]


def test_scale_lens_and_direction_from_rendered_views(views: Path) -> None:
    res = cc.calibrate(cc.BoardSpec(), sorted((views / "lens").glob("*.png")), _belt(views))
    assert res.px_per_mm is not None and res.belt_angle_deg is not None
    assert abs(res.px_per_mm / TRUE_PX_PER_MM - 1) < 0.005  # the done-when: within 0.5%
    assert res.lens.reprojection_px < 0.5
    assert res.lens.fx == pytest.approx(760.0, rel=0.01)
    assert res.lens.dist[0] == pytest.approx(DIST[0], abs=0.03)  # barrel distortion found
    assert res.angle_from == "motion"
    assert res.belt_angle_deg == pytest.approx(BELT_ANGLE, abs=0.3)
    assert res.lens.views == len(LENS_POSES) and not res.skipped


def test_cli_json_and_config_round_trip(views: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "sorter.toml"
    cfg.write_text(example_toml(), encoding="utf-8")
    before = cfg.read_text(encoding="utf-8")
    args = ["calibrate-camera", "--images", str(views / "lens"), "--belt", *map(str, _belt(views))]
    out = CliRunner().invoke(app, [*args, "--config", str(cfg), "--json"])
    assert out.exit_code == 0, out.output
    got = json.loads(out.stdout)
    assert abs(got["px_per_mm"] / TRUE_PX_PER_MM - 1) < 0.005
    assert got["config"] == str(cfg) and got["reprojection_px"] < 0.5
    config = load_config(cfg)
    assert config.belt.px_per_mm == got["px_per_mm"]
    assert config.lens.calibrated and config.lens.fx == got["fx"]
    assert list(config.lens.dist) == got["dist"]
    assert config.lens.date == got["date"] and config.lens.reprojection_px == got["reprojection_px"]
    after = cfg.read_text(encoding="utf-8")
    # every comment line of the original is still there, in order
    comments = [ln for ln in before.splitlines() if ln.startswith("#")]
    assert [ln for ln in after.splitlines() if ln in set(comments)] == comments
    # and a lens read back from the file undistorts exactly like the measured one
    lens = Lens(config.lens, SIZE)
    p = np.array([[30.0, 40.0], [700.0, 550.0]])
    ref = cv2.undistortPoints(p.reshape(-1, 1, 2) - 0.5, lens.K, lens.dist, P=lens.K)
    assert np.allclose(lens.undistort_points(p), ref.reshape(-1, 2) + 0.5)
    # the tracker the loop builds from the file follows the measured belt direction
    from sorter.runtime.wiring import make_tracker

    ex, ey = make_tracker(config, SIZE).e
    assert config.lens.belt_angle_deg == pytest.approx(BELT_ANGLE, abs=0.3)
    assert math.degrees(math.atan2(ey, ex)) == pytest.approx(config.lens.belt_angle_deg)


def test_set_keys_keeps_comments_and_adds_a_missing_table() -> None:
    text = "# top\n[belt]\npx_per_mm = 0.5  # measured with a ruler\nspeed_mm_s = 200.0\n"
    out = set_keys(text, "belt", {"px_per_mm": 1.25})
    assert out == "# top\n[belt]\npx_per_mm = 1.25  # measured with a ruler\nspeed_mm_s = 200.0\n"
    out = set_keys(out, "lens", {"fx": 700.0, "dist": (0.1, 0.0, 0.0, 0.0, -0.2)})
    config = parse_config(out)
    assert config.lens.fx == 700.0 and config.lens.dist == (0.1, 0.0, 0.0, 0.0, -0.2)
    again = set_keys(out, "lens", {"dist": (0.2, 0.0, 0.0, 0.0, 0.0)})
    assert parse_config(again).lens.dist[0] == 0.2 and again.count("dist =") == 1


def test_write_keys_refuses_a_duplicated_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[lens]\nfx = 1.0\n", encoding="utf-8")
    write_keys(cfg, {"lens": {"fx": 2.0}})
    assert load_config(cfg).lens.fx == 2.0


def _fail(args: list[str]) -> str:
    out = CliRunner().invoke(app, ["calibrate-camera", *args, "--dry-run"])
    assert out.exit_code == 2, out.output
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert "Traceback" not in out.output
    return lines[0]


def test_too_few_views_says_to_add_more(views: Path, tmp_path: Path) -> None:
    few = tmp_path / "few"
    few.mkdir()
    for i in range(2):
        (few / f"v{i}.png").write_bytes((views / "lens" / f"view{i}.png").read_bytes())
    msg = _fail(["--images", str(few)])
    assert "only 2 usable" in msg and "at least 4" in msg and "several angles" in msg


def test_wrong_board_and_blur_and_bad_file_say_what_to_do(views: Path, tmp_path: Path) -> None:
    lens = str(views / "lens")
    msg = _fail(
        ["--images", lens, "--belt", str(views / "belt0.png"), "--dictionary", "DICT_4X4_50"]
    )
    assert "only 0 usable" in msg and "board not found" in msg
    blurred = tmp_path / "blurred.png"
    cv2.imwrite(str(blurred), cv2.GaussianBlur(cv2.imread(str(views / "belt0.png")), (0, 0), 6))
    msg = _fail(["--images", lens, "--belt", str(blurred)])
    assert str(blurred) in msg and "blurred" in msg and "focus" in msg
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a picture")
    assert "cannot read this image" in _fail(["--images", lens, "--belt", str(junk)])
    assert "unknown" in _fail(["--images", lens, "--dictionary", "DICT_9X9"])
    assert "7x5" in _fail(["--images", lens, "--squares", "seven"])
    assert "no lens views" in _fail(["--belt", str(views / "belt0.png")])


def test_lens_undistorts_points_crops_and_lengths() -> None:
    cfg = LensConfig(
        date="2026-01-01T00:00:00+00:00",
        width=800,
        height=600,
        fx=760.0,
        fy=760.0,
        cx=402.5,
        cy=296.0,
        dist=(-0.27, 0.085, 0.0007, -0.0005, 0.0),
    )
    lens = Lens(cfg, (800, 600))
    ideal = np.array([[100.0, 80.0], [400.0, 300.0], [760.0, 570.0]])
    back = lens.undistort_points(lens.distort_points(ideal))
    assert np.allclose(back, ideal, atol=1e-3)
    # a crop of the ideal image equals what the camera saw at the distorted place
    image = np.zeros((600, 800, 3), np.uint8)
    cam = lens.distort_points(np.array([[120.5, 90.5]]))[0]
    cv2.circle(image, (int(cam[0]), int(cam[1])), 3, (255, 255, 255), -1)
    crop = lens.crop(image, 120.5, 90.5, (21, 21))
    ys, xs = np.nonzero(crop[:, :, 0] > 128)
    assert abs(xs.mean() - 10) < 1.5 and abs(ys.mean() - 10) < 1.5
    # barrel distortion shrinks the corners: undistorting stretches them
    assert lens.stretch(60.0, 60.0, 45.0) > 1.05 > lens.stretch(402.0, 296.0, 0.0) > 0.99
    d = Detection(cx=60.0, cy=60.0, x=40, y=45, w=40, h=30, area=900.0, edges=("top",))
    u = lens.undistort_detection(d)
    assert u.cx < 60.0 and u.cy < 60.0 and u.w > 40 and u.edges == ("top",)
    half = Lens(cfg, (400, 300))  # the intrinsics follow the frame size
    assert np.allclose(
        half.undistort_points(ideal / 2), lens.undistort_points(ideal) / 2, atol=0.05
    )


class _Recorder:
    """A classifier stand-in that keeps every model input it is given."""

    labels = ("a", "b")
    input_size = (64, 64)

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []

    def classify(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(batch.copy())
        return np.tile(np.array([[0.9, 0.1]], np.float32), (len(batch), 1))


def _loop_inputs(
    frames: list[np.ndarray], lens: Lens | None, rim_mm: float = 0.0
) -> tuple[np.ndarray, list[float]]:
    """Run the loop over frames ([locate] rim_mm given); the model inputs and t_line."""
    from firmware_bridge.clock import VirtualClock
    from sorter.actuation.scheduling import Scheduler
    from sorter.config import Config, apply_overrides
    from sorter.monitor.audit import DecisionLog
    from sorter.monitor.status import Status
    from sorter.perception.sources import Frame
    from sorter.runtime.loop import SortingLoop
    from sorter.runtime.wiring import make_locator, make_tracker

    config = apply_overrides(Config(), {"locate.rim_mm": rim_mm})
    clf = _Recorder()
    h, w = frames[0].shape[:2]
    loop = SortingLoop(
        config,
        clf,
        make_locator(config),
        make_tracker(config, (w, h)),
        Scheduler(config, VirtualClock(), None, dry_run=True),
        DecisionLog(None),
        Status(),
        window=(120, 120),
        lens=lens,
    )
    t_lines = []
    for i, image in enumerate(frames):
        for rec in loop.process(Frame(i, i / 30.0, image), 0.0):
            t_lines.append(rec.t_line)
    return np.concatenate(clf.batches), t_lines


BARREL = LensConfig(
    date="2026-01-01T00:00:00+00:00",
    width=640,
    height=480,
    fx=420.0,
    fy=420.0,
    cx=319.5,
    cy=239.5,
    dist=(-0.3, 0.09, 0.0, 0.0, 0.0),
)


def _through(lens: Lens, images: list[np.ndarray]) -> list[np.ndarray]:
    """What the camera sees of ideal (undistorted) frames through the lens."""
    grid = np.stack(np.meshgrid(np.arange(640) + 0.5, np.arange(480) + 0.5), axis=-1)
    und = lens.undistort_points(grid.reshape(-1, 2)).reshape(480, 640, 2) - 0.5
    mx, my = und[..., 0].astype(np.float32), und[..., 1].astype(np.float32)
    return [cv2.remap(i, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE) for i in images]


def _tray_frames() -> list[np.ndarray]:
    """A cucumber in a light tray with a dark 6 px rim crossing the belt at 13.7 px a frame,
    drawn at 4x and area-averaged, then blurred a little, as a camera sees it."""
    frames = []
    for i in range(40):
        img = np.zeros((480 * 4, 640 * 4, 3), np.uint8)
        img[:] = (230, 120, 30)  # the default orange belt (RGB)
        x, y = round((70 + 13.7 * i) * 4), 150 * 4
        cv2.rectangle(img, (x - 208, y - 176), (x + 208, y + 176), (60, 70, 90), -1)  # rim
        cv2.rectangle(img, (x - 184, y - 152), (x + 184, y + 152), (205, 205, 200), -1)
        cv2.ellipse(img, (x, y), (136, 56), 15, 0, 360, (40, 170, 60), -1)
        small = cv2.resize(img, (640, 480), interpolation=cv2.INTER_AREA)
        frames.append(cv2.GaussianBlur(small, (0, 0), 0.7))
    return frames


def test_loop_fills_the_rim_through_the_lens_as_on_an_undistorted_belt() -> None:
    """A tray's rim ([locate] rim_mm = 12 at 0.5 px/mm: 6 px) through a lens: the loop's
    crops are the ones the undistorted belt gives, rim filled in (the belt's corners and the
    rim inpainted from the tray's inside). Through a lens that does not distort they are
    the very same; through a barrel lens close to them, and far from the unfilled ones."""
    lens = Lens(BARREL, (640, 480))
    flat = Lens(dataclasses.replace(BARREL, dist=(0.0,) * 5), (640, 480))
    ideal = _tray_frames()
    filled, _ = _loop_inputs(ideal, None, rim_mm=12.0)
    unfilled, _ = _loop_inputs(ideal, None)
    same, _ = _loop_inputs(ideal, flat, rim_mm=12.0)
    got, _ = _loop_inputs(_through(lens, ideal), lens, rim_mm=12.0)
    n = min(len(filled), len(unfilled), len(same), len(got))
    assert n >= 5

    def diff(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a[:n].astype(float) - b[:n]).mean())

    fill_effect, through = diff(unfilled, filled), diff(got, filled)
    print(f"mean |lens crop - filled crop| {through:.2f}; the fill changes {fill_effect:.2f}")
    assert fill_effect > 10.0  # the rim and the belt's corners are in the window
    assert diff(same, filled) < 0.01
    assert through < 0.25 * fill_effect, (through, fill_effect)


def test_loop_crops_the_undistorted_image(tmp_path: Path) -> None:
    """A green item crossing an orange belt, seen through a barrel lens: with the lens the
    loop's crops are the crops of the undistorted belt; without, they are not."""
    cfg = LensConfig(
        date="2026-01-01T00:00:00+00:00",
        width=640,
        height=480,
        fx=420.0,
        fy=420.0,
        cx=319.5,
        cy=239.5,
        dist=(-0.3, 0.09, 0.0, 0.0, 0.0),
    )
    lens = Lens(cfg, (640, 480))
    ideal, seen = [], []
    grid = np.stack(np.meshgrid(np.arange(640) + 0.5, np.arange(480) + 0.5), axis=-1)
    und = lens.undistort_points(grid.reshape(-1, 2)).reshape(480, 640, 2) - 0.5
    for i in range(40):
        img = np.zeros((480, 640, 3), np.uint8)
        img[:] = (230, 120, 30)  # the default orange belt (RGB)
        x = 60 + 14 * i
        cv2.ellipse(img, (x, 130), (38, 16), 15, 0, 360, (40, 170, 60), -1)
        ideal.append(img)
        mx, my = und[..., 0].astype(np.float32), und[..., 1].astype(np.float32)
        seen.append(cv2.remap(img, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE))
    want, t_ideal = _loop_inputs(ideal, None)
    got, t_lens = _loop_inputs(seen, lens)
    raw, _ = _loop_inputs(seen, None)
    assert len(t_lens) == len(t_ideal) == 1
    assert abs(t_lens[0] - t_ideal[0]) < 0.01
    n = min(len(want), len(got), len(raw))
    diff_lens = np.abs(got[:n].astype(float) - want[:n]).mean()
    diff_raw = np.abs(raw[:n].astype(float) - want[:n]).mean()
    print(f"mean |crop - undistorted crop|: with lens {diff_lens:.2f}, without {diff_raw:.2f}")
    assert diff_lens < 0.5 * diff_raw, (diff_lens, diff_raw)
