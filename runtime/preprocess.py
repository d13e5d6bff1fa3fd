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

Images are untrusted input (issue 19): a file of a few bytes can declare billions of pixels, or a
1-pixel-wide strip that padding to a square or resizing its short side to 336 turns into gigabytes
before the crop throws them away. So every size is computed first and checked against the limits
below before the memory for it is allocated: the image's own pixels from its header, before it is
decoded, then each intermediate (:func:`plan_geometry`). An image whose intermediate would pass a
limit is refused with the sizes, the limit and what to do.
"""

from __future__ import annotations

import io
import math
import os
import stat
import struct
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from transprune.errors import TransPruneError

# Pillow's resampling filters by value (NEAREST=0, LANCZOS=1, BILINEAR=2, BICUBIC=3, BOX=4, HAMMING=5).
_RESAMPLE_NAMES = {int(r): r.name.lower() for r in Image.Resampling}

# --------------------------------------------------------------------------------------------
# Limits on untrusted images. Pillow keeps an RGB image at 4 bytes a pixel; numpy copies take 3.

# Pixels of an image we decode, read from its header before decoding: 2**26 = 67.1 Mpx, 256 MiB as a
# decoded RGB image. Every camera and phone photo fits (48 MP phones write 8064 x 6048 = 48.8 Mpx);
# it is below Pillow's own bomb warning (89.5 Mpx), so it is this limit that applies whatever
# Image.MAX_IMAGE_PIXELS is set to.
MAX_IMAGE_PIXELS = 1 << 26

# Bytes of an image file, or of encoded image bytes, read into memory: 256 MiB, an uncompressed RGBA
# image at MAX_IMAGE_PIXELS (BMP, TIFF). Compressed photos are a small fraction of that.
MAX_IMAGE_BYTES = 256 << 20

# Pixels of LLaVA-1.5's pad-to-square canvas (the long side squared): the same 67.1 Mpx, so every
# photo up to 8192 px on its long side is padded as before (4032 x 3024 -> 4032 x 4032 = 16.3 Mpx,
# 8064 x 6048 -> 65.0 Mpx), while a 1 x 20000 strip (a 20000 x 20000 canvas, 1.6 GB) is refused.
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

# EXIF orientations that turn or flip the picture (1 is upright; others are invalid and ignored).
_TURNING_ORIENTATIONS = frozenset(range(2, 9))


class ImageError(TransPruneError):
    """An image that is missing, unreadable, corrupt, too large or in a form this runtime cannot use."""


def _mpx(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} Mpx"


def _bytes(count: int) -> str:
    return f"{count / (1 << 20):.0f} MiB" if count >= 1 << 20 else f"{count} bytes"


def _limit(pixels: int) -> str:
    """A pixel limit as people picture it: ``8192x8192 (67.1 Mpx)``."""
    side = math.isqrt(pixels)
    return f"{side}x{side} ({_mpx(pixels)})" if side * side == pixels else _mpx(pixels)


# --------------------------------------------------------------------------------------------
# Loading


def load_image(source, *, check_size=None) -> Image.Image:
    """``source`` (a path, encoded image bytes or a PIL image) as an upright RGB PIL image.

    The file is decoded completely here, so a truncated or corrupt file fails now with an
    :class:`ImageError` rather than later inside preprocessing. The EXIF orientation is applied
    (camera photos are stored sideways with a tag saying so; transformers ignores the tag for PIL
    inputs, which shows the model a rotated picture). Animated images give their first frame.

    Anything that is not an image (None, an empty or closed PIL image, a FIFO or device path, a file
    or bytes over :data:`MAX_IMAGE_BYTES`, more than :data:`MAX_IMAGE_PIXELS` pixels, another type)
    raises :class:`ImageError`. ``check_size(height, width, name)``, when given, is called with the
    size from the file's header before anything is decoded (e.g.
    :meth:`ImagePreprocess.check_image_size`), so an image the preprocessing would refuse costs nothing.
    A plain RGB PIL image is returned as it is, not copied.
    """
    if isinstance(source, Image.Image):
        return _upright_rgb(source, _check_pil_image(source, check_size))
    if isinstance(source, (bytes, bytearray, memoryview)):
        size = memoryview(source).nbytes
        name = f"<{size} bytes of image data>"
        if size > MAX_IMAGE_BYTES:
            raise ImageError(f"image {name}: more than the {_bytes(MAX_IMAGE_BYTES)} limit for image data; "
                             f"downscale or recompress the image")
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        name = os.fsdecode(path)
        data = _read_image_file(path, name)
    elif source is None:
        raise ImageError("no image was given (None); pass a file path, encoded image bytes or a PIL image")
    else:
        kind = f"{type(source).__module__}.{type(source).__qualname__}".removeprefix("builtins.")
        hint = " (for an array of pixels: PIL.Image.fromarray(array))" if isinstance(source, np.ndarray) else ""
        raise ImageError(f"an image must be a file path, encoded image bytes or a PIL image, not {kind}; pass one "
                         f"of those{hint}")
    return _decode(data, name, check_size)


def _check_pil_image(image: Image.Image, check_size=None) -> str:
    """Refuses a PIL image that is empty, over the limits or closed; loads it; returns its name for messages."""
    name = f"<PIL image, mode {image.mode}, {image.width}x{image.height}>"
    _check_pixels(image.width, image.height, name)
    if check_size is not None:
        check_size(image.height, image.width, name)
    try:
        image.load()
    except ValueError as exc:  # Pillow's "Operation on closed image"
        problem = "is closed" if "closed" in str(exc) else f"cannot be read ({exc})"
        raise ImageError(f"image {name}: the PIL image {problem}; pass an open image") from None
    except (OSError, SyntaxError, EOFError, struct.error) as exc:  # a lazily opened image of a corrupt file
        raise ImageError(f"image {name}: cannot be decoded ({exc}); the file is truncated or corrupt, re-save or "
                         f"re-download it") from None
    return name


def _read_image_file(path, name: str) -> bytes:
    """The bytes of the regular file ``path``, at most :data:`MAX_IMAGE_BYTES`.

    Opened without blocking and checked on the open descriptor (no race with a path swapped between
    a check and the open): a FIFO would otherwise block the open until a writer came, and a device or
    a growing file could be read forever.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        descriptor = os.open(path, flags)
    except FileNotFoundError:
        raise ImageError(f"image {name}: file not found; check the path") from None
    except IsADirectoryError:
        raise ImageError(f"image {name}: is a directory, not an image file; pass the path of an image") from None
    except PermissionError:
        raise ImageError(f"image {name}: permission denied; make the file readable") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        kind = _special_file_kind(path)  # only to name it: opening a socket fails with ENXIO
        if kind is not None:
            raise ImageError(f"image {name}: is a {kind}, not a regular file; pass the path of an image file") from None
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ImageError(f"image {name}: cannot be opened ({reason}); check the path") from None
    try:
        info = os.fstat(descriptor)
        if stat.S_ISDIR(info.st_mode):
            raise ImageError(f"image {name}: is a directory, not an image file; pass the path of an image")
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(f"image {name}: is a {_file_kind(info.st_mode)}, not a regular file; pass the path "
                             f"of an image file")
        if info.st_size > MAX_IMAGE_BYTES:
            raise _file_too_large(name, info.st_size)
        file = os.fdopen(descriptor, "rb")  # owns the descriptor from here
    except BaseException:
        os.close(descriptor)
        raise
    with file:
        # One byte past the size tells a file that grew since fstat (or reports size 0, as /proc
        # files do); keep reading it, in bounded chunks, up to the limit.
        data = file.read(info.st_size + 1)
        while len(data) <= MAX_IMAGE_BYTES and (more := file.read(1 << 20)):
            data += more
        if len(data) > MAX_IMAGE_BYTES:
            raise _file_too_large(name, len(data))
        return data


def _special_file_kind(path) -> str | None:
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    return None if stat.S_ISREG(mode) or stat.S_ISDIR(mode) else _file_kind(mode)


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISCHR, "character device"),
             (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))
    return next((kind for test, kind in kinds if test(mode)), "special file")


def _file_too_large(name: str, size: int) -> ImageError:
    return ImageError(f"image {name}: the file is {_bytes(size)} or more, above the {_bytes(MAX_IMAGE_BYTES)} limit "
                      f"for image files; downscale or recompress the image")


def _decode(data: bytes, name: str, check_size) -> Image.Image:
    """``data`` decoded as an upright RGB image, its size checked from the header first."""
    try:
        with warnings.catch_warnings():
            # Pillow warns from 89.5 Mpx; MAX_IMAGE_PIXELS, checked next, is the limit that applies,
            # and a warning would be a second line under the CLI's one-line error.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        # Nothing is decoded yet: only the header has been read.
        _check_pixels(image.width, image.height, name)
        if check_size is not None:
            check_size(image.height, image.width, name)
        image.load()
        return _upright_rgb(image, name)
    except Image.DecompressionBombError as exc:  # Pillow's own check, in Image.open, is the first to see it
        raise ImageError(f"image {name}: too large to decode safely (Pillow: {exc}); downscale the image to at "
                         f"most {_limit(MAX_IMAGE_PIXELS)}") from None
    except UnidentifiedImageError:
        raise ImageError(f"image {name}: not an image format Pillow can read; convert it to PNG or "
                         f"JPEG") from None
    except (OSError, SyntaxError, EOFError, ValueError, struct.error) as exc:
        raise ImageError(f"image {name}: cannot be decoded ({exc}); the file is truncated or corrupt, "
                         f"re-save or re-download it") from None


def _check_pixels(width: int, height: int, name: str) -> None:
    """Refuses an image with no pixels or more than :data:`MAX_IMAGE_PIXELS`."""
    if width < 1 or height < 1:
        raise ImageError(f"image {name}: has no pixels ({width}x{height}); pass a non-empty image")
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(f"image {name}: {width}x{height} pixels ({_mpx(width * height)}) is above the limit of "
                         f"{_limit(MAX_IMAGE_PIXELS)}; downscale the image")


def _upright_rgb(image: Image.Image, name: str) -> Image.Image:
    # exif_transpose copies the whole image even when there is nothing to turn, so it is only called
    # when there is (the result is the same either way)
    if image.getexif().get(ExifTags.Base.Orientation, 1) in _TURNING_ORIENTATIONS:
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
    if image.mode == "RGB":
        return image  # convert("RGB") would only copy it
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
    other than a plain RGB PIL image goes through :func:`load_image` first, so paths are decoded and
    turned upright; plain RGB PIL images are used as given, as transformers would. An image the
    limits refuse (see :func:`plan_geometry`) raises :class:`ImageError`, a path or bytes before it is
    decoded.
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


def _as_rgb(image, check_size=None) -> Image.Image:
    """``image`` as an RGB PIL image: a plain RGB PIL image as given (checked, but neither copied nor
    turned by its EXIF orientation, as transformers takes it), anything else through :func:`load_image`."""
    if isinstance(image, Image.Image) and image.mode == "RGB" and image.info.get("transparency") is None:
        _check_pil_image(image, check_size)
        return image
    return load_image(image, check_size=check_size)


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
