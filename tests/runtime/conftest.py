"""Helpers shared by the runtime's image tests (test_preprocess.py, test_image_loading.py): test
photos, and the transformers processors the runtime's pixels are compared with. transformers and
the exporter are imported only when a test asks for a processor, so the rest of tests/runtime runs
without them."""

import numpy as np
import pytest
from PIL import Image

BICUBIC = Image.Resampling.BICUBIC


def _clip(**overrides):
    """The LLaVA-1.5 vision preprocessing (CLIP ViT-L/14-336), with ``overrides``."""
    import transformers
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    kwargs = dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, resample=BICUBIC,
                  image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD)
    kwargs.update(overrides)
    return transformers.CLIPImageProcessorPil(**kwargs)


def _reference(processor, images):
    return processor(images=images, return_tensors="np")["pixel_values"]


def _ours(processor, images):
    # The runtime's description of a real processor, as the exporter makes it (tested in tests/export).
    from transprune.export.processor_settings import describe_image_processor
    from transprune.runtime.preprocess import preprocess

    return preprocess(images, describe_image_processor(processor))


def _photo(width, height, seed=0, mode="RGB"):
    """Noise over diagonal gradients: smooth and sharp content, different in every channel."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    ramps = np.stack([x / max(width - 1, 1), y / max(height - 1, 1), (x + y) / max(width + height - 2, 1)], -1)
    pixels = np.clip(ramps * 200 + rng.integers(0, 56, (height, width, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    return image if mode == "RGB" else image.convert(mode)


@pytest.fixture(scope="module")
def clip():
    return _clip()
