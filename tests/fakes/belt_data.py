"""Small synthetic folder-per-grade trees that look like CUCUMBER-9 images.

Each image is a 32x32 tray (light grey-blue, darker towards the bottom, like the real
photos) with a dark green cucumber across it whose length depends on the grade, so tests
need neither the real dataset nor a network.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

GRADE_LENGTHS = {"L": 26, "M": 18, "S": 10}
"""Cucumber length in pixels (of 32) per synthetic grade."""


def tray_image(length: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """One RGB uint8 tray image with a cucumber `length` pixels long."""
    rows = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    top = np.array([185.0, 190.0, 205.0], dtype=np.float32)
    bottom = np.array([105.0, 108.0, 118.0], dtype=np.float32)
    img = (top * (1 - rows) + bottom * rows) * np.ones((1, size, 1), dtype=np.float32)
    img += rng.normal(0.0, 2.0, img.shape).astype(np.float32)
    img = np.clip(img, 0, 255).astype(np.uint8)
    centre = (size // 2 + int(rng.integers(-1, 2)), size // 2 + int(rng.integers(-1, 2)))
    angle = float(rng.uniform(-12, 12))
    cv2.ellipse(img, centre, (length // 2, 3), angle, 0, 360, (40, 95, 35), -1)
    return img


def make_grade_tree(
    root: Path, per_grade: int = 4, seed: int = 0, grades: dict[str, int] | None = None
) -> Path:
    """Write `root/<grade>/<n>.png` for each grade; returns root."""
    rng = np.random.default_rng(seed)
    for grade, length in (grades or GRADE_LENGTHS).items():
        folder = root / grade
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_grade):
            img = tray_image(length, rng)
            cv2.imwrite(str(folder / f"{grade}_{n:03d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return root
