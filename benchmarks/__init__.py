"""Accuracy and speed harnesses for produce-sorter: `python -m benchmarks` (make bench).

One module per figure (see benchmarks/README.md); results/ holds recorded runs with the
machine they came from.
"""
