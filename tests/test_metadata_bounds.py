"""The pure-Python model metadata reader is linear and bounded on crafted files.

A crafted flatbuffer (below) claims N metadata entries in 4 bytes each, all pointing at one
Metadata table whose buffer is the entries vector itself (N bytes): the old reader copied
that buffer once per entry, N x N bytes (80,000 entries in 320 KB: 6.4 GB copied, seconds
of work). The bounds are asserted as work (reads and bytes copied), not as seconds.
"""

from __future__ import annotations

import struct

import pytest

import sorter.grading.metadata as md
from sorter.errors import ModelError


def craft(n: int) -> bytes:
    """N metadata entries sharing one table whose buffer's data is the entries vector."""
    out = bytearray()

    def u32(v: int) -> None:
        out.extend(struct.pack("<I", v))

    def i32(v: int) -> None:
        out.extend(struct.pack("<i", v))

    def u16(*vs: int) -> None:
        out.extend(struct.pack(f"<{len(vs)}H", *vs))

    def patch(pos: int, target: int) -> None:  # a forward uoffset at pos -> target
        struct.pack_into("<I", out, pos, target - pos)

    u32(0)
    out.extend(b"TFL3")
    mvt = len(out)  # Model vtable: slots 0..6, buffers (4) at +4, metadata (6) at +8
    u16(20, 12, 0, 0, 0, 0, 4, 0, 8)
    u16(0)
    mt = len(out)
    i32(mt - mvt)
    u32(0)
    u32(0)
    patch(0, mt)
    bv = len(out)  # buffers: one
    u32(1)
    u32(0)
    patch(mt + 4, bv)
    bvt = len(out)
    u16(6, 8, 4)
    u16(0)
    bt = len(out)
    i32(bt - bvt)
    u32(0)
    patch(bv + 4, bt)
    mv = len(out)  # metadata vector, also buffer 0's data (read as N bytes)
    u32(n)
    patch(bt + 4, mv)
    patch(mt + 8, mv)
    first = len(out)
    out.extend(b"\0" * (4 * n))
    mdvt = len(out)
    u16(8, 12, 4, 8)
    mdt = len(out)
    i32(mdt - mdvt)
    u32(0)
    u32(0)
    for i in range(n):
        patch(first + 4 * i, mdt)
    name = len(out)
    u32(1)
    out.extend(b"x\0\0\0")
    patch(mdt + 4, name)
    return bytes(out)


class _Work:
    """Counts the reader's primitive reads and the bytes it copies."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads = 0
        self.copied = 0
        unpack, bytes_at = md._Reader._unpack, md._Reader.bytes_at

        def counted_unpack(reader: md._Reader, fmt: str, pos: int) -> int:
            self.reads += 1
            return unpack(reader, fmt, pos)

        def counted_bytes(reader: md._Reader, start: int, length: int) -> bytes:
            self.copied += length
            return bytes_at(reader, start, length)

        monkeypatch.setattr(md._Reader, "_unpack", counted_unpack)
        monkeypatch.setattr(md._Reader, "bytes_at", counted_bytes)


def test_the_crafted_file_is_what_it_claims() -> None:
    """Under the limit the crafted file parses: the entry's buffer is the N-byte vector."""
    entries = md.read_embedded_metadata(craft(8))
    assert list(entries) == ["x"] and len(entries["x"]) == 8


def test_80000_entries_in_320_kb_are_refused_before_walking_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = craft(80_000)
    assert 320_000 <= len(data) <= 321_000
    work = _Work(monkeypatch)
    with pytest.raises(ModelError) as info:
        md.read_embedded_metadata(data, "crafted.tflite")
    msg = str(info.value)
    assert msg.startswith("crafted.tflite: 80000 metadata entries") and "\n" not in msg
    assert work.reads < 50 and work.copied == 0


def test_entries_sharing_one_buffer_copy_at_most_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """As many entries as allowed, all on one buffer: refused once the bytes they would copy
    pass the file's size, so the work is linear in the file whatever the entries claim."""
    n = md.MAX_METADATA_ENTRIES
    data = craft(n)
    work = _Work(monkeypatch)
    with pytest.raises(ModelError, match="overlap"):
        md.read_embedded_metadata(data, "crafted.tflite")
    assert work.copied <= len(data)
    assert work.reads <= 20 * n
