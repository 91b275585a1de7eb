"""Bytes <-> frames: COBS framing with a 0x00 delimiter and CRC-16/CCITT-FALSE.

Pure functions and a byte-fed state machine; no I/O (see PROTOCOL.md, "Frames"):

    wire:   COBS(body) 0x00
    body:   ver(1) type(1) seq(2, LE) payload(0..32) crc(2, LE)

`Deframer.feed(data)` takes any chunk of received bytes and returns the frames completed
by it; everything that is not a valid frame is dropped and counted (`crc_errors`,
`frame_errors`), as the controller does.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from firmware_bridge.errors import FramingError

PROTO_VERSION = 1
"""The protocol version carried in every frame's first body byte."""
MAX_PAYLOAD = 32
"""Largest payload in bytes."""
HEADER_SIZE = 4
"""ver, type, seq (2)."""
CRC_SIZE = 2
"""CRC-16 stored little-endian after the payload."""
MIN_BODY = HEADER_SIZE + CRC_SIZE
"""Smallest valid body: header and CRC, no payload (6)."""
MAX_BODY = MIN_BODY + MAX_PAYLOAD
"""Largest valid body (38)."""
MAX_FRAME = 40
"""Largest frame on the wire, delimiter included: COBS adds one byte to a 38-byte body."""
DELIMITER = 0x00
"""Ends every frame on the wire."""


def crc16(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, no final xor."""
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def cobs_encode(data: bytes) -> bytes:
    """Consistent Overhead Byte Stuffing: `data` with every 0x00 removed (no delimiter)."""
    out = bytearray([0])
    code_at = 0
    code = 1
    for byte in data:
        if byte == 0:
            out[code_at] = code
            code_at = len(out)
            out.append(0)
            code = 1
            continue
        out.append(byte)
        code += 1
        if code == 0xFF:
            out[code_at] = code
            code_at = len(out)
            out.append(0)
            code = 1
    out[code_at] = code
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """Invert `cobs_encode`. Raises `FramingError("cobs")` for a zero byte or a block
    that runs past the end; the empty input is invalid too (COBS never produces it)."""
    if not data:
        raise FramingError("cobs", "COBS: empty input")
    out = bytearray()
    i = 0
    n = len(data)
    while i < n:
        code = data[i]
        if code == 0:
            raise FramingError("cobs", f"COBS: zero byte at offset {i}")
        end = i + code
        if end > n:
            raise FramingError("cobs", f"COBS: block at offset {i} runs {end - n} past the end")
        block = data[i + 1 : end]
        if 0 in block:
            raise FramingError("cobs", f"COBS: zero byte inside block at offset {i}")
        out += block
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)


@dataclass(frozen=True)
class Frame:
    """One decoded frame body (CRC already checked and removed)."""

    ver: int
    """Protocol version byte (1 for this protocol; checked by `protocol`, not here)."""
    type: int
    """Message type byte (0x01-0x7F host -> controller, 0x80-0xFF controller -> host)."""
    seq: int
    """Sender's 16-bit sequence number."""
    payload: bytes
    """0..MAX_PAYLOAD bytes of message payload."""


def build_body(msg_type: int, seq: int, payload: bytes = b"", ver: int = PROTO_VERSION) -> bytes:
    """The body with its CRC: ver type seq payload crc."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds MAX_PAYLOAD={MAX_PAYLOAD}")
    head = struct.pack("<BBH", ver & 0xFF, msg_type & 0xFF, seq & 0xFFFF) + payload
    return head + struct.pack("<H", crc16(head))


def encode_frame(msg_type: int, seq: int, payload: bytes = b"", ver: int = PROTO_VERSION) -> bytes:
    """The wire bytes of one frame: COBS(body) followed by the 0x00 delimiter."""
    return cobs_encode(build_body(msg_type, seq, payload, ver)) + bytes([DELIMITER])


def parse_body(body: bytes) -> Frame:
    """Check length and CRC of a decoded body and split it. Raises `FramingError`
    ("short", "long" or "crc")."""
    if len(body) < MIN_BODY:
        raise FramingError("short", f"frame body of {len(body)} bytes is shorter than {MIN_BODY}")
    if len(body) > MAX_BODY:
        raise FramingError("long", f"frame body of {len(body)} bytes is longer than {MAX_BODY}")
    (want,) = struct.unpack_from("<H", body, len(body) - CRC_SIZE)
    got = crc16(body[: len(body) - CRC_SIZE])
    if got != want:
        raise FramingError("crc", f"CRC mismatch: computed 0x{got:04X}, frame says 0x{want:04X}")
    ver, msg_type, seq = struct.unpack_from("<BBH", body, 0)
    return Frame(ver, msg_type, seq, bytes(body[HEADER_SIZE : len(body) - CRC_SIZE]))


def decode_frame(encoded: bytes) -> Frame:
    """Decode the bytes between two delimiters (no 0x00 in them). Raises `FramingError`."""
    if len(encoded) > MAX_FRAME - 1:
        raise FramingError(
            "long", f"{len(encoded)} bytes before a delimiter exceed MAX_FRAME-1={MAX_FRAME - 1}"
        )
    return parse_body(cobs_decode(encoded))


class Deframer:
    """Streaming receiver: feed it bytes, get whole frames back.

    Bytes accumulate until a 0x00; more than MAX_FRAME-1 bytes before a delimiter is a
    framing error and everything up to the next 0x00 is discarded. An empty frame (two
    delimiters in a row) is ignored without counting, so a sender may put a 0x00 in front
    of a frame to flush a receiver's partial garbage.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._overflow = False
        self.frames = 0
        """Valid frames returned so far."""
        self.crc_errors = 0
        """Frames dropped for a CRC mismatch."""
        self.frame_errors = 0
        """Frames dropped for bad COBS, too short or too long."""
        self.last_error: FramingError | None = None
        """The most recent rejection, for logging."""

    def reset(self) -> None:
        """Forget a partial frame (after a reconnect); counters are kept."""
        self._buf.clear()
        self._overflow = False

    def feed(self, data: bytes) -> list[Frame]:
        """Consume `data`; return the valid frames it completed, in order."""
        frames: list[Frame] = []
        for byte in data:
            if byte != DELIMITER:
                if self._overflow:
                    continue
                if len(self._buf) >= MAX_FRAME - 1:
                    self._overflow = True
                    self._buf.clear()
                    continue
                self._buf.append(byte)
                continue
            if self._overflow:
                self._overflow = False
                self._reject(FramingError("long", f"more than {MAX_FRAME - 1} bytes before a 0x00"))
                continue
            if not self._buf:
                continue
            chunk = bytes(self._buf)
            self._buf.clear()
            try:
                frames.append(decode_frame(chunk))
            except FramingError as err:
                self._reject(err)
                continue
            self.frames += 1
        return frames

    def _reject(self, err: FramingError) -> None:
        self.last_error = err
        if err.kind == "crc":
            self.crc_errors += 1
        else:
            self.frame_errors += 1
