"""ROI tiles: the grey image patch with the object mask overlaid in colour, as PNG bytes.

>>> img = np.zeros((8, 8), np.uint8); mask = np.zeros((8, 8), np.uint8); mask[2:6, 2:6] = 1
>>> png = render_tile(img, mask)
>>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
True
"""

from __future__ import annotations

import io

import numpy as np
from scipy import ndimage

#: The overlay: mask voxels tinted with this colour, the mask outline drawn in it.
OVERLAY_RGB = (0, 200, 255)
FILL_ALPHA = 0.35


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(S, S) uint8 image + (S, S) mask -> (S, S, 3) uint8 RGB: tinted inside, outline in full colour."""
    if image.shape != mask.shape or image.ndim != 2:
        raise ValueError(f"image {image.shape} and mask {mask.shape} must be the same 2D shape")
    rgb = np.repeat(image.astype(np.float32)[..., None], 3, axis=2)
    inside = mask > 0
    colour = np.asarray(OVERLAY_RGB, np.float32)
    rgb[inside] = (1.0 - FILL_ALPHA) * rgb[inside] + FILL_ALPHA * colour
    outline = inside & ~ndimage.binary_erosion(inside, border_value=0)
    rgb[outline] = colour
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def render_tile(image: np.ndarray, mask: np.ndarray) -> bytes:
    """The PNG of :func:`overlay`."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(overlay(image, mask)).save(buf, format="PNG", optimize=False)
    return buf.getvalue()
