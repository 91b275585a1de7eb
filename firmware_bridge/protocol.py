"""Typed messages of the controller protocol, version 1 (PROTOCOL.md) and their encoding.

Each message type is a frozen dataclass with the payload fields in wire order; `encode`
turns one (with a seq) into wire bytes and `decode` turns a `Frame` back into a message,
checking the version, the type and the payload length. `ProtocolError.reason` then carries
the NAK reason a controller answers with.
"""

from __future__ import annotations

import struct
from dataclasses import astuple, dataclass, fields
from enum import IntEnum
from typing import Any, ClassVar

from firmware_bridge.errors import ProtocolError
from firmware_bridge.framing import MAX_PAYLOAD, PROTO_VERSION, Frame, build_body, encode_frame

QUEUE_SIZE = 16
"""Pending SORTs a controller holds."""
DEDUP_WINDOW = 16
"""Command seqs a controller remembers with their answers."""
FATES_SIZE = 32
"""Items whose fate a controller remembers after they left its queue."""
DEDUP_TTL_MS = 5000
"""A duplicate-window entry older than this (ms of controller time) is forgotten: the
host never resends a command after it (a wrapped seq must not hit an old entry)."""
TIME_HZ = 1_000_000
"""Controller time unit: microseconds."""
U32 = 1 << 32


class MsgType(IntEnum):
    """Message type bytes."""

    HELLO = 0x01
    CONFIG = 0x02
    SORT = 0x03
    CANCEL = 0x04
    HEARTBEAT = 0x05
    SYNC = 0x06
    RESUME = 0x07
    QUERY = 0x08
    SAFE = 0x09
    ACK = 0x80
    NAK = 0x81
    HELLO_INFO = 0x82
    FIRED = 0x83
    LATE = 0x84
    SAFE_STATE = 0x85
    SYNC_REPLY = 0x86
    FAULT = 0x87
    STATUS = 0x88
    FATE = 0x89


class NakReason(IntEnum):
    """NAK reason codes."""

    UNKNOWN_TYPE = 1
    BAD_LENGTH = 2
    BAD_VERSION = 3
    BAD_GATE = 4
    BAD_VALUE = 5
    BAD_TARGET = 6
    QUEUE_FULL = 7
    NOT_FOUND = 8
    SAFE_STATE = 9
    NOT_CONFIGURED = 10
    STALE_EPOCH = 11


class SortMode(IntEnum):
    """How a SORT's target is read."""

    TIME = 0
    POSITION = 1
    NOW = 2


class Fate(IntEnum):
    """What became of an item (FATE reply)."""

    UNKNOWN = 0
    PENDING = 1
    FIRED = 2
    LATE = 3
    CANCELLED = 4
    DROPPED = 5
    REFUSED = 6


class SafeReason(IntEnum):
    """Why the safe state was entered (or left: RESUMED)."""

    HEARTBEAT = 1
    COMMAND = 2
    FAULT = 3
    RESUMED = 4


class FaultCode(IntEnum):
    """FAULT codes."""

    RX_OVERFLOW = 1
    QUEUE_CORRUPT = 2
    WATCHDOG_RESET = 3


FLAG_ENCODER = 0x01
"""HELLO_INFO / STATUS flags bit 0: an encoder is present."""
FLAG_CONFIGURED = 0x02
"""Flags bit 1: CONFIG has been accepted."""
FLAG_SAFE = 0x04
"""Flags bit 2: in the safe state."""
FLAG_RUN = 0x08
"""Flags bit 3: the belt-run permit output is asserted (the belt may run)."""
DEFAULT_MAX_LEAD_MS = 10_000
"""CONFIG max_lead_ms a host sends unless told otherwise: TIME targets further ahead are
NAKed BAD_TARGET."""
MAX_CONFIG_GATES = MAX_PAYLOAD - 7
"""Most gates one CONFIG can carry: 7 bytes of fixed fields + one pulse length per gate
within the 32-byte payload (the board itself may have fewer outputs: HELLO_INFO n_gates)."""


class Message:
    """Base of every message: `TYPE` and the struct `FORMAT` of its payload."""

    TYPE: ClassVar[MsgType]
    FORMAT: ClassVar[str] = "<"

    def payload(self) -> bytes:
        """The payload bytes in wire order."""
        return struct.pack(self.FORMAT, *astuple(self))  # type: ignore[call-overload]

    @classmethod
    def from_payload(cls, payload: bytes) -> Message:
        size = struct.calcsize(cls.FORMAT)
        if len(payload) != size:
            raise ProtocolError(
                NakReason.BAD_LENGTH,
                f"{cls.TYPE.name} payload is {len(payload)} bytes, expected {size}",
            )
        return cls(*struct.unpack(cls.FORMAT, payload))

    def fields(self) -> dict[str, Any]:
        """Field name -> value (for logs, vectors and JSON)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]


# ---------------------------------------------------------------- host -> controller
@dataclass(frozen=True)
class Hello(Message):
    """Handshake: starts link epoch `epoch` and clears the controller's duplicate window."""

    TYPE = MsgType.HELLO
    FORMAT = "<H"
    epoch: int = 0
    """Link epoch the host chose for this session (u16, nonzero); SORT, CANCEL and QUERY
    name their item within an epoch."""


@dataclass(frozen=True)
class Config(Message):
    """Heartbeat and status periods, gate count and pulse length per gate."""

    TYPE = MsgType.CONFIG
    heartbeat_ms: int
    """Host silence (ms) after which the controller enters the safe state (>= 50)."""
    status_ms: int
    """STATUS period in ms (>= 100)."""
    pulse_ms: tuple[int, ...]
    """Pulse length in ms per gate (1..255 each); its length is n_gates."""
    max_lead_ms: int = DEFAULT_MAX_LEAD_MS
    """A TIME target further ahead than this (ms) is NAKed BAD_TARGET (>= 100). On the
    wire it comes before n_gates."""

    def payload(self) -> bytes:
        return struct.pack(
            f"<HHHB{len(self.pulse_ms)}B",
            self.heartbeat_ms,
            self.status_ms,
            self.max_lead_ms,
            len(self.pulse_ms),
            *self.pulse_ms,
        )

    @classmethod
    def from_payload(cls, payload: bytes) -> Message:
        if len(payload) < 7 or len(payload) != 7 + payload[6]:
            raise ProtocolError(
                NakReason.BAD_LENGTH,
                f"CONFIG payload is {len(payload)} bytes, expected 7 + n_gates",
            )
        heartbeat_ms, status_ms, max_lead_ms, n_gates = struct.unpack_from("<HHHB", payload)
        return cls(heartbeat_ms, status_ms, tuple(payload[7 : 7 + n_gates]), max_lead_ms)


@dataclass(frozen=True)
class Sort(Message):
    """Fire `gate` for `item` when time (or position) reaches `target`."""

    TYPE = MsgType.SORT
    FORMAT = "<IBBIHH"
    item: int
    """Item id (u32), echoed in FIRED/LATE/FATE."""
    gate: int
    """Gate index, 0-based, below n_gates."""
    mode: int
    """`SortMode`: TIME, POSITION or NOW."""
    target: int
    """Controller time in us (TIME) or belt position in ticks (POSITION), u32."""
    window_us: int
    """How far past the target the gate may still fire (us, or ticks in POSITION mode)."""
    epoch: int = 0
    """Link epoch of the item (the epoch of the HELLO it was sent after)."""


@dataclass(frozen=True)
class Cancel(Message):
    """Remove a pending item."""

    TYPE = MsgType.CANCEL
    FORMAT = "<IH"
    item: int
    """Item id."""
    epoch: int = 0
    """Link epoch of the item (the epoch of the HELLO it was sent after)."""


@dataclass(frozen=True)
class Heartbeat(Message):
    """I am alive (no answer)."""

    TYPE = MsgType.HEARTBEAT


@dataclass(frozen=True)
class Sync(Message):
    """Ask for the controller's time; `echo` comes back in SYNC_REPLY."""

    TYPE = MsgType.SYNC
    FORMAT = "<I"
    echo: int
    """Any u32 the host chooses."""


@dataclass(frozen=True)
class Resume(Message):
    """Leave the safe state."""

    TYPE = MsgType.RESUME


@dataclass(frozen=True)
class Query(Message):
    """Ask for an item's fate."""

    TYPE = MsgType.QUERY
    FORMAT = "<IH"
    item: int
    """Item id."""
    epoch: int = 0
    """Link epoch of the item (the epoch of the HELLO it was sent after)."""


@dataclass(frozen=True)
class Safe(Message):
    """Enter the safe state now."""

    TYPE = MsgType.SAFE


# ---------------------------------------------------------------- controller -> host
@dataclass(frozen=True)
class Ack(Message):
    """The command with `acked_seq` was accepted."""

    TYPE = MsgType.ACK
    FORMAT = "<HB"
    acked_seq: int
    """Seq of the command answered."""
    acked_type: int
    """Type of the command answered."""


@dataclass(frozen=True)
class Nak(Message):
    """The command with `acked_seq` was refused for `reason`."""

    TYPE = MsgType.NAK
    FORMAT = "<HBB"
    acked_seq: int
    """Seq of the command answered."""
    acked_type: int
    """Type of the command answered."""
    reason: int
    """`NakReason`."""


@dataclass(frozen=True)
class HelloInfo(Message):
    """Answer to HELLO: who the controller is."""

    TYPE = MsgType.HELLO_INFO
    FORMAT = "<HBBBBBBBI"
    acked_seq: int
    """Seq of the HELLO answered."""
    fw_major: int
    """Firmware version, major."""
    fw_minor: int
    """Firmware version, minor."""
    fw_patch: int
    """Firmware version, patch."""
    proto: int
    """Protocol version the controller speaks (1)."""
    n_gates: int
    """Gates the controller can drive."""
    flags: int
    """FLAG_ENCODER | FLAG_CONFIGURED | FLAG_SAFE."""
    queue_size: int
    """Pending SORTs it can hold."""
    time_hz: int
    """Unit of controller time (1000000)."""


@dataclass(frozen=True)
class Fired(Message):
    """A gate fired for an item."""

    TYPE = MsgType.FIRED
    FORMAT = "<IBIiH"
    item: int
    """Item id."""
    gate: int
    """Gate fired."""
    time: int
    """Controller time of the firing (us, u32)."""
    position: int
    """Belt position at the firing (ticks, i32; 0 without encoder)."""
    epoch: int = 0
    """Link epoch of the item (the epoch of the HELLO it was sent after)."""


@dataclass(frozen=True)
class Late(Message):
    """An item's window passed before it could fire; it was not fired."""

    TYPE = MsgType.LATE
    FORMAT = "<IBIIH"
    item: int
    """Item id."""
    gate: int
    """Gate it was meant for."""
    time: int
    """Controller time when it was declared late (us)."""
    target: int
    """The SORT's target."""
    epoch: int = 0
    """Link epoch of the item (the epoch of the HELLO it was sent after)."""


@dataclass(frozen=True)
class SafeState(Message):
    """The safe state was entered (entered=1) or left (entered=0)."""

    TYPE = MsgType.SAFE_STATE
    FORMAT = "<BBB"
    entered: int
    """1 entered, 0 left."""
    reason: int
    """`SafeReason`."""
    dropped: int
    """Pending SORTs dropped on entry."""


@dataclass(frozen=True)
class SyncReply(Message):
    """Answer to SYNC: the controller's time and position."""

    TYPE = MsgType.SYNC_REPLY
    FORMAT = "<HIIi"
    acked_seq: int
    """Seq of the SYNC answered."""
    echo: int
    """The SYNC's echo value."""
    time: int
    """Controller time (us, u32)."""
    position: int
    """Belt position (ticks, i32)."""


@dataclass(frozen=True)
class Fault(Message):
    """Something went wrong inside the controller."""

    TYPE = MsgType.FAULT
    FORMAT = "<BH"
    code: int
    """`FaultCode`."""
    detail: int
    """Code-specific detail (u16)."""


@dataclass(frozen=True)
class Status(Message):
    """Periodic status."""

    TYPE = MsgType.STATUS
    FORMAT = "<IiBBHHHH"
    time: int
    """Controller time (us)."""
    position: int
    """Belt position (ticks)."""
    queue: int
    """Pending SORTs."""
    flags: int
    """FLAG_ENCODER | FLAG_CONFIGURED | FLAG_SAFE."""
    crc_errors: int
    """Frames dropped for bad CRC (saturating)."""
    frame_errors: int
    """Frames dropped for bad COBS/size (saturating)."""
    fired: int
    """Gates fired (saturating)."""
    late: int
    """Items reported late (saturating)."""


@dataclass(frozen=True)
class FateReply(Message):
    """Answer to QUERY, and to a SORT whose (epoch, item) the controller already knows
    (a repeated SORT is answered with its recorded fate, never run again)."""

    TYPE = MsgType.FATE
    FORMAT = "<HIBIH"
    acked_seq: int
    """Seq of the QUERY answered."""
    item: int
    """Item id asked about."""
    fate: int
    """`Fate`."""
    time: int
    """When it happened (us; 0 for UNKNOWN and PENDING)."""
    epoch: int = 0
    """Link epoch of the item (the epoch of the HELLO it was sent after)."""


MESSAGE_TYPES: dict[int, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        Config,
        Sort,
        Cancel,
        Heartbeat,
        Sync,
        Resume,
        Query,
        Safe,
        Ack,
        Nak,
        HelloInfo,
        Fired,
        Late,
        SafeState,
        SyncReply,
        Fault,
        Status,
        FateReply,
    )
}
"""Type byte -> message class."""

EPOCH_ITEM_TYPES = frozenset({MsgType.SORT, MsgType.CANCEL, MsgType.QUERY})
"""Commands that name an item within a link epoch."""

REPLY_TYPES = frozenset(
    {MsgType.ACK, MsgType.NAK, MsgType.HELLO_INFO, MsgType.SYNC_REPLY, MsgType.FATE}
)
"""Controller messages that answer a command (they carry `acked_seq`)."""
EVENT_TYPES = frozenset(
    {MsgType.FIRED, MsgType.LATE, MsgType.SAFE_STATE, MsgType.FAULT, MsgType.STATUS}
)
"""Controller messages sent on the controller's own initiative."""


def encode(msg: Message, seq: int) -> bytes:
    """Wire bytes (COBS + delimiter) of `msg` with sequence number `seq`."""
    return encode_frame(msg.TYPE, seq, msg.payload())


def body(msg: Message, seq: int) -> bytes:
    """The frame body (with CRC, before COBS) of `msg`."""
    return build_body(msg.TYPE, seq, msg.payload())


def decode(frame: Frame, sender: str | None = None) -> Message:
    """The message in a CRC-checked frame. Raises `ProtocolError` with the NAK reason
    (BAD_VERSION, UNKNOWN_TYPE, BAD_LENGTH). `sender` "host" or "controller" also refuses
    types of the other direction (UNKNOWN_TYPE)."""
    if frame.ver != PROTO_VERSION:
        raise ProtocolError(
            NakReason.BAD_VERSION, f"protocol version {frame.ver}, expected {PROTO_VERSION}"
        )
    cls = MESSAGE_TYPES.get(frame.type)
    if (sender == "host" and frame.type >= 0x80) or (sender == "controller" and frame.type < 0x80):
        cls = None
    if cls is None:
        raise ProtocolError(NakReason.UNKNOWN_TYPE, f"unknown message type 0x{frame.type:02X}")
    return cls.from_payload(frame.payload)


def time_before(a: int, b: int) -> bool:
    """Wrap-around comparison of two u32 controller times: a is strictly before b."""
    return time_diff(a, b) < 0


def time_diff(a: int, b: int) -> int:
    """(int32)(a - b): signed difference of two u32 times or positions."""
    d = (a - b) & 0xFFFFFFFF
    return d - U32 if d & 0x80000000 else d


def describe(msg: Message) -> str:
    """A short human-readable form, e.g. `FIRED item=7 gate=2 time=123`."""
    parts = []
    for name, value in msg.fields().items():
        if name == "reason" and isinstance(msg, Nak):
            parts.append(f"reason={_name(NakReason, value)}")
        elif name == "reason" and isinstance(msg, SafeState):
            parts.append(f"reason={_name(SafeReason, value)}")
        elif name == "fate":
            parts.append(f"fate={_name(Fate, value)}")
        elif name == "code" and isinstance(msg, Fault):
            parts.append(f"code={_name(FaultCode, value)}")
        elif name == "acked_type":
            parts.append(f"acked_type={_name(MsgType, value)}")
        else:
            parts.append(f"{name}={value}")
    return " ".join([msg.TYPE.name, *parts])


def _name(enum: type[IntEnum], value: int) -> str:
    try:
        return enum(value).name
    except ValueError:
        return str(value)
