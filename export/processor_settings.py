"""A loaded transformers image processor's settings as the runtime's preprocessing description.

The runtime reproduces the checkpoint's image processor with Pillow and numpy from a plain-JSON
description in the build manifest: :class:`~transprune.runtime.preprocess.ImagePreprocess` for
LLaVA-1.5 (CLIP / LLaVA processors), the :class:`~transprune.runtime.anyres.AnyresPreprocess` dict
for LLaVA-NeXT. This module makes those descriptions at export time, reading the processor's
attributes only (transformers is not imported here). Settings the runtime cannot reproduce are
refused rather than approximated, since a silently different preprocessing degrades the model
without any error.
"""

from __future__ import annotations

from collections.abc import Mapping

from PIL import Image

from transprune.errors import TransPruneError
from transprune.runtime.anyres import AnyresPreprocess
from transprune.runtime.preprocess import _RESAMPLE_NAMES, ImagePreprocess, _is_int, _is_number

_CLIP_PROCESSORS = (
    "CLIPImageProcessor",
    "CLIPImageProcessorPil",
    "CLIPImageProcessorFast",
    "LlavaImageProcessor",
    "LlavaImageProcessorPil",
    "LlavaImageProcessorFast",
)
_ANYRES_PROCESSORS = ("LlavaNextImageProcessor", "LlavaNextImageProcessorPil", "LlavaNextImageProcessorFast")

# Every key a transformers SizeDict can carry; any beyond the two layouts we reproduce is refused.
_SIZE_KEYS = ("height", "width", "shortest_edge", "longest_edge", "max_height", "max_width", "min_pixels",
              "max_pixels")
_SIZE_LAYOUTS = ({"shortest_edge"}, {"height", "width"})


class _Settings:
    """The attributes of ``image_processor``, read and checked the way both descriptions need.

    Construction refuses a processor class outside ``supported`` (``refusal`` says what it is not)
    and ``do_convert_rgb`` off, which neither description can reproduce.
    """

    def __init__(self, image_processor, supported: tuple[str, ...], refusal: str) -> None:
        self.kind = kind = type(image_processor).__name__
        if kind not in supported:
            raise TransPruneError(f"image processor {kind} {refusal}; supported types are {', '.join(supported)}")
        self._processor = image_processor
        if not self.get("do_convert_rgb"):
            raise TransPruneError(f"{kind} has do_convert_rgb={self.get('do_convert_rgb')!r}; the runtime always "
                                  f"converts images to RGB, so set do_convert_rgb=True")

    def get(self, name: str):
        """The attribute ``name``, None where the processor has none."""
        return getattr(self._processor, name, None)

    def size(self, name: str) -> dict:
        """The set entries of the size attribute ``name``, given as a dict or as a transformers
        ``SizeDict`` (attributes)."""
        size = self.get(name)
        if isinstance(size, Mapping):
            entries = dict(size)
        elif any(hasattr(size, key) for key in _SIZE_KEYS):
            entries = {key: getattr(size, key, None) for key in _SIZE_KEYS}
        else:
            raise TransPruneError(f"{self.kind} has {name}={size!r}; expected a size dict such as "
                                  f"{{'height': h, 'width': w}}")
        return {key: value for key, value in entries.items() if value is not None}

    def resize(self, height_width: str) -> dict:
        """``size`` in one of the two layouts the runtime reproduces; ``height_width`` writes the
        second layout in the refusal."""
        size = self.size("size")
        if set(size) not in _SIZE_LAYOUTS:
            raise TransPruneError(f"{self.kind} has size={size}; the runtime reproduces only {{'shortest_edge': n}} "
                                  f"or {height_width}")
        return size

    def rescale_factor(self) -> float | None:
        """The rescale multiplier, None when not rescaling."""
        if self.get("do_rescale") and self.get("rescale_factor") is None:
            raise TransPruneError(f"{self.kind} has do_rescale=True but no rescale_factor; set rescale_factor "
                                  f"(1/255)")
        return self.get("rescale_factor") if self.get("do_rescale") else None

    def per_channel(self, name: str) -> list[float] | None:
        """A mean/std as three floats; transformers broadcasts a single number to every channel."""
        value = self.get(name)
        if value is None:
            return None
        if _is_number(value):
            return [float(value)] * 3
        values = list(value)
        if len(values) != 3:
            raise TransPruneError(f"{self.kind} has {name}={value!r}; expected one value per RGB channel")
        return [float(v) for v in values]

    def normalization(self) -> tuple[list[float] | None, list[float] | None]:
        """``(mean, std)``, both None when not normalising."""
        if not self.get("do_normalize"):
            return None, None
        return self.per_channel("image_mean"), self.per_channel("image_std")

    def resample(self) -> int:
        resample = self.get("resample")
        if resample is None:
            return int(Image.Resampling.BILINEAR)  # the PIL backend's fallback
        if _is_int(resample):
            return int(resample)
        raise TransPruneError(f"{self.kind} has resample={resample!r}; the runtime needs a Pillow resampling filter "
                              f"{_RESAMPLE_NAMES}")


def describe_image_processor(image_processor) -> ImagePreprocess:
    """The :class:`ImagePreprocess` equivalent to a loaded transformers CLIP or LLaVA image processor.

    The Pil classes are matched bit for bit; the torchvision ("Fast" / default) classes use the same
    settings but their own resize kernels, so their pixel values differ slightly from the runtime's.
    """
    settings = _Settings(image_processor, _CLIP_PROCESSORS, "is not supported")
    kind = settings.kind

    image_mean = settings.per_channel("image_mean")
    pad_to_square = None
    if settings.get("do_pad"):
        if not kind.startswith("Llava"):
            raise TransPruneError(f"{kind} has do_pad=True (pad a batch to a common size), which the runtime does "
                                  f"not reproduce; set do_pad=False")
        # LLaVA pads with the mean colour, truncated to integers, whether or not it normalises.
        pad_to_square = [int(x * 255) for x in image_mean] if image_mean else [0, 0, 0]
        if not all(0 <= c <= 255 for c in pad_to_square):
            raise TransPruneError(f"{kind} pads with image_mean * 255 = {pad_to_square}, outside 0..255; "
                                  f"image_mean must be in 0..1")

    resize = settings.resize("{'height': h, 'width': w}") if settings.get("do_resize") else None

    center_crop = None
    if settings.get("do_center_crop"):
        crop = settings.size("crop_size")
        if set(crop) != {"height", "width"}:
            raise TransPruneError(f"{kind} has crop_size={crop}; a center crop needs 'height' and 'width'")
        center_crop = [crop["height"], crop["width"]]

    rescale_factor = settings.rescale_factor()
    mean, std = settings.normalization()
    return ImagePreprocess(pad_to_square=pad_to_square, resize=resize, resample=settings.resample(),
                           center_crop=center_crop, rescale_factor=rescale_factor, mean=mean, std=std)


def describe_anyres_processor(image_processor) -> dict:
    """The :class:`AnyresPreprocess` dict equivalent to a loaded transformers LLaVA-NeXT image processor.

    ``do_pad`` (padding a batch's tile counts) is not recorded: it changes no image's own tiles. The
    Pil class is matched bit for bit; the torchvision ("Fast" / default) class uses the same settings
    with its own resize kernel, so its pixel values differ slightly from the runtime's.
    """
    settings = _Settings(image_processor, _ANYRES_PROCESSORS, "is not a LLaVA-NeXT (anyres) image processor")
    kind = settings.kind

    # The processor resizes the base image to size (shortest_edge x shortest_edge, or height x width)
    # and cuts the canvas into crop_size.height tiles (falling back on size when there is no crop size).
    size = settings.resize("{'height': n, 'width': n}")
    base = (size["shortest_edge"],) * 2 if "shortest_edge" in size else (size["height"], size["width"])
    crop = settings.size("crop_size") if settings.get("crop_size") is not None else {}
    tile = crop.get("height") or size.get("height") or size.get("shortest_edge")
    if base != (tile, tile):
        raise TransPruneError(f"{kind} resizes the base image to {base[0]}x{base[1]} but cuts {tile}x{tile} tiles; "
                              f"both must be the vision tower's input size, so set size={{'shortest_edge': {tile}}} "
                              f"and crop_size={{'height': {tile}, 'width': {tile}}}")
    # With size and crop both the tile size, the per-tile resize and center crop change nothing,
    # which the runtime's preprocess_anyres relies on.
    if settings.get("do_center_crop") and (crop.get("height"), crop.get("width")) != (tile, tile):
        raise TransPruneError(f"{kind} has crop_size={crop}, which would crop the {tile}x{tile} tiles; set "
                              f"crop_size={{'height': {tile}, 'width': {tile}}}")

    rescale_factor = settings.rescale_factor()
    mean, std = settings.normalization()
    pinpoints = settings.get("image_grid_pinpoints")
    if pinpoints is None:
        raise TransPruneError(f"{kind} has no image_grid_pinpoints; set them (LLaVA-NeXT: [[336, 672], [672, 336], "
                              f"[672, 672], [1008, 336], [336, 1008]])")

    return AnyresPreprocess(
        grid_pinpoints=pinpoints,  # tuples or lists; validated and turned into lists
        tile_size=tile,
        base_image="resize_to_tile",
        resample=settings.resample(),
        rescale_factor=rescale_factor,
        mean=mean,
        std=std,
        pad_colour=[0, 0, 0],  # transformers pads the canvas with np.pad's constant 0
    ).to_dict()
