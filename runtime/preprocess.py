"""Image preprocessing that reproduces transformers' PIL-backend LLaVA/CLIP processors.

The runtime runs on devices without torch or transformers, yet the exported vision graph expects
exactly the pixel values the reference processor produced during export and validation. So this
module re-implements that pipeline with Pillow and numpy only, bit for bit against
``CLIPImageProcessorPil`` / ``LlavaImageProcessorPil`` (transformers 5.x):

    RGB conversion -> [pad to square] -> [resize] -> [center crop] -> [rescale] -> [normalize]

The RGB conversion is :mod:`.image_loading`'s. The processing is described by
:class:`ImagePreprocess`, plain JSON in the build manifest. The description is made at export time
from the loaded processor, by ``transprune.export.processor_settings.describe_image_processor``,
which refuses settings this module cannot reproduce.

Images are untrusted input (issue 19): a 1-pixel-wide strip that padding to a square or resizing its
short side to 336 turns into gigabytes before the crop throws them away. So every size is computed
first and checked against the limits below before the memory for it is allocated: the image's own
pixels from its header, before it is decoded (:mod:`.image_loading`), then each intermediate
(:func:`plan_geometry`). An image whose intermediate would pass a limit is refused with the sizes,
the limit and what to do.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np
from PIL import Image

from transprune.errors import TransPruneError

from .image_loading import ImageError, _as_rgb, _check_pixels, _limit, _mpx

# Pillow's resampling filters by value (NEAREST=0, LANCZOS=1, BILINEAR=2, BICUBIC=3, BOX=4, HAMMING=5).
_RESAMPLE_NAMES = {int(r): r.name.lower() for r in Image.Resampling}

# --------------------------------------------------------------------------------------------
# Limits on the intermediates of untrusted images (the image's own pixels and bytes are bounded by
# .image_loading). Pillow keeps an RGB image at 4 bytes a pixel; numpy copies take 3.

# Pixels of LLaVA-1.5's pad-to-square canvas (the long side squared): the same 67.1 Mpx as
# MAX_IMAGE_PIXELS, so every photo up to 8192 px on its long side is padded as before (4032 x 3024 ->
# 4032 x 4032 = 16.3 Mpx, 8064 x 6048 -> 65.0 Mpx), while a 1 x 20000 strip (a 20000 x 20000
# canvas, 1.6 GB) is refused.
MAX_PADDED_PIXELS = 1 << 26

# The largest side a manifest may give the model's input (center crop, resize, anyres tile and
# canvas): 4096 px, several times any vision tower's (224..1024 px), so no real build is refused,
# while a hostile manifest cannot size an allocation of gigabytes per image.
MAX_MODEL_SIDE = 4096

# Pixels of a resized image: 4096**2 = 16.8 Mpx, 64 MiB (the largest fixed resize a manifest may ask
# for). Resizing the short side to 336 stays under it up to an aspect ratio of about 148:1 (1 x 148
# is resized to 336 x 49728, 1 x 149 to 336 x 50064); a more elongated image is refused, with the
# aspect ratio it should be cropped to (:func:`_max_aspect`).
MAX_RESIZE_PIXELS = MAX_MODEL_SIDE ** 2


# --------------------------------------------------------------------------------------------
# The processing description


@dataclass(frozen=True)
class ImagePreprocess:
    """What to do to an RGB image, in order; each step is skipped when its field is None.

    ``pad_to_square``: RGB background colour to pad the image to a centred square with (LLaVA's
    ``do_pad``), ``resize``: ``{"shortest_edge": n}`` (aspect kept) or ``{"height": h, "width": w}``,
    ``resample``: Pillow filter value (3 = bicubic), ``center_crop``: ``[height, width]`` (an image
    smaller than the crop is zero-padded), ``rescale_factor``: multiplier (1/255), ``mean``/``std``:
    per-channel normalisation, both None when not normalising. Built from a manifest, so every
    field is validated on construction and a bad one raises :class:`TransPruneError` naming it;
    sizes are 1..:data:`MAX_MODEL_SIDE`, since each sizes an allocation per image.
    """

    pad_to_square: list[int] | None
    resize: dict | None
    resample: int
    center_crop: list[int] | None
    rescale_factor: float | None
    mean: list[float] | None
    std: list[float] | None

    def __post_init__(self):
        # Normalised copies (lists, plain int/float) replace the given values; the class is frozen.
        if self.pad_to_square is not None:
            object.__setattr__(self, "pad_to_square", _int_list("pad_to_square", self.pad_to_square, 3, 0, 255))
        if self.resize is not None:
            object.__setattr__(self, "resize", _resize_dict(self.resize))
        if not _is_int(self.resample) or int(self.resample) not in _RESAMPLE_NAMES:
            raise TransPruneError(f"image preprocessing field 'resample' must be one of Pillow's filters "
                                  f"{_RESAMPLE_NAMES}, got {self.resample!r}")
        object.__setattr__(self, "resample", int(self.resample))
        if self.center_crop is not None:
            object.__setattr__(self, "center_crop", _int_list("center_crop", self.center_crop, 2, 1, MAX_MODEL_SIDE))
        if self.rescale_factor is not None:
            if not _is_number(self.rescale_factor) or not 0 < self.rescale_factor < math.inf:
                raise TransPruneError(f"image preprocessing field 'rescale_factor' must be a positive number, "
                                      f"got {self.rescale_factor!r}")
            object.__setattr__(self, "rescale_factor", float(self.rescale_factor))
        if (self.mean is None) != (self.std is None):
            raise TransPruneError("image preprocessing fields 'mean' and 'std' must both be set or both be None")
        if self.mean is not None:
            object.__setattr__(self, "mean", _float_list("mean", self.mean))
            object.__setattr__(self, "std", _float_list("std", self.std, positive=True))

    @property
    def output_size(self) -> list[int]:
        """``[height, width]`` of every preprocessed image; raises when it depends on the input."""
        if self.center_crop is not None:
            return list(self.center_crop)
        if self.resize is not None and "height" in self.resize:
            return [self.resize["height"], self.resize["width"]]
        if self.resize is not None and self.pad_to_square is not None:
            # A square resized by its shortest edge stays square.
            return [self.resize["shortest_edge"]] * 2
        raise TransPruneError("the image preprocessing has no center crop or fixed resize, so the output size "
                              "depends on each image; export with a processor that crops or resizes to a fixed size")

    def check_image_size(self, height: int, width: int, name: str = "image") -> None:
        """Raises :class:`ImageError` if an image of ``height`` x ``width`` pixels cannot be preprocessed
        within the limits; no pixels needed (``load_image(..., check_size=...)`` calls it before decoding).
        """
        _check_pixels(width, height, name)
        plan_geometry(height, width, self, name)

    def to_dict(self) -> dict:
        """Plain JSON types, for the manifest."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data) -> ImagePreprocess:
        """The inverse of :meth:`to_dict`; refuses missing, unknown or mistyped fields."""
        return from_manifest_section(cls, data, "image preprocessing")


def from_manifest_section(cls, data, what: str):
    """``cls(**data)`` for a dataclass read from a manifest section called ``what``: refuses a
    non-object and missing or unknown fields (the class's own checks then refuse bad values)."""
    if not isinstance(data, Mapping):
        raise TransPruneError(f"{what} must be a JSON object, got {type(data).__name__}; re-export the build")
    expected = [f.name for f in fields(cls)]
    missing = [name for name in expected if name not in data]
    unknown = sorted(set(data) - set(expected))
    if missing:
        raise TransPruneError(f"{what} is missing field(s) {missing}; re-export the build")
    if unknown:
        raise TransPruneError(f"{what} has unknown field(s) {unknown}; re-export the build with this version of "
                              f"transprune")
    return cls(**{name: data[name] for name in expected})


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value) -> bool:
    return _is_int(value) or isinstance(value, (float, np.floating))


def _int_list(field: str, value, length: int, low: int, high: int | None = None) -> list[int]:
    if (not isinstance(value, Sequence) or isinstance(value, str) or len(value) != length
            or not all(_is_int(v) and low <= v and (high is None or v <= high) for v in value)):
        bounds = f"{low}..{high}" if high is not None else f">= {low}"
        raise TransPruneError(f"image preprocessing field {field!r} must be a list of {length} integers "
                              f"({bounds}), got {value!r}")
    return [int(v) for v in value]


def _float_list(field: str, value, positive: bool = False) -> list[float]:
    if (not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 3
            or not all(_is_number(v) and math.isfinite(v) and (v > 0 or not positive) for v in value)):
        kind = "positive finite numbers" if positive else "finite numbers"
        raise TransPruneError(f"image preprocessing field {field!r} must be a list of 3 {kind} (one per RGB "
                              f"channel), got {value!r}")
    return [float(v) for v in value]


def _resize_dict(value) -> dict:
    layouts = ({"shortest_edge"}, {"height", "width"})
    if (isinstance(value, Mapping) and set(value) in layouts
            and all(_is_int(v) and 1 <= v <= MAX_MODEL_SIDE for v in value.values())):
        return {key: int(v) for key, v in value.items()}
    raise TransPruneError(f"image preprocessing field 'resize' must be {{'shortest_edge': n}} or "
                          f"{{'height': h, 'width': w}} with integers 1..{MAX_MODEL_SIDE}, got {value!r}")


# --------------------------------------------------------------------------------------------
# Geometry: every size computed, and checked, before any pixels are made


@dataclass(frozen=True)
class Geometry:
    """The sizes of one image's steps, all within the limits: ``padded_side`` of the pad-to-square
    canvas (None: no padding), ``resized`` ``(height, width)`` of the resize (None: no resize) and
    ``output`` ``(height, width)``."""

    padded_side: int | None
    resized: tuple[int, int] | None
    output: tuple[int, int]


def plan_geometry(height: int, width: int, config: ImagePreprocess, name: str = "image") -> Geometry:
    """The sizes :func:`preprocess` gives an image of ``height`` x ``width``, from the sizes alone.

    Raises :class:`ImageError` (with the sizes, the limit and the fix) where an intermediate would
    pass :data:`MAX_PADDED_PIXELS` or :data:`MAX_RESIZE_PIXELS`. The checks do not change when height
    and width swap, so the size before the EXIF orientation is applied gives the same answer.
    """
    size = f"{width}x{height}"
    padded_side = None
    if config.pad_to_square is not None and width != height:
        padded_side = max(width, height)
        if padded_side ** 2 > MAX_PADDED_PIXELS:
            raise ImageError(f"image {name}: {size} pixels would be padded to a {padded_side}x{padded_side} square "
                             f"({_mpx(padded_side ** 2)}), above the limit of {_limit(MAX_PADDED_PIXELS)}; crop the "
                             f"image to a less elongated shape or downscale it")
        height = width = padded_side
    resized = None
    if config.resize is not None:
        resized = _resized_size(height, width, config.resize)
        if resized[0] * resized[1] > MAX_RESIZE_PIXELS:
            # Only a shortest-edge resize of an elongated image gets here: fixed sizes are at most
            # MAX_MODEL_SIDE a side, and a padded square is resized to a square.
            crop = "" if config.center_crop is None else " before the center crop"
            raise ImageError(f"image {name}: {size} pixels would be resized to {resized[1]}x{resized[0]} "
                             f"({_mpx(resized[0] * resized[1])}){crop}, above the limit of "
                             f"{_limit(MAX_RESIZE_PIXELS)}; crop the image to a less extreme aspect ratio (at most "
                             f"about {_max_aspect(config.resize)}:1)")
        height, width = resized
    if config.center_crop is not None:
        height, width = config.center_crop
    elif height * width > MAX_RESIZE_PIXELS:
        # Without a crop or resize the image itself is the model input (not a real model's setting).
        raise ImageError(f"image {name}: {size} pixels give a {width}x{height} model input ({_mpx(height * width)}) "
                         f"with this preprocessing, above the limit of {_limit(MAX_RESIZE_PIXELS)}; downscale the "
                         f"image")
    return Geometry(padded_side, resized, (height, width))


def _max_aspect(resize: dict) -> int:
    """The most elongated aspect ratio (long:short, rounded down) whose shortest-edge resize stays
    within :data:`MAX_RESIZE_PIXELS`: 148 for an edge of 336, 334 for 224."""
    edge = resize.get("shortest_edge", 1)
    return max(1, MAX_RESIZE_PIXELS // (edge * edge))


# --------------------------------------------------------------------------------------------
# Preprocessing


def preprocess(images, config: ImagePreprocess) -> np.ndarray:
    """Pixel values float32 ``[B, 3, H, W]`` of ``images``, equal to transformers' PIL backend.

    ``images`` is a list of images (or one image); each is a PIL image, a path or bytes. Anything
    other than a plain RGB PIL image goes through :func:`.image_loading.load_image` first, so paths
    are decoded and turned upright; plain RGB PIL images are used as given, as transformers would. An
    image the limits refuse (see :func:`plan_geometry`) raises :class:`ImageError`, a path or bytes
    before it is decoded.
    """
    if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image)) \
            or not isinstance(images, Iterable):
        images = [images]
    images = list(images)
    if not images:
        raise TransPruneError("preprocess got no images; pass at least one")
    pixels = [_geometry(_as_rgb(image, config.check_image_size), config) for image in images]
    shapes = {p.shape[:2] for p in pixels}
    if len(shapes) > 1:
        raise TransPruneError(f"the images come out in different sizes {sorted(shapes)} (no center crop or fixed "
                              f"resize in this preprocessing), so they cannot form one batch; pass them one at a time")
    batch = np.stack(pixels)  # [B, H, W, 3] uint8
    if config.rescale_factor is not None:
        # transformers multiplies in float64 and only then rounds to float32.
        batch = (batch.astype(np.float64) * config.rescale_factor).astype(np.float32)
    else:
        batch = batch.astype(np.float32)
    if config.mean is not None:
        # float32 arithmetic with float32 mean/std, as transformers' normalize does.
        batch = (batch - np.asarray(config.mean, dtype=np.float32)) / np.asarray(config.std, dtype=np.float32)
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


def _geometry(image: Image.Image, config: ImagePreprocess) -> np.ndarray:
    """Padding, resizing and cropping of one RGB image; uint8 ``[H, W, 3]``.

    The sizes are checked first (:func:`plan_geometry`), so nothing larger than the limits is allocated.
    """
    plan_geometry(image.height, image.width, config, f"<{image.width}x{image.height} image>")
    if config.pad_to_square is not None and image.width != image.height:
        side = max(image.width, image.height)
        canvas = Image.new("RGB", (side, side), tuple(config.pad_to_square))
        # Centred; an odd remainder leaves the extra row/column after the image.
        canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        image = canvas
    if config.resize is not None:
        height, width = _resized_size(image.height, image.width, config.resize)
        image = image.resize((width, height), resample=config.resample)
    pixels = np.asarray(image)
    if config.center_crop is not None:
        pixels = _center_crop(pixels, *config.center_crop)
    return pixels


def _resized_size(height: int, width: int, resize: dict) -> tuple[int, int]:
    if "height" in resize:
        return resize["height"], resize["width"]
    # The long edge is truncated, not rounded, and computed in floating point exactly this way;
    # any other formula is off by one pixel for some aspect ratios.
    edge = resize["shortest_edge"]
    if width <= height:
        return int(edge * height / width), edge
    return edge, int(edge * width / height)


def _center_crop(pixels: np.ndarray, crop_height: int, crop_width: int) -> np.ndarray:
    """The centred ``crop_height x crop_width`` window, zero-padded where the image is smaller.

    Per axis: a longer image loses ``floor(excess / 2)`` before the window; a shorter one is placed
    ``ceil(shortfall / 2)`` into a zero canvas (transformers rounds the two cases differently).
    """
    src_row, dst_row, rows = _crop_span(pixels.shape[0], crop_height)
    src_col, dst_col, cols = _crop_span(pixels.shape[1], crop_width)
    out = np.zeros((crop_height, crop_width, pixels.shape[2]), dtype=pixels.dtype)
    out[dst_row:dst_row + rows, dst_col:dst_col + cols] = pixels[src_row:src_row + rows, src_col:src_col + cols]
    return out


def _crop_span(length: int, crop: int) -> tuple[int, int, int]:
    """(source start, destination start, count) of one axis of a center crop."""
    if length >= crop:
        return (length - crop) // 2, 0, crop
    return 0, (crop - length + 1) // 2, length
