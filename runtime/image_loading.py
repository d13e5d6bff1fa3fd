"""Loading untrusted images: a path, encoded bytes or a PIL image as an upright RGB PIL image.

The runtime's preprocessing (:mod:`.preprocess`, :mod:`.anyres`) starts from the RGB image made
here, exactly as transformers' ``convert_to_rgb`` makes it, with the EXIF orientation applied.

Images are untrusted input (issue 19): a file of a few bytes can declare billions of pixels. So the
file is read with a bound on its bytes, and the image's pixels are counted from its header and
checked against :data:`MAX_IMAGE_PIXELS` before it is decoded (the preprocessing's own limits, on
each intermediate, are checked then too, through ``check_size``).
"""

from __future__ import annotations

import io
import math
import os
import stat
import struct
import warnings

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from transprune.errors import TransPruneError

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
    :meth:`.preprocess.ImagePreprocess.check_image_size`), so an image the preprocessing would refuse
    costs nothing.
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


def _as_rgb(image, check_size=None) -> Image.Image:
    """``image`` as an RGB PIL image: a plain RGB PIL image as given (checked, but neither copied nor
    turned by its EXIF orientation, as transformers takes it), anything else through :func:`load_image`."""
    if isinstance(image, Image.Image) and image.mode == "RGB" and image.info.get("transparency") is None:
        _check_pil_image(image, check_size)
        return image
    return load_image(image, check_size=check_size)
