"""Bench tools for a gate controller: ping, fire one gate, watch events.

Library functions behind `sorter controller ping|fire|monitor` and
`python -m firmware_bridge ...`; the command lines only parse and print.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from firmware_bridge import protocol as p
from firmware_bridge.errors import LinkError
from firmware_bridge.link import ControllerLink

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PingResult:
    """What `ping` learned about a controller."""

    url: str
    """The port or URL pinged."""
    info: p.HelloInfo
    """Its HELLO_INFO."""
    rtt_min_s: float
    """Smallest SYNC round trip."""
    rtt_median_s: float
    """Median SYNC round trip."""
    samples: int
    """SYNC round trips measured."""
    status: p.Status | None
    """The STATUS sent after HELLO_INFO, if it arrived."""

    def lines(self) -> list[str]:
        """Human-readable summary."""
        info = self.info
        flags = _flags(info.flags)
        out = [
            f"controller at {self.url}",
            f"  firmware {info.fw_major}.{info.fw_minor}.{info.fw_patch}, protocol {info.proto}",
            f"  gates {info.n_gates}, queue {info.queue_size}, clock {info.time_hz} Hz"
            f"{', ' + flags if flags else ''}",
            f"  round trip min {self.rtt_min_s * 1e3:.2f} ms, median "
            f"{self.rtt_median_s * 1e3:.2f} ms ({self.samples} SYNCs)",
        ]
        if self.status is not None:
            st = self.status
            out.append(
                f"  time {st.time / 1e6:.3f} s, position {st.position}, queue {st.queue}, "
                f"fired {st.fired}, late {st.late}, crc errors {st.crc_errors}, "
                f"frame errors {st.frame_errors}"
            )
        return out


def _flags(flags: int) -> str:
    names = [
        name
        for bit, name in (
            (p.FLAG_ENCODER, "encoder"),
            (p.FLAG_CONFIGURED, "configured"),
            (p.FLAG_SAFE, "SAFE STATE"),
        )
        if flags & bit
    ]
    return ", ".join(names)


def ping(url: str, count: int = 5, timeout_s: float = 3.0) -> PingResult:
    """HELLO (retried up to `timeout_s`: an Uno resets when opened) and `count` SYNC round
    trips. Changes nothing on the controller. Raises `LinkError` naming the port."""
    link = ControllerLink(url, handshake=False, reconnect=False, open_timeout_s=timeout_s)
    statuses: list[p.Status] = []
    with link:
        link.on_event(lambda m: statuses.append(m) if isinstance(m, p.Status) else None)
        info = link.wait_hello(timeout_s)
        rtts = [link.sync_once().delay for _ in range(max(1, count))]
    return PingResult(
        url=url,
        info=info,
        rtt_min_s=min(rtts),
        rtt_median_s=statistics.median(rtts),
        samples=len(rtts),
        status=statuses[-1] if statuses else None,
    )


@dataclass(frozen=True)
class FireResult:
    """The outcome of firing one gate."""

    gate: int
    """Gate fired."""
    item: int
    """Item id used."""
    status: str
    """The command's final status ("fired" when it worked)."""
    detail: str
    """NAK reason or other note."""
    ctrl_time: int | None
    """Controller time of the firing (us)."""


def fire(url: str, gate: int, pulse_ms: int = 40, item: int = 0xFFFF0000) -> FireResult:
    """Configure the controller (its own gate count, `pulse_ms` each), RESUME and fire
    `gate` now (SORT mode NOW). Raises `LinkError` naming the port when it cannot."""
    with ControllerLink(url, pulse_ms=pulse_ms, reconnect=False) as link:
        assert link.info is not None
        if not 0 <= gate < link.info.n_gates:
            raise LinkError(
                f"{url}: gate {gate} does not exist; this controller has gates "
                f"0..{link.info.n_gates - 1}"
            )
        cmd = link.sort(item, gate)
        status = cmd.wait(2.0 + link.options.ack_timeout_s * (link.options.retries + 1))
        return FireResult(gate, item, status, cmd.detail, cmd.ctrl_time)


def monitor(
    url: str,
    emit: Callable[[str], None],
    stop: threading.Event,
    *,
    replies: bool = False,
) -> None:
    """Print every event (FIRED, LATE, SAFE_STATE, FAULT, STATUS; with `replies`, every
    message) as a line through `emit` until `stop` is set. Sends HELLO and heartbeats only
    (no CONFIG): it watches, it does not drive. Raises `LinkError` naming the port."""
    link = ControllerLink(url, handshake=False, reconnect=True)
    t0 = time.monotonic()

    def show(msg: p.Message) -> None:
        if replies or msg.TYPE in p.EVENT_TYPES:
            emit(f"{time.monotonic() - t0:9.3f}  {p.describe(msg)}")

    with link:
        link.on_message(show)
        info = link.wait_hello()
        emit(
            f"connected to {url}: firmware {info.fw_major}.{info.fw_minor}.{info.fw_patch}, "
            f"{info.n_gates} gates{', ' + _flags(info.flags) if info.flags else ''} "
            "(Ctrl-C to stop)"
        )
        last_state = link.state
        while not stop.wait(0.1):
            if link.state != last_state:
                emit(f"{time.monotonic() - t0:9.3f}  link {link.state}")
                last_state = link.state
