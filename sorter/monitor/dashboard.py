"""The live dashboard: a small read-only web page, JSON at /api/status, Prometheus at /metrics.

`serve(status, host, port)` starts a threaded `http.server` in a background thread and
returns a `DashboardServer` you stop with `.stop()` (or use as a context manager). It only
reads the status object the pipeline updates (`sorter.monitor.status.Status`; the read interface is
in docs/INTERFACES.md): `snapshot()`, `registry`, `latest_frame()`, `crop(item)`.

Routes (GET/HEAD only; anything else is 405 — nothing here changes the machine, except
filing a review answer, POST /api/review, guarded as sorter.monitor.review_web says):
    /                 the page (static/index.html + app.js + style.css, no build step)
    /api/status       the status snapshot as JSON, with alarms derived when the loop set none
    /metrics          Prometheus text format from `status.registry`
    /frame.jpg        the latest processed frame with item boxes, ids, grades and the line
    /crop/<item>.jpg  the crop of a recent decision
    /healthz          "ok"
    /review           the review page for saved crops (with `review=ReviewQueue(...)`)

Broken or hostile clients: each connection has a socket timeout (`timeout_s`, 10 s: a
client that sends its request slower than that is dropped), and at most `max_clients` (16)
are served at once; one more gets `503` at once, before anything is read, so slow clients
cannot pile up threads ahead of the token check. `/crop/<item>.jpg` takes ASCII digits only
(anything else, Unicode digits included, is 404).

Security: it binds to localhost by default. Binding to any other address needs a token
(`[dashboard] token` in the config; install.sh generates one), and when a token is set every
request must carry it (`?token=...`, `Authorization: Bearer ...` or the cookie the page sets).
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import logging
import math
import re
import secrets
import socket
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from sorter.errors import ConfigError
from sorter.monitor.review_web import ReviewRoutes

logger = logging.getLogger(__name__)

__all__ = [
    "DashboardServer",
    "StatusSource",
    "derive_alarms",
    "parse_item",
    "render_frame",
    "serve",
]

TIMEOUT_S = 10.0
"""Socket timeout per client connection (s)."""
MAX_CLIENTS = 16
"""Connections served at once; more get 503 without being read."""
_ITEM = re.compile(r"-?[0-9]{1,18}", re.ASCII)
STALL_AFTER_S = 2.0
"""A frame older than this (and no alarm from the loop) shows as 'camera stalled'."""
JPEG_QUALITY = 80
"""JPEG quality of the live view and crops."""
_STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "review.js": "text/javascript; charset=utf-8",
    "review.css": "text/css; charset=utf-8",
}
_PAGES = ("review.html",)
"""Page files read at start but served by their route (they carry per-session values)."""
_COOKIE = "sorter_token"
_CSP = (
    "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


class StatusSource(Protocol):
    """What the dashboard reads (sorter.monitor.status.Status provides it)."""

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able copy of the live state."""
        ...


@dataclass(frozen=True)
class _Settings:
    """What every request handler needs; shared read-only between threads."""

    status: Any
    """The status object (see StatusSource; registry/latest_frame/crop are optional)."""
    token: str | None
    """Required access token, or None (localhost only)."""
    static: dict[str, bytes] = field(default_factory=dict)
    """The page's files, read once at start."""
    frame_cache: _FrameCache = field(default_factory=lambda: _FrameCache())
    """The last encoded live view, so several viewers cost one encode."""
    review: Any = None
    """The review queue (sorter.monitor.review.ReviewQueue), or None: no review page."""
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    """Key of the review page's CSRF tokens, drawn at start."""


class _FrameCache:
    """Keeps the JPEG of the last frame object seen (frames are replaced, never mutated)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: int | None = None
        self._ref: object | None = None
        self._jpeg: bytes | None = None

    def get(self, frame: object, line_x: float | None, encode: Any) -> bytes:
        with self._lock:
            if self._ref is frame and self._key == _line_key(line_x) and self._jpeg is not None:
                return self._jpeg
        jpeg: bytes = encode()
        with self._lock:
            self._ref, self._key, self._jpeg = frame, _line_key(line_x), jpeg
        return jpeg


def _line_key(line_x: float | None) -> int:
    return -1 if line_x is None else round(line_x)


# ------------------------------------------------------------------------------------------
# Pure helpers (tests call these directly)


def parse_item(text: str) -> int | None:
    """The item number in a /crop/<item>.jpg path: ASCII digits (optional '-') only, else
    None (str.isdigit() also accepts Unicode digits, some of which int() refuses)."""
    return int(text) if _ITEM.fullmatch(text) else None


def derive_alarms(snapshot: dict[str, Any], stall_after_s: float = STALL_AFTER_S) -> list[dict]:
    """The loop's own alarms, plus the ones the snapshot implies that it did not raise.

    camera_stalled: last frame older than `stall_after_s`; controller_lost: link state
    lost/disconnected/error; safe_state: link reports the controller in its safe state.
    """
    alarms = [dict(a) for a in snapshot.get("alarms") or []]
    kinds = {a.get("kind") for a in alarms}
    age = snapshot.get("last_frame_age_s")
    if "camera_stalled" not in kinds and isinstance(age, int | float) and age > stall_after_s:
        alarms.append({"kind": "camera_stalled", "text": f"no frame for {age:.1f} s"})
    link = snapshot.get("link") or {}
    state = str(link.get("state", ""))
    if "controller_lost" not in kinds and state in ("lost", "disconnected", "error"):
        alarms.append({"kind": "controller_lost", "text": f"controller link {state}"})
    if "safe_state" not in kinds and link.get("safe"):
        alarms.append({"kind": "safe_state", "text": "controller in safe state: gates idle"})
    return alarms


_BIN_COLOURS = [
    (46, 204, 113),
    (52, 152, 219),
    (155, 89, 182),
    (241, 196, 15),
    (230, 126, 34),
    (26, 188, 156),
    (236, 112, 99),
    (149, 165, 166),
    (93, 173, 226),
]


def _colour(name: str) -> tuple[int, int, int]:
    """A stable RGB colour per bin name (grey while undecided)."""
    if not name:
        return (200, 200, 200)
    return _BIN_COLOURS[sum(name.encode()) % len(_BIN_COLOURS)]


def render_frame(
    image: np.ndarray, overlays: list[dict[str, Any]], line_x: float | None = None
) -> np.ndarray:
    """A copy of the RGB frame with the decision line and each item's box and label drawn."""
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    out = np.ascontiguousarray(image, dtype=np.uint8).copy()
    h, w = out.shape[:2]
    # Sizes relative to the frame, so labels stay readable when a phone scales it down.
    scale = max(0.4, min(w, h) / 320.0)
    thick = max(2, round(scale * 1.5))
    font = 0.45 * scale
    font_thick = max(1, round(scale))
    if line_x is not None and math.isfinite(line_x):
        x = round(line_x)
        cv2.line(out, (x, 0), (x, h - 1), (255, 60, 60), thick, cv2.LINE_AA)
    for ov in overlays:
        box = ov.get("box") or (0, 0, 0, 0)
        x, y, bw, bh = (round(float(v)) for v in box)
        colour = _colour(str(ov.get("bin") or ""))
        cv2.rectangle(out, (x, y), (x + bw, y + bh), colour, thick)
        label = f"#{ov.get('id', '?')}"
        if ov.get("grade"):
            label += f" {ov['grade']} {100.0 * float(ov.get('confidence') or 0.0):.0f}%"
        if ov.get("bin"):
            label += f" -> {ov['bin']}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font, font_thick)
        ty = y - 4 if y - th - base - 4 >= 0 else y + bh + th + 4
        cv2.rectangle(out, (x, ty - th - base), (x + tw + 4, ty + base), colour, cv2.FILLED)
        cv2.putText(
            out,
            label,
            (x + 2, ty),
            cv2.FONT_HERSHEY_SIMPLEX,
            font,
            (0, 0, 0),
            font_thick,
            cv2.LINE_AA,
        )
    return out


def encode_jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """JPEG bytes of an RGB uint8 image."""
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def _placeholder_jpeg(text: str) -> bytes:
    img = np.full((240, 320, 3), 40, dtype=np.uint8)
    cv2.putText(img, text, (20, 125), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (220, 220, 220), 2)
    return encode_jpeg(img)


class SnapshotCollector(Collector):
    """/metrics for a status object without a prometheus registry: built from snapshot()."""

    def __init__(self, status: StatusSource) -> None:
        self._status = status

    def collect(self) -> Any:
        snap = self._status.snapshot()
        for key, name, doc in (
            ("frames", "sorter_frames_processed", "Frames processed"),
            ("drops", "sorter_frames_dropped", "Frames dropped (queue full)"),
        ):
            if isinstance(snap.get(key), int | float):
                yield CounterMetricFamily(name, doc, value=snap[key])
        items = CounterMetricFamily("sorter_items", "Items decided, by bin", labels=["bin"])
        for bin_name, n in (snap.get("bins") or {}).items():
            items.add_metric([str(bin_name)], n)
        yield items
        for key, name, doc in (
            ("fps_processed", "sorter_fps_processed", "Processing rate, frames per second"),
            ("items_per_min", "sorter_items_per_minute", "Items decided per minute"),
        ):
            if isinstance(snap.get(key), int | float):
                yield GaugeMetricFamily(name, doc, value=snap[key])


# ------------------------------------------------------------------------------------------
# HTTP


class _Handler(ReviewRoutes, BaseHTTPRequestHandler):
    server_version = "produce-sorter-dashboard"
    sys_version = ""
    settings: _Settings  # set on the subclass made per server

    # Read-only: refuse every method that could change anything (but filing a review).
    def do_POST(self) -> None:
        if urlsplit(self.path).path == "/api/review":
            self._head = False
            try:
                self.review_answer()
            except (BrokenPipeError, ConnectionResetError):
                logger.debug("client went away during a review answer")
            return
        self._refuse()

    def do_PUT(self) -> None:
        self._refuse()

    do_DELETE = do_PATCH = do_OPTIONS = do_PUT

    def _refuse(self) -> None:
        self._send(
            HTTPStatus.METHOD_NOT_ALLOWED,
            b"read-only dashboard\n",
            "text/plain",
            {"Allow": "GET, HEAD"},
        )

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    # -- routing ---------------------------------------------------------------------------
    def _dispatch(self, head: bool) -> None:
        self._head = head
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        set_cookie = self._authorise(query)
        if set_cookie is None:
            self._send(
                HTTPStatus.UNAUTHORIZED,
                b"token required: open the page as /?token=... (see [dashboard] token)\n",
                "text/plain",
                {"WWW-Authenticate": 'Bearer realm="produce-sorter"'},
            )
            return
        extra = [("Set-Cookie", set_cookie)] if set_cookie else []
        path = parts.path
        try:
            if path in ("/", "/index.html"):
                self._static("index.html", extra)
            elif path.startswith("/static/") and path[len("/static/") :] in _STATIC_FILES:
                self._static(path[len("/static/") :], extra)
            elif path == "/api/status":
                self._status_json()
            elif path == "/metrics":
                self._metrics()
            elif path == "/frame.jpg":
                self._frame()
            elif path.startswith("/crop/") and path.endswith(".jpg"):
                self._crop(path[len("/crop/") : -len(".jpg")])
            elif path == "/review":
                self.review_page(extra)
            elif path == "/api/review":
                self.review_list()
            elif path.startswith("/review/crop/") and path.endswith(".png"):
                self.review_crop(path[len("/review/crop/") : -len(".png")])
            elif path == "/healthz":
                self._send(HTTPStatus.OK, b"ok\n", "text/plain")
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
        except (BrokenPipeError, ConnectionResetError):
            logger.debug("client went away during %s", path)

    def _authorise(self, query: dict[str, list[str]]) -> str | None:
        """'' when allowed, a Set-Cookie value when allowed by a query token, None if refused."""
        token = self.settings.token
        if not token:
            return ""
        offered: list[tuple[str, str]] = [("query", t) for t in query.get("token", [])]
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            offered.append(("header", auth[7:].strip()))
        for chunk in self.headers.get("Cookie", "").split(";"):
            name, _, value = chunk.strip().partition("=")
            if name == _COOKIE:
                offered.append(("cookie", value))
        for how, value in offered:
            if hmac.compare_digest(value.encode(), token.encode()):
                if how == "query":
                    return f"{_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
                return ""
        return None

    # -- responses -------------------------------------------------------------------------
    def _send(
        self,
        code: HTTPStatus,
        body: bytes,
        ctype: str,
        headers: dict[str, str] | list[tuple[str, str]] | None = None,
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", _CSP)
        pairs = headers.items() if isinstance(headers, dict) else headers or []
        for k, v in pairs:
            self.send_header(k, v)
        self.end_headers()
        if not getattr(self, "_head", False):
            self.wfile.write(body)

    def _static(self, name: str, headers: list[tuple[str, str]]) -> None:
        self._send(HTTPStatus.OK, self.settings.static[name], _STATIC_FILES[name], headers)

    def _status_json(self) -> None:
        snap = self.settings.status.snapshot()
        snap["alarms"] = derive_alarms(snap)
        snap["has_frame"] = callable(getattr(self.settings.status, "latest_frame", None))
        body = json.dumps(_finite(snap), default=_json_default, allow_nan=False).encode()
        self._send(HTTPStatus.OK, body, "application/json")

    def _metrics(self) -> None:
        registry = getattr(self.settings.status, "registry", None)
        if registry is None:
            registry = CollectorRegistry()
            registry.register(SnapshotCollector(self.settings.status))
        self._send(HTTPStatus.OK, generate_latest(registry), CONTENT_TYPE_LATEST)

    def _frame(self) -> None:
        latest = getattr(self.settings.status, "latest_frame", None)
        frame = latest() if callable(latest) else None
        if frame is None:
            body = _placeholder_jpeg("waiting for frames")
        else:
            image, overlays = frame
            status = self.settings.status
            line_x = getattr(status, "line_x", None)
            if line_x is None and not hasattr(status, "line_x"):
                line_x = status.snapshot().get("line_x")
            body = self.settings.frame_cache.get(
                frame, line_x, lambda: encode_jpeg(render_frame(image, overlays, line_x))
            )
        self._send(HTTPStatus.OK, body, "image/jpeg")

    def _crop(self, item_text: str) -> None:
        getter = getattr(self.settings.status, "crop", None)
        crop = None
        item = parse_item(item_text)
        if item is not None and callable(getter):
            crop = getter(item)
        if crop is None:
            self._send(HTTPStatus.NOT_FOUND, b"no crop for that item\n", "text/plain")
            return
        self._send(HTTPStatus.OK, encode_jpeg(np.asarray(crop, dtype=np.uint8)), "image/jpeg")


def _finite(value: Any) -> Any:
    """The snapshot with NaN/inf (not JSON) replaced by None, recursively."""
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


_BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 38\r\n"
    b"Retry-After: 5\r\nConnection: close\r\n\r\ntoo many dashboard clients; try again\n"
)


class _Server(ThreadingHTTPServer):
    """A threaded server that serves at most `max_clients` connections at once."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: Any, max_clients: int) -> None:
        self._slots = threading.BoundedSemaphore(max_clients)
        self._count_lock = threading.Lock()
        self.active = 0
        """Connections being served now."""
        self.refused = 0
        """Connections answered 503 because `max_clients` were being served."""
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            with self._count_lock:
                self.refused += 1
            _refuse_busy(request)
            self.shutdown_request(request)
            return
        with self._count_lock:
            self.active += 1
        try:
            super().process_request(request, client_address)  # starts the thread
        except BaseException:
            self._release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release()

    def _release(self) -> None:
        with self._count_lock:
            self.active -= 1
        self._slots.release()


def _refuse_busy(request: socket.socket) -> None:
    """503 on a connection we will not serve, without waiting for its request."""
    try:
        request.settimeout(0.5)
        request.sendall(_BUSY)
        request.setblocking(False)
        with contextlib.suppress(OSError):  # drain what arrived, so close sends FIN, not RST
            request.recv(65536)
    except OSError:
        pass


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _load_static() -> dict[str, bytes]:
    root = resources.files("sorter.monitor") / "static"
    try:
        return {name: (root / name).read_bytes() for name in (*_STATIC_FILES, *_PAGES)}
    except OSError as err:
        raise ConfigError(
            f"dashboard page files missing under {root} ({err}); reinstall produce-sorter"
        ) from err


class DashboardServer:
    """A running dashboard: `.url`, `.port`, `.stop()`; also a context manager."""

    def __init__(
        self,
        status: Any,
        host: str,
        port: int,
        token: str | None,
        *,
        timeout_s: float = TIMEOUT_S,
        max_clients: int = MAX_CLIENTS,
        review: Any = None,
    ) -> None:
        if not _is_loopback(host) and not token:
            raise ConfigError(
                f"dashboard: binding to {host or 'all addresses'} needs a token; set "
                "[dashboard] token in the config (install.sh generates one) or bind 127.0.0.1"
            )
        settings = _Settings(
            status=status, token=token or None, static=_load_static(), review=review
        )
        handler = type(
            "DashboardHandler", (_Handler,), {"settings": settings, "timeout": timeout_s}
        )
        try:
            self._httpd = _Server((host, port), handler, max_clients)
        except OSError as err:
            raise ConfigError(
                f"dashboard: cannot listen on {host}:{port} ({err.strerror or err}); "
                "choose another port with --dashboard HOST:PORT"
            ) from err
        self.host = host
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="dashboard",
            daemon=True,
        )
        self._thread.start()
        logger.info("dashboard on %s", self.url)

    @property
    def active(self) -> int:
        """Connections being served now (at most `max_clients`)."""
        return self._httpd.active

    @property
    def refused(self) -> int:
        """Connections refused with 503 so far (too many at once)."""
        return self._httpd.refused

    @property
    def url(self) -> str:
        """Base URL of the page (without the token)."""
        host = self.host if ":" not in self.host else f"[{self.host}]"
        if host in ("0.0.0.0", "[::]", ""):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}/"

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(timeout=5.0)
        self._httpd.server_close()

    def __enter__(self) -> DashboardServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    status: Any,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    token: str | None = None,
    timeout_s: float = TIMEOUT_S,
    max_clients: int = MAX_CLIENTS,
    review: Any = None,
) -> DashboardServer:
    """Serve the dashboard for `status` in a background thread; returns the running server.

    `timeout_s`: socket timeout per connection; `max_clients`: connections served at once
    (more get 503 at once); `review` (a sorter.monitor.review.ReviewQueue) adds the /review
    page for saved crops. Raises ConfigError when binding off localhost without a token
    or when the port is taken.
    """
    return DashboardServer(
        status, host, port, token, timeout_s=timeout_s, max_clients=max_clients, review=review
    )


def parse_bind(text: str, default_port: int = 8080) -> tuple[str, int]:
    """'HOST:PORT', 'HOST', ':PORT' or 'PORT' -> (host, port); ConfigError when malformed."""
    text = text.strip()
    host, port_text = "127.0.0.1", str(default_port)
    if text.startswith("["):  # [v6]:port
        end = text.find("]")
        host, rest = text[1:end], text[end + 1 :]
        port_text = rest[1:] if rest.startswith(":") else port_text
    elif text.isdigit():
        port_text = text
    elif text.count(":") == 1:
        h, port_text = text.split(":")
        host = h or host
    elif text:
        host = text
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"--dashboard {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    return host, int(port_text)
