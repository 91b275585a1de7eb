"""The firmware's portable C core, compiled for the host.

- `make host-test`: the C tests against firmware_bridge/vectors/vectors.txt.
- Through ctypes on `build/libfwcore.so` (the core plus a recording HAL, built by the
  firmware Makefile): the core's framing agrees with the Python framing on any bytes,
  and the controller keeps its promises (fires once, on time, never after the window,
  NAKs what it must) under exact, injected time.
- Hypothesis fuzzing of the deframer and of the whole core, and the same fuzz run again
  in a subprocess against the AddressSanitizer/UBSan build (`libfwcore_asan.so`).

Run this file as a script (`python tests/test_firmware_host.py --sanitized N`) to fuzz N
examples against the sanitizer build; the test below does that.
"""

from __future__ import annotations

import ctypes
import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # when run as a script
    sys.path.insert(0, str(ROOT))

from firmware_bridge import framing  # noqa: E402
from firmware_bridge import protocol as p  # noqa: E402

FIRMWARE_DIR = ROOT / "firmware_bridge" / "firmware"
LIB = FIRMWARE_DIR / "build" / "libfwcore.so"
ASAN_LIB = FIRMWARE_DIR / "build" / "libfwcore_asan.so"
HW_GATES = 12
"""Gates the host-built controller reports (as the Uno build)."""

u8p = ctypes.POINTER(ctypes.c_uint8)


def build_host_libs() -> None:
    """`make host-lib` in the firmware directory (incremental)."""
    proc = subprocess.run(
        ["make", "-s", "-C", str(FIRMWARE_DIR), "host-lib"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"make host-lib failed:\n{proc.stdout}{proc.stderr}")


def load_lib(path: Path) -> ctypes.CDLL:
    """Load the core and declare the harness functions (host_harness.h)."""
    lib = ctypes.CDLL(str(path))
    sig = {
        "fwh_sizeof": (ctypes.c_size_t, []),
        "fwh_init": (
            None,
            [ctypes.c_void_p, ctypes.c_uint8, ctypes.c_uint8, ctypes.c_uint32, ctypes.c_uint8],
        ),
        "fwh_feed": (
            None,
            [ctypes.c_void_p, u8p, ctypes.c_size_t, ctypes.c_uint32, ctypes.c_int32],
        ),
        "fwh_poll": (None, [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int32]),
        "fwh_take": (ctypes.c_size_t, [ctypes.c_void_p, u8p, ctypes.c_size_t]),
        "fwh_gate_rises": (ctypes.c_uint32, [ctypes.c_void_p, ctypes.c_uint8]),
        "fwh_gate_level": (ctypes.c_uint8, [ctypes.c_void_p, ctypes.c_uint8]),
        "fwh_belt_stop": (ctypes.c_uint8, [ctypes.c_void_p]),
        "fwh_out_dropped": (ctypes.c_uint32, [ctypes.c_void_p]),
        "fwh_queue_len": (ctypes.c_uint8, [ctypes.c_void_p]),
        "fwh_encoder": (ctypes.c_uint8, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint8]),
        "fwh_encoder_builtin": (ctypes.c_uint8, [ctypes.c_void_p, ctypes.c_uint8]),
        "fwh_encoder_position": (ctypes.c_int32, [ctypes.c_void_p, ctypes.c_uint32]),
        "fwh_run": (
            ctypes.c_uint32,
            [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint8],
        ),
        "fwh_deframe": (
            ctypes.c_int,
            [u8p, ctypes.c_size_t, u8p, ctypes.c_size_t, u8p, ctypes.c_size_t],
        ),
        "fwh_cobs_encode": (ctypes.c_size_t, [u8p, ctypes.c_size_t, u8p, ctypes.c_size_t]),
        "fwh_cobs_decode": (ctypes.c_int, [u8p, ctypes.c_size_t, u8p, ctypes.c_size_t]),
        "fwh_crc16": (ctypes.c_uint16, [u8p, ctypes.c_size_t]),
    }
    for name, (res, args) in sig.items():
        fn = getattr(lib, name)
        fn.restype = res
        fn.argtypes = args
    return lib


def _buf(data: bytes) -> ctypes.Array[ctypes.c_uint8]:
    return (ctypes.c_uint8 * max(1, len(data))).from_buffer_copy(data or b"\0")


class Core:
    """One controller core on the host: feed it bytes at a time, read what it sent."""

    def __init__(self, lib: ctypes.CDLL, now: int = 0, encoder: bool = False) -> None:
        self.lib = lib
        self.mem = ctypes.create_string_buffer(lib.fwh_sizeof())
        lib.fwh_init(self.mem, HW_GATES, 1 if encoder else 0, now & 0xFFFFFFFF, 0)
        self.deframer = framing.Deframer()
        self.seq = 1
        self.messages: list[p.Message] = []

    def feed(self, data: bytes, now: int, position: int = 0) -> list[p.Message]:
        self.lib.fwh_feed(self.mem, _buf(data), len(data), now & 0xFFFFFFFF, position)
        return self.take()

    def poll(self, now: int, position: int = 0) -> list[p.Message]:
        self.lib.fwh_poll(self.mem, now & 0xFFFFFFFF, position)
        return self.take()

    def take(self) -> list[p.Message]:
        out = (ctypes.c_uint8 * 8192)()
        n = self.lib.fwh_take(self.mem, out, len(out))
        crc_before = self.deframer.crc_errors + self.deframer.frame_errors
        frames = self.deframer.feed(bytes(out[:n]))
        assert self.deframer.crc_errors + self.deframer.frame_errors == crc_before, (
            "the controller sent a malformed frame"
        )
        msgs = [p.decode(f, sender="controller") for f in frames]
        self.messages += msgs
        return msgs

    def send(self, msg: p.Message, now: int, seq: int | None = None) -> list[p.Message]:
        if seq is None:
            seq = self.seq
            self.seq += 1
        return self.feed(p.encode(msg, seq), now)

    def gate_rises(self, gate: int) -> int:
        return int(self.lib.fwh_gate_rises(self.mem, gate))

    def gate_level(self, gate: int) -> int:
        return int(self.lib.fwh_gate_level(self.mem, gate))

    @property
    def belt_stop(self) -> bool:
        return bool(self.lib.fwh_belt_stop(self.mem))

    @property
    def queue_len(self) -> int:
        return int(self.lib.fwh_queue_len(self.mem))

    @property
    def out_dropped(self) -> int:
        return int(self.lib.fwh_out_dropped(self.mem))


@pytest.fixture(scope="module")
def lib() -> ctypes.CDLL:
    build_host_libs()
    return load_lib(LIB)


@pytest.fixture
def core(lib: ctypes.CDLL) -> Core:
    return configured(lib)


def configured(lib: ctypes.CDLL, heartbeat_ms: int = 1000, n_gates: int = 4) -> Core:
    c = Core(lib, now=0)
    c.take()
    (ack,) = c.send(p.Config(heartbeat_ms, 1000, (40,) * n_gates), now=10)
    assert isinstance(ack, p.Ack)
    return c


def of(msgs: list[p.Message], cls: type) -> list:
    return [m for m in msgs if isinstance(m, cls)]


# ---- the C tests ------------------------------------------------------------------------


def test_c_host_tests_pass_against_the_shared_vectors() -> None:
    proc = subprocess.run(
        ["make", "-s", "-C", str(FIRMWARE_DIR), "host-test"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ", 0 failures" in proc.stdout
    vectors = int(proc.stdout.split("host-test: ")[1].split(" vectors")[0])
    assert vectors >= 60  # every line of vectors.txt was run


# ---- behaviour, exact time --------------------------------------------------------------


def test_hello_reports_the_board_and_a_status(lib: ctypes.CDLL) -> None:
    c = Core(lib)
    c.take()
    info, status = c.send(p.Hello(), now=5)
    assert isinstance(info, p.HelloInfo) and isinstance(status, p.Status)
    assert (info.proto, info.n_gates, info.queue_size, info.time_hz) == (1, 12, 16, 1_000_000)
    assert info.flags & 0x02 == 0  # not configured yet


def test_sort_fires_at_its_target_once_and_pulses(core: Core) -> None:
    (ack,) = core.send(p.Sort(7, 2, p.SortMode.TIME, 500_000, 5000), now=100)
    assert ack == p.Ack(1, p.MsgType.SORT) or isinstance(ack, p.Ack)
    assert core.poll(499_999) == [] and core.gate_rises(2) == 0
    (fired,) = of(core.poll(500_000), p.Fired)
    assert (fired.item, fired.gate, fired.time) == (7, 2, 500_000)
    assert core.gate_level(2) == 1
    core.poll(539_999)
    assert core.gate_level(2) == 1
    core.poll(540_000)
    assert core.gate_level(2) == 0 and core.gate_rises(2) == 1
    (fate,) = core.send(p.Query(7), now=600_000)
    assert isinstance(fate, p.FateReply) and fate.fate == p.Fate.FIRED and fate.time == 500_000


def test_a_sort_whose_window_has_passed_is_acked_then_late_never_fired(core: Core) -> None:
    msgs = core.send(p.Sort(8, 1, p.SortMode.TIME, 100_000, 1000), now=101_001)
    assert isinstance(msgs[0], p.Ack)
    (late,) = of(msgs, p.Late)
    assert (late.item, late.target) == (8, 100_000)
    assert core.gate_rises(1) == 0 and of(core.poll(200_000), p.Fired) == []
    # inside its window it still fires
    msgs = core.send(p.Sort(9, 1, p.SortMode.TIME, 300_000, 1000), now=301_000)
    assert [type(m) for m in msgs] == [p.Ack, p.Fired]


def test_a_repeated_sort_is_answered_with_its_fate_and_executed_once(core: Core) -> None:
    sort = p.Sort(11, 0, p.SortMode.TIME, 50_000, 5000)
    first = core.send(sort, now=20, seq=0x4242)
    again = core.send(sort, now=30, seq=0x4242)
    other = core.send(sort, now=40, seq=0x5000)  # any seq: the (epoch, item) decides
    assert first == [p.Ack(0x4242, p.MsgType.SORT)]
    assert again == [p.FateReply(0x4242, 11, p.Fate.PENDING, 0, 0)]
    assert other == [p.FateReply(0x5000, 11, p.Fate.PENDING, 0, 0)]
    assert core.queue_len == 1
    core.poll(50_000)
    (fired,) = core.send(sort, now=60_000, seq=0x4242)  # after firing: its fate, FIRED
    assert fired == p.FateReply(0x4242, 11, p.Fate.FIRED, 50_000, 0)
    core.poll(200_000)
    assert len(of(core.messages, p.Fired)) == 1 and core.gate_rises(0) == 1
    # a refused item is remembered too: REFUSED, not run again
    bad = p.Sort(12, 9, p.SortMode.TIME, 900_000, 0)
    (nak,) = core.send(bad, 300_000, seq=77)
    assert isinstance(nak, p.Nak) and nak.reason == p.NakReason.BAD_GATE
    (refused,) = core.send(bad, 300_001, seq=77)
    assert isinstance(refused, p.FateReply) and refused.fate == p.Fate.REFUSED
    # HELLO starts a new epoch: the old epoch's SORT is refused as stale, not run
    core.send(p.Hello(epoch=9), now=300_002)
    (stale,) = core.send(sort, now=300_003, seq=0x4242)
    assert stale == p.Nak(0x4242, p.MsgType.SORT, p.NakReason.STALE_EPOCH)
    # the same item id in the new epoch is a new item; the old epoch's fate is still known
    (ack,) = core.send(replace(sort, target=900_000, epoch=9), now=300_004, seq=0x4242)
    assert isinstance(ack, p.Ack) and core.queue_len == 1
    (old,) = core.send(p.Query(11, epoch=0), now=300_005)
    assert isinstance(old, p.FateReply) and old.fate == p.Fate.FIRED


def test_max_lead_and_the_duplicate_window_time_to_live(lib: ctypes.CDLL) -> None:
    c = Core(lib)
    c.send(p.Config(60_000, 1000, (40,), max_lead_ms=1000), now=10)
    (nak,) = c.send(p.Sort(1, 0, p.SortMode.TIME, 1_000_011, 0), now=10)
    assert isinstance(nak, p.Nak) and nak.reason == p.NakReason.BAD_TARGET
    (ack,) = c.send(p.Sort(2, 0, p.SortMode.TIME, 1_000_010, 0), now=10)
    assert isinstance(ack, p.Ack)
    (first,) = c.send(p.Cancel(99), now=20, seq=300)
    assert c.send(p.Cancel(99), now=20 + p.DEDUP_TTL_MS * 1000, seq=300) == [first]
    c.send(p.Safe(), now=30 + p.DEDUP_TTL_MS * 1000, seq=301)
    assert c.belt_stop
    # a wrapped seq meeting an expired entry is a new command (here RESUME after SAFE)
    c.send(p.Resume(), now=40 + p.DEDUP_TTL_MS * 1000, seq=302)
    assert not c.belt_stop
    c.send(p.Safe(), now=31 + 2 * p.DEDUP_TTL_MS * 1000, seq=301)
    assert c.belt_stop


def test_the_belt_runs_only_while_the_controller_permits_it(lib: ctypes.CDLL) -> None:
    c = Core(lib)
    assert c.belt_stop  # boot (and reset, bootloader, no power): stopped
    c.send(p.Config(60_000, 1000, (40,)), now=10)
    assert c.belt_stop  # configured but not RESUMEd
    c.send(p.Resume(), now=20)
    assert not c.belt_stop
    c.send(p.Safe(), now=30)
    assert c.belt_stop


def test_queue_full_is_naked_and_the_seventeenth_item_never_fires(core: Core) -> None:
    for k in range(16):
        (ack,) = core.send(p.Sort(100 + k, k % 4, p.SortMode.TIME, 900_000 + k, 100), now=50)
        assert isinstance(ack, p.Ack)
    (nak,) = core.send(p.Sort(200, 0, p.SortMode.TIME, 900_000, 100), now=60)
    assert isinstance(nak, p.Nak) and nak.reason == p.NakReason.QUEUE_FULL
    core.send(p.Heartbeat(), now=800_000)
    fired = of(core.poll(900_100), p.Fired)
    assert sorted(f.item for f in fired) == list(range(100, 116))


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        (p.Sort(1, 4, p.SortMode.TIME, 1000, 0), p.NakReason.BAD_GATE),
        (p.Sort(1, 0, 3, 1000, 0), p.NakReason.BAD_VALUE),
        (p.Sort(1, 0, p.SortMode.POSITION, 1000, 0), p.NakReason.BAD_VALUE),
        (p.Sort(1, 0, p.SortMode.TIME, (1 << 30) + 1001, 0), p.NakReason.BAD_TARGET),
        (p.Cancel(5), p.NakReason.NOT_FOUND),
        (p.Config(49, 1000, (10,)), p.NakReason.BAD_VALUE),
        (p.Config(100, 99, (10,)), p.NakReason.BAD_VALUE),
        (p.Config(100, 1000, (10, 0)), p.NakReason.BAD_VALUE),
        (p.Config(100, 1000, (10,) * 13), p.NakReason.BAD_GATE),
    ],
)
def test_naks(core: Core, msg: p.Message, reason: int) -> None:
    (nak,) = core.send(msg, now=1000)
    assert isinstance(nak, p.Nak) and nak.reason == reason


def test_sort_before_config_is_naked_not_configured(lib: ctypes.CDLL) -> None:
    c = Core(lib)
    c.take()  # the boot STATUS
    (nak,) = c.send(p.Sort(1, 0, p.SortMode.NOW, 0, 0), now=5)
    assert isinstance(nak, p.Nak) and nak.reason == p.NakReason.NOT_CONFIGURED


def test_query_before_config_is_naked_not_configured(lib: ctypes.CDLL) -> None:
    c = Core(lib)
    c.take()  # the boot STATUS
    (nak,) = c.send(p.Query(3, epoch=5), now=5)
    assert isinstance(nak, p.Nak) and nak.reason == p.NakReason.NOT_CONFIGURED
    assert nak.acked_type == p.MsgType.QUERY


def test_cancel_removes_a_pending_item(core: Core) -> None:
    core.send(p.Sort(21, 1, p.SortMode.TIME, 400_000, 100), now=10)
    (ack,) = core.send(p.Cancel(21), now=20)
    assert isinstance(ack, p.Ack)
    assert of(core.poll(400_000), p.Fired) == [] and core.gate_rises(1) == 0
    (fate,) = core.send(p.Query(21), now=30)
    assert isinstance(fate, p.FateReply) and fate.fate == p.Fate.CANCELLED


def test_heartbeat_loss_safe_state_report_and_resume(lib: ctypes.CDLL) -> None:
    c = configured(lib, heartbeat_ms=100)
    c.send(p.Sort(31, 0, p.SortMode.TIME, 5_000_000, 0), now=20)
    assert c.poll(100_020) == []  # exactly the timeout after the last frame: still fine
    (safe,) = c.poll(100_021)
    assert safe == p.SafeState(1, p.SafeReason.HEARTBEAT, 1) and c.belt_stop
    (nak,) = of(c.send(p.Sort(32, 0, p.SortMode.NOW, 0, 0), now=200_000), p.Nak)
    assert nak.reason == p.NakReason.SAFE_STATE
    assert of(c.messages[-2:], p.SafeState)  # re-sent once when the host spoke again
    (fate,) = c.send(p.Query(31), now=200_001)
    assert isinstance(fate, p.FateReply) and fate.fate == p.Fate.DROPPED
    msgs = c.send(p.Resume(), now=200_002)
    assert isinstance(msgs[0], p.Ack) and msgs[1] == p.SafeState(0, p.SafeReason.RESUMED, 0)
    assert not c.belt_stop


def test_corrupt_frames_are_counted_not_answered(core: Core) -> None:
    wire = bytearray(p.encode(p.Sort(41, 0, p.SortMode.NOW, 0, 0), 900))
    wire[3] ^= 0x10
    assert core.feed(bytes(wire), now=100) == []
    assert core.gate_rises(0) == 0
    (_info, status) = core.send(p.Hello(), now=200)
    assert isinstance(status, p.Status) and status.crc_errors + status.frame_errors == 1


# ---- hypothesis: framing ---------------------------------------------------------------


def valid_wire(draw: st.DrawFn) -> bytes:
    payload = draw(st.binary(max_size=32))
    return framing.encode_frame(draw(st.integers(0, 255)), draw(st.integers(0, 0xFFFF)), payload)


@st.composite
def byte_streams(draw: st.DrawFn) -> bytes:
    """Mixtures of valid frames, corrupted frames, zeros and noise."""
    parts = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["frame", "flip", "noise", "zeros", "long"]))
        if kind == "frame":
            parts.append(valid_wire(draw))
        elif kind == "flip":
            wire = bytearray(valid_wire(draw))
            i = draw(st.integers(0, len(wire) - 1))
            wire[i] ^= 1 << draw(st.integers(0, 7))
            parts.append(bytes(wire))
        elif kind == "noise":
            parts.append(draw(st.binary(max_size=60)))
        elif kind == "zeros":
            parts.append(bytes(draw(st.integers(1, 3))))
        else:
            parts.append(bytes(draw(st.integers(1, 255)) for _ in range(draw(st.integers(38, 80)))))
    return b"".join(parts)


def python_deframe(data: bytes) -> tuple[list[int], list[bytes]]:
    """Per completed chunk result codes (1 frame, 2 frame error, 3 CRC error) and the
    frames as ver, type, seq lo/hi, len, payload - the layout fwh_deframe uses."""
    d = framing.Deframer()
    codes: list[int] = []
    frames: list[bytes] = []
    for byte in data:
        errs = (d.crc_errors, d.frame_errors)
        got = d.feed(bytes([byte]))
        if got:
            f = got[0]
            codes.append(1)
            frames.append(
                bytes([f.ver, f.type, f.seq & 0xFF, f.seq >> 8, len(f.payload)]) + f.payload
            )
        elif d.crc_errors != errs[0]:
            codes.append(3)
        elif d.frame_errors != errs[1]:
            codes.append(2)
    return codes, frames


def c_deframe(lib: ctypes.CDLL, data: bytes) -> tuple[list[int], bytes]:
    codes = (ctypes.c_uint8 * (len(data) + 1))()
    frames = (ctypes.c_uint8 * (len(data) * 40 + 40))()
    n = lib.fwh_deframe(_buf(data), len(data), codes, len(codes), frames, len(frames))
    assert n >= 0
    out = bytes(frames)
    return list(codes[:n]), out


def check_deframe(lib: ctypes.CDLL, data: bytes) -> None:
    c_codes, c_frames = c_deframe(lib, data)
    py_codes, py_frames = python_deframe(data)
    assert c_codes == py_codes
    joined = b"".join(py_frames)
    assert c_frames[: len(joined)] == joined
    for frame in py_frames:
        assert frame[4] <= 32 and len(frame) == 5 + frame[4]


def check_cobs(lib: ctypes.CDLL, data: bytes) -> None:
    enc = (ctypes.c_uint8 * (len(data) + len(data) // 254 + 2))()
    n = lib.fwh_cobs_encode(_buf(data), len(data), enc, len(enc))
    assert bytes(enc[:n]) == framing.cobs_encode(data)
    dec = (ctypes.c_uint8 * (len(data) + 1))()
    m = lib.fwh_cobs_decode(enc, n, dec, len(dec))
    assert m == len(data) and bytes(dec[:m]) == data
    assert lib.fwh_crc16(_buf(data), len(data)) == framing.crc16(data)


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(data=byte_streams())
def test_c_deframer_agrees_with_python_on_any_bytes(lib: ctypes.CDLL, data: bytes) -> None:
    check_deframe(lib, data)


@FUZZ
@given(data=st.binary(max_size=600))
def test_c_deframer_on_raw_noise(lib: ctypes.CDLL, data: bytes) -> None:
    check_deframe(lib, data)


@FUZZ
@given(data=st.binary(max_size=300))
def test_c_cobs_and_crc_match_python(lib: ctypes.CDLL, data: bytes) -> None:
    check_cobs(lib, data)


# ---- hypothesis: the whole controller ---------------------------------------------------


@dataclass
class Op:
    """One step of a fuzzed session."""

    kind: str
    """"cmd" (a valid command), "dup" (resend an earlier frame), "flip" (a corrupted
    command), "noise" (random bytes), "time" (advance and poll)."""
    value: int
    """Seed for what the step does."""


ops = st.lists(
    st.builds(
        Op,
        st.sampled_from(["cmd", "cmd", "cmd", "dup", "flip", "noise", "time", "time"]),
        st.integers(0, 2**32 - 1),
    ),
    max_size=60,
)


EPOCHS = (0, 1, 2)
"""Link epochs the fuzz uses: HELLO moves between them, commands name any of them."""


def random_command(rng: random.Random, item: int, now: int) -> p.Message:
    """A valid command; items are drawn from a few ids (repeats are the point: an
    (epoch, item) must run at most once)."""
    item = rng.randint(1, 6)
    epoch = rng.choice(EPOCHS)
    kind = rng.choice(
        [
            "sort",
            "sort",
            "sort",
            "cancel",
            "query",
            "sync",
            "hb",
            "config",
            "safe",
            "resume",
            "hello",
        ]
    )
    if kind == "sort":
        mode = rng.choice([p.SortMode.TIME, p.SortMode.TIME, p.SortMode.NOW, p.SortMode.POSITION])
        target = (now + rng.randint(-50_000, 300_000)) & 0xFFFFFFFF
        window = rng.choice([0, 1000, 20_000])
        return p.Sort(item, rng.randint(0, 5), mode, target, window, epoch)
    if kind == "cancel":
        return p.Cancel(item, epoch)
    if kind == "query":
        return p.Query(item, epoch)
    if kind == "sync":
        return p.Sync(rng.getrandbits(32))
    if kind == "hb":
        return p.Heartbeat()
    if kind == "config":
        pulses = (rng.randint(1, 50),) * rng.randint(1, 6)
        return p.Config(rng.choice([50, 200, 1000]), 100, pulses, rng.choice([100, 200, 10_000]))
    if kind == "safe":
        return p.Safe()
    if kind == "resume":
        return p.Resume()
    return p.Hello(rng.choice(EPOCHS))


def run_session(lib: ctypes.CDLL, steps: list[Op]) -> None:
    """Drive one core through `steps`; check the promises that hold whatever happens."""
    c = Core(lib, now=1_000)
    c.take()
    now = 1_000
    sent: list[bytes] = []
    item = 0
    sort_items: dict[int, tuple[int, int]] = {}  # seq -> (epoch, item) of each SORT sent
    for op in steps:
        rng = random.Random(op.value)
        if op.kind == "time":
            now += rng.randint(0, 150_000)
            c.poll(now)
            continue
        if op.kind == "noise":
            c.feed(rng.randbytes(rng.randint(1, 50)), now)
            continue
        if op.kind == "dup" and sent:
            c.feed(rng.choice(sent), now)
            continue
        item += 1
        msg = random_command(rng, item, now)
        seq = c.seq
        c.seq += 1
        wire = p.encode(msg, seq)
        if op.kind == "flip":
            b = bytearray(wire)
            b[rng.randrange(len(b) - 1)] ^= 1 << rng.randrange(8)
            c.feed(bytes(b), now)
            continue
        if isinstance(msg, p.Sort):
            sort_items[seq] = (msg.epoch, msg.item)
        sent.append(wire)
        c.feed(wire, now)
    now += 1_000_000
    c.poll(now)
    assert c.out_dropped == 0 and 0 <= c.queue_len <= 16
    fired = Counter((m.epoch, m.item) for m in of(c.messages, p.Fired))
    # no (epoch, item) fires twice, however often it is sent, and only SORTs actually
    # sent intact fire
    assert all(n == 1 for n in fired.values())
    assert set(fired) <= set(sort_items.values())
    # every gate edge belongs to a FIRED event
    assert sum(c.gate_rises(g) for g in range(HW_GATES)) <= sum(fired.values())
    # an item never both fires and is reported late
    assert not set(fired) & {(m.epoch, m.item) for m in of(c.messages, p.Late)}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=ops)
def test_fuzzed_sessions_keep_the_controllers_promises(lib: ctypes.CDLL, steps: list[Op]) -> None:
    run_session(lib, steps)


# ---- the same fuzz against the sanitizer build ------------------------------------------


def asan_runtime() -> str | None:
    """Path of the host compiler's libasan, to LD_PRELOAD into Python."""
    try:
        out = subprocess.run(
            ["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return out if os.path.isabs(out) and Path(out).exists() else None


def test_fuzz_under_address_and_undefined_sanitizers(lib: ctypes.CDLL) -> None:
    runtime = asan_runtime()
    assert runtime is not None, "gcc's libasan.so not found (install gcc with sanitizers)"
    env = dict(os.environ)
    env["LD_PRELOAD"] = runtime
    env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=1"
    env["UBSAN_OPTIONS"] = "halt_on_error=1:print_stacktrace=1"
    proc = subprocess.run(
        [sys.executable, __file__, "--sanitized", "150"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "sanitized fuzz ok" in proc.stdout


def _sanitized_main(n: int) -> int:
    """Runs the fuzz properties against libfwcore_asan.so (inside an LD_PRELOADed Python)."""
    build_host_libs()
    asan = load_lib(ASAN_LIB)
    fuzz = settings(
        max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )

    @fuzz
    @given(data=byte_streams())
    def deframe(data: bytes) -> None:
        check_deframe(asan, data)

    @fuzz
    @given(data=st.binary(max_size=600))
    def noise(data: bytes) -> None:
        check_deframe(asan, data)
        check_cobs(asan, data[:300])

    @fuzz
    @given(steps=ops)
    def sessions(steps: list[Op]) -> None:
        run_session(asan, steps)

    for prop in (deframe, noise, sessions):
        prop()
    print("sanitized fuzz ok")
    return 0


def _iter_args(argv: list[str]) -> Iterator[tuple[str, str]]:
    for i in range(0, len(argv) - 1, 2):
        yield argv[i], argv[i + 1]


if __name__ == "__main__":
    opts = dict(_iter_args(sys.argv[1:]))
    sys.exit(_sanitized_main(int(opts.get("--sanitized", "100"))))
