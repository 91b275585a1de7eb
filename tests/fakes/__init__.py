"""Stand-ins for hardware that cannot exist on a test machine, and small data makers."""
