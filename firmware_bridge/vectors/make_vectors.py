"""Generate the protocol test vectors shared by the Python and the C tests.

    python -m firmware_bridge.vectors.make_vectors          # rewrite vectors.json/.txt
    python -m firmware_bridge.vectors.make_vectors --check  # exit 1 if they are stale

vectors.txt is the same content for C: one vector per line, tokens separated by single
spaces, '#' starts a comment line, hex in upper case without 0x, '-' for empty hex.

    crc      NAME DATA_HEX CRC_HEX4
    cobs     NAME RAW_HEX ENCODED_HEX                  (ENCODED has no delimiter)
    msg      NAME TYPE_HEX2 SEQ_HEX4 PAYLOAD_HEX BODY_HEX WIRE_HEX V1 V2 ...
             a valid frame: WIRE = COBS(BODY) 00; V1.. are the payload fields in wire
             order, decimal (CONFIG: heartbeat_ms status_ms max_lead_ms n_gates pulse_ms...)
    stream   NAME WIRE_HEX FRAMES CRC_ERRORS FRAME_ERRORS
             feed WIRE to a fresh deframer: it yields FRAMES frames and counts the errors
    nak      NAME WIRE_HEX ACKED_SEQ_HEX4 ACKED_TYPE_HEX2 REASON
             a frame with a good CRC that a controller must NAK (reason decimal)
    timediff NAME A_HEX8 B_HEX8 DIFF     (int32)(A - B), decimal
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from firmware_bridge import protocol as p
from firmware_bridge.framing import (
    MAX_FRAME,
    build_body,
    cobs_encode,
    crc16,
    encode_frame,
)

HERE = Path(__file__).resolve().parent
JSON_PATH = HERE / "vectors.json"
TXT_PATH = HERE / "vectors.txt"


def _hex(data: bytes) -> str:
    return data.hex().upper() if data else "-"


def _values(msg: p.Message) -> list[int]:
    if isinstance(msg, p.Config):
        return [msg.heartbeat_ms, msg.status_ms, msg.max_lead_ms, len(msg.pulse_ms), *msg.pulse_ms]
    return [int(v) for v in msg.fields().values()]


def _json_fields(msg: p.Message) -> dict[str, Any]:
    out = msg.fields()
    if isinstance(msg, p.Config):
        out = {
            "heartbeat_ms": msg.heartbeat_ms,
            "status_ms": msg.status_ms,
            "max_lead_ms": msg.max_lead_ms,
            "n_gates": len(msg.pulse_ms),
            "pulse_ms": list(msg.pulse_ms),
        }
    return out


MESSAGES: list[tuple[str, p.Message, int]] = [
    ("hello", p.Hello(epoch=0x1234), 0x0001),
    ("config_9_gates", p.Config(500, 1000, (40,) * 9, max_lead_ms=10_000), 0x0002),
    ("config_1_gate", p.Config(50, 100, (1,), max_lead_ms=100), 0x0003),
    (
        "sort_time",
        p.Sort(
            item=7, gate=2, mode=p.SortMode.TIME, target=1_500_000, window_us=5000, epoch=0x1234
        ),
        4,
    ),
    (
        "sort_position",
        p.Sort(
            item=0x01020304,
            gate=0,
            mode=p.SortMode.POSITION,
            target=0xFFFFFF00,
            window_us=20,
            epoch=0xFFFF,
        ),
        0x0100,
    ),
    (
        "sort_now",
        p.Sort(item=0xFFFFFFFF, gate=8, mode=p.SortMode.NOW, target=0, window_us=0, epoch=1),
        0xFFFF,
    ),
    ("cancel", p.Cancel(item=7, epoch=0x1234), 0x0005),
    ("heartbeat", p.Heartbeat(), 0x0006),
    ("sync", p.Sync(echo=0xDEADBEEF), 0x0007),
    ("resume", p.Resume(), 0x0008),
    ("query", p.Query(item=7, epoch=0x1234), 0x0009),
    ("safe", p.Safe(), 0x000A),
    ("ack", p.Ack(acked_seq=4, acked_type=p.MsgType.SORT), 0x0000),
    ("nak_queue_full", p.Nak(acked_seq=4, acked_type=p.MsgType.SORT, reason=7), 0x0001),
    (
        "hello_info",
        p.HelloInfo(
            acked_seq=1,
            fw_major=1,
            fw_minor=0,
            fw_patch=0,
            proto=1,
            n_gates=9,
            flags=p.FLAG_CONFIGURED,
            queue_size=16,
            time_hz=1_000_000,
        ),
        0x0002,
    ),
    ("fired", p.Fired(item=7, gate=2, time=1_500_123, position=-5, epoch=0x1234), 0x0003),
    ("late", p.Late(item=8, gate=1, time=2_000_000, target=1_990_000, epoch=0x1234), 0x0004),
    ("safe_state_heartbeat", p.SafeState(entered=1, reason=p.SafeReason.HEARTBEAT, dropped=3), 5),
    ("safe_state_resumed", p.SafeState(entered=0, reason=p.SafeReason.RESUMED, dropped=0), 6),
    ("sync_reply", p.SyncReply(acked_seq=7, echo=0xDEADBEEF, time=0xFFFFFFF0, position=0), 7),
    ("fault", p.Fault(code=p.FaultCode.RX_OVERFLOW, detail=12), 0x0008),
    (
        "status",
        p.Status(
            time=123_456,
            position=-1,
            queue=3,
            flags=p.FLAG_CONFIGURED | p.FLAG_ENCODER,
            crc_errors=2,
            frame_errors=1,
            fired=65535,
            late=0,
        ),
        0x0009,
    ),
    (
        "fate_fired",
        p.FateReply(acked_seq=9, item=7, fate=p.Fate.FIRED, time=1_500_123, epoch=0x1234),
        0x000A,
    ),
    ("fate_unknown", p.FateReply(acked_seq=10, item=99, fate=p.Fate.UNKNOWN, time=0), 0x000B),
    (
        "fate_refused",
        p.FateReply(acked_seq=11, item=9, fate=p.Fate.REFUSED, time=300, epoch=0x1234),
        0x000C,
    ),
]


def _cobs_cases() -> list[tuple[str, bytes]]:
    return [
        ("empty", b""),
        ("one_zero", b"\x00"),
        ("two_zeros", b"\x00\x00"),
        ("no_zero", b"\x11\x22\x33"),
        ("zero_in_middle", b"\x11\x00\x22"),
        ("trailing_zero", b"\x11\x22\x00"),
        ("all_zero_38", bytes(38)),
        ("no_zero_38", bytes(range(1, 39))),
    ]


def _streams(valid: bytes, valid2: bytes) -> list[tuple[str, bytes, int, int, int]]:
    """(name, bytes, frames, crc_errors, frame_errors)."""
    body = build_body(p.MsgType.HELLO, 1)
    bad_crc = bytearray(body)
    bad_crc[-1] ^= 0x01
    payload_flip = bytearray(build_body(p.MsgType.SORT, 4, p.Sort(7, 2, 0, 1000, 10).payload()))
    payload_flip[6] ^= 0x40
    too_long_body = build_body(p.MsgType.SORT, 1, bytes(range(1, 33))) + b"\x01"  # 39 bytes
    short_body = bytes([1, 1, 0, 0, 0])  # 5 bytes, valid COBS once encoded
    return [
        ("one_frame", valid, 1, 0, 0),
        ("two_frames", valid + valid2, 2, 0, 0),
        ("leading_delimiter", b"\x00" + valid, 1, 0, 0),
        ("empty_frames_ignored", b"\x00\x00\x00" + valid + b"\x00", 1, 0, 0),
        ("bad_crc", cobs_encode(bytes(bad_crc)) + b"\x00", 0, 1, 0),
        ("payload_bit_flip", cobs_encode(bytes(payload_flip)) + b"\x00", 0, 1, 0),
        ("bad_crc_then_valid", cobs_encode(bytes(bad_crc)) + b"\x00" + valid, 1, 1, 0),
        ("bad_cobs_block_past_end", b"\x05\x01\x01\x00", 0, 0, 1),
        ("bad_cobs_then_valid", b"\x09\x01\x00" + valid, 1, 0, 1),
        ("too_short_body", cobs_encode(short_body) + b"\x00", 0, 0, 1),
        ("too_short_one_byte", b"\x01\x00", 0, 0, 1),
        ("body_39_bytes", cobs_encode(too_long_body) + b"\x00", 0, 0, 1),
        ("too_long_garbage", b"\x01" * MAX_FRAME + b"\x00", 0, 0, 1),
        ("too_long_then_valid", b"\x7f" * 100 + b"\x00" + valid, 1, 0, 1),
        ("truncated_frame_then_valid", valid[:5] + b"\x00" + valid, 1, 0, 1),
        ("partial_at_end", valid + valid2[:-1], 1, 0, 0),
    ]


def _naks() -> list[tuple[str, bytes, int, int, int]]:
    """(name, wire, acked_seq, acked_type, reason)."""
    return [
        ("wrong_version", encode_frame(p.MsgType.HELLO, 0x0011, b"", ver=2), 0x0011, 0x01, 3),
        ("unknown_type", encode_frame(0x42, 0x0012, b""), 0x0012, 0x42, 1),
        ("unknown_host_type_0x0a", encode_frame(0x0A, 0x0013, b"\x01"), 0x0013, 0x0A, 1),
        (
            "controller_type_sent_to_controller",
            encode_frame(0x80, 0x1C, b"\x01\x00\x01"),
            0x1C,
            0x80,
            1,
        ),
        ("sort_payload_short", encode_frame(p.MsgType.SORT, 0x0014, bytes(13)), 0x0014, 0x03, 2),
        ("sort_payload_long", encode_frame(p.MsgType.SORT, 0x0015, bytes(15)), 0x0015, 0x03, 2),
        ("sort_payload_v1_0", encode_frame(p.MsgType.SORT, 0x001E, bytes(12)), 0x001E, 0x03, 2),
        ("hello_payload_short", encode_frame(p.MsgType.HELLO, 0x0016, b"\x01"), 0x0016, 0x01, 2),
        ("hello_without_epoch", encode_frame(p.MsgType.HELLO, 0x001F, b""), 0x001F, 0x01, 2),
        ("query_payload_4", encode_frame(p.MsgType.QUERY, 0x0020, bytes(4)), 0x0020, 0x08, 2),
        ("cancel_payload_3", encode_frame(p.MsgType.CANCEL, 0x0017, b"\x01\x02\x03"), 0x17, 4, 2),
        ("sync_empty", encode_frame(p.MsgType.SYNC, 0x0018, b""), 0x0018, 0x06, 2),
        ("config_too_short", encode_frame(p.MsgType.CONFIG, 0x0019, b"\xf4\x01\xe8"), 0x19, 2, 2),
        (
            "config_n_gates_mismatch",
            encode_frame(p.MsgType.CONFIG, 0x001A, b"\xf4\x01\xe8\x03\x10\x27\x03\x28\x28"),
            0x001A,
            0x02,
            2,
        ),
        ("heartbeat_with_payload", encode_frame(p.MsgType.HEARTBEAT, 0x1B, b"\x00"), 0x1B, 5, 2),
        (
            "sort_stale_epoch",
            encode_frame(p.MsgType.SORT, 0x001D, p.Sort(1, 0, 0, 0, 0, epoch=5).payload()),
            0x001D,
            0x03,
            11,
        ),
    ]


def _timediffs() -> list[tuple[str, int, int, int]]:
    cases = [
        ("equal", 5, 5),
        ("after", 10, 5),
        ("before", 5, 10),
        ("wrap_after", 0x00000010, 0xFFFFFFF0),
        ("wrap_before", 0xFFFFFFF0, 0x00000010),
        ("half_minus_one", 0x7FFFFFFF, 0),
        ("half", 0x80000000, 0),
    ]
    return [(n, a, b, p.time_diff(a, b)) for n, a, b in cases]


def build() -> tuple[dict[str, Any], str]:
    """The vectors as a JSON-able dict and as the text file."""
    data: dict[str, Any] = {
        "protocol": 1,
        "generated_by": "python -m firmware_bridge.vectors.make_vectors",
        "crc": [],
        "cobs": [],
        "messages": [],
        "streams": [],
        "naks": [],
        "timediff": [],
    }
    lines = [
        "# produce-sorter controller protocol v1 test vectors; generated by",
        "# python -m firmware_bridge.vectors.make_vectors -- do not edit. Format: see that script.",
    ]
    for name, raw in [("check_123456789", b"123456789"), ("empty", b""), ("zero", b"\x00")]:
        crc = crc16(raw)
        data["crc"].append({"name": name, "data": raw.hex(), "crc": crc})
        lines.append(f"crc {name} {_hex(raw)} {crc:04X}")
    for name, raw in _cobs_cases():
        enc = cobs_encode(raw)
        data["cobs"].append({"name": name, "raw": raw.hex(), "encoded": enc.hex()})
        lines.append(f"cobs {name} {_hex(raw)} {_hex(enc)}")
    wires: list[bytes] = []
    for name, msg, seq in MESSAGES:
        payload = msg.payload()
        body = p.body(msg, seq)
        wire = p.encode(msg, seq)
        wires.append(wire)
        data["messages"].append(
            {
                "name": name,
                "type": int(msg.TYPE),
                "type_name": msg.TYPE.name,
                "seq": seq,
                "payload": payload.hex(),
                "body": body.hex(),
                "wire": wire.hex(),
                "fields": _json_fields(msg),
            }
        )
        values = " ".join(str(v) for v in _values(msg))
        line = f"msg {name} {int(msg.TYPE):02X} {seq:04X} {_hex(payload)} {_hex(body)} {_hex(wire)}"
        lines.append(f"{line} {values}".rstrip())
    for name, stream, frames, crc_errors, frame_errors in _streams(wires[0], wires[3]):
        data["streams"].append(
            {
                "name": name,
                "bytes": stream.hex(),
                "frames": frames,
                "crc_errors": crc_errors,
                "frame_errors": frame_errors,
            }
        )
        lines.append(f"stream {name} {_hex(stream)} {frames} {crc_errors} {frame_errors}")
    for name, wire, seq, typ, reason in _naks():
        data["naks"].append(
            {
                "name": name,
                "wire": wire.hex(),
                "acked_seq": seq,
                "acked_type": typ,
                "reason": reason,
                "reason_name": p.NakReason(reason).name,
            }
        )
        lines.append(f"nak {name} {_hex(wire)} {seq:04X} {typ:02X} {reason}")
    for name, a, b, diff in _timediffs():
        data["timediff"].append({"name": name, "a": a, "b": b, "diff": diff})
        lines.append(f"timediff {name} {a:08X} {b:08X} {diff}")
    return data, "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the files are stale")
    args = parser.parse_args(argv)
    data, text = build()
    json_text = json.dumps(data, indent=1) + "\n"
    if args.check:
        stale = [
            str(path)
            for path, want in ((JSON_PATH, json_text), (TXT_PATH, text))
            if not path.exists() or path.read_text() != want
        ]
        if stale:
            print(f"error: stale vectors: {', '.join(stale)}; regenerate them", file=sys.stderr)
            return 1
        return 0
    JSON_PATH.write_text(json_text)
    TXT_PATH.write_text(text)
    print(f"wrote {JSON_PATH} and {TXT_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
