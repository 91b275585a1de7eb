"""Where the cup and bare belts lose their points: one factor at a time, offline.

    python -m benchmarks.carrier_factors [--data data/c9] [--model M.tflite ...]

No video: the belt suite's hold-out (benchmarks/belt_holdout.txt, each image once) is
rendered through the simulator's carriers and camera (sorter.replay.realism, belt_sim:
the cups-blur and bare belts of benchmarks/belt_suite.py, seed 2026, 1600 px/s, camera
noise on, no codec), one frame per item at its line crossing; the window the loop takes
(`sorter.perception.measure.item_view`'s steps: full-resolution blob, sub-pixel centre,
`[locate] rim_mm` fill) and views that change one thing at a time (the picture at camera
scale, its corners replaced, the true centre, the exact opening) are classified with the
model (LiteRT). The fill of the cup's corners is also run as it was before the
green-carrier fix (every excess-green pixel kept). The bare belt's views: the cut-out
by excess green alone (the simulator before it kept the produce's dark edge) and as it
is now, on the model's training background; the loop's window with `[locate] surround`
keep and model. And on the clean images themselves (no simulator), the corners outside
the inscribed circle replaced. These are diagnostics on a test set: nothing is chosen with them.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import typer

from benchmarks import machine
from benchmarks.belt_suite import HOLDOUT, SEED, SPACING_PX, holdout
from sorter.errors import ConfigError
from sorter.grading.classifier import Classifier
from sorter.perception.measure import crop_at, fill_rim, item_view, measure_blob, produce_mask
from sorter.perception.preprocess import load_image
from sorter.perception.surround import Background, model_background
from sorter.perception.vision import Locator, LocatorConfig
from sorter.replay.belt_sim import BeltSimConfig, list_images, prepare, render_frame, true_centre
from sorter.replay.realism import COLOURS, Realism, item_sprite

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
Views = dict[str, list[np.ndarray]]


def _config(realism: Realism) -> BeltSimConfig:
    return BeltSimConfig(
        seed=SEED,
        subpixel=True,
        split_file=HOLDOUT,
        speed_px_s=10 * SPACING_PX,
        spacing_px=SPACING_PX,
        realism=realism,
    )


def _fill_before(crop: np.ndarray, interior: np.ndarray) -> np.ndarray:
    """The rim fill before the green-carrier fix: every excess-green pixel kept."""
    produce = produce_mask(crop, np.full(crop.shape[:2], 255, np.uint8), 20.0) > 0
    hole = (~interior & ~produce).astype(np.uint8)
    return cv2.inpaint(crop, hole, 3, cv2.INPAINT_TELEA) if hole.any() else crop


def cup_views(data: Path) -> tuple[Views, list[str], list[str]]:
    """The cups-blur belt's views per item, the labels and the cup colours."""
    cfg = _config(Realism(carrier="cup", rim_px=5.0, exposure_ms=1.0, vignetting=0.25))
    texture, tiles, items, rng = prepare(data, cfg)
    locator = Locator(LocatorConfig())
    win = cfg.window_px
    yy, xx = np.mgrid[0 : win[1], 0 : win[0]] + 0.5
    opening = np.hypot(xx - win[0] / 2, yy - win[1] / 2) <= min(win) / 2
    views: Views = {}

    def add(name: str, view: np.ndarray) -> None:
        views.setdefault(name, []).append(view)

    for it in items:
        img = load_image(data / it.source)
        pic = cv2.resize(img, win, interpolation=cv2.INTER_LINEAR)
        add("clean image (model size)", img)
        add("picture at camera scale (resampled up and down)", pic)
        colour = np.array(COLOURS[it.carrier_colour], np.float32)
        cut = np.where(opening[:, :, None], pic, colour).astype(np.uint8)
        add("picture, corners = cup colour", cut)
        add("picture, corners filled from the exact opening", fill_rim(cut, opening))
        frame = render_frame(it.t_line, texture, tiles, items, cfg, rng)
        tx, ty = true_centre(it, it.t_line, cfg)
        add(
            "belt, true centre, exact opening filled",
            fill_rim(crop_at(frame, tx, ty, win), opening),
        )
        det = min(locator.locate(frame), key=lambda d: abs(d.cx - tx) + abs(d.cy - ty))
        m, blob, (x0, y0) = measure_blob(frame, det, locator)
        crop = crop_at(frame, m.cx, m.cy, win)
        add("loop window, rim_mm 0 (no fill)", crop)
        if blob is not None:
            k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (11, 11))  # the 5 px rim
            shrunk = cv2.erode(blob, k, borderType=cv2.BORDER_CONSTANT, borderValue=0)
            centre = (m.cx - x0 - 0.5, m.cy - y0 - 0.5)
            inside = cv2.getRectSubPix(shrunk.astype(np.float32), win, centre) > 127
            add("loop window, rim fill before the green-carrier fix", _fill_before(crop, inside))
        else:
            add("loop window, rim fill before the green-carrier fix", crop)
        add(
            "loop window, rim_mm = the rim (as the loop)",
            item_view(frame, det, locator, win, rim_px=5.0)[0],
        )
        box = fill_rim(crop_at(frame, det.cx, det.cy, win), opening)
        add("half-scale box centre, exact opening filled", box)
    return views, [it.label for it in items], [it.carrier_colour for it in items]


def corner_views(data: Path) -> tuple[Views, list[str]]:
    """The clean model-size images with the corners outside their inscribed circle
    replaced: inpainted from inside, or the picture's own corners blurred."""
    views: Views = {}
    labels = []
    for rel in holdout(data):
        img = load_image(data / rel)
        labels.append(Path(rel).parent.name)
        h, w = img.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w] + 0.5
        circle = np.hypot(xx - w / 2, yy - h / 2) <= min(h, w) / 2
        views.setdefault("clean image", []).append(img)
        views.setdefault("corners inpainted from inside (fill_rim)", []).append(
            fill_rim(img, circle)
        )
        for sigma in (1.0, 4.0):
            own = cv2.GaussianBlur(img, (0, 0), sigma * w / 32)
            name = f"corners = its own corners blurred, sigma {sigma:g} px at 32 px"
            views.setdefault(name, []).append(np.where(circle[:, :, None], img, own))
    return views, labels


def _cut_out(pic: np.ndarray, alpha: np.ndarray, bg: np.ndarray) -> np.ndarray:
    a = alpha[:, :, None]
    return np.clip(pic * a + bg * (1 - a) + 0.5, 0, 255).astype(np.uint8)


def _alpha_before(pic: np.ndarray) -> np.ndarray:
    """The bare belt's cut-out before it kept the produce's dark edge (excess green only)."""
    exg = 2 * pic[:, :, 1] - pic[:, :, 0] - pic[:, :, 2]
    mask = (exg > 20.0).astype(np.uint8) * 255
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask)
    if n > 1:
        mask = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8) * 255
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    return np.asarray(cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), 0.8))


def bare_views(data: Path, background: Background) -> tuple[Views, list[str]]:
    """The bare belt's views per item and the labels."""
    cfg = _config(Realism(carrier="bare"))
    texture, tiles, items, rng = prepare(data, cfg)
    locator = Locator(LocatorConfig(min_area_px=300.0))
    win = cfg.window_px
    bg = background.image(win)
    views: Views = {}
    for it in items:
        pic = cv2.resize(load_image(data / it.source), win, interpolation=cv2.INTER_LINEAR)
        pic_f = pic.astype(np.float32)
        frame = render_frame(it.t_line, texture, tiles, items, cfg, rng)
        tx, ty = true_centre(it, it.t_line, cfg)
        det = min(locator.locate(frame), key=lambda d: abs(d.cx - tx) + abs(d.cy - ty))
        now = item_sprite(pic_f, cfg.realism, "black")[:, :, 3]
        before = _cut_out(pic_f, _alpha_before(pic_f), bg)
        filled = item_view(frame, det, locator, win, background=background)[0]
        for name, view in (
            ("picture at camera scale", pic),
            ("cut-out by excess green alone, on the model's background", before),
            (
                "cut-out with its dark edge (now), on the model's background",
                _cut_out(pic_f, now, bg),
            ),
            ("loop window, surround keep", item_view(frame, det, locator, win)[0]),
            ("loop window, surround model", filled),
        ):
            views.setdefault(name, []).append(view)
    return views, [it.label for it in items]


def _scores(clf: Classifier, views: Views, labels: list[str]) -> dict[str, np.ndarray]:
    truth = np.array(labels)
    out = {}
    for name, crops in views.items():
        top = clf.classify_crops(crops).argmax(axis=1)
        out[name] = np.array([clf.labels[i] for i in top]) == truth
    return out


def _background(clf: Classifier, data: Path) -> Background:
    """The model's recorded background, else that of every image outside the hold-out."""
    try:
        bg = model_background("model", clf)
    except ConfigError:  # a model exported before the background was recorded
        bg = None
    if bg is not None:
        return bg
    held = set(holdout(data))
    return Background.of_images(
        [load_image(data / r) for r, _ in list_images(data) if r not in held]
    )


def _table(title: str, ok: dict[str, np.ndarray], groups: list[str] | None) -> str:
    names = sorted(set(groups)) if groups else []
    head = f"| {title} | accuracy |" + "".join(f" {g} |" for g in names)
    lines = [head, "|---|---|" + "---|" * len(names)]
    g = np.array(groups) if groups else None
    for view, hit in ok.items():
        per = "".join(f" {100 * hit[g == n].mean():.0f} |" for n in names) if g is not None else ""
        lines.append(f"| {view} | {100 * hit.mean():.1f}% |{per}")
    return "\n".join(lines)


@app.command()
def main(
    data: Path = typer.Option(Path("data/c9"), help="CUCUMBER-9 as a folder-per-grade tree."),
    model: list[Path] = typer.Option(..., help="Model(s) to classify with."),
    out: Path | None = typer.Option(None, help="Write the tables (markdown) here too."),
) -> None:
    """Print the cup and bare belts' factor tables for each model."""
    holdout(data)
    t0 = time.perf_counter()
    cups, labels, colours = cup_views(data)
    parts = []
    for m in model:
        clf = Classifier(model_path=m, num_threads=1)
        bare, bare_labels = bare_views(data, _background(clf, data))
        corners, corner_labels = corner_views(data)
        parts.append(
            f"### {m.name}\n\n"
            + _table("cups-blur view (per cup colour, %)", _scores(clf, cups, labels), colours)
        )
        parts.append(_table("clean image, corners", _scores(clf, corners, corner_labels), None))
        parts.append(_table("bare view", _scores(clf, bare, bare_labels), None))
    info = machine.describe()
    doc = (
        f"# Carrier factors ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n\n"
        f"Machine: {info['cpu']}, {info['cores']} cores, Python {info['python']}; "
        f"{len(labels)} hold-out items, {time.perf_counter() - t0:.0f} s.\n\n"
        + "\n\n".join(parts)
        + "\n"
    )
    print(doc)
    if out is not None:
        out.write_text(doc, encoding="utf-8")


if __name__ == "__main__":
    app()
