"""The serial link between the sorter and its gate controller: framing, protocol, link,
simulator, and the controller firmware (firmware/)."""

from firmware_bridge.urlhandler import register as _register_url_handlers

_register_url_handlers()
