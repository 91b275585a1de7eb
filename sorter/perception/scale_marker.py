"""The scale check: an ArUco marker fixed in view at the belt's edge, measured every few
seconds, says whether the camera's scale still is `belt.px_per_mm` (a bumped camera, a
moved mount: the size grades would silently shift).

`ScaleMarker(dictionary, marker_id, marker_mm).px_per_mm(image, lens)` finds the marker
(`cv2.aruco.ArucoDetector`, corners refined to sub-pixel), moves its corners into the
undistorted image when there is a lens calibration, and returns its side in pixels (the
mean of the four sides) over its printed side in mm; None when it is not in view. The
marker must lie in the belt's plane (print it on a strip fixed level with the belt).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from sorter.errors import ConfigError
from sorter.perception.lens import Lens


class ScaleMarker:
    """One ArUco marker of known size; see the module docstring."""

    def __init__(self, dictionary: str, marker_id: int, marker_mm: float) -> None:
        code = getattr(cv2.aruco, dictionary, None)
        if not dictionary.startswith("DICT_") or not isinstance(code, int):
            raise ConfigError(
                f"camera.scale_marker: unknown ArUco dictionary {dictionary!r}; use e.g. "
                '"DICT_5X5_100" (the one the marker was printed from), or "" for no check'
            )
        params = cv2.aruco.DetectorParameters()
        params.cornerRefinementMethod = cv2.aruco.CORNER_REFINE_SUBPIX
        self.detector: Any = cv2.aruco.ArucoDetector(
            cv2.aruco.getPredefinedDictionary(code), params
        )
        self.marker_id = marker_id
        self.marker_mm = marker_mm

    def corners(self, image: np.ndarray) -> np.ndarray | None:
        """The marker's 4 corners (4 x 2, OpenCV pixel convention), or None."""
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
        found, ids, _ = self.detector.detectMarkers(grey)
        if ids is None:
            return None
        for c, i in zip(found, ids.ravel(), strict=True):
            if int(i) == self.marker_id:
                return np.asarray(c, dtype=np.float64).reshape(4, 2)
        return None

    def px_per_mm(
        self, image: np.ndarray, lens: Lens | None = None, *, corners: np.ndarray | None = None
    ) -> float | None:
        """The camera's scale at the marker (px per mm of the undistorted image), or None.
        `corners`: the marker already found in `image` (`corners(image)`)."""
        c = self.corners(image) if corners is None else corners
        if c is None:
            return None
        if lens is not None:
            c = lens.undistort_points(c + 0.5) - 0.5
        sides = np.linalg.norm(c - np.roll(c, -1, axis=0), axis=1)
        return float(sides.mean()) / self.marker_mm
