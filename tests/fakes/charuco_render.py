"""Render pictures of a ChArUco board seen through a distorting lens, at a known pose.

For each output pixel the lens model is inverted (`cv2.undistortPoints` to the normalised
image plane), the ray is intersected with the board's plane (the homography
[r1 r2 t] of the pose) and the board's texture (`CharucoBoard.generateImage`) is sampled;
rendering is done at `SUPER` times the resolution and averaged down (INTER_AREA) so edges
are anti-aliased. The pinhole scale of a board square to the camera at distance Z is f / Z
pixels per mm: what `sorter calibrate-camera` must find.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

SUPER = 2
TEX_PX_PER_MM = 6.0


class Renderer:
    """Pictures of one board through one camera (K, dist) of size (w, h)."""

    def __init__(
        self,
        board: cv2.aruco.CharucoBoard,
        size: tuple[int, int],
        K: np.ndarray,
        dist: np.ndarray,
        background: int = 90,
    ) -> None:
        self.board = board
        self.size = size
        self.K = K
        self.dist = dist
        self.background = background
        nx, ny = board.getChessboardSize()
        sq = board.getSquareLength()
        self.board_mm = (nx * sq, ny * sq)
        self.texture = board.generateImage(
            (round(nx * sq * TEX_PX_PER_MM), round(ny * sq * TEX_PX_PER_MM)), marginSize=0
        )
        w, h = size[0] * SUPER, size[1] * SUPER
        xs = (np.arange(w) + 0.5) / SUPER - 0.5
        ys = (np.arange(h) + 0.5) / SUPER - 0.5
        gx, gy = np.meshgrid(xs, ys)
        pts = np.stack([gx.ravel(), gy.ravel()], axis=1).reshape(-1, 1, 2)
        n = cv2.undistortPoints(pts, K, dist, criteria=(3, 50, 1e-10)).reshape(-1, 2)
        self.normal = np.hstack([n, np.ones((len(n), 1))])  # rays, camera frame

    def render(
        self, rvec: np.ndarray, tvec: np.ndarray, noise: float = 1.0, seed: int = 0
    ) -> np.ndarray:
        """A grey picture of the board at pose (rvec, tvec) (board mm -> camera mm)."""
        R, _ = cv2.Rodrigues(np.asarray(rvec, dtype=np.float64))
        Hm = np.column_stack([R[:, 0], R[:, 1], np.asarray(tvec, dtype=np.float64).ravel()])
        board = self.normal @ np.linalg.inv(Hm).T
        bx = board[:, 0] / board[:, 2]
        by = board[:, 1] / board[:, 2]
        w, h = self.size[0] * SUPER, self.size[1] * SUPER
        mx = (bx * TEX_PX_PER_MM - 0.5).reshape(h, w).astype(np.float32)
        my = (by * TEX_PX_PER_MM - 0.5).reshape(h, w).astype(np.float32)
        big = cv2.remap(
            self.texture,
            mx,
            my,
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=self.background,
        )
        small = cv2.resize(big, self.size, interpolation=cv2.INTER_AREA).astype(np.float64)
        rng = np.random.default_rng(seed)
        small += rng.normal(0.0, noise, small.shape)
        return np.clip(small, 0, 255).astype(np.uint8)

    def flat_pose(
        self, z_mm: float, centre_px: tuple[float, float], angle_deg: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """A pose square to the camera at distance z, the board's centre seen (pinhole) at
        centre_px, its x axis at angle_deg in the image."""
        a = math.radians(angle_deg)
        R = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
        rvec, _ = cv2.Rodrigues(R)
        fx, fy, cx, cy = self.K[0, 0], self.K[1, 1], self.K[0, 2], self.K[1, 2]
        mid = np.array([self.board_mm[0] / 2, self.board_mm[1] / 2, 0.0])
        want = np.array([(centre_px[0] - cx) / fx * z_mm, (centre_px[1] - cy) / fy * z_mm, z_mm])
        return rvec, want - R @ mid

    def tilted_pose(
        self, z_mm: float, centre_px: tuple[float, float], tilt_x: float, tilt_y: float, spin: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """A pose tilted about the board's axes (degrees), centre seen near centre_px."""
        ax, ay, az = (math.radians(v) for v in (tilt_x, tilt_y, spin))
        Rx = np.array(
            [[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]]
        )
        Ry = np.array(
            [[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]]
        )
        Rz = np.array(
            [[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]]
        )
        R = Rz @ Ry @ Rx
        rvec, _ = cv2.Rodrigues(R)
        fx, fy, cx, cy = self.K[0, 0], self.K[1, 1], self.K[0, 2], self.K[1, 2]
        mid = np.array([self.board_mm[0] / 2, self.board_mm[1] / 2, 0.0])
        want = np.array([(centre_px[0] - cx) / fx * z_mm, (centre_px[1] - cy) / fy * z_mm, z_mm])
        return rvec, want - R @ mid
