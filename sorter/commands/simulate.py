"""`sorter simulate-belt` (a belt video with its truth) and `sorter calibrate-belt` (learn
the empty belt). Thin: the work is in sorter.replay.belt_sim and sorter.perception.vision."""

from __future__ import annotations

import json
import logging
from itertools import islice
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from sorter.errors import ConfigError, SorterError, SourceError
from sorter.perception.sources import CameraSettings, open_source
from sorter.perception.vision import BackgroundModel, summarize
from sorter.replay.belt_sim import BeltSimConfig, list_images, simulate_belt
from sorter.replay.realism import Realism

log = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    """Add `simulate-belt` and `calibrate-belt` to the `sorter` command line."""
    app.command("simulate-belt")(simulate_belt_cmd)
    app.command("calibrate-belt")(calibrate_belt_cmd)


def _fail(err: SorterError) -> typer.Exit:
    typer.echo(f"error: {err}", err=True)
    return typer.Exit(err.exit_code)


def parse_size(text: str) -> tuple[int, int]:
    """ "640x480" -> (640, 480); ConfigError for anything else."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise ConfigError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 640x480") from err
    if w <= 0 or h <= 0:
        raise ConfigError(f"--size {text!r}: width and height must be positive")
    return w, h


def parse_distances(text: str) -> tuple[float, ...]:
    """ "200,300" -> (200.0, 300.0); ConfigError for anything else."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise ConfigError(f"--gate-distances {text!r}: expected mm values, e.g. 200,300") from err
    if any(v <= 0 for v in values):
        raise ConfigError(f"--gate-distances {text!r}: distances must be positive")
    return values


def simulate_belt_cmd(
    data_dir: Annotated[
        Path, typer.Argument(help="Folder with one sub-folder of images per grade.")
    ],
    out: Annotated[Path, typer.Argument(help="Video to write (.mp4); the truth goes to .json.")],
    fps: Annotated[float, typer.Option(help="Frames per second.")] = 30.0,
    size: Annotated[str, typer.Option(help="Frame size WIDTHxHEIGHT.")] = "640x480",
    speed: Annotated[float, typer.Option(help="Belt speed, pixels per second.")] = 400.0,
    items_per_second: Annotated[
        float | None, typer.Option(help="Items per second (sets spacing; default 2.5).")
    ] = None,
    spacing: Annotated[
        float | None, typer.Option(help="Centre-to-centre spacing in pixels (instead).")
    ] = None,
    count: Annotated[
        int | None, typer.Option(help="Items on the belt (default: every image once).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same video).")] = 0,
    noise: Annotated[float, typer.Option(help="Camera noise, std in 0-255 levels.")] = 3.0,
    jitter: Annotated[float, typer.Option(help="Random item offset in pixels.")] = 12.0,
    drift: Annotated[float, typer.Option(help="Lighting drift amplitude (fraction).")] = 0.06,
    blur: Annotated[float, typer.Option(help="Blur sigma in pixels (0 = none).")] = 0.7,
    px_per_mm: Annotated[
        float, typer.Option(help="Camera scale at the belt (250 mm view -> 120 px at 0.48).")
    ] = 0.48,
    field_of_view_mm: Annotated[
        float, typer.Option(help="Field of view each image shows, mm (the model's crop rule).")
    ] = 250.0,
    limit_per_grade: Annotated[int | None, typer.Option(help="At most N images per grade.")] = None,
    split_file: Annotated[
        Path | None,
        typer.Option(help="Only these images: a run's split.json or a text list of relpaths."),
    ] = None,
    split: Annotated[str, typer.Option(help="Which list of split.json to use.")] = "test",
    lead_in: Annotated[float, typer.Option(help="Seconds of empty belt at the start.")] = 1.0,
    subpixel: Annotated[
        bool, typer.Option(help="Items at fractional positions (edges mixed with the belt).")
    ] = False,
    codec: Annotated[str, typer.Option(help="Video codec: mp4v (.mp4) or MJPG (.avi).")] = "mp4v",
    carrier: Annotated[
        str, typer.Option(help="Items ride in: none (picture as is), tray, cup, bare (no tray).")
    ] = "none",
    carrier_colours: Annotated[
        str, typer.Option(help="Tray/cup colours, comma-separated (per item at random).")
    ] = "black,dark,grey,white,blue,green",
    rim: Annotated[float, typer.Option(help="Tray/cup rim width outside the view, px.")] = 6.0,
    rim_inside: Annotated[
        float, typer.Option(help="How far the tray's rim reaches into the view, px.")
    ] = 0.0,
    exposure_ms: Annotated[
        float, typer.Option(help="Shutter time: motion blur of speed x exposure px.")
    ] = 0.0,
    vignetting: Annotated[
        float, typer.Option(help="Brightness lost at the corners (fraction).")
    ] = 0.0,
    white_balance_drift: Annotated[
        float, typer.Option(help="Red/blue gain drift amplitude (fraction).")
    ] = 0.0,
    speed_profile: Annotated[
        str,
        typer.Option(
            help="Belt speed over time, TIME:FACTOR of --speed, e.g. 0:1,4:1,5:0.8,8:0.8,9:1 "
            "(20% slower from 5 to 8 s); the truth gives each item's gate arrival times."
        ),
    ] = "",
    gate_distances: Annotated[
        str, typer.Option(help="Gate distances past the line (mm) for the truth's arrivals.")
    ] = "200,300,400,500,600,700,800,900,1000",
    belt_angle: Annotated[
        float,
        typer.Option(
            help="The belt's direction in the image, degrees from the x axis (y down): a "
            "camera not square to the belt; the truth's centres and t_line are of that picture."
        ),
    ] = 0.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Make a conveyor-belt video from a folder-per-grade tree, with its ground truth JSON."""
    console = Console(stderr=True)
    try:
        cfg = BeltSimConfig(
            fps=fps,
            size=parse_size(size),
            speed_px_s=speed,
            items_per_second=items_per_second,
            spacing_px=spacing,
            count=count,
            seed=seed,
            noise=noise,
            jitter_px=jitter,
            lighting_drift=drift,
            blur_sigma=blur,
            px_per_mm=px_per_mm,
            field_of_view_mm=(field_of_view_mm, field_of_view_mm),
            limit_per_grade=limit_per_grade,
            split_file=split_file,
            split=split,
            lead_in_s=lead_in,
            subpixel=subpixel,
            codec=codec,
            speed_profile=speed_profile,
            gate_distances_mm=parse_distances(gate_distances),
            belt_angle_deg=belt_angle,
            realism=Realism(
                carrier=carrier,
                carrier_colours=tuple(c.strip() for c in carrier_colours.split(",") if c.strip()),
                rim_px=rim,
                rim_inside_px=rim_inside,
                exposure_ms=exposure_ms,
                vignetting=vignetting,
                white_balance_drift=white_balance_drift,
            ),
        )
        cfg.check()  # bad options and folders fail before the progress bar starts
        list_images(data_dir, limit_per_grade=limit_per_grade, split_file=split_file, split=split)
        with Progress(
            TextColumn("[bold]simulating belt"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} frames"),
            TimeRemainingColumn(),
            console=console,
            disable=quiet,
            transient=True,
        ) as bar:
            task = bar.add_task("frames", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            result = simulate_belt(data_dir, out, cfg, progress=progress)
    except SorterError as err:
        raise _fail(err) from err
    seconds = result.frames / cfg.fps
    typer.echo(
        f"wrote {result.video} ({result.frames} frames, {seconds:.1f} s, "
        f"{len(result.items)} items) and {result.truth}"
    )


def calibrate_belt_cmd(
    out: Annotated[Path, typer.Argument(help="Calibration file to write (.npz).")],
    video: Annotated[Path | None, typer.Option(help="Learn from this video of the belt.")] = None,
    camera: Annotated[int | None, typer.Option(help="Learn from this camera.")] = None,
    images: Annotated[Path | None, typer.Option(help="Learn from a folder of images.")] = None,
    frames: Annotated[
        int | None,
        typer.Option(
            help="Frames to learn from (default 30; for a simulated video, its empty lead-in)."
        ),
    ] = None,
    skip: Annotated[int, typer.Option(help="Frames to skip first (camera warm-up).")] = 0,
    size: Annotated[str, typer.Option(help="Camera frame size WIDTHxHEIGHT.")] = "640x480",
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Learn the EMPTY belt (run it with nothing on it) for the background locator."""
    try:
        n = frames if frames is not None else _default_frames(video)
        if n < 2:
            raise ConfigError(f"--frames {n}: need at least 2 frames of the empty belt")
        source = open_source(
            camera=camera,
            video=video,
            images=images,
            camera_settings=CameraSettings(size=parse_size(size)),
        )
        with source:
            picked = [f.image for f in islice(source, skip, skip + n)]
        if len(picked) < 2:
            raise SourceError(f"{source.name}: only {len(picked)} frame(s) after --skip {skip}")
        model = BackgroundModel.learn(picked)
        path = model.save(out)
    except SorterError as err:
        raise _fail(err) from err
    summary = summarize(model, path)
    if as_json:
        typer.echo(json.dumps(summary.__dict__))
        return
    typer.echo(
        f"learned the belt from {summary.frames} frames ({summary.size[0]}x{summary.size[1]}): "
        f"mean level {summary.mean_level:.0f}, spread {summary.mean_spread:.1f}; wrote {path}"
    )
    for warning in summary.warnings:
        typer.echo(f"warning: {warning}", err=True)


def _default_frames(video: Path | None) -> int:
    """A simulated video's empty lead-in (from its truth JSON), else 30."""
    if video is not None:
        truth = video.with_suffix(".json")
        try:
            empty = int(json.loads(truth.read_text()).get("empty_frames", 0))
        except (OSError, ValueError, AttributeError):
            empty = 0
        if empty >= 2:
            return empty
    return 30
