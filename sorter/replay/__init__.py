"""Replay and evaluation: simulated belts, ground truth, the scorecard and `make demo`."""
