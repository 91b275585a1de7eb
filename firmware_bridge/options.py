"""`LinkOptions`: how a `ControllerLink` talks to its controller (timeouts, retries, the
lead and heartbeat it CONFIGs), in one frozen dataclass with its checks.

    ControllerLink(url, n_gates=9)                            # the defaults
    ControllerLink(url, n_gates=9, heartbeat_s=1.0)           # one option changed
    ControllerLink(url, n_gates=9, options=LinkOptions(retries=6, ack_timeout_s=0.2))
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from firmware_bridge import protocol as p
from firmware_bridge.errors import LinkError


@dataclass(frozen=True)
class LinkOptions:
    """Tuning of a link; every field has a working default."""

    heartbeat_s: float = 0.5
    """Host silence after which the controller goes safe (CONFIG heartbeat_ms; >= 0.05).
    The link sends a heartbeat every quarter of it when nothing else goes out."""
    status_s: float = 1.0
    """STATUS period the controller is CONFIGed with."""
    ack_timeout_s: float = 0.25
    """How long a command waits for its answer before it is resent (same seq)."""
    retries: int = 3
    """Resends of a command before it is QUERYed (SORT) or ends "timeout"."""
    baudrate: int = 115200
    """Serial speed (the firmware's: 115200 8N1)."""
    open_timeout_s: float = 3.0
    """How long the handshake waits for HELLO_INFO (an Uno resets when opened)."""
    hello_resend_s: float = 0.3
    """How often HELLO is resent while waiting for HELLO_INFO."""
    sync_interval_s: float = 2.0
    """Re-SYNC period once the drift rate is known (four times as often before)."""
    position_interval_s: float = 0.05
    """With an encoder: how often the belt position is asked for (a SYNC whose reply feeds
    only the position estimate, firmware_bridge.position); 0: never (STATUS and the
    clock SYNCs only; the estimate then refuses most times). Not with handshake=False."""
    fate_margin_s: float = 0.05
    """A SORT is QUERYed when its FIRED/LATE is this late past target + window."""
    lost_grace_s: float = 2.0
    """While the port is gone, a SORT ends "timeout" this long past its fate's due time."""
    max_lead_s: float = p.DEFAULT_MAX_LEAD_MS / 1000
    """CONFIG max lead (0.1..65 s): the controller refuses TIME targets further ahead."""
    reconnect: bool = True
    """Reconnect with backoff when the port goes away."""
    auto_resume: bool = True
    """RESUME when the controller is seen in the safe state and no stop was asked for."""
    handshake: bool = True
    """HELLO, CONFIG, RESUME, SYNC at start (False: HELLO only, for bench tools)."""

    def check(self, url: str) -> LinkOptions:
        """Itself, or `LinkError` naming the port and the bad value."""
        if self.heartbeat_s < 0.05:
            raise LinkError(f"{url}: heartbeat_s={self.heartbeat_s} is below the protocol's 0.05 s")
        if not 0.1 <= self.max_lead_s <= 65.0:
            raise LinkError(f"{url}: max_lead_s={self.max_lead_s} must be within 0.1..65 s")
        if self.position_interval_s < 0:
            raise LinkError(f"{url}: position_interval_s={self.position_interval_s} must be >= 0")
        if self.retries < 0 or self.ack_timeout_s <= 0:
            raise LinkError(f"{url}: retries must be >= 0 and ack_timeout_s > 0")
        return self

    def with_(self, url: str, **changes: Any) -> LinkOptions:
        """A copy with `changes` (keyword names are field names), checked."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise LinkError(
                f"{url}: unknown link option {unknown[0]!r}; known: {', '.join(sorted(known))}"
            )
        return replace(self, **changes).check(url)
