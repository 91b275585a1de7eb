"""Controller events (FIRED, LATE, SAFE_STATE, FAULT...) as the status view shows them.

`on_event(status, msg)` is the callback the loop registers with `link.on_event`: it adds a
one-line, readable event to `status` (e.g. kind FIRED, text "item 7 fired at gate 2") and
keeps the link's safe flag and alarm in step with SAFE_STATE. Periodic STATUS messages are
not news and are skipped.
"""

from __future__ import annotations

import re
from enum import IntEnum
from typing import Any

from firmware_bridge import protocol
from sorter.monitor.status import Status


def event_kind(msg: Any) -> str:
    """The event's kind: the message type's name (FIRED, SAFE_STATE...)."""
    msg_type = getattr(msg, "TYPE", None)
    if isinstance(msg_type, protocol.MsgType):
        return msg_type.name
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(msg).__name__).upper()  # SafeState


def event_text(msg: Any) -> str:
    """One readable line for a controller event (without its kind)."""
    if isinstance(msg, protocol.Fired):
        return f"item {msg.item} fired at gate {msg.gate}"
    if isinstance(msg, protocol.Late):
        return f"item {msg.item} too late for gate {msg.gate}: not fired"
    if isinstance(msg, protocol.SafeState):
        reason = _name(protocol.SafeReason, msg.reason)
        if not msg.entered:
            return f"safe state left ({reason})"
        dropped = f", {msg.dropped} pending SORT(s) dropped" if msg.dropped else ""
        return f"safe state entered ({reason}){dropped}"
    if isinstance(msg, protocol.Fault):
        return f"controller fault {_name(protocol.FaultCode, msg.code)} (detail {msg.detail})"
    if isinstance(msg, protocol.Message):
        kind, _, rest = protocol.describe(msg).partition(" ")
        return rest or kind
    return str(msg)


def on_event(status: Status, msg: Any) -> None:
    """A controller event for the status view (called on the link's thread)."""
    kind = event_kind(msg)
    if kind == "STATUS":  # periodic, not news
        return
    status.event(kind, event_text(msg))
    if kind == "SAFE_STATE":
        entered = bool(getattr(msg, "entered", True))
        status.set_link("safe" if entered else "connected", safe=entered)
        status.alarm("safe_state", "controller in the safe state" if entered else None)


def _name(enum: type[IntEnum], value: int) -> str:
    try:
        return enum(value).name
    except ValueError:
        return str(value)
