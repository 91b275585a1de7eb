"""Figure 9: peak resident memory of `sorter run` replaying a belt.

Measured with os.wait4 on the `sorter run --fast --serial sim://` subprocess (the kernel's
ru_maxrss for that process alone; no psutil). Baseline: a Python process that only imports
what the loop runs on (numpy, OpenCV, LiteRT) and loads the same model: the floor the loop
adds to.
"""

from __future__ import annotations

from benchmarks import loop
from benchmarks.core import Context, Row, ratio

NUMBER = 9
TITLE = "Memory (peak RSS of sorter run)"

FLOOR = """
import sys
import numpy, cv2
from sorter.grading.classifier import Classifier
Classifier(model_path=sys.argv[1], num_threads=1)
"""


def missing() -> str | None:
    return loop.loop_missing()


def run(ctx: Context) -> list[Row]:
    count = 4 if ctx.smoke else 80
    video, _truth = loop.make_belt(ctx, "throughput", items_per_s=4.0, count=count)
    _summary, proc = loop.sorter_run(ctx, video, mode="--fast", serial="sim://", tag="fig9")
    floor = loop.run_measured([ctx.python, "-c", FLOOR, str(loop.model_path(ctx))], timeout=120)
    if floor.returncode != 0:
        raise RuntimeError(f"baseline process failed: {floor.stderr.strip()[-300:]}")
    bare = loop.run_measured([ctx.python, "-c", "pass"], timeout=60)
    loop_mib = proc.maxrss_kib / 1024
    floor_mib = floor.maxrss_kib / 1024
    bare_mib = bare.maxrss_kib / 1024
    return [
        Row(
            measure="sorter run --fast (sim://), 640x480 replay",
            value=f"{loop_mib:.0f} MiB",
            baseline="python + numpy + OpenCV + LiteRT + model loaded",
            baseline_value=f"{floor_mib:.0f} MiB",
            ratio=ratio(loop_mib, floor_mib),
            note=f"bare python {bare_mib:.0f} MiB; a Pi 4 has 1-8 GiB",
        )
    ]
