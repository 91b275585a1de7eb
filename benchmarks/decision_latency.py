"""Figure 6: decision latency, from a frame's capture time to its SORT command leaving the link.

`sorter run --realtime --serial sim://` replays a short generated belt paced at its frame
rate (so capture times are real monotonic times), and the pipeline records, for each decided
item, the time from the capture of the frame that decided it to the SORT being written.
Baseline: the frame interval of the same video (a loop that keeps up decides within it).
"""

from __future__ import annotations

import json
import math
from typing import Any

from benchmarks import loop
from benchmarks.core import Context, Row, fmt_ms, ratio

NUMBER = 6
TITLE = "Decision latency (frame -> SORT on the link)"


def missing() -> str | None:
    return loop.loop_missing()


def latency_stats(summary: dict[str, Any]) -> dict[str, float]:
    """p50/p99/max in seconds from the summary (keys `latency_s`, or `latency` in s/ms)."""
    for key, scale in (("latency_s", 1.0), ("latency", 1.0), ("latency_ms", 1e-3)):
        value = summary.get(key)
        if isinstance(value, dict) and "p50" in value:
            keys = [k for k in ("p50", "p99", "max") if value.get(k) is not None]
            return {k: float(value[k]) * scale for k in keys}
    status = summary.get("status")
    if isinstance(status, dict):
        return latency_stats(status)
    raise RuntimeError(
        "sorter run --json gives no frame->command latency (expected 'latency_s': "
        f"{{p50, p99, max}}); keys were {sorted(summary)}"
    )


def run(ctx: Context) -> list[Row]:
    count = 3 if ctx.smoke else 40
    video, truth = loop.make_belt(ctx, "latency", items_per_s=4.0, count=count)
    fps = float(json.loads(truth.read_text(encoding="utf-8")).get("fps", 30.0))
    summary, _proc = loop.sorter_run(ctx, video, mode="--realtime", serial="sim://", tag="fig6")
    stats = latency_stats(summary)
    frame_s = 1.0 / fps
    n = summary.get("latency_s", {}).get("n") if isinstance(summary.get("latency_s"), dict) else ""
    rows = []
    for key in ("p50", "p99", "max"):
        value = stats.get(key, math.nan)
        rows.append(
            Row(
                measure=f"latency {key}" + (f" (n={n})" if n and key == "p50" else ""),
                value=fmt_ms(value),
                baseline=f"frame interval at {fps:g} fps",
                baseline_value=fmt_ms(frame_s),
                ratio=ratio(value, frame_s),
                note="realtime replay against sim://" if key == "p50" else "",
            )
        )
    return rows
