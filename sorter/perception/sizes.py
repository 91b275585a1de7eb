"""An item's size in millimetres from its views' measurements (sorter.perception.measure).

`measure` gives the produce's main-axis length, width and bend in camera pixels. Here they
become mm: with a lens calibration the length is the distance between the axis's two ends
moved into the undistorted image, and the width and bend are scaled by how much the lens
stretches a short length across the axis at the item's centre (`Lens.stretch`); then each
is divided by the belt's scale
(`belt.px_per_mm`, px per mm of the undistorted image). An item's size is the median over
its refined views (the views where the item was wholly in view and found at full
resolution).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sorter.perception.lens import Lens
from sorter.perception.measure import Measurement


@dataclass(frozen=True)
class Size:
    """An item's size in mm (the decision record's length_mm, width_mm, bend_mm)."""

    length_mm: float
    """Main-axis length (end to end)."""
    width_mm: float
    """Largest thickness across the main axis (middle 80% of the length)."""
    bend_mm: float
    """Largest distance of the medial line from its chord (0: straight)."""

    def as_record(self) -> dict[str, float]:
        """The record's columns, rounded to 0.1 mm."""
        return {
            "length_mm": round(self.length_mm, 1),
            "width_mm": round(self.width_mm, 1),
            "bend_mm": round(self.bend_mm, 1),
        }


def view_size(m: Measurement, px_per_mm: float, lens: Lens | None = None) -> Size:
    """One view's size in mm (see the module docstring)."""
    length_px, across = m.length_px, 1.0
    if lens is not None:
        a = math.radians(m.shape.angle_deg)
        half = np.array([math.cos(a), math.sin(a)]) * m.length_px / 2
        centre = np.array([m.cx, m.cy])
        ends = lens.undistort_points(np.stack([centre - half, centre + half]))
        length_px = float(np.hypot(*(ends[1] - ends[0])))
        across = lens.stretch(m.cx, m.cy, m.shape.angle_deg + 90.0)
    return Size(
        length_px / px_per_mm,
        m.width_px * across / px_per_mm,
        m.bend_px * across / px_per_mm,
    )


def item_size(
    measures: Sequence[Measurement], px_per_mm: float, lens: Lens | None = None
) -> Size | None:
    """The median size over the refined views with a shape, or None when there is none."""
    sizes = [view_size(m, px_per_mm, lens) for m in measures if m.refined and m.length_px > 0]
    if not sizes:
        return None
    return Size(
        statistics.median(s.length_mm for s in sizes),
        statistics.median(s.width_mm for s in sizes),
        statistics.median(s.bend_mm for s in sizes),
    )
