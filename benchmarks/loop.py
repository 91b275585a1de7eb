"""Shared by the loop figures (5, 6, 7, 9): generated belts, the model, and `sorter run`.

Everything goes through the real command lines (`sorter simulate-belt`, `sorter run`) in
subprocesses, so the figures measure what a user runs, and `os.wait4` gives each run's own
peak resident memory.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.core import REPO, Context, NotAvailable, need_modules

log = logging.getLogger(__name__)

SIZE = (640, 480)
"""Frame size of generated belts (width, height), as the issue asks."""


def loop_missing() -> str | None:
    """Why `sorter run` cannot be benchmarked yet (None when it can)."""
    return need_modules(
        "sorter.runtime.runner",
        "sorter.commands.run",
        "sorter.replay.belt_sim",
        "sorter.grading.classifier",
    )


@dataclass
class ProcResult:
    """A finished subprocess: output, exit status, wall time and its own peak RSS."""

    returncode: int
    """Exit status."""
    stdout: str
    """Standard output."""
    stderr: str
    """Standard error."""
    wall_s: float
    """Wall time from start to exit."""
    maxrss_kib: int
    """Peak resident set size of the child (ru_maxrss, KiB on Linux)."""


def run_measured(cmd: list[str], *, timeout: float, cwd: Path | None = None) -> ProcResult:
    """Run `cmd` capturing its output; its peak RSS comes from the benchmarks.rss wrapper."""
    with tempfile.TemporaryDirectory(prefix="bench-proc-") as tmp:
        rss_file = Path(tmp) / "rss.json"
        wrapped = [sys.executable, "-m", "benchmarks.rss", str(rss_file), "--", *cmd]
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            wrapped,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd or REPO,
            start_new_session=True,
        )
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as err:
            os.killpg(proc.pid, signal.SIGKILL)  # the wrapper and the command it started
            proc.communicate()
            raise RuntimeError(f"{' '.join(cmd[:5])}... did not finish in {timeout:.0f} s") from err
        wall = time.perf_counter() - t0
        maxrss = 0
        if rss_file.exists():
            maxrss = int(json.loads(rss_file.read_text(encoding="utf-8"))["maxrss_kib"])
    return ProcResult(
        proc.returncode,
        stdout.decode("utf-8", "replace"),
        stderr.decode("utf-8", "replace"),
        wall,
        maxrss,
    )


def c9_tree(ctx: Context) -> Path:
    """CUCUMBER-9 imported as a folder-per-grade tree (once per run)."""
    if "c9_tree" not in ctx.cache:
        from training.cucumber9 import import_cucumber9

        dest = ctx.workdir / "c9"
        import_cucumber9(ctx.data_dir, dest)
        ctx.cache["c9_tree"] = dest
    path: Path = ctx.cache["c9_tree"]
    return path


def model_path(ctx: Context) -> Path:
    """The int8 model the loop runs: the bundled default, else one exported in this run."""
    if "loop_model" in ctx.cache:
        cached: Path = ctx.cache["loop_model"]
        return cached
    bundled = sorted((REPO / "models").glob("*.tflite"))
    int8 = [p for p in bundled if "int8" in p.name] or bundled
    if int8:
        path = int8[0]
        ctx.note(f"Loop figures (5-7, 9) use the bundled model {path.relative_to(REPO)}.")
    else:
        from benchmarks import models

        why = models.training_missing() or models.export_missing()
        if why:
            raise NotAvailable(f"no bundled model in models/, and cannot make one: {why}")
        path = models.exported(ctx, models.archs()[0], 0, quantize=True)
        ctx.note(
            "No bundled model in models/: the loop figures use the default-arch int8 model "
            "trained and exported in this run (seed 0)."
        )
    ctx.cache["loop_model"] = path
    return path


def belt_images(ctx: Context) -> Path | None:
    """The images belts are made of: the validation split of this run's fixed split.

    With seed 0 it is also the shipped model's validation split (sorter-train's default
    split draws the same images), so the loop grades items the model did not train on.
    """
    if "belt_images" not in ctx.cache:
        from benchmarks import models

        path: Path | None = None
        if models.training_missing() is None:
            tree = models.split_tree(ctx)
            rels = sorted(f"{p.parent.name}/{p.name}" for p in tree.glob("val/*/*"))
            path = ctx.workdir / "belt-images.txt"
            path.write_text("\n".join(rels) + "\n", encoding="utf-8")
            ctx.note(
                f"Generated belts (figures 5-7, 9) use the {len(rels)} validation-split images "
                "(never trained on by the shipped model), repeated as needed."
            )
        ctx.cache["belt_images"] = path
    cached: Path | None = ctx.cache["belt_images"]
    return cached


SPACING_PX = 160.0
"""Centre-to-centre item spacing of generated belts (the item window is 120 px)."""


def make_belt(ctx: Context, name: str, *, items_per_s: float, count: int) -> tuple[Path, Path]:
    """Generate a 640x480 belt video + truth JSON with sorter.replay.belt_sim (cached per name).

    Items are SPACING_PX apart, so the belt speed is items_per_s * SPACING_PX px/s.
    """
    key = f"belt:{name}"
    if key in ctx.cache:
        cached: tuple[Path, Path] = ctx.cache[key]
        return cached
    from sorter.replay.belt_sim import BeltSimConfig, simulate_belt

    out = ctx.workdir / "belts" / f"{name}.mp4"
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg = BeltSimConfig(
        size=SIZE,
        speed_px_s=items_per_s * SPACING_PX,
        spacing_px=SPACING_PX,
        count=count,
        seed=ctx.seed,
        lead_in_s=0.5,
    )
    cfg.split_file = belt_images(ctx)
    res = simulate_belt(c9_tree(ctx), out, cfg)
    ctx.cache[key] = (Path(res.video), Path(res.truth))
    result: tuple[Path, Path] = ctx.cache[key]
    return result


def parse_json_summary(stdout: str) -> dict[str, Any]:
    """The last JSON object in `stdout` (the whole output, or its last top-level object)."""
    text = stdout.strip()
    try:
        value = json.loads(text)
        if isinstance(value, dict):
            return value
    except json.JSONDecodeError:
        pass
    decoder = json.JSONDecoder()
    found: dict[str, Any] | None = None
    i = text.find("{")
    while i != -1:
        try:
            value, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            i = text.find("{", i + 1)
            continue
        if isinstance(value, dict):
            found = value
        i = text.find("{", end)
    if found is None:
        raise RuntimeError(f"sorter run printed no JSON summary: {text[-300:]!r}")
    return found


def sorter_run(
    ctx: Context,
    video: Path,
    *,
    mode: str = "--fast",
    serial: str = "sim://",
    truth: Path | None = None,
    tag: str = "run",
    timeout: float = 600,
    thresholds_off: bool = False,
) -> tuple[dict[str, Any], ProcResult]:
    """`sorter run --video ... --json` in a subprocess; its JSON summary and process figures."""
    outdir = ctx.workdir / "runs" / tag
    outdir.mkdir(parents=True, exist_ok=True)
    cmd = [
        ctx.python,
        "-m",
        "sorter.cli",
        "run",
        "--video",
        str(video),
        mode,
        "--serial",
        serial,
        "--model",
        str(model_path(ctx)),
        "--db",
        str(outdir / "decisions.db"),
        "--log",
        str(outdir / "decisions.jsonl"),
        "--json",
    ]
    config = loop_config(ctx, truth or video.with_suffix(".json"), thresholds_off=thresholds_off)
    if config is not None:
        cmd += ["--config", str(config)]
    if truth is not None:
        cmd += ["--truth", str(truth)]
    res = run_measured(cmd, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"sorter run exited {res.returncode}: {res.stderr.strip()[-400:]}")
    return parse_json_summary(res.stdout), res


def loop_config(ctx: Context, truth: Path, *, thresholds_off: bool = False) -> Path | None:
    """A config file matching the generated belt's geometry (camera scale, speed, line).

    `thresholds_off`: confidence and margin 0, so every item goes to its top grade's bin
    (bins then compare directly with the classifier's top-1 accuracy).
    """
    if not truth.exists():
        return None
    t = json.loads(truth.read_text(encoding="utf-8"))
    px_per_mm = float(t.get("px_per_mm", 0) or 0)
    speed = float(t.get("speed_px_s", 0) or 0)
    if px_per_mm <= 0 or speed <= 0:
        return None
    width = float(t.get("size", SIZE)[0])
    line = float(t.get("line_x", width / 2)) / width
    path = ctx.workdir / f"config-{truth.stem}{'-nothresh' if thresholds_off else ''}.toml"
    thresholds = ["[thresholds]", "confidence = 0.0", "margin = 0.0", ""] if thresholds_off else []
    path.write_text(
        "\n".join(
            [
                "[belt]",
                f"px_per_mm = {px_per_mm:.6g}",
                f"speed_mm_s = {speed / px_per_mm:.6g}",
                f"decision_line = {line:.6g}",
                "",
                "[logging]",
                f'db = "{ctx.workdir / "decisions.db"}"',
                "",
                *thresholds,
            ]
        ),
        encoding="utf-8",
    )
    return path
