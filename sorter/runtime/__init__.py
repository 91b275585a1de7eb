"""Runtime: the sorting loop, the runner that drives it, and the wiring that builds its parts."""
