"""Figure 5: loop throughput of `sorter run --fast` on a generated 640x480 belt.

Frames per second through the whole loop (decode, locate, track, classify, decide, log)
against frames per second of decoding the same video alone: the ceiling for replay. The
per-stage split comes from the pipeline's own timings in `sorter run --json`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import cv2

from benchmarks import loop
from benchmarks.core import Context, Row, fmt_ms, ratio

NUMBER = 5
TITLE = "Loop throughput (--fast replay)"

log = logging.getLogger(__name__)

STAGES = ("decode", "locate", "track", "classify", "decide", "log")


def missing() -> str | None:
    return loop.loop_missing()


def decode_fps(video: Path) -> tuple[float, int]:
    """Frames/s of decoding `video` alone through the loop's own source (else OpenCV)."""
    t0 = time.perf_counter()
    n = 0
    try:
        from sorter.perception.sources import open_source

        with open_source(video=str(video)) as src:
            for _frame in src:
                n += 1
    except ImportError:
        cap = cv2.VideoCapture(str(video))
        try:
            while True:
                ok, img = cap.read()
                if not ok:
                    break
                cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
                n += 1
        finally:
            cap.release()
    wall = time.perf_counter() - t0
    return (n / wall if wall > 0 else 0.0), n


def stage_rows(summary: dict[str, Any], frames: int) -> list[Row]:
    """One row per pipeline stage: time per frame and share of the measured stage time."""
    stages = summary.get("stages") or {}
    if not isinstance(stages, dict) or not stages or frames <= 0:
        return [Row("per-stage split", "not available: sorter run --json has no 'stages'")]
    total = sum(float(v) for v in stages.values() if isinstance(v, int | float))
    rows = []
    names = [s for s in STAGES if s in stages] + [s for s in stages if s not in STAGES]
    for name in names:
        sec = float(stages[name])
        rows.append(
            Row(
                measure=f"stage {name}",
                value=f"{fmt_ms(sec / frames)}/frame",
                baseline="all stages",
                baseline_value=f"{fmt_ms(total / frames)}/frame",
                ratio=f"{100 * sec / total:.1f}%" if total > 0 else "-",
            )
        )
    return rows


def run(ctx: Context) -> list[Row]:
    count = 4 if ctx.smoke else 80
    video, _truth = loop.make_belt(ctx, "throughput", items_per_s=4.0, count=count)
    dec_fps, n_frames = decode_fps(video)
    summary, proc = loop.sorter_run(ctx, video, mode="--fast", serial="sim://", tag="fig5")
    ctx.cache["fig5_proc"] = proc
    frames = int(summary.get("frames") or summary.get("frames_processed") or n_frames)
    wall = summary.get("wall_s")
    loop_wall = float(wall) if isinstance(wall, int | float) and wall > 0 else proc.wall_s
    where = "the loop's own wall time" if wall else "process wall time incl. start-up"
    loop_fps = frames / loop_wall if loop_wall > 0 else 0.0
    rows = [
        Row(
            measure=f"whole loop, {frames} frames 640x480",
            value=f"{loop_fps:.1f} frames/s",
            baseline="decoding the same video alone",
            baseline_value=f"{dec_fps:.1f} frames/s",
            ratio=ratio(loop_fps, dec_fps),
            note=f"{where}; process total {proc.wall_s:.1f} s",
        )
    ]
    rows += stage_rows(summary, frames)
    stages = summary.get("stages") or {}
    if isinstance(stages, dict) and "decode" not in stages and dec_fps > 0:
        rows.append(
            Row(
                measure="stage decode (measured alone)",
                value=f"{fmt_ms(1.0 / dec_fps)}/frame",
                note="the pipeline decodes on its capture thread, outside the stage timings",
            )
        )
    return rows
