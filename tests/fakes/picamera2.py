"""A fake `picamera2` module with the real module's interface (the parts the sorter uses).

Install it for a test with `monkeypatch.setitem(sys.modules, "picamera2", fake_module)`.
It mimics picamera2 0.3.x: `Picamera2.global_camera_info()`, `Picamera2(camera_num)`,
`create_video_configuration(main=..., controls=..., buffer_count=...)`, `configure`,
`start`, `capture_array(name)`, `capture_metadata()`, `capture_request(wait=False)` (a
job) with `wait(job, timeout)`, `captured_request()` (a context manager yielding a request
with `make_array(name)` / `get_metadata()` / `release()`), `set_controls`, `stop`, `close`,
`camera_controls`, `sensor_resolution`.

Frames: format "BGR888" (libcamera's name for R, G, B byte order) gives RGB arrays; the
scene is a fixed colour (`SCENE_RGB`) with the frame number in pixel (0, 0). Automatic
exposure and white balance "settle": the metadata converges over the first frames, and
once `AeEnable`/`AwbEnable` are switched off the values set are the values reported.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

SCENE_RGB = (200, 100, 50)
"""The colour every fake frame shows (R, G, B)."""

CAMERAS: list[dict[str, Any]] = [
    {
        "Model": "imx708",
        "Location": 2,
        "Rotation": 180,
        "Id": "/base/soc/i2c0mux/i2c@1/imx708@1a",
        "Num": 0,
    }
]
"""What global_camera_info() reports; tests empty it to simulate no CSI camera."""

BUSY = False
"""When True, opening a camera fails as a busy camera does (another process holds it)."""

OPENED: list[Picamera2] = []
"""Every camera object created (tests inspect their calls)."""

STALL_AFTER: int | None = None
"""When set, the camera delivers this many frames and then none (waits time out)."""


class Job:
    """What picamera2 hands back for `wait=False`: a result to wait for with a timeout."""

    def __init__(self, camera: Picamera2) -> None:
        self._camera = camera

    def get_result(self, timeout: float | None = None) -> CompletedRequest:
        if STALL_AFTER is not None and self._camera.frame >= STALL_AFTER:
            raise TimeoutError("fake camera: no frame")  # the real one waits `timeout` first
        return self._camera._next()


class CompletedRequest:
    """One captured request: buffers plus metadata, returned to the camera on release."""

    def __init__(self, camera: Picamera2, array: np.ndarray, metadata: dict[str, Any]) -> None:
        self._camera = camera
        self._array = array
        self._metadata = metadata
        self.released = False

    def make_array(self, name: str = "main") -> np.ndarray:
        if self.released:
            raise RuntimeError("request already released")
        if name != "main":
            raise KeyError(name)
        return self._array.copy()

    def get_metadata(self) -> dict[str, Any]:
        return dict(self._metadata)

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._camera.outstanding -= 1


class Picamera2:
    """The fake camera."""

    def __init__(self, camera_num: int = 0, tuning: Any = None) -> None:
        if BUSY:
            raise RuntimeError("Failed to acquire camera: Device or resource busy")
        if camera_num >= len(CAMERAS):
            raise IndexError("list index out of range")
        self.camera_num = camera_num
        self.sensor_resolution = (4608, 2592)
        self.camera_controls: dict[str, tuple[Any, Any, Any]] = {
            "AeEnable": (False, True, True),
            "AwbEnable": (False, True, True),
            "ExposureTime": (26, 220_000_000, 20_000),
            "AnalogueGain": (1.0, 16.0, 1.0),
            "ColourGains": (0.0, 32.0, None),
            "FrameDurationLimits": (33_333, 120_000_000, 33_333),
        }
        self.config: dict[str, Any] | None = None
        self.started = False
        self.closed = False
        self.controls: dict[str, Any] = {"AeEnable": True, "AwbEnable": True}
        self.control_calls: list[dict[str, Any]] = []
        self.frame = 0
        self.outstanding = 0
        OPENED.append(self)

    @staticmethod
    def global_camera_info() -> list[dict[str, Any]]:
        return [dict(c) for c in CAMERAS]

    def create_video_configuration(
        self,
        main: dict[str, Any] | None = None,
        lores: dict[str, Any] | None = None,
        raw: dict[str, Any] | None = None,
        transform: Any = None,
        colour_space: Any = None,
        buffer_count: int = 6,
        controls: dict[str, Any] | None = None,
        display: str | None = "main",
        encode: str | None = "main",
        queue: bool = True,
        sensor: dict[str, Any] | None = None,
        use_case: str = "video",
    ) -> dict[str, Any]:
        main = {"format": "XBGR8888", "size": (1280, 720), **(main or {})}
        if main["format"] not in ("XBGR8888", "XRGB8888", "BGR888", "RGB888", "YUV420"):
            raise RuntimeError(f"unknown format {main['format']}")
        return {
            "use_case": use_case,
            "main": main,
            "lores": lores,
            "raw": raw,
            "buffer_count": buffer_count,
            "controls": dict(controls or {}),
            "queue": queue,
        }

    def configure(self, camera_config: dict[str, Any]) -> None:
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        self.config = camera_config
        self.controls.update(camera_config.get("controls", {}))

    def start(self, config: dict[str, Any] | None = None, show_preview: bool = False) -> None:
        if config is not None:
            self.configure(config)
        if self.config is None:
            raise RuntimeError("Camera has not been configured")
        self.started = True

    def stop(self) -> None:
        self.started = False

    def close(self) -> None:
        self.stop()
        self.closed = True

    def set_controls(self, controls: dict[str, Any]) -> None:
        for key in controls:
            if key not in self.camera_controls:
                raise RuntimeError(f"Control {key} is not advertised by libcamera")
        self.control_calls.append(dict(controls))
        self.controls.update(controls)

    # --- capture ---
    def _metadata(self) -> dict[str, Any]:
        settle = min(1.0, self.frame / 10)
        md: dict[str, Any] = {
            "SensorTimestamp": 1_000_000_000 + self.frame * 33_333_000,
            "FrameDuration": 33_333,
        }
        if self.controls.get("AeEnable", True):
            md["ExposureTime"] = int(30_000 - 18_000 * settle)
            md["AnalogueGain"] = round(4.0 - 2.5 * settle, 3)
        else:
            md["ExposureTime"] = self.controls["ExposureTime"]
            md["AnalogueGain"] = self.controls["AnalogueGain"]
        if self.controls.get("AwbEnable", True):
            md["ColourGains"] = (round(1.2 + 0.6 * settle, 3), round(1.9 - 0.4 * settle, 3))
        else:
            md["ColourGains"] = self.controls["ColourGains"]
        return md

    def _array(self) -> np.ndarray:
        assert self.config is not None
        w, h = self.config["main"]["size"]
        fmt = self.config["main"]["format"]
        rgb = np.empty((h, w, 3), dtype=np.uint8)
        rgb[:] = SCENE_RGB
        rgb[0, 0] = (self.frame % 256, 0, 0)
        if fmt == "BGR888":  # libcamera BGR888 = bytes R, G, B
            return rgb
        if fmt == "RGB888":  # bytes B, G, R
            return rgb[:, :, ::-1].copy()
        alpha = np.full((h, w, 1), 255, dtype=np.uint8)
        if fmt == "XBGR8888":  # bytes R, G, B, X
            return np.concatenate([rgb, alpha], axis=2)
        return np.concatenate([rgb[:, :, ::-1], alpha], axis=2)

    def _next(self) -> CompletedRequest:
        if not self.started:
            raise RuntimeError("Camera is not running")
        request = CompletedRequest(self, self._array(), self._metadata())
        self.frame += 1
        self.outstanding += 1
        return request

    def wait(self, job: Job, timeout: float | None = None) -> CompletedRequest:
        return job.get_result(timeout=timeout)

    def capture_request(self, wait: Any = None, flush: Any = None) -> Any:
        job = Job(self)
        return job if wait is False else self.wait(job)

    @contextmanager
    def captured_request(self, wait: Any = None, flush: Any = None) -> Iterator[CompletedRequest]:
        request = self.capture_request(wait=wait, flush=flush)
        try:
            yield request
        finally:
            request.release()

    def capture_array(self, name: str = "main", wait: Any = None) -> np.ndarray:
        with self.captured_request() as request:
            return request.make_array(name)

    def capture_metadata(self, wait: Any = None) -> dict[str, Any]:
        with self.captured_request() as request:
            return request.get_metadata()
