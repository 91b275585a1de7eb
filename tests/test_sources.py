"""Frame sources: video replay, image folders, cameras (OpenCV stand-in, fake picamera2)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from sorter.errors import SourceError
from sorter.perception.sources import (
    CameraSettings,
    CameraSource,
    Frame,
    FrameSource,
    ImageFolderSource,
    ThreadedSource,
    VideoSource,
    open_source,
)
from tests.fakes import picamera2 as fake_picamera2

COLOUR_RGB = (200, 60, 20)


def write_video(path: Path, n: int, fps: float = 10.0, fourcc: str = "mp4v") -> Path:
    """n frames of 64x48: a flat COLOUR_RGB frame with a bright bar whose x is the index."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), fps, (64, 48))
    assert writer.isOpened()
    for i in range(n):
        rgb = np.empty((48, 64, 3), np.uint8)
        rgb[:] = COLOUR_RGB
        rgb[:, i % 60 : i % 60 + 4] = 255
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


class StepClock:
    """A clock whose sleep advances it exactly (records every sleep)."""

    def __init__(self) -> None:
        self.t = 100.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


def test_video_frames_have_index_over_fps_times_and_rgb_pixels(tmp_path: Path) -> None:
    video = write_video(tmp_path / "v.mp4", 12, fps=10.0)
    with open_source(video=video) as src:
        frames = list(src)
    assert [f.index for f in frames] == list(range(12))
    assert [f.t for f in frames] == pytest.approx([i / 10.0 for i in range(12)])
    first = frames[0].image
    assert first.shape == (48, 64, 3) and first.dtype == np.uint8
    # RGB order (not OpenCV's BGR), within mp4 compression error.
    assert np.abs(first[:, 40].astype(int).mean(axis=0) - COLOUR_RGB).max() < 12


def test_realtime_replay_waits_on_the_clock_until_each_frame_time(tmp_path: Path) -> None:
    video = write_video(tmp_path / "v.mp4", 5, fps=10.0)
    clock = StepClock()
    seen = []
    with VideoSource(video, realtime=True, clock=clock) as src:
        for frame in src:
            seen.append((frame.t, clock.now()))
    start = 100.0
    for t, now in seen:
        assert now == pytest.approx(start + t)
    assert len(clock.sleeps) == 4  # frame 0 is due at once


def test_fast_replay_does_not_sleep(tmp_path: Path) -> None:
    video = write_video(tmp_path / "v.mp4", 5)
    clock = StepClock()
    with VideoSource(video, realtime=False, clock=clock) as src:
        assert len(list(src)) == 5
    assert clock.sleeps == []


def test_truncated_video_yields_what_decoded_then_raises(tmp_path: Path) -> None:
    video = write_video(tmp_path / "v.avi", 40, fourcc="MJPG")
    data = video.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    kept = []
    with (
        pytest.raises(SourceError, match=r"cut\.avi: video stops after frame \d+ of 40"),
        VideoSource(cut) as src,
    ):
        for frame in src:
            kept.append(frame.index)
    assert 0 < len(kept) < 40
    assert kept == list(range(len(kept)))


def test_unreadable_or_missing_video_is_a_clear_error(tmp_path: Path) -> None:
    with (
        pytest.raises(SourceError, match=r"nope\.mp4: video file not found"),
        open_source(video=tmp_path / "nope.mp4"),
    ):
        pass
    broken = tmp_path / "broken.mp4"
    data = write_video(tmp_path / "v.mp4", 10).read_bytes()
    broken.write_bytes(data[: len(data) // 2])  # mp4v puts its index at the end: all lost
    with pytest.raises(SourceError, match=r"broken\.mp4: cannot decode"), open_source(video=broken):
        pass


def test_open_source_needs_exactly_one_source(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="exactly one"):
        open_source()
    with pytest.raises(SourceError, match="exactly one"):
        open_source(camera=0, video=tmp_path / "v.mp4")


def test_image_folder_yields_sorted_images_then_names_a_bad_file(tmp_path: Path) -> None:
    for name, value in (("b.png", 20), ("a.png", 10), ("sub/c.png", 30)):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / name), np.full((8, 9, 3), value, np.uint8))
    with ImageFolderSource(tmp_path, fps=2.0) as src:
        frames = list(src)
    assert [Path(f.name or "").name for f in frames] == ["a.png", "b.png", "c.png"]
    assert [f.t for f in frames] == [0.0, 0.5, 1.0]
    assert frames[1].image.shape == (8, 9, 3)
    (tmp_path / "z.png").write_bytes(b"not a png")
    got = []
    with pytest.raises(SourceError, match=r"z\.png"), ImageFolderSource(tmp_path) as src:
        got.extend(src)
    assert len(got) == 3


def test_empty_image_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no images found"), ImageFolderSource(tmp_path):
        pass


# --- cameras ---


@pytest.fixture
def no_picamera2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import fails like off a Pi


@pytest.fixture
def fake_pi(monkeypatch: pytest.MonkeyPatch) -> object:
    monkeypatch.setitem(sys.modules, "picamera2", fake_picamera2)
    monkeypatch.setattr(fake_picamera2, "BUSY", False)
    monkeypatch.setattr(fake_picamera2, "STALL_AFTER", None)
    monkeypatch.setattr(fake_picamera2, "CAMERAS", list(fake_picamera2.CAMERAS))
    fake_picamera2.OPENED.clear()
    return fake_picamera2


def test_opencv_camera_path_on_a_video_device_stand_in(tmp_path: Path, no_picamera2: None) -> None:
    """VideoCapture given a file stands in for /dev/videoN: same code path, real decoder."""
    video = write_video(tmp_path / "cam.mp4", 20)
    settings = CameraSettings(size=(64, 48), settle_frames=3)
    with CameraSource(str(video), settings) as cam:
        assert cam.backend == "opencv"
        frames = list(cam)
    assert len(frames) == 17  # three were spent settling before exposure was locked
    times = [f.t for f in frames]
    assert times == sorted(times)
    assert frames[0].image.shape == (48, 64, 3)
    assert np.abs(frames[0].image[:, 40].astype(int).mean(axis=0) - COLOUR_RGB).max() < 12


def test_missing_camera_names_what_was_tried_and_how_to_check(no_picamera2: None) -> None:
    with pytest.raises(SourceError) as info, CameraSource(57, CameraSettings(backend="auto")):
        pass
    msg = str(info.value)
    assert "camera 57" in msg and "picamera2: not installed" in msg
    assert "VideoCapture(57)" in msg
    assert "libcamera-hello" in msg and "v4l2-ctl --list-devices" in msg


def test_picamera2_fixed_configuration_locked_exposure_rgb_frames(fake_pi: object) -> None:
    settings = CameraSettings(size=(64, 48), fps=25.0, settle_frames=12)
    with CameraSource(0, settings) as cam:
        assert cam.backend == "picamera2"
        frames = [f for _, f in zip(range(3), cam, strict=False)]
        picam = fake_picamera2.OPENED[-1]
        assert picam.config is not None
        assert picam.config["main"] == {"format": "BGR888", "size": (64, 48)}
        assert picam.config["controls"]["FrameDurationLimits"] == (40_000, 40_000)
        locked = picam.control_calls[-1]
        assert locked["AeEnable"] is False and locked["AwbEnable"] is False
        # Locked at the settled values the camera reported.
        assert locked["ExposureTime"] == 12_000 and locked["ColourGains"] == (1.8, 1.5)
        assert picam.outstanding == 0  # every request given back
    assert picam.closed
    assert frames[0].image.shape == (48, 64, 3)
    assert tuple(frames[0].image[10, 10]) == fake_picamera2.SCENE_RGB
    assert [f.index for f in frames] == [0, 1, 2]
    assert frames[0].t <= frames[1].t <= frames[2].t


def test_busy_picamera2_is_reported_with_the_reason(fake_pi: object) -> None:
    fake_picamera2.BUSY = True
    with (
        pytest.raises(SourceError, match=r"resource busy.*libcamera-hello"),
        CameraSource(0, CameraSettings(backend="picamera2")),
    ):
        pass


def test_picamera2_that_stops_delivering_is_reported(fake_pi: object) -> None:
    fake_picamera2.STALL_AFTER = 8  # 5 settle frames, then 3 frames, then nothing
    got = []
    with (
        pytest.raises(SourceError, match=r"camera 0: stopped delivering frames"),
        CameraSource(0, CameraSettings(size=(32, 24), settle_frames=5)) as cam,
    ):
        got.extend(f.index for f in cam)
    assert got == [0, 1, 2]
    picam = fake_picamera2.OPENED[-1]
    assert picam.outstanding == 0 and picam.closed


def test_no_csi_camera_falls_back_to_opencv(fake_pi: object) -> None:
    fake_picamera2.CAMERAS.clear()
    with pytest.raises(SourceError) as info, CameraSource(57):
        pass
    assert "0 CSI camera(s)" in str(info.value) and "VideoCapture(57)" in str(info.value)


# --- capture thread ---


class ListSource(FrameSource):
    """Frames from a list; optionally raises after them, or pauses before one."""

    def __init__(
        self, n: int, error: Exception | None = None, pause: threading.Event | None = None
    ):
        self.n = n
        self.error = error
        self.pause = pause
        self.stopped = False

    def frames(self) -> Iterator[Frame]:
        for i in range(self.n):
            if self.pause is not None and i == 1:
                self.pause.wait(5.0)
            yield Frame(i, i / 30, np.zeros((2, 2, 3), np.uint8))
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        self.stopped = True


def test_threaded_source_keeps_newest_frames_and_counts_drops() -> None:
    threaded = ThreadedSource(ListSource(20), maxsize=2)
    threaded.start()
    assert threaded._thread is not None
    threaded._thread.join(5.0)  # consumer asleep: capture runs ahead
    got = [f.index for f in threaded]
    threaded.stop()
    assert got == [18, 19]
    assert threaded.drops == 18 and threaded.captured == 20
    assert threaded.source.stopped  # type: ignore[attr-defined]


def test_threaded_source_hands_over_errors_after_the_frames_before_them() -> None:
    src = ListSource(3, error=SourceError("camera 0: stopped delivering frames"))
    got = []
    with (
        pytest.raises(SourceError, match="stopped delivering"),
        ThreadedSource(src, maxsize=1, drop_oldest=False) as threaded,
    ):
        got.extend(f.index for f in threaded)
    assert got == [0, 1, 2]


def test_threaded_source_reports_a_stall_as_none() -> None:
    pause = threading.Event()
    with ThreadedSource(ListSource(3, pause=pause), maxsize=2) as threaded:
        first = threaded.get(timeout=5.0)
        assert first is not None and first.index == 0
        assert threaded.get(timeout=0.05) is None  # nothing comes: a stall
        pause.set()
        rest = [f.index for f in threaded]
    assert rest == [1, 2]
    assert threaded.finished
