"""Frame sources: a camera, a video file (replay) or a folder of still images.

Every source yields `Frame(index, t, image)` with `image` an RGB uint8 array and `t` the
capture time in seconds: the monotonic clock for a camera, `index / fps` for a video or an
image folder. Sources are context managers; hardware is opened in `start()` (called by
`__enter__`), never at import.

`ThreadedSource` wraps any source with a capture thread and a short queue that drops the
oldest frame when the consumer falls behind, counting every drop.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import cv2
import numpy as np

from sorter.errors import SorterError, SourceError
from sorter.perception.preprocess import IMAGE_SUFFIXES, as_rgb, load_image

log = logging.getLogger(__name__)

CAMERA_HELP = (
    "check the camera with `libcamera-hello --list-cameras` (Pi camera) or "
    "`v4l2-ctl --list-devices` (USB webcam), and that no other program is using it"
)


@dataclass
class Frame:
    """One captured frame."""

    index: int
    """Position in the stream, from 0."""
    t: float
    """Capture time in seconds (monotonic clock for a camera; index / fps for replay)."""
    image: np.ndarray
    """HxWx3 uint8 RGB pixels."""
    name: str | None = None
    """Where the frame came from, when that means something (an image file's path)."""


class Clock(Protocol):
    """What a source needs from a clock: seconds now (firmware_bridge.clock has the same)."""

    def now(self) -> float: ...


class MonotonicClock:
    """Local stand-in for firmware_bridge.clock.MonotonicClock: `time.monotonic()`."""

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))


def default_clock() -> Clock:
    """firmware_bridge's monotonic clock when present, else the local one (same `.now()`)."""
    try:
        mod = importlib.import_module("firmware_bridge.clock")
        clock: Clock = mod.MonotonicClock()
        return clock
    except (ImportError, AttributeError):
        return MonotonicClock()


def _wait_until(clock: Clock, target: float) -> None:
    """Sleep until `clock.now() >= target` (the clock's own sleep when it has one)."""
    sleeper = getattr(clock, "sleep", None) or time.sleep
    while True:
        remaining = target - clock.now()
        if remaining <= 0:
            return
        before = clock.now()
        sleeper(remaining)
        if clock.now() <= before:  # a clock that does not move with sleep: do not spin
            return


class FrameSource:
    """Base class: a context manager and an iterator of Frames."""

    name: str = "source"
    fps: float | None = None
    start_at: float | None = None
    """A replay paced on a clock: the clock time its frame t = 0 was (or is) due at, so host
    time = start_at + frame.t. None for sources that do not pace (cameras, fast replays)."""

    def start(self) -> None:
        """Open the device or file."""

    def stop(self) -> None:
        """Release the device or file; safe to call twice."""

    def frames(self) -> Iterator[Frame]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Frame]:
        return self.frames()

    def __enter__(self) -> FrameSource:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class VideoSource(FrameSource):
    """Replay a video file: `t = index / fps`; optionally paced in real time on a clock.

    A file that stops decoding before its announced frame count raises SourceError after
    every frame that did decode has been yielded, so what was processed is kept.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        realtime: bool = False,
        clock: Clock | None = None,
        fps: float | None = None,
    ) -> None:
        self.path = Path(path)
        self.realtime = realtime
        self.clock = clock or default_clock()
        self.name = str(self.path)
        self._fps_override = fps
        self._cap: Any = None
        self.frame_count = 0
        """Frames the container announces (0 when unknown)."""
        self.frames_read = 0
        """Frames decoded so far."""

    def start(self) -> None:
        if not self.path.is_file():
            raise SourceError(f"{self.path}: video file not found; check the path")
        cap = cv2.VideoCapture(str(self.path))
        ok, first = cap.read() if cap.isOpened() else (False, None)
        if not ok or first is None:
            cap.release()
            raise SourceError(
                f"{self.path}: cannot decode this video (corrupt, truncated or unsupported "
                "codec); check it plays with `ffprobe` or re-encode it as mp4/h264"
            )
        fps = self._fps_override or float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if not fps or fps <= 0 or not np.isfinite(fps):
            fps = 30.0
            log.warning("%s: no frame rate in the file; assuming %.0f fps", self.path, fps)
        self.fps = fps
        self.frame_count = max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0))
        self._cap = cap
        self._first: np.ndarray | None = first

    def stop(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def frames(self) -> Iterator[Frame]:
        if self._cap is None:
            self.start()
        cap = self._cap
        assert self.fps is not None
        fps = self.fps
        t0 = self.clock.now()
        self.start_at = t0 if self.realtime else None
        pending: np.ndarray | None = self._first
        self._first = None
        index = 0
        while True:
            if pending is not None:
                bgr, pending = pending, None
            else:
                ok, bgr = cap.read()
                if not ok or bgr is None:
                    break
            t = index / fps
            if self.realtime:
                _wait_until(self.clock, t0 + t)
            self.frames_read = index + 1
            yield Frame(index, t, as_rgb(bgr, source=self.name))
            index += 1
        # Containers round their frame count; one missing frame is not truncation.
        if self.frame_count and self.frames_read < self.frame_count - 1:
            raise SourceError(
                f"{self.path}: video stops after frame {self.frames_read} of "
                f"{self.frame_count} (truncated or corrupt); the frames before it were processed"
            )


class ImageFolderSource(FrameSource):
    """A folder of still images (one item per image, sorted by path, searched recursively).

    `t = index / fps`. An unreadable image raises SourceError naming it, after the images
    before it have been yielded.
    """

    def __init__(self, folder: str | Path, *, fps: float = 1.0) -> None:
        self.folder = Path(folder)
        self.fps = fps
        self._fps = fps
        self.name = str(self.folder)
        self.paths: list[Path] = []

    def start(self) -> None:
        if not self.folder.is_dir():
            raise SourceError(f"{self.folder}: not a folder of images; check the path")
        self.paths = sorted(
            p for p in self.folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not self.paths:
            raise SourceError(
                f"{self.folder}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
            )

    def frames(self) -> Iterator[Frame]:
        if not self.paths:
            self.start()
        for index, path in enumerate(self.paths):
            try:
                image = load_image(path)
            except SorterError as err:
                raise SourceError(f"{err} (image {index + 1} of {len(self.paths)})") from err
            yield Frame(index, index / self._fps, image, name=str(path))


@dataclass
class CameraSettings:
    """How a camera is opened."""

    size: tuple[int, int] = (640, 480)
    """Frame size (width, height) in pixels."""
    fps: float = 30.0
    """Frame rate asked of the camera."""
    backend: str = "auto"
    """"auto" (picamera2 when importable and a CSI camera is present, else OpenCV),
    "picamera2" or "opencv"."""
    settle_frames: int = 15
    """Frames captured with automatic exposure/white balance before they are locked."""
    lock_exposure: bool = True
    """Lock exposure, gain and white balance once settled, so colours stay comparable."""
    read_timeout_s: float = 2.0
    """A camera that delivers no frame for this long is reported as stopped."""


class CameraSource(FrameSource):
    """A live camera: picamera2 (CSI camera on a Pi) or OpenCV VideoCapture (USB, V4L2).

    `device` is a camera number, or for OpenCV a device path (`/dev/video0`) or any URL/file
    VideoCapture accepts. `t` is the monotonic clock at the moment the frame was received.
    """

    def __init__(
        self,
        device: int | str = 0,
        settings: CameraSettings | None = None,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.device = device
        self.settings = settings or CameraSettings()
        self.clock = clock or default_clock()
        self.fps = self.settings.fps
        self.name = f"camera {device}"
        self.backend: str | None = None
        """The backend actually opened: "picamera2" or "opencv"."""
        self._picam: Any = None
        self._cap: Any = None
        self._first_opencv: np.ndarray | None = None
        self._tried: list[str] = []

    # --- opening ---
    def start(self) -> None:
        s = self.settings
        if s.backend not in ("auto", "picamera2", "opencv"):
            raise SourceError(
                f"camera backend {s.backend!r} unknown; use auto, picamera2 or opencv"
            )
        self._tried = []
        if s.backend in ("auto", "picamera2") and isinstance(self.device, int):
            if self._start_picamera2():
                return
            if s.backend == "picamera2":
                raise SourceError(f"camera {self.device}: {'; '.join(self._tried)}; {CAMERA_HELP}")
        if self._start_opencv():
            return
        raise SourceError(
            f"camera {self.device}: not found or busy (tried {'; '.join(self._tried)}); "
            f"{CAMERA_HELP}"
        )

    def _start_picamera2(self) -> bool:
        try:
            picamera2 = importlib.import_module("picamera2")
        except ImportError:
            self._tried.append("picamera2: not installed (apt install python3-picamera2)")
            return False
        assert isinstance(self.device, int)
        cams = picamera2.Picamera2.global_camera_info()
        if self.device >= len(cams):
            self._tried.append(f"picamera2: {len(cams)} CSI camera(s) attached")
            return False
        s = self.settings
        frame_us = round(1e6 / s.fps)
        try:
            cam = picamera2.Picamera2(self.device)
            # "BGR888" is libcamera's name for R, G, B byte order: arrays come out RGB.
            config = cam.create_video_configuration(
                main={"size": tuple(s.size), "format": "BGR888"},
                controls={"FrameDurationLimits": (frame_us, frame_us)},
                buffer_count=4,
            )
            cam.configure(config)
            cam.start()
        except Exception as err:  # libcamera raises RuntimeError and friends for a busy camera
            self._tried.append(f"picamera2 camera {self.device}: {err}")
            return False
        self._picam = cam
        self.backend = "picamera2"
        if s.lock_exposure:
            self._lock_picamera2()
        log.info("camera %s: picamera2 %sx%s @ %.0f fps", self.device, *s.size, s.fps)
        return True

    def _lock_picamera2(self) -> None:
        """Let auto exposure/white balance settle, then fix them at the settled values."""
        cam = self._picam
        metadata: dict[str, Any] = {}
        for _ in range(max(1, self.settings.settle_frames)):
            request = self._picamera2_request()
            try:
                metadata = request.get_metadata()
            finally:
                request.release()
        controls: dict[str, Any] = {"AeEnable": False, "AwbEnable": False}
        for key in ("ExposureTime", "AnalogueGain", "ColourGains"):
            if key in metadata:
                controls[key] = metadata[key]
        cam.set_controls(controls)
        log.info("camera %s: exposure and white balance locked at %s", self.device, controls)

    def _start_opencv(self) -> bool:
        s = self.settings
        cap = cv2.VideoCapture(self.device)
        if not cap.isOpened():
            cap.release()
            self._tried.append(f"OpenCV VideoCapture({self.device!r}): could not open")
            return False
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, s.size[0])
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, s.size[1])
        cap.set(cv2.CAP_PROP_FPS, s.fps)
        ok, bgr = cap.read()
        if not ok or bgr is None:
            cap.release()
            self._tried.append(f"OpenCV VideoCapture({self.device!r}): opened but no frame")
            return False
        self._cap = cap
        self._first_opencv = bgr
        self.backend = "opencv"
        if s.lock_exposure:
            # Best effort: V4L2 takes 1 for manual exposure; not every webcam honours it.
            for _ in range(max(0, s.settle_frames - 1)):
                cap.read()
            cap.set(cv2.CAP_PROP_AUTO_EXPOSURE, 1)
            cap.set(cv2.CAP_PROP_AUTO_WB, 0)
            if s.settle_frames > 1:
                self._first_opencv = None  # taken before exposure settled: not kept
        got = (bgr.shape[1], bgr.shape[0])
        if got != tuple(s.size):
            log.warning("camera %s delivers %sx%s, not the %sx%s asked", self.device, *got, *s.size)
        log.info("camera %s: OpenCV VideoCapture %sx%s", self.device, *got)
        return True

    def stop(self) -> None:
        if self._picam is not None:
            cam, self._picam = self._picam, None
            try:
                cam.stop()
            finally:
                cam.close()
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    # --- capture ---
    def frames(self) -> Iterator[Frame]:
        if self._picam is None and self._cap is None:
            self.start()
        index = 0
        while True:
            image = self._read()
            if image is None:
                return
            yield Frame(index, self.clock.now(), image)
            index += 1

    def _picamera2_request(self) -> Any:
        """The next completed request, or SourceError when none comes within the timeout.

        The caller releases it. Asks asynchronously (`wait=False`) and waits on the job with
        a deadline, so a camera that stops delivering is reported, not waited on forever.
        """
        cam = self._picam
        job = cam.capture_request(wait=False)
        try:
            return cam.wait(job, timeout=self.settings.read_timeout_s)
        except TimeoutError as err:
            raise SourceError(
                f"camera {self.device}: stopped delivering frames for "
                f"{self.settings.read_timeout_s:.1f} s; {CAMERA_HELP}"
            ) from err

    def _read(self) -> np.ndarray | None:
        if self._picam is not None:
            request = self._picamera2_request()
            try:
                array = request.make_array("main")
            finally:
                request.release()  # every buffer goes back to the camera
            return np.ascontiguousarray(array[:, :, :3])
        if self._cap is None:
            return None
        if self._first_opencv is not None:
            first, self._first_opencv = self._first_opencv, None
            return as_rgb(first, source=self.name)
        deadline = time.monotonic() + self.settings.read_timeout_s
        while True:
            ok, bgr = self._cap.read()
            if ok and bgr is not None:
                return as_rgb(bgr, source=self.name)
            if isinstance(self.device, str) and not self.device.startswith("/dev/"):
                return None  # a file or stream standing in for a device: its end is the end
            if time.monotonic() > deadline:
                raise SourceError(
                    f"camera {self.device}: stopped delivering frames for "
                    f"{self.settings.read_timeout_s:.1f} s; {CAMERA_HELP}"
                )
            time.sleep(0.01)


class ThreadedSource(FrameSource):
    """Capture on its own thread into a short queue; the oldest frame is dropped when full.

    `drops` counts frames dropped because the consumer fell behind. An error in the capture
    thread is raised to the consumer once the frames before it have been consumed. With
    `drop_oldest=False` the capture thread waits instead (replay that must not lose frames).
    """

    def __init__(self, source: FrameSource, *, maxsize: int = 2, drop_oldest: bool = True):
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.source = source
        self.maxsize = maxsize
        self.drop_oldest = drop_oldest
        self.name = source.name
        self.fps = source.fps
        self.drops = 0
        """Frames dropped because the queue was full."""
        self.captured = 0
        """Frames received from the source."""
        self._queue: deque[Frame] = deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._done = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.source.start()
        self.fps = self.source.fps
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"capture {self.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for frame in self.source.frames():
                with self._cond:
                    while not self.drop_oldest and len(self._queue) >= self.maxsize:
                        if self._stop.is_set():
                            return
                        self._cond.wait(0.1)
                    if self._stop.is_set():
                        return
                    self.captured += 1
                    if len(self._queue) >= self.maxsize:
                        self._queue.popleft()
                        self.drops += 1
                    self._queue.append(frame)
                    self._cond.notify_all()
        except BaseException as err:  # handed to the consumer, never lost
            self._error = err
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    @property
    def start_at(self) -> float | None:  # type: ignore[override]
        """The wrapped source's `start_at` (set once its capture thread began reading)."""
        return self.source.start_at

    @property
    def finished(self) -> bool:
        """True when the source has ended and every queued frame has been taken."""
        with self._cond:
            return self._done and not self._queue

    def get(self, timeout: float | None = None) -> Frame | None:
        """The next frame; None when none arrived within `timeout` seconds (a stall).

        Raises StopIteration at the end of the stream, and the capture thread's error (if
        any) once the frames before it have been taken.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._queue:
                if self._done:
                    if self._error is not None:
                        err, self._error = self._error, None
                        raise err
                    raise StopIteration
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            frame = self._queue.popleft()
            self._cond.notify_all()
            return frame

    def frames(self) -> Iterator[Frame]:
        if self._thread is None:
            self.start()
        while True:
            try:
                frame = self.get(timeout=None)
            except StopIteration:
                return
            if frame is not None:
                yield frame

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        # Join before releasing the device: never release a capture another thread reads.
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            if self._thread.is_alive():
                log.warning("%s: capture thread did not stop within 5 s", self.name)
            self._thread = None
        self.source.stop()


def open_source(
    *,
    camera: int | str | None = None,
    video: str | Path | None = None,
    images: str | Path | None = None,
    realtime: bool = False,
    clock: Clock | None = None,
    camera_settings: CameraSettings | None = None,
    images_fps: float = 1.0,
) -> FrameSource:
    """Build the one source asked for (exactly one of camera, video, images).

    The source is not started: use it as a context manager.
    """
    given = [
        name
        for name, v in (("camera", camera), ("video", video), ("images", images))
        if v is not None
    ]
    if len(given) != 1:
        raise SourceError(
            f"give exactly one frame source (--camera, --video or --images), got {given or 'none'}"
        )
    if camera is not None:
        return CameraSource(camera, camera_settings, clock=clock)
    if video is not None:
        return VideoSource(video, realtime=realtime, clock=clock)
    assert images is not None
    return ImageFolderSource(images, fps=images_fps)
