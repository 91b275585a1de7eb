"""The serial link between the sorter and its gate controller: framing, protocol, link,
simulator, and the controller firmware (firmware/)."""
