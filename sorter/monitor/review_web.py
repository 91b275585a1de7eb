"""The dashboard's review page: the only route that changes anything, and how it is guarded.

Routes (mixed into the dashboard's request handler; the queue is `sorter.monitor.review`):
    GET  /review                  the page (static/review.html + review.js), with a CSRF token
    GET  /api/review              the crops waiting for a person, the grades to choose from
    GET  /review/crop/<id>.png    one listed crop's image (ids only: no path can be named)
    POST /api/review              {"id", "answer", "who"}: file the answer (see review.py)

A POST is refused unless every one of these holds (checked in this order):
- the dashboard has a review queue (a crops folder): else 404;
- a dashboard token is configured (writes need it even on localhost): else 403;
- the request carries the token (cookie set by ?token=..., or Authorization: Bearer): 401;
- Origin (or, without Origin, Referer) is this server's own http://Host: else 403;
- Content-Type is application/json (a cross-site form cannot send that): else 415;
- X-CSRF-Token is the token of this browser session: the page gets it with its session
  cookie (HttpOnly, SameSite=Strict), and it is an HMAC of the session id with a secret
  drawn when the server started: else 403;
- the body is at most 4 KB of JSON naming a listed crop and a known answer: else 400/404.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
from http import HTTPStatus
from typing import Any

from sorter.monitor.review import ReviewError, ReviewQueue

logger = logging.getLogger(__name__)

SESSION_COOKIE = "sorter_review"
CSRF_HEADER = "X-CSRF-Token"
MAX_BODY = 4096
_CSRF_MARK = b"__CSRF__"
_WRITE_MARK = b"__CAN_WRITE__"


def csrf_for(secret: bytes, session: str) -> str:
    """The CSRF token of a session id."""
    return hmac.new(secret, session.encode(), "sha256").hexdigest()


class ReviewRoutes:
    """Request-handler methods for the review page (mixed into the dashboard's handler)."""

    # Provided by the handler this is mixed into.
    settings: Any
    headers: Any
    rfile: Any
    client_address: Any

    def _send(self, *args: Any, **kwargs: Any) -> None:  # pragma: no cover - the handler's
        raise NotImplementedError

    def _authorise(self, query: dict[str, list[str]]) -> str | None:  # pragma: no cover
        raise NotImplementedError

    def _text(self, code: HTTPStatus, text: str) -> None:
        self._send(code, (text + "\n").encode(), "text/plain; charset=utf-8")

    def _json(self, code: HTTPStatus, value: Any) -> None:
        self._send(code, json.dumps(value).encode(), "application/json")

    def _queue(self) -> ReviewQueue | None:
        queue = self.settings.review
        if queue is None:
            self._text(HTTPStatus.NOT_FOUND, "no review: the sorter saves no crops (--save-crops)")
        return queue

    def _session(self) -> str | None:
        for chunk in self.headers.get("Cookie", "").split(";"):
            name, _, value = chunk.strip().partition("=")
            if name == SESSION_COOKIE and len(value) == 32 and value.isalnum():
                return value
        return None

    # -- GET -------------------------------------------------------------------------------
    def review_page(self, cookies: list[tuple[str, str]]) -> None:
        if self._queue() is None:
            return
        session = self._session()
        if session is None:
            session = secrets.token_hex(16)
            cookies.append(
                ("Set-Cookie", f"{SESSION_COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict")
            )
        page = self.settings.static["review.html"]
        page = page.replace(_CSRF_MARK, csrf_for(self.settings.secret, session).encode())
        page = page.replace(_WRITE_MARK, b"yes" if self.settings.token else b"no")
        self._send(HTTPStatus.OK, page, "text/html; charset=utf-8", cookies)

    def review_list(self) -> None:
        queue = self._queue()
        if queue is None:
            return
        items = queue.items()
        self._json(
            HTTPStatus.OK,
            {
                "grades": queue.grades(),
                "items": [it.public() for it in items],
                "waiting": sum(it.kind == "review" for it in items),
                "can_write": bool(self.settings.token),
            },
        )

    def review_crop(self, item_id: str) -> None:
        queue = self._queue()
        if queue is None:
            return
        try:
            item = queue.find(item_id)
            data = queue.path(item).read_bytes()
        except ReviewError as err:
            self._text(HTTPStatus(err.code), str(err))
            return
        except OSError:
            self._text(HTTPStatus.NOT_FOUND, "crop gone: reload the page")
            return
        ctype = "image/png" if data[:4] == b"\x89PNG" else "image/jpeg"
        self._send(HTTPStatus.OK, data, ctype)

    # -- POST ------------------------------------------------------------------------------
    def review_answer(self) -> None:
        queue = self._queue()
        if queue is None:
            return
        refusal = self._write_refusal()
        if refusal is not None:
            code, text = refusal
            logger.warning("review write refused from %s: %s", self.client_address[0], text)
            self._text(code, text)
            return
        body = self._body()
        if body is None:
            return
        try:
            entry = queue.answer(
                str(body.get("id", "")),
                str(body.get("answer", "")),
                str(body.get("who", "")),
                addr=str(self.client_address[0]),
            )
        except ReviewError as err:
            self._text(HTTPStatus(err.code), str(err))
            return
        self._json(HTTPStatus.OK, {"ok": True, "to": entry["to"], "answer": entry["answer"]})

    def _write_refusal(self) -> tuple[HTTPStatus, str] | None:
        if not self.settings.token:
            return (
                HTTPStatus.FORBIDDEN,
                "reviewing needs a dashboard token: set [dashboard] token in the config",
            )
        if self._authorise({}) is None:
            return HTTPStatus.UNAUTHORIZED, "token required: open the page as /review?token=..."
        host = self.headers.get("Host", "")
        own = f"http://{host}"
        origin = self.headers.get("Origin")
        referer = self.headers.get("Referer", "")
        if origin is not None:
            if origin != own:
                return HTTPStatus.FORBIDDEN, f"cross-site request refused (Origin {origin[:80]})"
        elif not (host and (referer == own or referer.startswith(own + "/"))):
            return HTTPStatus.FORBIDDEN, "request refused: no Origin or Referer from this page"
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            return HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send the answer as application/json"
        session = self._session()
        offered = self.headers.get(CSRF_HEADER, "")
        expected = csrf_for(self.settings.secret, session) if session else ""
        if not session or not hmac.compare_digest(offered.encode(), expected.encode()):
            return HTTPStatus.FORBIDDEN, "bad or missing CSRF token: reload the review page"
        return None

    def _body(self) -> dict[str, Any] | None:
        length_text = self.headers.get("Content-Length", "")
        if not length_text.isdigit() or int(length_text) > MAX_BODY:
            self._text(HTTPStatus.BAD_REQUEST, f"body must have a Content-Length <= {MAX_BODY}")
            return None
        raw = self.rfile.read(int(length_text))
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            self._text(HTTPStatus.BAD_REQUEST, 'body must be a JSON object {"id", "answer"}')
            return None
        return body
