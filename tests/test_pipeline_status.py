"""sorter.monitor.status: the live counters the terminal, dashboard and /metrics read."""

from __future__ import annotations

import json
import threading

import numpy as np
from prometheus_client import generate_latest

from sorter.monitor.status import Overlay, Status


def test_snapshot_has_the_documented_keys_and_is_json() -> None:
    st = Status(url="sim://")
    st.line_x = 320.0
    for _ in range(5):
        st.frame_in()
    st.frame_dropped(2)
    st.frame_done(np.zeros((4, 4, 3), np.uint8), [Overlay(1, (0, 0, 2, 2), "M", 0.9, "M")])
    rec = {"item": 1, "t_line": 1.0, "label": "M", "confidence": 0.9, "bin": "M", "gate": 3}
    st.decided({**rec, "status": "pending"}, latency_s=0.004, crop=np.ones((2, 2, 3), np.uint8))
    st.fate(1, "fired")
    st.event("FIRED", "item 1 gate 3")
    snap = st.snapshot()
    json.dumps(snap)
    for key in (
        "uptime_s", "fps_in", "fps_processed", "frames", "drops", "last_frame_age_s", "line_x",
        "items", "items_per_min", "bins", "grades", "latency_ms", "link", "events",
        "decisions", "alarms",
    ):  # fmt: skip
        assert key in snap, key
    assert (snap["frames"], snap["drops"], snap["items"]) == (1, 2, 1)
    assert snap["bins"] == {"M": 1} and snap["grades"] == {"M": 1}
    assert snap["decisions"][0]["status"] == "fired"
    assert snap["latency_ms"]["p50"] == 4.0
    assert [b for b in snap["latency_ms"]["buckets"] if b[0] == 5.0] == [[5.0, 1]]
    assert snap["link"]["url"] == "sim://"
    frame = st.latest_frame()
    assert frame is not None and frame[1][0]["box"] == [0, 0, 2, 2]
    assert st.crop(1) is not None and st.crop(2) is None


def test_prometheus_registry_matches_counters() -> None:
    st = Status()
    st.frame_in()
    st.frame_done()
    st.decided({"item": 1, "label": "S", "bin": "reject"}, latency_s=0.03)
    st.fate(1, "late")
    text = generate_latest(st.registry).decode()
    assert "sorter_frames_in_total 1.0" in text
    assert 'sorter_items_total{bin="reject",grade="S"} 1.0' in text
    assert 'sorter_commands_total{status="late"} 1.0' in text
    assert "sorter_latency_seconds_count 1.0" in text
    # two Status objects do not share (or clash in) a registry
    Status().frame_in()
    assert "sorter_frames_in_total 1.0" in generate_latest(st.registry).decode()


def test_alarms_raise_and_clear() -> None:
    st = Status()
    st.alarm("camera_stalled", "no frame for 2 s")
    st.set_link("lost")
    kinds = {a["kind"] for a in st.snapshot()["alarms"]}
    assert kinds == {"camera_stalled", "controller_lost"}
    st.alarm("camera_stalled", None)
    st.set_link("connected", safe=False)
    assert st.snapshot()["alarms"] == []


def test_counters_are_thread_safe() -> None:
    st = Status()

    def work() -> None:
        for i in range(500):
            st.frame_in()
            st.frame_done()
            st.decided({"item": i, "label": "M", "bin": "M"}, latency_s=0.001)
            st.snapshot() if i % 100 == 0 else None

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = st.snapshot()
    assert (snap["frames_in"], snap["frames"], snap["items"]) == (2000, 2000, 2000)
    assert snap["bins"] == {"M": 2000}


def test_a_corrected_fate_is_counted_once() -> None:
    st = Status()
    st.decided({"item": 7, "label": "M", "bin": "M"}, latency_s=None)
    st.fate(7, "timeout")
    st.fate(7, "fired")
    st.fate(7, "fired")
    assert st.snapshot()["statuses"] == {"fired": 1}


def test_controller_events_read_as_one_line_of_words() -> None:
    from firmware_bridge import protocol
    from sorter.actuation.link_events import event_text, on_event

    st = Status(url="sim://")
    on_event(st, protocol.Fired(item=7, gate=2, time=123456, position=0))
    on_event(st, protocol.Late(item=8, gate=1, time=5, target=3))
    on_event(st, protocol.Status(1, 0, 0, 0, 0, 0, 3, 1))  # periodic: not an event
    on_event(st, protocol.SafeState(entered=1, reason=protocol.SafeReason.HEARTBEAT, dropped=2))
    snap = st.snapshot()
    assert [(e["kind"], e["text"]) for e in reversed(snap["events"])] == [
        ("FIRED", "item 7 fired at gate 2"),
        ("LATE", "item 8 too late for gate 1: not fired"),
        ("SAFE_STATE", "safe state entered (HEARTBEAT), 2 pending SORT(s) dropped"),
    ]
    assert snap["link"]["safe"] is True and snap["alarms"][0]["kind"] == "safe_state"
    on_event(st, protocol.SafeState(entered=0, reason=protocol.SafeReason.RESUMED, dropped=0))
    assert st.snapshot()["link"]["safe"] is False and not st.snapshot()["alarms"]
    assert event_text(protocol.Fault(code=protocol.FaultCode.WATCHDOG_RESET, detail=4)) == (
        "controller fault WATCHDOG_RESET (detail 4)"
    )
    assert event_text(protocol.SyncReply(acked_seq=1, echo=2, time=3, position=4)) == (
        "acked_seq=1 echo=2 time=3 position=4"
    )


def test_status_line_for_systemctl() -> None:
    from sorter.monitor.status import status_line

    st = Status(url="/dev/ttyACM0")
    st.set_link("connected", safe=False)
    for item, (label, bin_name) in enumerate([("M", "M"), ("M", "M"), ("C", "reject")]):
        st.decided({"item": item, "label": label, "bin": bin_name}, latency_s=0.01)
    line = status_line(st.snapshot())
    assert "\n" not in line
    assert line.endswith("3 items (M 2, reject 1), 0 drops, link connected")
    st.alarm("camera_stalled", "no frame for 2.0 s")
    st.set_link("lost")
    assert status_line(st.snapshot()).endswith(
        "link lost, ALARM no frame for 2.0 s, ALARM controller link lost; reconnecting"
    )
