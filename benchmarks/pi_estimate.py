"""ESTIMATED int8 inference latency on a Raspberry Pi, from multiply-accumulates (not measured).

Nobody has run these benchmarks on a Pi yet; until someone does (`make bench` on the Pi, see
benchmarks/README.md), the expected per-crop latency is scaled from published TensorFlow Lite
figures:

- Q-engineering, "TensorFlow Lite classification on a bare Raspberry Pi 4"
  (github.com/Qengineering/TensorFlow_Lite_Classification_RPi_32-bits): quantised
  MobileNet V1 1.0 224 (569 M MACs) at 33 FPS on a Pi 4 at 1950 MHz, 32-bit OS, 4 threads:
  about 19 G MAC/s for the whole chip. A Pi 4 at its stock 1.5-1.8 GHz on the 64-bit OS is
  taken as the same order; one thread as a quarter of it.
- Alasdair Allan, "Benchmarking TensorFlow and TensorFlow Lite on Raspberry Pi 5"
  (github.com/aallan/benchmarking-ml-on-the-edge): TFLite SSD MobileNet v1 82.7 ms on a
  Pi 4 vs 16.9 ms on a Pi 5, v2 112.6 vs 23.5 ms: a Pi 5 is taken as 4.8x a Pi 4.

Small models do not reach a chip's peak: a fixed per-invoke cost and the time to stream the
weights from memory (the literal Deep-MNIST's first dense layer is 4 MB) are added.
"""

from __future__ import annotations

from training.budget import (
    INVOKE_OVERHEAD_MS,
    PI4_GMACS_1T,
    PI4_GMACS_4T,
    PI4_MEM_GBS,
    PI5_SPEEDUP,
    PiEstimate,
)
from training.budget import pi_estimate as estimate

__all__ = [
    "INVOKE_OVERHEAD_MS",
    "PI4_GMACS_1T",
    "PI4_GMACS_4T",
    "PI4_MEM_GBS",
    "PI5_SPEEDUP",
    "PiEstimate",
    "estimate",
    "table",
]
# The constants and the formula live in training.budget, which sorter-train uses to warn
# when a network would be too slow on the Pi; this module keeps the sources and the table.


def table(costs: dict[str, dict[str, float]]) -> str:
    """Markdown table of estimates for each architecture's MACs and int8 file size."""
    lines = [
        "| network | MACs | int8 weights | Pi 4, 1 thread | Pi 4, 4 threads "
        "| Pi 5, 1 thread | Pi 5, 4 threads |",
        "|---|---|---|---|---|---|---|",
    ]
    for arch, c in costs.items():
        weights = float(c.get("int8") or c.get("params") or 0)
        e = estimate(float(c["macs"]), weights)
        lines.append(
            f"| {arch} | {c['macs'] / 1e6:.1f} M | {weights / 1e6:.2f} MB | ~{e.pi4_1t:.1f} ms "
            f"| ~{e.pi4_4t:.1f} ms | ~{e.pi5_1t:.1f} ms | ~{e.pi5_4t:.1f} ms |"
        )
    return "\n".join(lines)
