"""Crop-centre error against the simulator's per-frame truth, refined vs half-scale box.

    python -m benchmarks.crop_centre [--data data/c9] [--count 20] [--work DIR]

For a few belts (`sorter simulate-belt`, CUCUMBER-9 pictures, several codecs, carriers,
whole-pixel and fractional positions) every full view the colour locator finds is matched
to the truth centre of that frame (`items[].centres` in the truth file), and the distance
of the crop's centre from it is measured two ways: the crop `[locate] refine = true` cuts
(sorter.perception.measure) and the whole-pixel window around the half-scale bounding
box (`refine = false`). Prints mean, 95th percentile and mean signed x / y offsets (the
bias), full-resolution pixels; pixel i covers [i, i+1) on both sides.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import typer

from sorter.perception.measure import measure
from sorter.perception.sources import VideoSource
from sorter.perception.vision import Locator, LocatorConfig
from sorter.replay.belt_sim import BeltSimConfig, simulate_belt
from sorter.replay.realism import Realism

BELTS: dict[str, dict[str, Any]] = {
    "mp4v, whole-pixel positions": {},
    "mp4v, fractional positions": {"subpixel": True},
    "mp4v, fractional, 600 px/s": {"subpixel": True, "speed_px_s": 600.0},
    "MJPG, fractional": {"subpixel": True, "codec": "MJPG"},
    "trays, MJPG, fractional": {
        "subpixel": True,
        "codec": "MJPG",
        "realism": Realism(carrier="tray", rim_px=6.0),
    },
    "cups, motion blur, vignetting": {
        "subpixel": True,
        "realism": Realism(carrier="cup", rim_px=5.0, exposure_ms=1.0, vignetting=0.25),
    },
}

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def errors(video: Path, truth: dict[str, Any]) -> dict[str, np.ndarray]:
    """(dx, dy) of the refined and of the box crop centre from the truth, per full view."""
    win_w, win_h = truth["window_px"]
    locator = Locator(LocatorConfig(min_area_px=0.3 * win_w * win_h))
    by_frame: dict[int, list[tuple[float, float]]] = {}
    for item in truth["items"]:
        for k, x, y in item["centres"]:
            by_frame.setdefault(int(k), []).append((x, y))
    out: dict[str, list[tuple[float, float]]] = {"refined": [], "box": []}
    with VideoSource(video) as src:
        for frame in src:
            near = by_frame.get(frame.index)
            if not near:
                continue
            for d in locator.locate(frame.image):
                if d.touches_edge:
                    continue
                tx, ty = min(near, key=lambda c: math.hypot(c[0] - d.cx, c[1] - d.cy))
                m = measure(frame.image, d, locator)
                out["refined"].append((m.cx - tx, m.cy - ty))
                bx = math.floor(d.cx - win_w / 2 + 0.5) + win_w / 2
                by = math.floor(d.cy - win_h / 2 + 0.5) + win_h / 2
                out["box"].append((bx - tx, by - ty))
    return {k: np.array(v) for k, v in out.items()}


def _row(name: str, how: str, e: np.ndarray) -> str:
    dist = np.hypot(e[:, 0], e[:, 1])
    return (
        f"| {name} | {how} | {len(e)} | {dist.mean():.3f} | {np.percentile(dist, 95):.3f} | "
        f"{e[:, 0].mean():+.3f} | {e[:, 1].mean():+.3f} |"
    )


@app.command()
def main(
    data: Path = typer.Option(Path("data/c9"), help="Folder-per-grade tree (CUCUMBER-9)."),
    count: int = typer.Option(20, help="Items per belt."),
    work: Path = typer.Option(Path(tempfile.gettempdir()) / "crop-centre", help="Scratch."),
) -> None:
    """Render the belts and print the table."""
    work.mkdir(parents=True, exist_ok=True)
    print("| belt | crop centre | views | mean error px | p95 px | mean dx | mean dy |")
    print("|---|---|---|---|---|---|---|")
    for i, (name, opts) in enumerate(BELTS.items()):
        cfg = BeltSimConfig(count=count, seed=3 + i, **opts)
        suffix = ".avi" if cfg.codec == "MJPG" else ".mp4"
        res = simulate_belt(data, work / f"belt{i}{suffix}", cfg)
        truth = json.loads(res.truth.read_text(encoding="utf-8"))
        e = errors(res.video, truth)
        print(_row(name, "refined (measure)", e["refined"]), flush=True)
        print(_row(name, "half-scale box", e["box"]), flush=True)


if __name__ == "__main__":
    app()
