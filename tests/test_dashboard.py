"""The dashboard serves the page, JSON, Prometheus metrics and the annotated frame of a Status."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from sorter.errors import ConfigError
from sorter.monitor.dashboard import derive_alarms, parse_bind, render_frame, serve
from sorter.monitor.status import Overlay, Status


def _get(url: str, *, method: str = "GET", headers: dict[str, str] | None = None) -> Any:
    req = urllib.request.Request(url, method=method, headers=headers or {})
    return urllib.request.urlopen(req, timeout=10)


def _status_code(url: str, **kw: Any) -> int:
    try:
        with _get(url, **kw) as r:
            return int(r.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def _belt_frame() -> np.ndarray:
    frame = np.full((240, 320, 3), (30, 90, 30), dtype=np.uint8)  # green belt
    frame[100:140, 60:160] = (40, 160, 40)  # a cucumber
    return frame


@pytest.fixture
def status() -> Status:
    s = Status(url="sim://")
    s.line_x = 160.0
    for _ in range(5):
        s.frame_in()
    s.frame_dropped(2)
    s.frame_done(
        _belt_frame(),
        [Overlay(id=7, box=(60, 100, 100, 40), grade="L", confidence=0.93, bin="L")],
    )
    crop = np.zeros((32, 32, 3), dtype=np.uint8)
    crop[:, :, 1] = 200
    record = {"item": 7, "t_line": 1.5, "label": "L", "confidence": 0.93, "bin": "L", "gate": 5}
    s.decided({**record, "status": "pending"}, latency_s=0.012, crop=crop)
    s.decided({**record, "item": 8, "label": "C", "bin": "reject", "gate": None}, 0.03)
    s.fate(7, "fired")
    s.set_link("connected", safe=False)
    s.event("FIRED", "item 7 gate 5")
    return s


@pytest.fixture
def server(status: Status) -> Iterator[Any]:
    with serve(status, "127.0.0.1", 0) as srv:
        yield srv


def test_page_and_its_files_are_served(server: Any) -> None:
    with _get(server.url) as r:
        page = r.read().decode()
        assert r.headers["Content-Type"].startswith("text/html")
        assert "no-store" in r.headers["Cache-Control"]
    assert '<img id="frame"' in page and 'src="static/app.js"' in page
    with _get(server.url + "static/app.js") as r:
        js = r.read().decode()
    assert "api/status" in js and "frame.jpg" in js
    assert len(js) < 8000  # "a few KB of JavaScript"
    with _get(server.url + "static/style.css") as r:
        assert r.headers["Content-Type"].startswith("text/css")
    assert _status_code(server.url + "static/../dashboard.py") == 404
    assert _status_code(server.url + "nope") == 404


def test_api_status_reports_what_the_loop_counted(server: Any) -> None:
    with _get(server.url + "api/status") as r:
        snap = json.load(r)
    assert snap["items"] == 2
    assert snap["bins"] == {"L": 1, "reject": 1}
    assert snap["grades"] == {"L": 1, "C": 1}
    assert snap["drops"] == 2 and snap["frames"] == 1 and snap["frames_in"] == 5
    assert snap["link"]["state"] == "connected"
    assert [d["item"] for d in snap["decisions"]] == [8, 7]
    assert snap["decisions"][1]["status"] == "fired"
    assert snap["events"][0]["kind"] == "FIRED"
    assert snap["latency_ms"]["buckets"][-1][1] == 2
    assert snap["alarms"] == []


def test_metrics_match_the_page(server: Any) -> None:
    with _get(server.url + "metrics") as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    assert 'sorter_items_total{bin="L",grade="L"} 1.0' in text
    assert 'sorter_items_total{bin="reject",grade="C"} 1.0' in text
    assert "sorter_frames_dropped_total 2.0" in text
    assert 'sorter_latency_seconds_bucket{le="0.02"} 1.0' in text
    assert "sorter_latency_seconds_count 2.0" in text
    assert "sorter_link_up 1.0" in text


def test_frame_is_a_jpeg_with_boxes_and_the_decision_line(server: Any) -> None:
    with _get(server.url + "frame.jpg") as r:
        assert r.headers["Content-Type"] == "image/jpeg"
        data = r.read()
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (240, 320, 3)
    near_line = img[5:30, 157:164].astype(int)  # on the decision line, far from the item
    redness = near_line[:, :, 2] - near_line[:, :, 1]  # BGR: red minus green
    assert redness.max(axis=1).min() > 80  # a red line in every row
    plain = cv2.cvtColor(_belt_frame(), cv2.COLOR_RGB2BGR)
    # the box outline around the item differs from the plain belt there
    assert np.abs(img[100, 60:160].astype(int) - plain[100, 60:160].astype(int)).mean() > 40


def test_crop_of_a_recent_decision_and_404_for_unknown(server: Any) -> None:
    with _get(server.url + "crop/7.jpg") as r:
        crop = cv2.imdecode(np.frombuffer(r.read(), np.uint8), cv2.IMREAD_COLOR)
    assert crop.shape == (32, 32, 3) and crop[:, :, 1].mean() > 150
    assert _status_code(server.url + "crop/8.jpg") == 404  # decided without a crop
    assert _status_code(server.url + "crop/abc.jpg") == 404


def test_placeholder_before_the_first_frame() -> None:
    with serve(Status(), "127.0.0.1", 0) as srv, _get(srv.url + "frame.jpg") as r:
        img = cv2.imdecode(np.frombuffer(r.read(), np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.shape == (240, 320, 3)


def test_read_only_every_write_method_is_refused(server: Any) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert _status_code(server.url + "api/status", method=method) == 405
    assert _status_code(server.url + "api/status", method="HEAD") == 200


def test_off_localhost_needs_a_token_and_every_request_checks_it(status: Status) -> None:
    with pytest.raises(ConfigError, match="needs a token"):
        serve(status, "0.0.0.0", 0)
    with serve(status, "0.0.0.0", 0, token="s3cret") as srv:
        base = srv.url
        assert _status_code(base) == 401
        assert _status_code(base + "api/status") == 401
        assert _status_code(base + "metrics") == 401
        assert _status_code(base + "frame.jpg?token=wrong") == 401
        assert _status_code(base + "api/status", headers={"Authorization": "Bearer no"}) == 401
        with _get(base + "?token=s3cret") as r:
            cookie = r.headers["Set-Cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        auth = {"Authorization": "Bearer s3cret"}
        assert _status_code(base + "metrics", headers=auth) == 200
        assert _status_code(base + "api/status", headers={"Cookie": cookie.split(";")[0]}) == 200
        assert _status_code(base + "api/status?token=s3cret", method="POST") == 405


def test_stop_releases_the_port(status: Status) -> None:
    srv = serve(status, "127.0.0.1", 0)
    port = srv.port
    srv.stop()
    srv.stop()  # idempotent
    with pytest.raises(urllib.error.URLError):
        _get(f"http://127.0.0.1:{port}/healthz")
    # the port is free again
    with serve(status, "127.0.0.1", port) as again:
        assert again.port == port


def test_port_in_use_is_a_clear_error(server: Any, status: Status) -> None:
    with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{server.port}"):
        serve(status, "127.0.0.1", server.port)


def test_alarms_are_derived_when_the_loop_raised_none() -> None:
    snap = {"last_frame_age_s": 7.5, "link": {"state": "lost", "safe": True}, "alarms": []}
    kinds = [a["kind"] for a in derive_alarms(snap)]
    assert kinds == ["camera_stalled", "controller_lost", "safe_state"]
    own = {"alarms": [{"kind": "camera_stalled", "text": "stall 3 s"}], "last_frame_age_s": 9}
    assert derive_alarms(own) == [{"kind": "camera_stalled", "text": "stall 3 s"}]
    assert derive_alarms({"last_frame_age_s": 0.1, "link": {"state": "connected"}}) == []


def test_alarms_reach_the_page(status: Status) -> None:
    status.set_link("lost", safe=True)
    status.alarm("camera_stalled", "no frames for 3.0 s")
    with serve(status, "127.0.0.1", 0) as srv, _get(srv.url + "api/status") as r:
        kinds = {a["kind"] for a in json.load(r)["alarms"]}
    assert kinds == {"camera_stalled", "controller_lost", "safe_state"}


def test_render_frame_leaves_the_input_untouched() -> None:
    frame = _belt_frame()
    before = frame.copy()
    out = render_frame(frame, [{"id": 1, "box": [10, 10, 20, 20]}], line_x=50)
    assert np.array_equal(frame, before)
    assert not np.array_equal(out, frame)


def test_status_without_registry_gets_metrics_from_its_snapshot() -> None:
    class Minimal:
        def snapshot(self) -> dict[str, Any]:
            return {
                "frames": 3,
                "drops": 1,
                "bins": {"L": 2},
                "items_per_min": 12.0,
                "latency_ms": {"p50": float("nan"), "p99": np.float32("inf")},
            }

    with serve(Minimal(), "127.0.0.1", 0) as srv:
        with _get(srv.url + "metrics") as r:
            text = r.read().decode()
        assert 'sorter_items_total{bin="L"} 2.0' in text
        assert "sorter_items_per_minute 12.0" in text
        assert _status_code(srv.url + "frame.jpg") == 200
        with _get(srv.url + "api/status") as r:
            assert json.load(r)["latency_ms"] == {"p50": None, "p99": None}  # valid JSON


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("0.0.0.0:9000", ("0.0.0.0", 9000)),
        (":9001", ("127.0.0.1", 9001)),
        ("9002", ("127.0.0.1", 9002)),
        ("pi.local", ("pi.local", 8080)),
        ("[::1]:8081", ("::1", 8081)),
    ],
)
def test_parse_bind(text: str, expected: tuple[str, int]) -> None:
    assert parse_bind(text) == expected


def test_parse_bind_rejects_garbage() -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_bind("host:port")


# ------------------------------------------------------------------------------------------
# In a real headless browser: Debian's chromium, driven over the DevTools protocol on a pipe
# (--remote-debugging-pipe: JSON messages separated by NUL on fds 3 and 4; no extra packages).

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class _Browser:
    """A headless chromium and one page, controlled with DevTools protocol commands."""

    def __init__(self, profile: Path) -> None:
        assert CHROMIUM is not None
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        args = [
            "--headless",
            "--no-sandbox",  # tests run as root in containers
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "--window-size=1000,1400",
            "about:blank",
        ]
        wrapper = f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w}'
        self.proc = subprocess.Popen(
            ["bash", "-c", wrapper, CHROMIUM, *args],
            pass_fds=(to_browser_r, from_browser_w),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buf = b""
        self._id = 0
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        attached = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})
        self.session = attached["sessionId"]

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + 30.0
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    assert "error" not in reply, reply
                    return dict(reply.get("result", {}))
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"chromium did not answer {method}"
            ready, _, _ = select.select([self._from_browser], [], [], remaining)
            if ready:
                chunk = os.read(self._from_browser, 1 << 16)
                assert chunk, "chromium closed the DevTools pipe"
                self._buf += chunk

    def goto(self, url: str) -> None:
        self.call("Page.navigate", {"url": url}, self.session)

    def js(self, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True}, self.session
        )
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 15.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expression}")

    def close(self) -> None:
        os.close(self._to_browser)  # chromium exits when its pipe closes
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        os.close(self._from_browser)


class _Replay:
    """Plays a video through a real Status in real time, as the loop does: frames in and
    processed, the latest frame with an item box, and a decision every `every` frames."""

    def __init__(self, video: Path, status: Status, every: int = 4) -> None:
        self.video, self.status, self.every = video, status, every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from sorter.perception.sources import VideoSource

        grades = ("2L", "L", "M", "S", "C")
        while not self.stop.is_set():
            with VideoSource(self.video, realtime=True) as source:
                for frame in source:
                    if self.stop.is_set():
                        return
                    self.status.frame_in()
                    x = 4 * (frame.index % 40)
                    box = Overlay(id=frame.index // self.every, box=(x, 40, 30, 30))
                    self.status.frame_done(frame.image, [box])
                    if frame.index % self.every == 0:
                        item = self.status.items + 1
                        grade = grades[item % len(grades)]
                        record = {
                            "item": item,
                            "t_line": frame.t,
                            "label": grade,
                            "confidence": 0.9,
                            "bin": grade,
                            "gate": item % 5,
                            "status": "fired",
                        }
                        crop = frame.image[40:70, min(x, 130) : min(x, 130) + 30]  # 30x30
                        self.status.decided(record, latency_s=0.004 * (item % 7), crop=crop)
                        self.status.event("FIRED", f"item {item} gate {item % 5}")

    def __enter__(self) -> _Replay:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def short_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("replay") / "belt.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 20.0, (160, 120))
    for i in range(40):
        frame = np.full((120, 160, 3), (20, 80, 200), np.uint8)
        cv2.rectangle(frame, (4 * i, 40), (4 * i + 30, 70), (40, 200, 40), -1)
        writer.write(frame)
    writer.release()
    return path


def test_in_a_real_browser_counts_move_the_frame_shows_and_the_token_is_enforced(
    tmp_path: Path, short_video: Path
) -> None:
    assert CHROMIUM, "chromium is missing: `make sysdeps-test` installs it (apt install chromium)"
    status = Status(url="sim://", lane="4")  # a packhouse lane: its id in the heading
    status.set_link("connected", safe=False)
    browser = _Browser(tmp_path / "profile")
    try:
        with _Replay(short_video, status), serve(status, "127.0.0.1", 0) as srv:
            browser.goto(srv.url)
            items = "Number(document.getElementById('items').textContent)"
            first = browser.wait_for(f"{items} > 0 && {items}")
            browser.wait_for(f"{items} > {first}")  # the counts move
            # the live view is a real decoded JPEG of the frame size
            assert browser.wait_for("document.getElementById('frame').naturalWidth === 160")
            assert browser.js("document.querySelectorAll('#bins .row').length") >= 2
            assert browser.wait_for("document.querySelectorAll('#decisions tr').length") >= 1
            assert browser.js("document.getElementById('link').textContent") == "link: connected"
            assert browser.js("document.getElementById('title').textContent") == (
                "produce-sorter lane 4"
            )
            assert browser.js("document.title") == "lane 4 - produce-sorter"
            assert browser.js("document.querySelectorAll('#hist div').length") == 9
            assert (
                browser.wait_for(
                    "document.querySelector('#decisions img') && "
                    "document.querySelector('#decisions img').naturalWidth"
                )
                == 30
            )  # the crop of the latest decision
        with _Replay(short_video, status), serve(status, "0.0.0.0", 0, token="farm-42") as srv:
            browser.goto(srv.url)
            body = browser.wait_for("document.body && document.body.innerText")
            assert "token required" in body
            browser.goto(srv.url + "?token=farm-42")
            assert browser.wait_for(f"{items} > 0 && {items}")
            assert browser.wait_for("document.getElementById('frame').naturalWidth === 160")
            alarms = "document.getElementById('alarms').hidden"
            assert browser.js(alarms) is True
    finally:
        browser.close()
