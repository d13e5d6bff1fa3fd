"""LLaVA-NeXT "anyres" images without torch: tiles, image-token count and feature packing.

LLaVA-NeXT shows the vision tower several ``tile_size`` squares per image instead of one: first the
whole image squashed to one tile (the "base" image), then the tiles of a larger canvas chosen from a
list of grid pinpoints to suit the image's aspect ratio. The language model then receives

    576 base features, then the tile features re-assembled into one feature grid, with the rows and
    columns that only cover letterbox padding cut away, and an ``image_newline`` vector after each row

so the number of image tokens depends on the image's size. This module reproduces, with Pillow and
numpy only, what transformers 5.x does for ``LlavaNextForConditionalGeneration``:

* :func:`preprocess_anyres` -- ``LlavaNextImageProcessorPil``'s ``pixel_values`` and ``image_sizes``
  for one image, bit for bit (before the processor's batch padding, see :func:`pad_tile_batch`);
* :func:`image_feature_count` -- the number of ``<image>`` tokens ``LlavaNextProcessor`` inserts;
* :func:`packing_plan` -- which vision feature goes where in ``LlavaNextModel.pack_image_features``'s
  output, as gather indices, so the runtime packs with one ``take``.

The settings are an :class:`AnyresPreprocess`, plain JSON in the build manifest. The description is
made at export time from the loaded processor, by
``transprune.export.processor_settings.describe_anyres_processor``, which refuses settings this module
cannot reproduce.

transformers' processing of one image of size (height, width), as reproduced here:

1. Pick the pinpoint (canvas height, width) that shows the most of the image at its resized
   resolution (capped at the original pixel count), ties going to the least wasted canvas area, then
   to the earlier pinpoint.
2. Resize the image to fit inside that canvas keeping its aspect ratio (the long side fills the
   canvas, the other is rounded *up*), paste it centred on a black canvas (padding value 0 before
   rescaling, not the mean colour of LLaVA-1.5's pad-to-square; an odd leftover pixel goes to the
   bottom/right), and cut the canvas into tiles row by row.
3. Put the whole image resized to ``tile_size`` x ``tile_size`` (aspect ratio not kept) before them.
4. Rescale and normalise every tile exactly as the LLaVA-1.5 path does (:mod:`.preprocess`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from transprune.errors import TransPruneError
from transprune.runtime.image_loading import _as_rgb
from transprune.runtime.preprocess import (
    _RESAMPLE_NAMES,
    MAX_MODEL_SIDE,
    ImagePreprocess,
    _float_list,
    _is_int,
    _is_number,
    from_manifest_section,
    preprocess,
)

# How the whole-image ("base") tile is made. Only transformers' LLaVA-NeXT behaviour exists today; the
# field is in the manifest so that a build made for another variant is refused, not misread.
BASE_IMAGE_MODES = ("resize_to_tile",)

# Per-tile vision features of CLIP ViT-L/14 at 336 px without its CLS token: 24 x 24.
DEFAULT_PATCHES_PER_SIDE = 24

# Bounds on the manifest's grid, whose numbers size every image's canvas and tiles (issue 19). The
# tile side and each pinpoint side are at most MAX_MODEL_SIDE (4096 px: the canvas is then at most
# 64 MiB); a pinpoint is at most 64 tiles (LLaVA-NeXT uses up to 4, LLaVA-OneVision 36), so an image
# gives at most 65 tiles (210 MiB of float32 pixel values at 336 px); the list holds at most 256
# pinpoints (OneVision has 36), since every image is scored against all of them.
MAX_GRID_TILES = 64
MAX_PINPOINTS = 256


# --------------------------------------------------------------------------------------------
# The processing description


@dataclass(frozen=True)
class AnyresPreprocess:
    """What the runtime needs to turn an image into LLaVA-NeXT tiles and to count and pack its tokens.

    ``grid_pinpoints``: the candidate canvases as ``[height, width]`` pixels, each a multiple of
    ``tile_size`` (the vision tower's input side, 336). ``base_image``: how the whole-image tile is
    made, one of :data:`BASE_IMAGE_MODES`. ``resample``: Pillow filter value (3 = bicubic), used for both
    resizes. ``rescale_factor``: multiplier (1/255) or None. ``mean``/``std``: per-channel
    normalisation, both None when not normalising. ``pad_colour``: the 0..255 RGB value of the canvas
    around the resized image (transformers uses black). Built from a manifest, so every field is
    validated on construction and a bad one raises :class:`TransPruneError` naming it, sizes within
    :data:`~transprune.runtime.preprocess.MAX_MODEL_SIDE`, :data:`MAX_GRID_TILES` and :data:`MAX_PINPOINTS`.
    """

    grid_pinpoints: list[list[int]]
    tile_size: int
    base_image: str
    resample: int
    rescale_factor: float | None
    mean: list[float] | None
    std: list[float] | None
    pad_colour: list[int]

    def __post_init__(self):
        # Normalised copies (lists, plain int/float) replace the given values; the class is frozen.
        if not _is_int(self.tile_size) or not 1 <= self.tile_size <= MAX_MODEL_SIDE:
            raise TransPruneError(f"anyres preprocessing field 'tile_size' must be a positive integer up to "
                                  f"{MAX_MODEL_SIDE} (the vision tower's input size, 336 for LLaVA-NeXT), "
                                  f"got {self.tile_size!r}")
        tile = int(self.tile_size)
        object.__setattr__(self, "tile_size", tile)
        object.__setattr__(self, "grid_pinpoints", _pinpoints(self.grid_pinpoints, tile))
        if self.base_image not in BASE_IMAGE_MODES:
            raise TransPruneError(f"anyres preprocessing field 'base_image' must be one of {list(BASE_IMAGE_MODES)}, "
                                  f"got {self.base_image!r}; re-export the build with this version of transprune")
        if not _is_int(self.resample) or int(self.resample) not in _RESAMPLE_NAMES:
            raise TransPruneError(f"anyres preprocessing field 'resample' must be one of Pillow's filters "
                                  f"{_RESAMPLE_NAMES}, got {self.resample!r}")
        object.__setattr__(self, "resample", int(self.resample))
        if self.rescale_factor is not None:
            if not _is_number(self.rescale_factor) or not 0 < self.rescale_factor < math.inf:
                raise TransPruneError(f"anyres preprocessing field 'rescale_factor' must be a positive number or "
                                      f"null, got {self.rescale_factor!r}")
            object.__setattr__(self, "rescale_factor", float(self.rescale_factor))
        if (self.mean is None) != (self.std is None):
            raise TransPruneError("anyres preprocessing fields 'mean' and 'std' must both be set or both be null")
        if self.mean is not None:
            object.__setattr__(self, "mean", _float_list("mean", self.mean))
            object.__setattr__(self, "std", _float_list("std", self.std, positive=True))
        colour = self.pad_colour
        if (not isinstance(colour, Sequence) or isinstance(colour, str) or len(colour) != 3
                or not all(_is_int(c) and 0 <= c <= 255 for c in colour)):
            raise TransPruneError(f"anyres preprocessing field 'pad_colour' must be a list of 3 integers 0..255 "
                                  f"(an RGB colour), got {colour!r}")
        object.__setattr__(self, "pad_colour", [int(c) for c in colour])

    @property
    def tile_values(self) -> ImagePreprocess:
        """The per-tile value steps (rescale, normalise) as the LLaVA-1.5 path's description."""
        return ImagePreprocess(pad_to_square=None, resize=None, resample=self.resample, center_crop=None,
                               rescale_factor=self.rescale_factor, mean=self.mean, std=self.std)

    @property
    def max_tiles(self) -> int:
        """The most tiles one image can give, base tile included (5 for LLaVA-NeXT's pinpoints)."""
        return 1 + max(h * w for h, w in self.grid_pinpoints) // self.tile_size ** 2

    def to_dict(self) -> dict:
        """Plain JSON types, for the manifest."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data) -> AnyresPreprocess:
        """The inverse of :meth:`to_dict`; refuses missing, unknown or mistyped fields."""
        return from_manifest_section(cls, data, "anyres preprocessing")


def _pinpoints(value, tile: int) -> list[list[int]]:
    """Validated ``[[height, width], ...]``; every side a positive multiple of the tile size.

    A side that is not a multiple would make transformers cut partial tiles, which its model then
    counts differently from its processor, so such a list cannot describe a working model. Sides,
    tiles and the number of pinpoints are bounded (see :data:`MAX_GRID_TILES`).
    """
    if not isinstance(value, Sequence) or isinstance(value, str) or not value:
        raise TransPruneError(f"anyres preprocessing field 'grid_pinpoints' must be a non-empty list of "
                              f"[height, width] pairs, got {value!r}")
    if len(value) > MAX_PINPOINTS:
        raise TransPruneError(f"anyres preprocessing field 'grid_pinpoints' has {len(value)} pinpoints, more than "
                              f"the limit of {MAX_PINPOINTS}; re-export the build from a real LLaVA-NeXT processor")
    result = []
    for pair in value:
        if (not isinstance(pair, Sequence) or isinstance(pair, str) or len(pair) != 2
                or not all(_is_int(side) and 1 <= side <= MAX_MODEL_SIDE for side in pair)):
            # a short excerpt: the list itself may be huge
            raise TransPruneError(f"anyres preprocessing field 'grid_pinpoints' must hold [height, width] pairs of "
                                  f"integers 1..{MAX_MODEL_SIDE}, got {str(pair)[:60]}")
        if any(side % tile for side in pair):
            raise TransPruneError(f"anyres preprocessing field 'grid_pinpoints' has {list(pair)}, which is not a "
                                  f"multiple of tile_size={tile} on both sides; every pinpoint must be whole tiles")
        tiles = (pair[0] // tile) * (pair[1] // tile)
        if tiles > MAX_GRID_TILES:
            raise TransPruneError(f"anyres preprocessing field 'grid_pinpoints' has {list(pair)}, {tiles} tiles of "
                                  f"tile_size={tile}, more than the limit of {MAX_GRID_TILES} per image; re-export the "
                                  f"build from a real LLaVA-NeXT processor")
        result.append([int(side) for side in pair])
    return result


def _image_size(image_size) -> tuple[int, int]:
    if (not isinstance(image_size, (Sequence, np.ndarray)) or isinstance(image_size, str) or len(image_size) != 2
            or not all(_is_int(side) and side >= 1 for side in image_size)):
        raise TransPruneError(f"image_size must be (height, width) in pixels, two positive integers, "
                              f"got {image_size!r}")
    return int(image_size[0]), int(image_size[1])


# --------------------------------------------------------------------------------------------
# Geometry


def best_resolution(image_size, settings: AnyresPreprocess) -> tuple[int, int]:
    """The pinpoint ``(height, width)`` transformers picks as the canvas for an image of ``image_size``.

    Scores each pinpoint by the pixels the image keeps when scaled to fit it (never more than the
    original has, so upscaling earns nothing), then by the canvas area left over. The arithmetic is
    transformers' own, float truncation included, since a different rounding can pick a different
    pinpoint and so change the token count.
    """
    height, width = _image_size(image_size)
    best, best_kept, best_wasted = None, 0, math.inf
    for pin_height, pin_width in settings.grid_pinpoints:
        scale = min(pin_width / width, pin_height / height)
        kept = min(int(width * scale) * int(height * scale), width * height)
        wasted = pin_width * pin_height - kept
        # Strict comparisons: on a full tie the earlier pinpoint stays.
        if kept > best_kept or (kept == best_kept and wasted < best_wasted):
            best, best_kept, best_wasted = (pin_height, pin_width), kept, wasted
    return best


def tile_grid(image_size, settings: AnyresPreprocess) -> tuple[int, int]:
    """``(rows, columns)`` of tiles the image is cut into, not counting the base tile."""
    pin_height, pin_width = best_resolution(image_size, settings)
    return pin_height // settings.tile_size, pin_width // settings.tile_size


def num_tiles(image_size, settings: AnyresPreprocess) -> int:
    """How many tiles :func:`preprocess_anyres` gives for an image of ``image_size``, base tile included."""
    rows, cols = tile_grid(image_size, settings)
    return 1 + rows * cols


def _fit_inside(height: int, width: int, pin_height: int, pin_width: int) -> tuple[int, int]:
    """The size the image is resized to on its canvas: aspect kept, the short side rounded up.

    transformers compares the two scale factors and fills the side with the smaller one; on an exact
    tie (same aspect ratio as the canvas) it fills the height and computes the width.
    """
    scale_w, scale_h = pin_width / width, pin_height / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), pin_height), pin_width
    return pin_height, min(math.ceil(width * scale_h), pin_width)


# --------------------------------------------------------------------------------------------
# Pixels


def preprocess_anyres(image, settings: AnyresPreprocess) -> tuple[np.ndarray, tuple[int, int]]:
    """``(pixel_values, image_size)`` of one image, as ``LlavaNextImageProcessorPil`` gives them.

    ``pixel_values`` is float32 ``[num_tiles, 3, tile_size, tile_size]``: the base (whole-image) tile,
    then the canvas tiles row by row. It equals the processor's ``pixel_values[i, :num_tiles]`` for
    this image; the processor pads a batch to its largest tile count with all-zero tiles, which the
    model drops again (see :func:`pad_tile_batch`). ``image_size`` is ``(height, width)`` of the image,
    the processor's ``image_sizes`` entry, which :func:`image_feature_count` and :func:`packing_plan`
    take.

    ``image`` is a PIL image, a path or bytes; anything other than a plain RGB PIL image goes through
    :func:`~transprune.runtime.image_loading.load_image` (transparency onto white, EXIF orientation
    applied), so ``image_size`` is that of the upright image. An image that is not one, is empty or
    closed, or has more than ``MAX_IMAGE_PIXELS`` raises ``ImageError``.

    Whatever the image's shape, every intermediate is bounded by the settings, not by the image: the
    canvas is a pinpoint, the resized image fits inside it and the base tile is ``tile_size`` square
    (all at most ``MAX_MODEL_SIDE`` a side, checked when the settings were made).
    """
    rgb = _as_rgb(image)
    height, width = rgb.height, rgb.width
    tile = settings.tile_size
    pin_height, pin_width = best_resolution((height, width), settings)
    fit_height, fit_width = _fit_inside(height, width, pin_height, pin_width)

    canvas = Image.new("RGB", (pin_width, pin_height), tuple(settings.pad_colour))
    resized = rgb.resize((fit_width, fit_height), resample=settings.resample)
    # The odd leftover pixel of the margin goes after the image (bottom/right), as in transformers.
    canvas.paste(resized, ((pin_width - fit_width) // 2, (pin_height - fit_height) // 2))
    tiles = [canvas.crop((left, top, left + tile, top + tile))
             for top in range(0, pin_height, tile) for left in range(0, pin_width, tile)]
    base = rgb.resize((tile, tile), resample=settings.resample)

    # transformers also runs every tile through its shortest-edge resize and center crop; with tiles
    # already tile_size square (the exporter's describe_anyres_processor insists on it) both leave
    # them unchanged.
    return preprocess([base, *tiles], settings.tile_values), (height, width)


def pad_tile_batch(pixel_values: Sequence[np.ndarray]) -> np.ndarray:
    """A batch ``[B, max_tiles_in_batch, 3, H, W]`` of per-image tiles, as the processor's ``do_pad``.

    transformers appends all-zero tiles (zero after normalisation, not black) so the images of a batch
    stack; the model recomputes each image's real tile count from its ``image_sizes`` and drops them.
    A single image needs no padding; this is for feeding a torch/transformers reference a batch.
    """
    pixel_values = [np.asarray(p) for p in pixel_values]
    if not pixel_values:
        raise TransPruneError("pad_tile_batch got no images; pass at least one [num_tiles, 3, H, W] array")
    shapes = {p.shape[1:] for p in pixel_values}
    if any(p.ndim != 4 for p in pixel_values) or len(shapes) != 1:
        raise TransPruneError(f"pad_tile_batch needs [num_tiles, 3, H, W] arrays of one tile shape, got shapes "
                              f"{[p.shape for p in pixel_values]}")
    most = max(p.shape[0] for p in pixel_values)
    batch = np.zeros((len(pixel_values), most, *shapes.pop()), dtype=pixel_values[0].dtype)
    for row, tiles in zip(batch, pixel_values):
        row[:len(tiles)] = tiles
    return batch


# --------------------------------------------------------------------------------------------
# Tokens


def _kept_window(image_size, settings: AnyresPreprocess, patches_per_side: int):
    """Rows ``[r0, r1)`` and columns ``[c0, c1)`` of the tiles' feature grid that the model keeps.

    The grid has ``patches_per_side`` cells per tile side. The model cuts away whole rows (image wider
    than the grid) or columns (otherwise) that cover only the canvas padding: the image's extent in
    cells is rounded to 7 decimals and truncated, and the same margin is cut on both sides, so an odd
    remainder keeps one extra padding row/column. This is done from the aspect ratios of the image and
    the grid, not from the pixel padding of :func:`preprocess_anyres`, so the two can differ by a cell.
    """
    # at most one patch per pixel: the plan's arrays grow with patches_per_side squared
    if not _is_int(patches_per_side) or not 1 <= patches_per_side <= settings.tile_size:
        raise TransPruneError(f"patches_per_side must be an integer 1..tile_size={settings.tile_size} (the vision "
                              f"tower's patches per tile side, 24 for CLIP ViT-L/14 at 336 px), "
                              f"got {patches_per_side!r}")
    height, width = _image_size(image_size)
    grid_rows, grid_cols = tile_grid((height, width), settings)
    rows, cols = grid_rows * patches_per_side, grid_cols * patches_per_side
    if width / height > cols / rows:
        extent = int(round(height * (cols / width), 7))
        margin = (rows - extent) // 2
        return (margin, rows - margin), (0, cols), grid_cols
    extent = int(round(width * (rows / height), 7))
    margin = (cols - extent) // 2
    return (0, rows), (margin, cols - margin), grid_cols


def image_feature_count(image_size, settings: AnyresPreprocess, *,
                        patches_per_side: int = DEFAULT_PATCHES_PER_SIDE) -> int:
    """The number of image tokens ``LlavaNextProcessor`` inserts for an image of ``image_size``.

    ``patches_per_side**2`` base features, plus the kept cells of the tile grid, plus one newline per
    kept row. This is for vision_feature_select_strategy "default" (CLS dropped), where the processor
    subtracts the ``num_additional_image_tokens=1`` it added for the CLS again. Equals
    ``len(packing_plan(...))``.
    """
    (r0, r1), (c0, c1), _ = _kept_window(image_size, settings, patches_per_side)
    kept_rows = r1 - r0
    return patches_per_side ** 2 + kept_rows * (c1 - c0) + kept_rows


def packing_plan(image_size, settings: AnyresPreprocess, *,
                 patches_per_side: int = DEFAULT_PATCHES_PER_SIDE) -> np.ndarray:
    """Gather indices int64 ``[image_feature_count]`` that pack one image's vision features.

    The features are the projector outputs of :func:`preprocess_anyres`'s tiles with CLS dropped,
    flattened to ``[num_tiles * patches_per_side**2, D]`` (base tile first, then the tiles row by row,
    each row-major). Entry ``k`` is the row of output token ``k``, or -1 where an ``image_newline``
    goes, so :func:`pack_features` -- ``np.where(plan[:, None] >= 0, features[plan.clip(0)], newline)``
    -- equals ``LlavaNextModel.pack_image_features`` for that image: the base tile's features as they
    are, then the tiles' feature grid (tile row, cell row, tile column, cell column), unpadded, a
    newline after every row.
    """
    (r0, r1), (c0, c1), grid_cols = _kept_window(image_size, settings, patches_per_side)
    per_tile = patches_per_side ** 2
    y = np.arange(r0, r1, dtype=np.int64)[:, None]
    x = np.arange(c0, c1, dtype=np.int64)[None, :]
    tile = (y // patches_per_side) * grid_cols + x // patches_per_side
    cells = (1 + tile) * per_tile + (y % patches_per_side) * patches_per_side + x % patches_per_side
    newlines = np.full((r1 - r0, 1), -1, dtype=np.int64)
    grid = np.concatenate([cells, newlines], axis=1).reshape(-1)
    return np.concatenate([np.arange(per_tile, dtype=np.int64), grid])


def pack_features(features: np.ndarray, plan: np.ndarray, newline: np.ndarray) -> np.ndarray:
    """``features`` ``[num_tiles * patches_per_side**2, D]`` packed by ``plan``, ``newline`` ``[D]`` at -1."""
    features, newline, plan = np.asarray(features), np.asarray(newline), np.asarray(plan)
    if features.ndim != 2 or newline.shape != features.shape[1:]:
        raise TransPruneError(f"pack_features needs features [N, D] and a newline [D], got {features.shape} and "
                              f"{newline.shape}")
    if plan.size and plan.max() >= len(features):
        raise TransPruneError(f"the packing plan indexes feature {int(plan.max())} but only {len(features)} were "
                              f"given; the features must be all tiles of this image (num_tiles * patches^2)")
    return np.where(plan[:, None] >= 0, features[plan.clip(0)], newline.astype(features.dtype))
