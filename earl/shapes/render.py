"""Exact rendering of scenes to RGB images.

No anti-aliasing: every pixel is either the background colour or one object's colour, so the
oracle reads rendered scenes back exactly. Shapes are drawn from pixel-centre tests on a numpy
grid (fast, and identical on every platform, unlike font/AA-dependent drawing libraries).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from earl.shapes.scene import BACKGROUNDS, PALETTE, SIZE_FRACTION, Scene, ShapeObject


def object_mask(obj: ShapeObject, cell_size: int) -> np.ndarray:
    """Boolean (cell_size, cell_size) mask of `obj` centred in its cell."""
    extent = SIZE_FRACTION[obj.size] * cell_size
    half = extent / 2.0
    c = cell_size / 2.0
    ys, xs = np.mgrid[0:cell_size, 0:cell_size] + 0.5  # pixel centres
    dy, dx = ys - c, xs - c
    if obj.shape == "square":
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if obj.shape == "circle":
        return dx * dx + dy * dy <= half * half
    if obj.shape == "triangle":
        # Upright isosceles triangle: apex at the top centre, base along the bottom of the box.
        t = (dy + half) / extent  # 0 at the apex, 1 at the base
        return (t >= 0) & (t <= 1) & (np.abs(dx) <= half * t)
    raise ValueError(f"unknown shape {obj.shape!r}")


def render_array(scene: Scene) -> np.ndarray:
    """(H, W, 3) uint8 image of `scene`."""
    s, cs = scene.image_size, scene.cell_size
    img = np.empty((s, s, 3), dtype=np.uint8)
    img[:] = BACKGROUNDS[scene.background]
    for obj in scene.objects:
        m = object_mask(obj, cs)
        block = img[obj.row * cs : (obj.row + 1) * cs, obj.col * cs : (obj.col + 1) * cs]
        block[m] = PALETTE[obj.color]
    return img


def render(scene: Scene) -> Image.Image:
    return Image.fromarray(render_array(scene), mode="RGB")
