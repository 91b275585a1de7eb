"""Typed messages: vectors, round trips of every message, clean rejection of bad bodies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge import protocol as p
from firmware_bridge.errors import FramingError, ProtocolError
from firmware_bridge.framing import MAX_FRAME, Deframer, Frame, decode_frame
from firmware_bridge.simulator import SimController
from firmware_bridge.vectors import make_vectors

VECTORS = json.loads(Path(make_vectors.JSON_PATH).read_text())

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
i32 = st.integers(-(2**31), 2**31 - 1)

STRATEGIES: dict[type[p.Message], st.SearchStrategy[p.Message]] = {
    p.Hello: st.just(p.Hello()),
    # CONFIG payload: 7 bytes + one per gate, at most MAX_PAYLOAD (32): 25 gates
    p.Config: st.builds(p.Config, u16, u16, st.lists(u8, max_size=25).map(tuple)),
    p.Sort: st.builds(p.Sort, u32, u8, u8, u32, u16),
    p.Cancel: st.builds(p.Cancel, u32),
    p.Heartbeat: st.just(p.Heartbeat()),
    p.Sync: st.builds(p.Sync, u32),
    p.Resume: st.just(p.Resume()),
    p.Query: st.builds(p.Query, u32),
    p.Safe: st.just(p.Safe()),
    p.Ack: st.builds(p.Ack, u16, u8),
    p.Nak: st.builds(p.Nak, u16, u8, u8),
    p.HelloInfo: st.builds(p.HelloInfo, u16, u8, u8, u8, u8, u8, u8, u8, u32),
    p.Fired: st.builds(p.Fired, u32, u8, u32, i32),
    p.Late: st.builds(p.Late, u32, u8, u32, u32),
    p.SafeState: st.builds(p.SafeState, u8, u8, u8),
    p.SyncReply: st.builds(p.SyncReply, u16, u32, u32, i32),
    p.Fault: st.builds(p.Fault, u8, u16),
    p.Status: st.builds(p.Status, u32, i32, u8, u8, u16, u16, u16, u16),
    p.FateReply: st.builds(p.FateReply, u16, u32, u8, u32),
}


def test_every_message_type_has_a_strategy() -> None:
    assert set(STRATEGIES) == set(p.MESSAGE_TYPES.values())
    assert set(p.MESSAGE_TYPES) == {int(t) for t in p.MsgType}


@pytest.mark.parametrize("vec", VECTORS["messages"], ids=lambda v: v["name"])
def test_message_vectors_decode_to_their_fields(vec: dict) -> None:
    frame = decode_frame(bytes.fromhex(vec["wire"])[:-1])
    msg = p.decode(frame)
    fields = msg.fields()
    if isinstance(msg, p.Config):
        fields = {
            "heartbeat_ms": msg.heartbeat_ms,
            "status_ms": msg.status_ms,
            "max_lead_ms": msg.max_lead_ms,
            "n_gates": len(msg.pulse_ms),
            "pulse_ms": list(msg.pulse_ms),
        }
    assert fields == vec["fields"]
    assert p.encode(msg, vec["seq"]).hex() == vec["wire"]
    sender = "host" if vec["type"] < 0x80 else "controller"
    assert p.decode(frame, sender=sender) == msg


@pytest.mark.parametrize("vec", VECTORS["naks"], ids=lambda v: v["name"])
def test_nak_vectors_are_refused_with_their_reason(vec: dict) -> None:
    (frame,) = Deframer().feed(bytes.fromhex(vec["wire"]))
    assert (frame.seq, frame.type) == (vec["acked_seq"], vec["acked_type"])
    if vec["reason"] == p.NakReason.STALE_EPOCH:  # well formed; refused by the controller
        sim = SimController()
        sim.take_output()
        sim.receive(bytes.fromhex(vec["wire"]), 1000)
        msgs = [p.decode(f) for f in Deframer().feed(sim.take_output())]
        (nak,) = [m for m in msgs if isinstance(m, p.Nak)]
        assert nak == p.Nak(vec["acked_seq"], vec["acked_type"], vec["reason"])
        return
    with pytest.raises(ProtocolError) as err:
        p.decode(frame, sender="host")
    assert err.value.reason == vec["reason"]


@pytest.mark.parametrize("vec", VECTORS["timediff"], ids=lambda v: v["name"])
def test_wrap_around_time_difference(vec: dict) -> None:
    assert p.time_diff(vec["a"], vec["b"]) == vec["diff"]
    assert p.time_before(vec["a"], vec["b"]) == (vec["diff"] < 0)


def test_direction_is_checked() -> None:
    ack = Frame(1, p.MsgType.ACK, 3, b"\x01\x00\x03")
    assert isinstance(p.decode(ack, sender="controller"), p.Ack)
    with pytest.raises(ProtocolError) as err:
        p.decode(ack, sender="host")
    assert err.value.reason == p.NakReason.UNKNOWN_TYPE
    with pytest.raises(ProtocolError):
        p.decode(Frame(1, p.MsgType.HELLO, 3, b""), sender="controller")


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(STRATEGIES, key=lambda c: c.TYPE)).flatmap(lambda c: STRATEGIES[c]))
def test_every_message_round_trips_through_the_wire(msg: p.Message) -> None:
    wire = p.encode(msg, 0xBEEF)
    assert len(wire) <= MAX_FRAME
    (frame,) = Deframer().feed(wire)
    assert frame.seq == 0xBEEF
    assert p.decode(frame) == msg


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_any_bytes_decode_to_messages_or_are_rejected_cleanly(data: bytes) -> None:
    deframer = Deframer()
    for frame in deframer.feed(data + b"\x00"):
        try:
            msg = p.decode(frame)
        except ProtocolError as err:
            assert err.reason in {
                p.NakReason.BAD_VERSION,
                p.NakReason.UNKNOWN_TYPE,
                p.NakReason.BAD_LENGTH,
            }
        else:
            assert p.encode(msg, frame.seq)[:-1] == _reencoded(frame)


def _reencoded(frame: Frame) -> bytes:
    from firmware_bridge.framing import cobs_encode

    return cobs_encode(p.body(p.decode(frame), frame.seq))


@settings(max_examples=200, deadline=None)
@given(u8, u8, u16, st.binary(max_size=32))
def test_any_well_framed_body_decodes_or_names_a_nak_reason(
    ver: int, msg_type: int, seq: int, payload: bytes
) -> None:
    try:
        msg = p.decode(Frame(ver, msg_type, seq, payload))
    except ProtocolError as err:
        assert isinstance(err.reason, int) and 1 <= err.reason <= 3
    else:
        assert msg.payload() == payload


def test_frame_errors_are_framing_errors_not_protocol_errors() -> None:
    with pytest.raises(FramingError):
        decode_frame(b"\x05\x01")


def test_describe_names_codes() -> None:
    assert p.describe(p.Nak(4, p.MsgType.SORT, p.NakReason.QUEUE_FULL)) == (
        "NAK acked_seq=4 acked_type=SORT reason=QUEUE_FULL"
    )
    assert "fate=FIRED" in p.describe(p.FateReply(1, 7, p.Fate.FIRED, 10))
    assert "reason=HEARTBEAT" in p.describe(p.SafeState(1, p.SafeReason.HEARTBEAT, 0))
    assert "reason=99" in p.describe(p.Nak(1, 3, 99))
