"""Errors raised by the firmware bridge.

`LinkError` is user-facing: its `str()` is one line naming the port, what went wrong and
what to check. The sorter CLI catches it next to `sorter.errors.SorterError`.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base class of every error raised by `firmware_bridge`."""

    exit_code = 2


class FramingError(BridgeError):
    """Bytes that are not a valid frame (bad COBS, bad CRC, too short or too long).

    `kind` is one of "cobs", "short", "long", "crc", "empty".
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class ProtocolError(BridgeError):
    """A well-framed body that is not a valid message.

    `reason` is the NAK reason code a controller answers it with (BAD_VERSION,
    UNKNOWN_TYPE, BAD_LENGTH), so a receiver can NAK it without re-parsing.
    """

    def __init__(self, reason: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class LinkError(BridgeError):
    """The controller cannot be reached or answers wrongly; the message names the port."""
