"""What the sorter needs from the controller link, as typed interfaces.

`firmware_bridge.link.ControllerLink` provides all of it for every transport (a device path,
`socket://` to the firmware under QEMU, `sim://` for the in-process simulator): the runtime
and the scheduler are written against these Protocols, never against `Any`, so a test's
stand-in link is checked by mypy the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable


class ClockLike(Protocol):
    """firmware_bridge.clock's interface: seconds on the host timeline."""

    def now(self) -> float: ...


class CommandLike(Protocol):
    """firmware_bridge.command.Command: one SORT and its fate."""

    @property
    def status(self) -> str: ...

    def add_done_callback(self, fn: Callable[[Any], None]) -> None: ...

    def wait(self, timeout: float | None = None) -> str:
        """Wait up to `timeout` seconds (real time) for the fate; returns the status."""


class SortLink(Protocol):
    """The part of a link the scheduler uses: send one SORT, get its Command back."""

    def sort(
        self,
        item: int,
        gate: int,
        fire_at: float | None = ...,
        window_s: float = ...,
        *,
        position: int | None = ...,
        window_ticks: int = ...,
    ) -> CommandLike: ...


@runtime_checkable
class PositionLink(Protocol):
    """A link that maps a host time to the belt position (encoder ticks): POSITION mode."""

    def position_at(self, t_host: float) -> float: ...


class ControllerLinkLike(SortLink, Protocol):
    """Everything the runtime does with a controller link (firmware_bridge.link.ControllerLink).

    Opened and closed as a context manager; `state` is "closed", "connecting", "connected"
    or "lost".
    """

    @property
    def state(self) -> str: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: object) -> None: ...

    def configure(self, n_gates: int, pulse_ms: int | Sequence[int] = ...) -> None:
        """Send CONFIG: how many gates and each gate's pulse length (ms)."""

    def safe(self) -> Any:
        """Put the controller in the safe state (all gates to reject, belt stop)."""

    def resume(self) -> Any:
        """Leave the safe state."""

    def cancel(self, item: int) -> Any:
        """Cancel a pending SORT."""

    def on_event(self, callback: Callable[[Any], None]) -> Callable[[], None]:
        """Call `callback(msg)` for controller events; returns the unsubscribe function."""
