"""Images to the vision graph's feeds, for either kind of build. numpy + Pillow only.

LLaVA-1.5 builds take one ``[3, H, W]`` picture per image and give a fixed number of image tokens.
LLaVA-NeXT (anyres) builds take every tile of every image of the batch stacked on one axis plus a
``pack_index`` that places each tile feature (or an ``image_newline``) at its image token, so the
number of image tokens follows each image's size; the prompt's image slot is expanded to that
count (``PreparedImages.image_tokens``) and the chain keeps ``int(n * ratio)`` of them per prune.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from transprune.errors import TransPruneError

from .anyres import AnyresPreprocess, image_feature_count, packing_plan, preprocess_anyres
from .build import Build
from .image_loading import load_image
from .preprocess import ImagePreprocess, preprocess


class MixedImageTokensError(TransPruneError):
    """A LLaVA-NeXT batch whose images give different image-token counts (they cannot stack)."""


@dataclass
class PreparedImages:
    pixel_values: np.ndarray  # float32 [B, 3, H, W], anyres: [T, 3, H, W] every image's tiles in order
    pack_index: np.ndarray | None  # anyres: int64 [B, N] tile-feature row per image token, -1 = newline
    image_tokens: list[int]  # per image: the tokens its slot in the prompt expands to
    image_sizes: list[tuple[int, int]]  # per image: (height, width) as loaded (upright)
    tiles: list[int]  # per image: pictures the vision tower sees (1 for LLaVA-1.5)


class ImageInputs:
    """Prepares images for ``build`` exactly as the checkpoint's image processor would."""

    def __init__(self, build: Build) -> None:
        self.build = build
        section = build.manifest["image_preprocess"]
        if build.anyres:
            self.anyres = AnyresPreprocess.from_dict(section)
            self.patches_per_side = math.isqrt(build.tile_tokens)
        else:
            self.settings = ImagePreprocess.from_dict(section)

    def count(self, image_size: tuple[int, int]) -> int:
        """Image tokens an image of ``(height, width)`` gives in this build."""
        if not self.build.anyres:
            return self.build.n_image
        return image_feature_count(image_size, self.anyres, patches_per_side=self.patches_per_side)

    def plan(self, image_size: tuple[int, int]) -> np.ndarray:
        """Anyres: the packing plan of one image of ``(height, width)`` (rows of its own tiles' features)."""
        return packing_plan(image_size, self.anyres, patches_per_side=self.patches_per_side)

    def prepare(self, images: list) -> PreparedImages:
        """``images``: paths, bytes or PIL images, one per prompt of the batch."""
        # LLaVA-1.5: an image the preprocessing would refuse (a padded square or resize over the limits)
        # is refused from its header, before it is decoded; anyres sizes are bounded by the settings.
        check = None if self.build.anyres else self.settings.check_image_size
        loaded = [load_image(image, check_size=check) for image in images]
        sizes = [(image.height, image.width) for image in loaded]
        if not self.build.anyres:
            pixels = preprocess(loaded, self.settings)
            return PreparedImages(pixels, None, [self.build.n_image] * len(loaded), sizes, [1] * len(loaded))
        tiles, plans = [], []
        for image in loaded:
            pixels, size = preprocess_anyres(image, self.anyres)
            tiles.append(pixels)
            plans.append(self.plan(size))
        plans = stack_plans(plans, [len(t) for t in tiles], self.build.tile_tokens)
        counts = [len(plan) for plan in plans]
        if len(set(counts)) > 1:
            raise MixedImageTokensError(
                f"the images of this batch give {counts} image tokens (LLaVA-NeXT's count follows each image's "
                f"size); one batch needs equal counts, so run images of different sizes in separate batches")
        self.build.check_image_tokens(counts[0])
        return PreparedImages(np.concatenate(tiles), np.stack(plans), counts, sizes, [len(t) for t in tiles])


def stack_plans(plans: list[np.ndarray], tiles: list[int], tile_tokens: int) -> list[np.ndarray]:
    """Each image's packing plan (rows of its own tiles' features) shifted to index the batch's
    stack of every image's tile features, ``tiles[i]`` tiles of ``tile_tokens`` rows each, image
    after image; newlines (-1) stay -1."""
    shifted, offset = [], 0
    for plan, count in zip(plans, tiles):
        shifted.append(np.where(plan >= 0, plan + offset, -1))
        offset += count * tile_tokens
    return shifted
