"""`AckTimeout`: how long the link waits for an answer before resending, from the round
trips it measures (RFC 6298 style: smoothed RTT + 4 x its variation), never below the
configured ACK timeout and never above a ceiling. On a line that slows down (a loaded
emulator, a busy USB hub) resends then slow down too instead of piling up behind the
answers that are merely late, which would only make the line slower still."""

from __future__ import annotations

import threading


class AckTimeout:
    """Adaptive ACK timeout; `sample()` only with unambiguous round trips (Karn: a command
    answered on its first write)."""

    def __init__(self, floor_s: float, ceiling_s: float) -> None:
        self.floor_s = floor_s
        """The configured ACK timeout: the least ever used."""
        self.ceiling_s = max(floor_s, ceiling_s)
        """The most ever used."""
        self.srtt: float | None = None
        """Smoothed round trip (s), None before the first sample."""
        self.rttvar = 0.0
        """Smoothed round-trip variation (s)."""
        self._lock = threading.Lock()

    def sample(self, rtt: float) -> None:
        """Add one measured round trip (s)."""
        rtt = max(0.0, rtt)
        with self._lock:
            if self.srtt is None:
                self.srtt, self.rttvar = rtt, rtt / 2
            else:
                self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
                self.srtt = 0.875 * self.srtt + 0.125 * rtt

    def current(self) -> float:
        """The timeout to use now (s)."""
        with self._lock:
            if self.srtt is None:
                return self.floor_s
            return min(self.ceiling_s, max(self.floor_s, self.srtt + 4 * self.rttvar))
