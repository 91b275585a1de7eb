"""COBS, CRC and the streaming deframer, against the shared vectors and hypothesis."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge.errors import FramingError
from firmware_bridge.framing import (
    MAX_BODY,
    MAX_FRAME,
    MAX_PAYLOAD,
    Deframer,
    build_body,
    cobs_decode,
    cobs_encode,
    crc16,
    decode_frame,
    encode_frame,
    parse_body,
)
from firmware_bridge.vectors import make_vectors

VECTORS = json.loads(Path(make_vectors.JSON_PATH).read_text())


def test_vector_files_are_what_the_generator_writes() -> None:
    assert make_vectors.main(["--check"]) == 0


def test_crc_check_value() -> None:
    assert crc16(b"123456789") == 0x29B1


@pytest.mark.parametrize("vec", VECTORS["crc"], ids=lambda v: v["name"])
def test_crc_vectors(vec: dict) -> None:
    assert crc16(bytes.fromhex(vec["data"])) == vec["crc"]


@pytest.mark.parametrize("vec", VECTORS["cobs"], ids=lambda v: v["name"])
def test_cobs_vectors(vec: dict) -> None:
    raw, enc = bytes.fromhex(vec["raw"]), bytes.fromhex(vec["encoded"])
    assert cobs_encode(raw) == enc
    assert cobs_decode(enc) == raw
    assert 0 not in enc


def test_cobs_long_blocks() -> None:
    for n in (253, 254, 255, 600):
        raw = bytes((i % 255) + 1 for i in range(n))
        enc = cobs_encode(raw)
        assert 0 not in enc
        assert cobs_decode(enc) == raw


@pytest.mark.parametrize("vec", VECTORS["messages"], ids=lambda v: v["name"])
def test_message_wire_vectors(vec: dict) -> None:
    wire = bytes.fromhex(vec["wire"])
    body = bytes.fromhex(vec["body"])
    assert wire[-1] == 0 and 0 not in wire[:-1]
    assert len(wire) <= MAX_FRAME
    assert encode_frame(vec["type"], vec["seq"], bytes.fromhex(vec["payload"])) == wire
    frame = decode_frame(wire[:-1])
    assert (frame.type, frame.seq, frame.payload.hex()) == (vec["type"], vec["seq"], vec["payload"])
    assert parse_body(body) == frame


@pytest.mark.parametrize("vec", VECTORS["streams"], ids=lambda v: v["name"])
def test_stream_vectors(vec: dict) -> None:
    deframer = Deframer()
    frames = deframer.feed(bytes.fromhex(vec["bytes"]))
    assert len(frames) == vec["frames"]
    assert deframer.crc_errors == vec["crc_errors"]
    assert deframer.frame_errors == vec["frame_errors"]


@pytest.mark.parametrize("vec", VECTORS["streams"], ids=lambda v: v["name"])
def test_stream_vectors_byte_by_byte(vec: dict) -> None:
    deframer = Deframer()
    frames = [f for b in bytes.fromhex(vec["bytes"]) for f in deframer.feed(bytes([b]))]
    assert (len(frames), deframer.crc_errors, deframer.frame_errors) == (
        vec["frames"],
        vec["crc_errors"],
        vec["frame_errors"],
    )


def test_biggest_frame_fits_and_one_more_byte_does_not() -> None:
    wire = encode_frame(0x03, 0x1234, bytes(range(1, MAX_PAYLOAD + 1)))
    assert len(wire) == MAX_FRAME
    assert Deframer().feed(wire)[0].payload == bytes(range(1, MAX_PAYLOAD + 1))
    with pytest.raises(ValueError, match="MAX_PAYLOAD"):
        build_body(0x03, 0, bytes(MAX_PAYLOAD + 1))
    with pytest.raises(FramingError) as err:
        parse_body(bytes(MAX_BODY + 1))
    assert err.value.kind == "long"


def test_corrupted_frame_is_counted_then_the_stream_resynchronises() -> None:
    good = encode_frame(0x05, 1)
    bad = bytearray(encode_frame(0x05, 2))
    bad[3] ^= 0x10
    deframer = Deframer()
    frames = deframer.feed(bytes(bad) + good + good)
    assert [f.seq for f in frames] == [1, 1]
    assert deframer.crc_errors + deframer.frame_errors == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_yield_valid_frames_or_clean_rejections(data: bytes) -> None:
    deframer = Deframer()
    frames = deframer.feed(data)
    for frame in frames:
        rebuilt = build_body(frame.type, frame.seq, frame.payload, frame.ver)
        assert len(rebuilt) <= MAX_BODY
    delimited = data.count(0)
    assert len(frames) + deframer.crc_errors + deframer.frame_errors <= delimited


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=60))
def test_decode_frame_returns_a_frame_or_raises_framing_error(chunk: bytes) -> None:
    try:
        frame = decode_frame(chunk.replace(b"\x00", b"\x01"))
    except FramingError as err:
        assert err.kind in {"cobs", "short", "long", "crc"}
    else:
        assert len(frame.payload) <= MAX_PAYLOAD


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 255),
    st.integers(0, 0xFFFF),
    st.binary(max_size=MAX_PAYLOAD),
    st.binary(max_size=50),
)
def test_round_trip_through_noise(msg_type: int, seq: int, payload: bytes, noise: bytes) -> None:
    wire = encode_frame(msg_type, seq, payload)
    deframer = Deframer()
    deframer.feed(noise + b"\x00")
    (frame,) = deframer.feed(wire)
    assert (frame.type, frame.seq, frame.payload) == (msg_type, seq, payload)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_cobs_round_trip(data: bytes) -> None:
    enc = cobs_encode(data)
    assert 0 not in enc
    assert cobs_decode(enc) == data
