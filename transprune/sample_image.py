"""A deterministic procedural test picture (numpy + Pillow only, no torch).

The picture has structure on purpose: a sky gradient, a sun disc with a glow, two hill ridges,
a house with a checkerboard wall, windows and a roof, a path, and a little seeded noise. After
the 336 px resize and centre crop every 14 px patch sees something different, so different image
regions produce different features and token-ranking tests have something to rank.

Everything is drawn in relative coordinates, so any width and height give the same scene
stretched to the frame. The same arguments always give the same pixels.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["sample_image", "sample_images"]

_SKY_TOP = np.array([40.0, 90.0, 190.0])
_SKY_HORIZON = np.array([200.0, 225.0, 250.0])
_SUN = np.array([255.0, 220.0, 90.0])
_FAR_HILL = np.array([70.0, 140.0, 80.0])
_NEAR_HILL = np.array([40.0, 105.0, 45.0])
_WALL_A = np.array([200.0, 80.0, 60.0])
_WALL_B = np.array([235.0, 215.0, 190.0])
_ROOF = np.array([90.0, 40.0, 35.0])
_WINDOW = np.array([60.0, 170.0, 230.0])
_DOOR = np.array([80.0, 55.0, 30.0])
_PATH = np.array([185.0, 160.0, 110.0])


def sample_image(*, width: int = 480, height: int = 360, seed: int = 0) -> Image.Image:
    """An RGB picture of ``width`` x ``height`` pixels; ``seed`` picks the noise and small shifts."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    rng = np.random.default_rng(seed)
    # Pixel-centre coordinates in [0, 1]: x to the right, y downwards.
    y = ((np.arange(height) + 0.5) / height)[:, None]
    x = ((np.arange(width) + 0.5) / width)[None, :]
    img = np.empty((height, width, 3))

    # Sky: a vertical gradient from deep blue at the top to pale at the horizon.
    t = np.clip(y / 0.6, 0.0, 1.0)[..., None]
    img[:] = _SKY_TOP * (1 - t) + _SKY_HORIZON * t

    # Sun: a disc plus a soft glow, its centre nudged by the seed.
    sx, sy = 0.78 + rng.uniform(-0.04, 0.04), 0.2 + rng.uniform(-0.03, 0.03)
    aspect = width / height
    d = np.sqrt(((x - sx) * aspect) ** 2 + (y - sy) ** 2)[..., None]
    glow = np.exp(-((d / 0.12) ** 2)) * 0.6
    img = img * (1 - glow) + _SUN * glow
    img = np.where(d < 0.07, _SUN, img)

    # Hills: two ridges, the far one lighter; shading darkens with depth below the ridge.
    phase = rng.uniform(0, 2 * np.pi)
    far_ridge = 0.55 + 0.06 * np.sin(2 * np.pi * 1.3 * x + phase) + 0.02 * np.sin(2 * np.pi * 4.1 * x)
    near_ridge = 0.7 + 0.05 * np.cos(2 * np.pi * 0.9 * x + 1.7 * phase)
    shade_far = (1.0 - 0.5 * np.clip(y - far_ridge, 0, 1))[..., None]
    shade_near = (1.0 - 0.8 * np.clip(y - near_ridge, 0, 1))[..., None]
    img = np.where((y > far_ridge)[..., None], _FAR_HILL * shade_far, img)
    img = np.where((y > near_ridge)[..., None], _NEAR_HILL * shade_near, img)

    # A winding path from the bottom edge towards the house.
    path_x = 0.3 + 0.12 * (1 - y) + 0.03 * np.sin(12 * y)
    on_path = (np.abs(x - path_x) < 0.015 + 0.06 * np.clip(y - 0.7, 0, 1)) & (y > 0.72)
    img = np.where(on_path[..., None], _PATH, img)

    # House: a checkerboard wall, a triangular roof, two windows and a door.
    left, right, top, bottom = 0.14, 0.42, 0.5, 0.74
    in_wall = (x >= left) & (x < right) & (y >= top) & (y < bottom)
    checks = ((np.floor((x - left) / 0.035) + np.floor((y - top) / 0.035)) % 2).astype(bool)
    img = np.where((in_wall & checks)[..., None], _WALL_A, img)
    img = np.where((in_wall & ~checks)[..., None], _WALL_B, img)
    mid, apex = (left + right) / 2, 0.36
    in_roof = (y >= apex) & (y < top) & (np.abs(x - mid) <= (right - left) / 2 * (y - apex) / (top - apex) + 0.02)
    img = np.where(in_roof[..., None], _ROOF, img)
    for wx in (0.18, 0.33):
        in_window = (x >= wx) & (x < wx + 0.055) & (y >= 0.55) & (y < 0.62)
        img = np.where(in_window[..., None], _WINDOW, img)
    in_door = (x >= 0.255) & (x < 0.305) & (y >= 0.63) & (y < bottom)
    img = np.where(in_door[..., None], _DOOR, img)

    # Seeded noise, so flat regions are not perfectly flat.
    img = img + rng.normal(0.0, 6.0, size=img.shape)
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8))


def sample_images() -> list[Image.Image]:
    """Three pictures of different sizes and aspects (landscape, portrait, square) for tests."""
    return [
        sample_image(width=480, height=360, seed=0),
        sample_image(width=300, height=500, seed=1),
        sample_image(width=336, height=336, seed=2),
    ]
