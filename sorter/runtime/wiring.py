"""The factories that build the loop's parts from the config (used by the runner,
`sorter calibrate`, `sorter doctor` and the benchmarks, so every entry point builds them
the same way)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sorter.actuation.link import ControllerLinkLike
from sorter.config import Config
from sorter.errors import ConfigError
from sorter.perception.scale_marker import ScaleMarker
from sorter.perception.sources import CameraSettings
from sorter.perception.tracking import Tracker
from sorter.perception.vision import BackgroundModel, Locator, window_px

if TYPE_CHECKING:
    from firmware_bridge.clock import Clock

DEFAULT_WINDOW_MM = (250.0, 250.0)
"""The crop window for a classifier without metadata (a test stand-in)."""


def make_locator(config: Config) -> Locator:
    """A Locator from the [locate] section (with its empty-belt model for "background")."""
    c = config.locate
    background = None
    if c.method == "background":
        if not c.background:
            raise ConfigError(
                "locate.background: method 'background' needs the empty-belt file; "
                'make one with `sorter calibrate-belt` or set locate.method = "color"'
            )
        background = BackgroundModel.load(c.background)
    return Locator(c, background)


def make_tracker(config: Config, frame_size: tuple[int, int]) -> Tracker:
    """A Tracker from the [track] section, placed by the [belt] geometry for this frame size
    and turned by the belt's measured angle in the image ([lens] belt_angle_deg)."""
    b = config.belt
    return Tracker(
        config.track,
        frame_size,
        direction=b.direction,
        line=b.decision_line * frame_size[0],
        speed_px_s=b.speed_mm_s * b.px_per_mm,
        angle_deg=config.lens.belt_angle_deg,
    )


def make_scale_marker(config: Config) -> ScaleMarker | None:
    """The scale check's marker from [camera] scale_marker (None: no check)."""
    c = config.camera
    if not c.scale_marker:
        return None
    return ScaleMarker(c.scale_marker, c.scale_marker_id, c.scale_marker_mm)


def camera_settings(config: Config) -> CameraSettings:
    """CameraSettings from [camera]. A camera silent for camera.stall_s is reported as
    stalled (controller put safe); silent 5x longer (at least 10 s) ends the run."""
    c = config.camera
    return CameraSettings(
        size=(c.width, c.height),
        fps=c.fps,
        backend=c.backend,
        read_timeout_s=max(10.0, 5.0 * c.stall_s),
    )


def load_classifier(config: Config, model: Path | None = None) -> Any:
    """The LiteRT classifier for `model`, else [model] path, else the bundled model."""
    from sorter.grading.classifier import Classifier

    path = model or (Path(config.model.path) if config.model.path else None)
    return Classifier(path, num_threads=config.model.threads)


def crop_window_px(config: Config, classifier: Any) -> tuple[int, int]:
    """The crop window in pixels: the model's metadata window (mm) at the belt's scale."""
    meta = getattr(classifier, "metadata", None)
    window_mm = tuple(meta.crop.window_mm) if meta is not None else DEFAULT_WINDOW_MM
    return window_px((float(window_mm[0]), float(window_mm[1])), config.belt.px_per_mm)


def open_link(
    config: Config, url: str | None = None, clock: Clock | None = None
) -> ControllerLinkLike:
    """A (not yet started) ControllerLink to `url` (default [serial] url) with the [serial]
    heartbeat, ACK timeout and retries, on `clock` (default: the monotonic clock)."""
    from firmware_bridge.link import ControllerLink

    s = config.serial
    return ControllerLink(
        url or s.url,
        clock=clock,
        heartbeat_s=s.heartbeat_ms / 1000.0,
        ack_timeout_s=s.ack_timeout_ms / 1000.0,
        retries=s.retries,
    )


def gate_pulses(config: Config) -> list[int]:
    """Pulse length (ms) of gates 0..N-1, N = the highest configured gate + 1 (a gap: 1 ms)."""
    n_gates = max(int(k) for k in config.gates) + 1 if config.gates else 1
    return [config.gates[str(i)].pulse_ms if str(i) in config.gates else 1 for i in range(n_gates)]


def configure_link(link: ControllerLinkLike, config: Config) -> None:
    """Send CONFIG: every gate of [gates] with its pulse length."""
    pulses = gate_pulses(config)
    link.configure(len(pulses), pulses)
