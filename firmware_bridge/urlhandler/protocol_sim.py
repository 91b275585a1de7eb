"""`sim://[?gates=N&encoder=0|1&ticks_per_s=F&time0=US]`: the simulated gate controller
(`firmware_bridge.simulator`) as a pyserial port.

Written like pyserial's own `loop://` handler: a `SerialBase` whose `open()` reads the
options from the URL. Baud rate, parity and the modem lines are accepted and ignored (there
is no wire); the read timeout is honoured. The simulator keeps time on the clock of the
`firmware_bridge.clock.ports_follow` block the port is opened in (the link's clock, so a
replay on a virtual clock drives it), else on the monotonic clock.
"""

from __future__ import annotations

from typing import Any

from serial.serialutil import PortNotOpenError, SerialBase, SerialException

from firmware_bridge.clock import Clock, port_clock
from firmware_bridge.errors import LinkError
from firmware_bridge.simulator import SimController, SimulatorPort


class Serial(SerialBase):
    """A `SimulatorPort` behind pyserial's port interface (`serial_for_url("sim://")`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.sim: SimulatorPort | None = None
        """The simulator while the port is open."""
        self.is_open: bool = False
        super().__init__(*args, **kwargs)

    # ------------------------------------------------------------ open / close
    def open(self) -> None:
        if self._port is None:
            raise SerialException("Port must be configured before it can be used.")
        if self.is_open:
            raise SerialException("Port is already open.")
        url = str(self._port)
        try:
            self.sim = SimulatorPort(url, port_clock())
        except LinkError as err:
            raise SerialException(str(err).removeprefix(f"{url}: ")) from err
        self.is_open = True
        self._reconfigure_port()

    def close(self) -> None:
        if self.sim is not None:
            self.sim.close()
        self.is_open = False

    def _reconfigure_port(self) -> None:
        if self.sim is not None:
            self.sim.timeout = self._timeout

    def _update_dtr_state(self) -> None:
        """No modem lines on a simulator."""

    def _update_rts_state(self) -> None:
        """No modem lines on a simulator."""

    # ------------------------------------------------------------ the simulator
    def _open_sim(self) -> SimulatorPort:
        if not self.is_open or self.sim is None:
            raise PortNotOpenError()
        return self.sim

    @property
    def controller(self) -> SimController:
        """The simulated controller (its state, fire log...)."""
        return self._open_sim().controller

    @property
    def clock(self) -> Clock:
        """The clock the simulator keeps time on."""
        return self._open_sim().clock

    # ------------------------------------------------------------ data
    @property
    def in_waiting(self) -> int:
        return self._open_sim().in_waiting

    def read(self, size: int = 1) -> bytes:
        return self._open_sim().read(size)

    def write(self, data: bytes) -> int:
        return self._open_sim().write(bytes(data))

    def flush(self) -> None:
        """Nothing is buffered on the way out."""

    def reset_input_buffer(self) -> None:
        self._open_sim().reset_input_buffer()

    def reset_output_buffer(self) -> None:
        """Nothing is buffered on the way out."""
