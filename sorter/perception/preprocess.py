"""The one preprocessing path from an image to model input.

Training-time evaluation, export calibration and the device loop all call these functions,
so what the model sees on the belt is computed exactly as what it saw in training.
Normalisation is not done here: it is a layer inside the model, which takes raw uint8 RGB.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from sorter.errors import ImageError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp"})


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB (grayscale and RGBA are converted).

    Raises ImageError naming the file when it cannot be read or decoded.
    """
    p = Path(path)
    try:
        data = np.fromfile(p, dtype=np.uint8)
    except OSError as err:
        raise ImageError(f"{p}: cannot read image ({err.strerror}); check the path") from err
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise ImageError(f"{p}: not a readable image (corrupt or unsupported format)")
    return as_rgb(img, source=str(p))


def as_rgb(img: np.ndarray, *, source: str = "image") -> np.ndarray:
    """Convert an OpenCV-decoded array (gray, BGR, BGRA; 8 or 16 bit) to uint8 RGB."""
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageError(f"{source}: unsupported pixel type {img.dtype}; save it as 8-bit")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.ndim == 3 and img.shape[2] == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2RGB)
    if img.ndim == 3 and img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    raise ImageError(f"{source}: unsupported image shape {img.shape}")


def to_model_input(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Turn an RGB uint8 image of any size into the model's (h, w, 3) uint8 input.

    `size` is (height, width). Resizing uses area interpolation (the right filter for
    shrinking a camera crop); an image already at that size is returned as is.
    """
    h, w = int(size[0]), int(size[1])
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(
            f"model input must be HxWx3 uint8 RGB, got shape {image.shape} dtype {image.dtype}"
        )
    if image.shape[0] == h and image.shape[1] == w:
        return image
    interp = cv2.INTER_AREA if (image.shape[0] >= h and image.shape[1] >= w) else cv2.INTER_LINEAR
    return cv2.resize(image, (w, h), interpolation=interp)
