"""Image loading and preprocessing that reproduce transformers' PIL-backend LLaVA/CLIP processors.

The runtime runs on devices without torch or transformers, yet the exported vision graph expects
exactly the pixel values the reference processor produced during export and validation. So this
module re-implements that pipeline with Pillow and numpy only, bit for bit against
``CLIPImageProcessorPil`` / ``LlavaImageProcessorPil`` (transformers 5.x):

    RGB conversion -> [pad to square] -> [resize] -> [center crop] -> [rescale] -> [normalize]

The processing is described by :class:`ImagePreprocess`, plain JSON in the build manifest. The
description is made at export time from the loaded processor, by
``transprune.export.processor_settings.describe_image_processor``, which refuses settings this module
cannot reproduce.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from transprune.errors import TransPruneError

# Pillow's resampling filters by value (NEAREST=0, LANCZOS=1, BILINEAR=2, BICUBIC=3, BOX=4, HAMMING=5).
_RESAMPLE_NAMES = {int(r): r.name.lower() for r in Image.Resampling}


class ImageError(TransPruneError):
    """An image that is missing, unreadable, corrupt or in a form this runtime cannot use."""


# --------------------------------------------------------------------------------------------
# Loading


def load_image(source) -> Image.Image:
    """``source`` (a path, encoded image bytes or a PIL image) as an upright RGB PIL image.

    The file is decoded completely here, so a truncated or corrupt file fails now with an
    :class:`ImageError` rather than later inside preprocessing. The EXIF orientation is applied
    (camera photos are stored sideways with a tag saying so; transformers ignores the tag for PIL
    inputs, which shows the model a rotated picture). Animated images give their first frame.
    """
    if isinstance(source, Image.Image):
        name, file = f"<PIL image, mode {source.mode}, {source.width}x{source.height}>", None
    elif isinstance(source, (str, Path)):
        name, file = str(source), source
    elif isinstance(source, (bytes, bytearray, memoryview)):
        name, file = f"<{len(source)} bytes of image data>", io.BytesIO(bytes(source))
    else:
        raise TypeError(f"load_image takes a path, bytes or a PIL image, not {type(source).__name__}")

    try:
        if file is None:
            return _upright_rgb(source, name)
        with Image.open(file) as image:
            image.load()
            return _upright_rgb(image, name)
    except FileNotFoundError:
        raise ImageError(f"image {name}: file not found; check the path") from None
    except IsADirectoryError:
        raise ImageError(f"image {name}: is a directory, not an image file; pass the path of an image") from None
    except PermissionError:
        raise ImageError(f"image {name}: permission denied; make the file readable") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image {name}: too large to decode safely ({exc}); downscale the image") from None
    except UnidentifiedImageError:
        raise ImageError(f"image {name}: not an image format Pillow can read; convert it to PNG or "
                         f"JPEG") from None
    except (OSError, SyntaxError, EOFError) as exc:
        raise ImageError(f"image {name}: cannot be decoded ({exc}); the file is truncated or corrupt, "
                         f"re-save or re-download it") from None


def _upright_rgb(image: Image.Image, name: str) -> Image.Image:
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _to_8bit_gray(image)
    try:
        return _convert_to_rgb(image)
    except ValueError as exc:
        raise ImageError(f"image {name}: colour mode {image.mode} cannot be converted to RGB ({exc}); "
                         f"re-save the image as RGB") from None


def _convert_to_rgb(image: Image.Image) -> Image.Image:
    """RGB exactly as transformers' ``convert_to_rgb``: any transparency is composited onto white.

    Transparency means an alpha band or a ``transparency`` entry (palette index or colour key).
    transformers tests for an ``"A"`` band name, so LAB (bands L, A, B) takes the compositing path
    as well; we follow it, since matching the reference matters more than the odd LAB image.
    """
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def _to_8bit_gray(image: Image.Image) -> Image.Image:
    """An ``L`` image from a 16/32-bit integer (``I;16*``, ``I``) or float (``F``) image.

    transformers calls ``convert("RGB")``, which clips every sample to 0..255, so an ordinary
    16-bit photo comes out almost white. We map instead: integer modes hold 16-bit samples in
    practice (Pillow opens 16-bit PNG and TIFF as ``I;16`` or ``I``), so 0..65535 maps linearly onto
    0..255 (values outside are clipped first); float images have no conventional range, so the
    image's own finite min..max is stretched onto 0..255 (non-finite samples become 0).
    """
    samples = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        finite = np.isfinite(samples)
        low, high = (samples[finite].min(), samples[finite].max()) if finite.any() else (0.0, 0.0)
        scale = 255.0 / (high - low) if high > low else 0.0
        gray = np.where(finite, (samples - low) * scale, 0.0)
    else:
        gray = np.clip(samples, 0, 65535) / 257.0
    return Image.fromarray(np.rint(gray).astype(np.uint8))  # mode L


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
    field is validated on construction and a bad one raises :class:`TransPruneError` naming it.
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
            object.__setattr__(self, "center_crop", _int_list("center_crop", self.center_crop, 2, 1))
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
    if isinstance(value, Mapping) and set(value) in layouts and all(_is_int(v) and v >= 1 for v in value.values()):
        return {key: int(v) for key, v in value.items()}
    raise TransPruneError(f"image preprocessing field 'resize' must be {{'shortest_edge': n}} or "
                          f"{{'height': h, 'width': w}} with positive integers, got {value!r}")


# --------------------------------------------------------------------------------------------
# Preprocessing


def preprocess(images, config: ImagePreprocess) -> np.ndarray:
    """Pixel values float32 ``[B, 3, H, W]`` of ``images``, equal to transformers' PIL backend.

    ``images`` is a list of images (or one image); each is a PIL image, a path or bytes. Anything
    other than a plain RGB PIL image goes through :func:`load_image` first, so paths are decoded and
    turned upright; plain RGB PIL images are used as given, as transformers would.
    """
    if isinstance(images, (str, Path, bytes, bytearray, memoryview, Image.Image)):
        images = [images]
    images = list(images)
    if not images:
        raise TransPruneError("preprocess got no images; pass at least one")
    pixels = [_geometry(_as_rgb(image), config) for image in images]
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


def _as_rgb(image) -> Image.Image:
    if isinstance(image, Image.Image) and image.mode == "RGB" and image.info.get("transparency") is None:
        return image
    return load_image(image)


def _geometry(image: Image.Image, config: ImagePreprocess) -> np.ndarray:
    """Padding, resizing and cropping of one RGB image; uint8 ``[H, W, 3]``."""
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
