"""Diagnostics (`sorter doctor`): can this machine run the sorter? Each problem with a fix hint.

Every check is a small function returning a `Check` (ok / warn / fail, what was found, how
to fix it), so tests call them one by one. `run_checks()` runs them all in order from the
config; `sorter doctor` (sorter.commands.doctor) prints them as a table (or `--json`) and
exits 1 when any check failed, i.e. when something blocks running (warnings do not).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sorter.errors import SorterError

logger = logging.getLogger(__name__)

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"

MIN_PYTHON = (3, 11)
"""Raspberry Pi OS Bookworm's Python; the wheels we need exist for it."""
MIN_FREE_MB = 500
"""Less free space than this where logs/crops go blocks running."""
WARN_FREE_MB = 2000
"""Less free space than this is a warning (a season of crops fills a card)."""
SANE_EPOCH = 1_704_067_200
"""2024-01-01T00:00:00Z: a wall clock before this has not been set (Pi has no RTC)."""
RATE_FAIL = 0.5
"""A camera delivering less than this fraction of the configured fps fails."""
RATE_WARN = 0.9
"""... and less than this fraction warns."""

_PACKAGES = (
    # (distribution, import name, why)
    ("numpy", "numpy", "arrays"),
    ("opencv-python-headless", "cv2", "frames and image processing"),
    ("pyserial", "serial", "the controller link"),
    ("typer", "typer", "the command line"),
    ("rich", "rich", "terminal output"),
    ("prometheus-client", "prometheus_client", "/metrics"),
)


@dataclass
class Check:
    """The result of one check."""

    name: str
    """Short name shown in the table ("python", "camera"...)."""
    state: str
    """ok, warn (runs, but look at it), fail (blocks running) or skip (not asked for)."""
    detail: str
    """What was found."""
    hint: str = ""
    """How to fix it (empty when ok)."""

    @property
    def blocking(self) -> bool:
        """True when this blocks running the sorter."""
        return self.state == FAIL


# ------------------------------------------------------------------------------------------
# The checks


def check_python(version: tuple[int, ...] | None = None) -> Check:
    """Python is 3.11 or newer (Raspberry Pi OS Bookworm's)."""
    v = tuple(version or sys.version_info[:3])
    text = ".".join(str(x) for x in v)
    if v[:2] < MIN_PYTHON:
        return Check(
            "python",
            FAIL,
            f"Python {text} at {sys.executable}",
            "needs Python >= 3.11: use Raspberry Pi OS Bookworm (64-bit) and deploy/install.sh",
        )
    return Check("python", OK, f"Python {text} at {sys.executable}")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_packages() -> Check:
    """The runtime packages are installed and import (numpy 2, OpenCV that loads with it)."""
    found, problems = [], []
    for dist, module, why in _PACKAGES:
        version = _version(dist)
        if version is None and dist == "opencv-python-headless":
            version = _version("opencv-python") or _version("opencv-contrib-python")
        try:
            importlib.import_module(module)
        except Exception as err:  # an ABI mismatch raises ValueError/ImportError
            problems.append(f"{module} ({why}) does not import: {err}")
            continue
        found.append(f"{dist} {version or '?'}")
    numpy_version = _version("numpy") or "0"
    if int(numpy_version.split(".")[0]) < 2:
        problems.append(f"numpy {numpy_version} < 2 (ai-edge-litert 2.x needs numpy 2)")
    sorter_version = _version("produce-sorter") or "not installed as a package"
    detail = f"produce-sorter {sorter_version}; " + ", ".join(found)
    if problems:
        return Check(
            "packages",
            FAIL,
            "; ".join(problems),
            "reinstall into the venv: pip install --upgrade /path/to/produce-sorter "
            "(deploy/install.sh does it)",
        )
    if importlib.util.find_spec("tensorflow") is not None:
        return Check(
            "packages",
            WARN,
            detail + "; TensorFlow is installed too",
            "the Pi needs no TensorFlow (LiteRT runs the model); a base install leaves it out",
        )
    return Check("packages", OK, detail)


def check_litert() -> Check:
    """LiteRT (ai-edge-litert) imports; tflite-runtime is only a fallback."""
    try:
        module = importlib.import_module("ai_edge_litert.interpreter")
    except Exception as err:
        try:
            importlib.import_module("tflite_runtime.interpreter")
        except Exception:
            return Check(
                "litert",
                FAIL,
                f"ai_edge_litert does not import ({err})",
                "pip install 'ai-edge-litert>=2.3,<3' in the venv (64-bit OS needed)",
            )
        return Check(
            "litert",
            WARN,
            f"only tflite-runtime {_version('tflite-runtime') or '?'} (ai_edge_litert: {err})",
            "tflite-runtime is frozen and needs numpy<2; install ai-edge-litert instead",
        )
    version = _version("ai-edge-litert") or "?"
    return Check("litert", OK, f"ai-edge-litert {version} ({Path(module.__file__ or '').parent})")


def check_config(path: str | Path | None) -> tuple[Check, Any]:
    """The config file loads and validates; returns the check and the Config (defaults if bad)."""
    from sorter.config import Config, load_config

    if path is None:
        return (
            Check(
                "config",
                WARN,
                "no config file given: using the built-in defaults",
                "pass --config PATH (the service reads /etc/produce-sorter/sorter.toml)",
            ),
            Config(),
        )
    try:
        config = load_config(path)
    except SorterError as err:
        return Check(
            "config", FAIL, str(err), f"fix it, then `sorter config check {path}`"
        ), Config()
    return Check("config", OK, f"{path} is valid ({len(config.gates)} gates)"), config


_MODEL_HINT = "give a model exported by sorter-export ([model] path or --model), with its metadata"


def check_model(path: str | Path | None, threads: int = 1) -> Check:
    """The model loads in LiteRT with valid metadata and answers one inference."""
    import numpy as np

    try:
        from sorter.grading.classifier import Classifier

        clf = Classifier(Path(path) if path else None, num_threads=threads)
        h, w = clf.input_size
        probs = clf.classify(np.zeros((1, h, w, 3), dtype=np.uint8))
    except SorterError as err:
        return Check("model", FAIL, str(err), _MODEL_HINT)
    except Exception as err:  # a runtime that cannot load it is a finding, not a crash
        return Check("model", FAIL, f"{path or 'default model'}: {err}", _MODEL_HINT)
    if probs.shape != (1, len(clf.labels)) or not np.isfinite(probs).all():
        return Check("model", FAIL, f"inference gave shape {probs.shape}", "re-export the model")
    accuracy = ""
    metrics = getattr(clf.metadata, "metrics", None) or {}
    for split in ("test", "val"):
        value = (metrics.get(split) or {}).get("exported_accuracy")
        if isinstance(value, int | float):
            accuracy = f", exported accuracy {100 * value:.1f}% ({split})"
            break
    source = getattr(clf, "model_path", None) or path or "bundled default"
    return Check(
        "model",
        OK,
        f"{source}: {len(clf.labels)} grades, input {h}x{w}{accuracy}",
    )


def check_shadow(path: str, config: Any) -> Check:
    """The [model] shadow candidate may grade beside the model (`sorter run` refuses to
    start otherwise): it loads, its labels are the bins' grades, one inference works."""
    from sorter.grading.model_check import check_model as fit_to_sort

    try:
        clf = fit_to_sort(path, config)
    except SorterError as err:
        return Check(
            "shadow model", FAIL, str(err), "fix or empty [model] shadow (shadow mode is optional)"
        )
    h, w = clf.input_size
    return Check("shadow model", OK, f"{path}: {len(clf.labels)} grades, input {h}x{w}")


def check_camera(
    open_source: Callable[[], AbstractContextManager[Iterable[Any]]],
    fps: float,
    *,
    seconds: float = 2.0,
    name: str = "camera",
    clock: Callable[[], float] = time.monotonic,
) -> Check:
    """The camera opens and delivers frames at (close to) the configured rate.

    `open_source()` returns a not-yet-started source (a context manager iterating frames).
    Frames are counted for `seconds` after the first one; the rate is measured on `clock`.
    """
    wanted = max(2, round(fps * seconds) + 1)
    times: list[float] = []
    shape: tuple[int, ...] = ()
    deadline = clock() + seconds + 5.0  # a first frame may take a few seconds (AE settling)
    try:
        with open_source() as source:
            for frame in source:
                times.append(clock())
                shape = tuple(getattr(frame, "image", frame).shape)
                if len(times) >= wanted or clock() > deadline:
                    break
                if times[-1] - times[0] >= seconds:
                    break
    except SorterError as err:
        return Check(name, FAIL, str(err), "check the cable/ribbon and --camera N")
    except Exception as err:  # a driver error is still a finding, not a crash
        return Check(name, FAIL, f"{type(err).__name__}: {err}", "check the camera and its driver")
    if not times:
        return Check(name, FAIL, "opened but delivered no frame", "check the camera is connected")
    if len(times) < 2 or times[-1] <= times[0]:
        return Check(name, WARN, f"only {len(times)} frame(s) of {shape}", "measure longer")
    rate = (len(times) - 1) / (times[-1] - times[0])
    detail = f"{len(times)} frames {shape[1]}x{shape[0]} at {rate:.1f} fps (configured {fps:g})"
    hint = "lower [camera] fps/size, check lighting (long exposures cut the rate) and CPU load"
    if rate < RATE_FAIL * fps:
        return Check(name, FAIL, detail, hint)
    if rate < RATE_WARN * fps:
        return Check(name, WARN, detail, hint)
    return Check(name, OK, detail)


def check_controller(url: str, *, expected_gates: int = 0, timeout_s: float = 5.0) -> Check:
    """The controller at `url` answers HELLO with protocol version 1 (and enough gates)."""
    from firmware_bridge.framing import PROTO_VERSION

    try:
        info, rtt = _controller_hello(url, timeout_s)
    except SorterError as err:
        return Check("controller", FAIL, str(err), _controller_hint(url))
    except Exception as err:  # firmware_bridge's own LinkError is not a SorterError
        return Check("controller", FAIL, f"{url}: {err}", _controller_hint(url))
    wanted = PROTO_VERSION
    fw = f"{info.fw_major}.{info.fw_minor}.{info.fw_patch}"
    detail = (
        f"{url}: firmware {fw}, protocol {info.proto}, {info.n_gates} gates, "
        f"HELLO round trip {1000 * rtt:.1f} ms"
    )
    if info.proto != wanted:
        return Check(
            "controller",
            FAIL,
            detail,
            f"this sorter speaks protocol {wanted}: flash the matching firmware "
            "(make -C firmware_bridge/firmware flash)",
        )
    if expected_gates and info.n_gates < expected_gates:
        return Check(
            "controller",
            FAIL,
            detail + f"; the config has {expected_gates} gates",
            "fewer gates on the controller than in [gates.N]: fix the config or the firmware",
        )
    return Check("controller", OK, detail)


def _controller_hint(url: str) -> str:
    if url.startswith("/dev/"):
        return (
            f"is the controller plugged in? `ls -l {url}`, `lsusb`; the user needs the dialout "
            "group (deploy/99-sorter-controller.rules); stop the service first "
            "(systemctl stop produce-sorter): only one program can hold the port"
        )
    return "check [serial] url (a device path, socket://HOST:PORT or sim://)"


def _controller_hello(url: str, timeout_s: float) -> tuple[Any, float]:
    """HELLO only (no CONFIG/RESUME: the doctor changes nothing); (HelloInfo, round trip s).

    An Uno resets when its port opens, so HELLO is repeated until `timeout_s` has passed.
    """
    from firmware_bridge.link import ControllerLink

    link = ControllerLink(url, handshake=False, reconnect=False)
    link.start()
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            t0 = time.monotonic()
            try:
                info = link.hello(timeout=0.5)
            except Exception:
                if time.monotonic() >= deadline:
                    raise
                continue
            return info, time.monotonic() - t0
    finally:
        link.close()


def check_disk(
    paths: Iterable[str | Path],
    *,
    min_free_mb: float = MIN_FREE_MB,
    writable: Callable[[Path], bool] = lambda p: os.access(p, os.W_OK),
) -> Check:
    """Enough free space where the decision log and crops go (first existing parent), and
    writable by this user (run the doctor as the service user to check the service)."""
    findings: list[str] = []
    hints: list[str] = []
    state = OK
    seen: set[int] = set()
    for raw in paths:
        if not str(raw):
            continue
        p = Path(raw)
        existing = p
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not writable(existing):
            findings.append(f"{existing} is not writable by this user")
            hints.append(f"run as the service user (sudo -u sorter ...) or fix {existing}'s owner")
            state = FAIL if state == FAIL else WARN
        device = os.stat(existing).st_dev
        if device in seen:  # one free-space line per filesystem
            continue
        seen.add(device)
        free_mb = shutil.disk_usage(existing).free / 1e6
        findings.append(f"{p}: {free_mb:,.0f} MB free")
        if free_mb < max(min_free_mb, WARN_FREE_MB):
            hints.append("free space or move [logging] db/crops_dir to a bigger disk")
            state = FAIL if free_mb < min_free_mb else (WARN if state == OK else state)
    if not findings:
        return Check("disk", SKIP, "no log or crop paths configured")
    return Check("disk", state, "; ".join(findings), "; ".join(dict.fromkeys(hints)))


def check_clock(
    wall: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
    ntp_synchronized: Callable[[], bool | None] | None = None,
) -> Check:
    """The monotonic clock moves forward and the wall clock has been set (not 1970)."""
    a = monotonic()
    time.sleep(0.01)
    b = monotonic()
    if b <= a:
        return Check("clock", FAIL, f"monotonic clock did not advance ({a} -> {b})", "reboot")
    now = wall()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
    if now < SANE_EPOCH:
        return Check(
            "clock",
            WARN,
            f"system time is {stamp}: not set yet",
            "the Pi has no RTC: connect to a network (timedatectl set-ntp true) or set it with "
            "`sudo date -s`; decision-log timestamps use it (gate timing does not)",
        )
    synced = (ntp_synchronized or _ntp_synchronized)()
    if synced is False:
        return Check("clock", WARN, f"{stamp}, not NTP-synchronised", "timedatectl set-ntp true")
    return Check("clock", OK, f"{stamp}" + (", NTP-synchronised" if synced else ""))


def _ntp_synchronized() -> bool | None:
    if shutil.which("timedatectl") is None:
        return None
    try:
        out = subprocess.run(
            ["timedatectl", "show", "--property=NTPSynchronized", "--value"],
            capture_output=True,
            text=True,
            timeout=3,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    value = out.stdout.strip()
    return {"yes": True, "no": False}.get(value)


# ------------------------------------------------------------------------------------------
# Running them all


@dataclass
class DoctorOptions:
    """What to check, from the command line (None: take it from the config)."""

    config: Path | None = None
    """Config file (default /etc/produce-sorter/sorter.toml when it exists)."""
    model: Path | None = None
    """Model to check instead of the config's."""
    serial: str | None = None
    """Controller URL instead of the config's [serial] url (e.g. sim://)."""
    camera: int | None = None
    """Camera number instead of the config's."""
    video: Path | None = None
    """Check a replay video (paced in real time) instead of the camera."""
    skip_camera: bool = False
    """Do not open the camera."""
    skip_controller: bool = False
    """Do not talk to the controller."""
    seconds: float = 2.0
    """How long to measure the camera's frame rate."""


def run_checks(opts: DoctorOptions) -> Iterator[Check]:
    """All checks, in order; the config check first (the rest read it)."""
    from sorter.config import DEFAULT_PATH

    config_path = opts.config
    if config_path is None and DEFAULT_PATH.exists():
        config_path = DEFAULT_PATH
    config_check, config = check_config(config_path)
    yield check_python()
    yield check_packages()
    yield check_litert()
    yield config_check
    yield check_model(opts.model or (config.model.path or None), config.model.threads)
    if config.model.shadow:
        yield check_shadow(config.model.shadow, config)
    if opts.skip_camera:
        yield Check("camera", SKIP, "skipped (--no-camera)")
    else:
        yield _camera_check(opts, config)
    if opts.skip_controller:
        yield Check("controller", SKIP, "skipped (--no-controller)")
    else:
        url = opts.serial or config.serial.url
        gates = max((int(k) + 1 for k in config.gates), default=0)
        yield check_controller(url, expected_gates=gates)
    yield check_disk([config.logging.db, config.logging.crops_dir, config.logging.jsonl])
    yield check_clock()


def _camera_check(opts: DoctorOptions, config: Any) -> Check:
    from sorter.perception import sources

    if opts.video is not None:
        video = opts.video
        probe = sources.VideoSource(video)
        try:
            probe.start()
            fps = float(probe.fps or 0.0)
        except SorterError as err:
            return Check("camera", FAIL, str(err), "check the --video path")
        finally:
            probe.stop()
        return check_camera(
            lambda: sources.VideoSource(video, realtime=True),
            fps,
            seconds=opts.seconds,
            name="camera (replay)",
        )
    cam = config.camera
    index = cam.index if opts.camera is None else opts.camera
    settings = sources.CameraSettings(
        size=(cam.width, cam.height), fps=cam.fps, backend=cam.backend
    )
    return check_camera(
        lambda: sources.CameraSource(index, settings), cam.fps, seconds=opts.seconds
    )
