"""pyserial URL handlers of firmware_bridge: `sim://` is the in-process simulator.

pyserial's `serial.serial_for_url(url)` looks for a module `protocol_<scheme>` in each
package of `serial.protocol_handler_packages` and uses its `Serial` class. `register()`
(run when `firmware_bridge` is imported) adds this package there, so `sim://?gates=9`
opens like `socket://` or `loop://` and nothing that takes a port URL special-cases it.
"""

from __future__ import annotations

import serial

PACKAGE = __name__
"""The package name pyserial searches (`firmware_bridge.urlhandler`)."""


def register() -> None:
    """Add this package to `serial.protocol_handler_packages` (once)."""
    if PACKAGE not in serial.protocol_handler_packages:
        serial.protocol_handler_packages.append(PACKAGE)
