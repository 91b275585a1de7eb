"""The review page: saved crops listed with the model's grades, answers filed into the grade
tree with a review log, every write guarded (token, Origin, CSRF), in a real browser too."""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sorter.config import GRADES
from sorter.monitor.audit import DecisionLog, DecisionRecord
from sorter.monitor.dashboard import serve
from sorter.monitor.review import (
    NOT_PRODUCE,
    REVIEW_LOG,
    SKIP,
    ReviewError,
    ReviewQueue,
    read_review_log,
)
from sorter.monitor.status import Status
from tests.test_dashboard import CHROMIUM, _Browser

TOKEN = "farm-42"
RUN = "20261201-101500-77"


def _scores(top: int, conf: float) -> list[float]:
    rest = (1.0 - conf) / (len(GRADES) - 1)
    return [conf if i == top else rest for i in range(len(GRADES))]


@pytest.fixture
def crops(tmp_path: Path) -> Path:
    """A crops folder as `sorter run --save-crops` leaves it: 3 unsure, 6 confident crops."""
    root = tmp_path / "crops"
    log = DecisionLog(tmp_path / "d.db", crops_dir=root, review_below=0.6, run=RUN)
    log.open(source="test", model="m.tflite", labels=list(GRADES))
    for item in range(1, 10):
        conf = 0.45 if item <= 3 else 0.95
        top = item % len(GRADES)
        img = np.full((40, 60, 3), 20 * item, np.uint8)
        rec = DecisionRecord(
            item=item,
            t_line=float(item),
            label=GRADES[top],
            confidence=conf,
            scores=_scores(top, conf),
            bin=GRADES[top],
            gate=None,
            fire_at=None,
            status="dry-run",
        )
        log.record(rec, img)
    log.close()
    return root


def _queue(crops: Path, **kw: Any) -> ReviewQueue:
    return ReviewQueue(crops, crops.parent / "d.db", list(GRADES), **kw)


def test_lists_unsure_crops_then_a_sample_of_sure_ones_with_the_models_grades(crops: Path) -> None:
    items = _queue(crops, min_confident=2).items()
    assert [it.kind for it in items] == ["review"] * 3 + ["confident"] * 2
    first = items[0]
    assert first.rel == f"_review/{GRADES[1]}/{RUN}_1.png"
    assert first.run == RUN and first.item == 1
    assert first.top[0] == (GRADES[1], pytest.approx(0.45)) and len(first.top) == 3
    assert "rel" not in first.public() and "/" not in json.dumps(first.public()["id"])


def test_an_answer_moves_the_crop_into_the_grade_tree_and_is_logged(crops: Path) -> None:
    q = _queue(crops)
    first = q.items()[0]
    entry = q.answer(first.id, "2L", "Ana", addr="10.0.0.5")
    assert not (crops / first.rel).exists()
    assert (crops / "2L" / f"{RUN}_1.png").is_file()
    logged = read_review_log(crops)
    assert logged == [entry]
    assert entry["who"] == "Ana" and entry["addr"] == "10.0.0.5" and entry["answer"] == "2L"
    assert entry["model_grade"] == GRADES[1] and entry["run"] == RUN and entry["item"] == 1
    assert first.id not in {it.id for it in q.items()}
    # not produce goes to a '_' folder sorter-train skips; skip leaves it and puts it last
    second, third = q.items()[:2]
    q.answer(second.id, NOT_PRODUCE, "Ana")
    assert (crops / NOT_PRODUCE / Path(second.rel).name).is_file()
    q.answer(third.id, SKIP, "Ana")
    assert (crops / third.rel).is_file()
    assert [it.kind for it in q.items()][-1] == "confident"
    assert q.items()[0].id == third.id  # the only unsure one left
    assert len((crops / REVIEW_LOG).read_text().splitlines()) == 3


def test_a_confirmed_confident_crop_is_not_sampled_again(crops: Path) -> None:
    q = _queue(crops, min_confident=1)
    sure = next(it for it in q.items() if it.kind == "confident")
    q.answer(sure.id, sure.grade, "Ben")  # confirmed: stays where it is
    assert (crops / sure.rel).is_file()
    again = [it for it in q.items() if it.kind == "confident"]
    assert again and sure.id not in {it.id for it in again}


def test_bad_ids_and_answers_are_refused(crops: Path) -> None:
    q = _queue(crops)
    with pytest.raises(ReviewError, match="bad crop id") as err:
        q.answer("../../etc/passwd", "L", "x")
    assert err.value.code == 404
    with pytest.raises(ReviewError, match="no such crop"):
        q.answer("0" * 20, "L", "x")
    with pytest.raises(ReviewError, match="unknown grade"):
        q.answer(q.items()[0].id, "../../x", "x")
    assert not (crops / REVIEW_LOG).exists()


# ------------------------------------------------------------------------------------------
# HTTP: the refusals


@pytest.fixture
def server(crops: Path) -> Iterator[Any]:
    with serve(Status(), "127.0.0.1", 0, token=TOKEN, review=_queue(crops)) as srv:
        yield srv


def _request(
    srv: Any, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, bytes, http.client.HTTPMessage]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.request(method, path, body=body or None, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read(), r.headers
    finally:
        conn.close()


def _session(srv: Any) -> tuple[str, str]:
    """Open the page as a browser would: (cookie header, CSRF token from the page)."""
    status, page, headers = _request(srv, "GET", f"/review?token={TOKEN}")
    assert status == 200
    cookies = [v.split(";")[0] for k, v in headers.items() if k.lower() == "set-cookie"]
    match = re.search(rb'name="csrf-token" content="([0-9a-f]{64})"', page)
    assert match and len(cookies) == 2
    return "; ".join(cookies), match.group(1).decode()


def _post(srv: Any, body: dict[str, Any], **headers: str) -> tuple[int, bytes]:
    raw = json.dumps(body).encode()
    status, text, _ = _request(srv, "POST", "/api/review", raw, headers)
    return status, text


def _good_headers(srv: Any) -> dict[str, str]:
    cookie, csrf = _session(srv)
    return {
        "Cookie": cookie,
        "X-CSRF-Token": csrf,
        "Origin": f"http://127.0.0.1:{srv.port}",
        "Content-Type": "application/json",
    }


def _first_id(srv: Any, cookie: str) -> str:
    status, body, _ = _request(srv, "GET", "/api/review", headers={"Cookie": cookie})
    assert status == 200
    return str(json.loads(body)["items"][0]["id"])


def test_a_well_formed_answer_is_filed(server: Any, crops: Path) -> None:
    h = _good_headers(server)
    item = _first_id(server, h["Cookie"])
    status, body = _post(server, {"id": item, "answer": "S", "who": "Ana"}, **h)
    assert status == 200, body
    assert json.loads(body)["to"] == f"S/{RUN}_1.png"
    assert (crops / "S" / f"{RUN}_1.png").is_file()


def test_writes_are_refused_without_token_origin_csrf_or_with_bad_ids(
    server: Any, crops: Path
) -> None:
    good = _good_headers(server)
    item = _first_id(server, good["Cookie"])
    answer = {"id": item, "answer": "S", "who": "Mallory"}
    session_only = good["Cookie"].split("; ")[1]  # the review cookie, not the token's

    def without(*names: str, **over: str) -> dict[str, str]:
        h = {k: v for k, v in good.items() if k not in names}
        return {**h, **over}

    assert _post(server, answer, **without("Cookie"))[0] == 401  # no token
    assert _post(server, answer, **without(Cookie=session_only))[0] == 401
    assert _post(server, answer, **without(Origin="http://evil.example"))[0] == 403
    assert _post(server, answer, **without("Origin"))[0] == 403  # neither Origin nor Referer
    assert _post(server, answer, **without("X-CSRF-Token"))[0] == 403
    assert _post(server, answer, **without(**{"X-CSRF-Token": "0" * 64}))[0] == 403
    assert _post(server, answer, **without(**{"Content-Type": "text/plain"}))[0] == 415
    other_cookie, _ = _session(server)  # another session's cookie with this CSRF token
    assert _post(server, answer, **without(Cookie=other_cookie))[0] == 403
    bad_id = {**answer, "id": "../../../etc/passwd"}
    assert _post(server, bad_id, **good)[0] == 404
    assert _post(server, {**answer, "answer": "../x"}, **good)[0] == 400
    status, _, _ = _request(server, "GET", "/review/crop/..%2F..%2Fd.db.png")
    assert status in (401, 404)
    assert not (crops / REVIEW_LOG).exists()  # nothing was filed
    assert (crops / "_review" / GRADES[1] / f"{RUN}_1.png").is_file()
    # Referer from the page instead of Origin is accepted
    ok = without("Origin", Referer=f"http://127.0.0.1:{server.port}/review")
    assert _post(server, answer, **ok)[0] == 200


def test_the_rest_of_the_dashboard_stays_read_only(server: Any) -> None:
    h = _good_headers(server)
    for path in ("/api/status", "/review", "/api/review/x", "/"):
        assert _request(server, "POST", path, b"{}", h)[0] == 405
    assert _request(server, "PUT", "/api/review", b"{}", h)[0] == 405
    assert _request(server, "DELETE", "/api/review", b"", h)[0] == 405


def test_without_a_token_the_review_page_is_read_only(crops: Path) -> None:
    with serve(Status(), "127.0.0.1", 0, review=_queue(crops)) as srv:
        status, page, headers = _request(srv, "GET", "/review")
        assert status == 200 and b'name="can-write" content="no"' in page
        cookie = headers["Set-Cookie"].split(";")[0]
        csrf = re.search(rb'content="([0-9a-f]{64})"', page).group(1).decode()  # type: ignore[union-attr]
        item = _first_id(srv, cookie)
        h = {
            "Cookie": cookie,
            "X-CSRF-Token": csrf,
            "Origin": f"http://127.0.0.1:{srv.port}",
            "Content-Type": "application/json",
        }
        status, body = _post(srv, {"id": item, "answer": "S"}, **h)
        assert status == 403 and b"[dashboard] token" in body
    assert not (crops / REVIEW_LOG).exists()


def test_no_crops_folder_no_review_page() -> None:
    with serve(Status(), "127.0.0.1", 0) as srv:
        assert _request(srv, "GET", "/review")[0] == 404
        assert _request(srv, "GET", "/api/review")[0] == 404


# ------------------------------------------------------------------------------------------
# In a real headless browser


def test_in_a_real_browser_tap_and_keys_file_answers(tmp_path: Path, crops: Path) -> None:
    assert CHROMIUM, "chromium is missing: `make sysdeps-test` installs it (apt install chromium)"
    browser = _Browser(tmp_path / "profile")
    try:
        with serve(Status(), "127.0.0.1", 0, token=TOKEN, review=_queue(crops)) as srv:
            browser.call(
                "Emulation.setDeviceMetricsOverride",
                {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True},
                browser.session,
            )
            browser.goto(srv.url + f"review?token={TOKEN}")
            cards = "document.querySelectorAll('.crop').length"
            assert browser.wait_for(cards) == 3 + 5  # 3 unsure + the minimum sample of 5
            first_img = "document.querySelector('.crop img')"
            assert browser.wait_for(f"{first_img}.complete && {first_img}.naturalWidth") == 60
            assert "45%" in browser.js("document.querySelector('.crop .top').textContent")
            # fits a phone: nothing wider than the screen
            assert browser.js("document.documentElement.scrollWidth") <= 390
            browser.js("document.getElementById('who').value = 'Ana'")
            # tap "2L" on the first card
            browser.js("document.querySelector('.crop button[data-answer=\"2L\"]').click()")
            browser.wait_for(f"{cards} === 7")
            assert (crops / "2L" / f"{RUN}_1.png").is_file()
            # press 0 (not produce) for the next crop, typed as a real key
            for kind in ("keyDown", "keyUp"):
                browser.call(
                    "Input.dispatchKeyEvent",
                    {"type": kind, "key": "0", "code": "Digit0", "text": "0"},
                    browser.session,
                )
            browser.wait_for(f"{cards} === 6")
            assert (crops / NOT_PRODUCE / f"{RUN}_2.png").is_file()
            assert browser.js("document.getElementById('notice').hidden") is True
        log = read_review_log(crops)
        assert [(e["answer"], e["who"]) for e in log] == [("2L", "Ana"), (NOT_PRODUCE, "Ana")]
    finally:
        browser.close()


def test_sorter_run_serves_the_review_page_when_it_saves_crops(crops: Path) -> None:
    import dataclasses

    from sorter.commands.run import start_dashboard
    from sorter.config import Config

    config = Config()
    logging_ = dataclasses.replace(
        config.logging, crops_dir=str(crops), db=str(crops.parent / "d.db")
    )
    config = dataclasses.replace(config, logging=logging_)
    server = start_dashboard(config, Status(), "127.0.0.1:0")
    try:
        status, body, _ = _request(server, "GET", "/api/review")
        assert status == 200 and json.loads(body)["waiting"] == 3
    finally:
        server.stop()
