"""Monitoring: what the loop records and shows (audit, status, notify, dashboard).

The SQLite decision log, the live status (terminal view, Prometheus metrics), systemd
notifications and the web dashboard that serves the status.
"""
