"""A transformers image processor's settings read into the runtime's preprocessing descriptions.

The processors are real ``CLIPImageProcessorPil`` (LLaVA-1.5's settings) and
``LlavaNextImageProcessorPil`` (llava-v1.6-vicuna-7b-hf's settings) objects built from keyword
arguments, no hub access; a processor whose settings the runtime cannot reproduce must be refused.
"""

import numpy as np
import pytest
from PIL import Image

from transprune.errors import TransPruneError
from transprune.export.processor_settings import describe_anyres_processor, describe_image_processor
from transprune.runtime.anyres import AnyresPreprocess, preprocess_anyres

transformers = pytest.importorskip("transformers")
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD  # noqa: E402
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil  # noqa: E402

BICUBIC = Image.Resampling.BICUBIC
PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def _clip(**overrides):
    """The LLaVA-1.5 vision preprocessing (CLIP ViT-L/14-336), with ``overrides``."""
    kwargs = dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, resample=BICUBIC,
                  image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD)
    kwargs.update(overrides)
    return transformers.CLIPImageProcessorPil(**kwargs)


def _next(**overrides):
    """llava-v1.6-vicuna-7b-hf's image processor, with ``overrides``."""
    kwargs = dict(image_grid_pinpoints=PINPOINTS, size={"shortest_edge": 336},
                  crop_size={"height": 336, "width": 336}, do_pad=True, resample=BICUBIC,
                  do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=OPENAI_CLIP_MEAN,
                  image_std=OPENAI_CLIP_STD, do_convert_rgb=True)
    kwargs.update(overrides)
    return LlavaNextImageProcessorPil(**kwargs)


def _photo(width, height, seed=0):
    """Seeded noise over a gradient, different in every channel."""
    rng = np.random.default_rng(seed)
    ramp = (np.arange(width, dtype=np.float32)[None, :, None] * 200 / max(width - 1, 1)).astype(np.uint8)
    noise = rng.integers(0, 56, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(np.broadcast_to(ramp, (height, width, 3)) + noise)


# --------------------------------------------------------------------------------------------
# describe_image_processor (LLaVA-1.5)


def test_describe_reads_the_llava_1_5_settings():
    config = describe_image_processor(_clip())
    assert config.to_dict() == {
        "pad_to_square": None, "resize": {"shortest_edge": 336}, "resample": 3, "center_crop": [336, 336],
        "rescale_factor": 1 / 255, "mean": list(OPENAI_CLIP_MEAN), "std": list(OPENAI_CLIP_STD),
    }


def test_describe_accepts_plain_dict_sizes():
    attributes = dict(do_convert_rgb=True, do_resize=True, size={"shortest_edge": 336}, resample=3,
                      do_center_crop=True, crop_size={"height": 336, "width": 336}, do_rescale=True,
                      rescale_factor=1 / 255, do_normalize=True, image_mean=OPENAI_CLIP_MEAN,
                      image_std=OPENAI_CLIP_STD)
    lookalike = type("CLIPImageProcessor", (), attributes)()
    assert describe_image_processor(lookalike) == describe_image_processor(_clip())


def test_describe_rejects_an_unsupported_processor_class():
    class SiglipImageProcessor:
        do_convert_rgb = True

    with pytest.raises(TransPruneError, match="not supported.*CLIPImageProcessorPil"):
        describe_image_processor(SiglipImageProcessor())


@pytest.mark.parametrize("processor, problem", [
    (lambda: _clip(size={"shortest_edge": 336, "longest_edge": 500}), "longest_edge"),
    (lambda: _clip(do_convert_rgb=False), "do_convert_rgb"),
    (lambda: _clip(do_pad=True), "do_pad"),
])
def test_describe_rejects_settings_it_cannot_reproduce(processor, problem):
    with pytest.raises(TransPruneError, match=problem):
        describe_image_processor(processor())


# --------------------------------------------------------------------------------------------
# describe_anyres_processor (LLaVA-NeXT)


def test_describe_reads_the_llava_next_settings():
    processor = _next()
    data = describe_anyres_processor(processor)
    assert data["grid_pinpoints"] == PINPOINTS and data["tile_size"] == 336
    assert data["resample"] == int(processor.resample) and data["rescale_factor"] == processor.rescale_factor
    assert data["mean"] == list(processor.image_mean) and data["std"] == list(processor.image_std)
    # The most tiles any image gets from the processor: the base tile and the largest canvas's tiles.
    most = max(processor(images=[_photo(w, h)], return_tensors="np")["pixel_values"].shape[1] for h, w in PINPOINTS)
    assert AnyresPreprocess.from_dict(data).max_tiles == most


def test_processing_switches_are_recorded():
    plain = describe_anyres_processor(_next(do_normalize=False, do_rescale=False, resample=Image.Resampling.BILINEAR))
    assert (plain["mean"], plain["std"], plain["rescale_factor"], plain["resample"]) == (None, None, None, 2)
    image = _photo(500, 300, 9)
    reference = _next(do_normalize=False, do_rescale=False, resample=Image.Resampling.BILINEAR)(
        images=[image], return_tensors="np")["pixel_values"][0]
    assert np.array_equal(preprocess_anyres(image, AnyresPreprocess.from_dict(plain))[0], reference)


@pytest.mark.parametrize("make, problem", [
    (lambda: transformers.CLIPImageProcessorPil(), "not a LLaVA-NeXT"),
    (lambda: _next(do_convert_rgb=False), "do_convert_rgb"),
    (lambda: _next(size={"shortest_edge": 224}), "base image to 224x224 but cuts 336x336"),
    (lambda: _next(size={"shortest_edge": 336, "longest_edge": 800}), "longest_edge"),
    (lambda: _next(crop_size={"height": 336, "width": 300}), "crop_size"),
    (lambda: _next(image_grid_pinpoints=[[336, 600]]), "multiple of tile_size"),
])
def test_describe_refuses_settings_it_cannot_reproduce(make, problem):
    with pytest.raises(TransPruneError, match=problem):
        describe_anyres_processor(make())


# --------------------------------------------------------------------------------------------
# Refusals both descriptions share


@pytest.mark.parametrize("overrides, problem", [
    ({"do_rescale": True, "rescale_factor": None}, r"do_rescale=True but no rescale_factor; set rescale_factor \(1/255\)"),
    ({"image_std": [0.5, 0.5]}, r"image_std=\[0.5, 0.5\]; expected one value per RGB channel"),
    ({"resample": "bicubic"}, r"resample='bicubic'; the runtime needs a Pillow resampling filter"),
    ({"size": 336}, r"size=336; expected a size dict such as \{'height': h, 'width': w\}"),
    ({"do_convert_rgb": None}, r"do_convert_rgb=None; the runtime always converts images to RGB"),
])
@pytest.mark.parametrize("kind, describe", [
    ("CLIPImageProcessor", describe_image_processor),
    ("LlavaNextImageProcessor", describe_anyres_processor),
])
def test_both_descriptions_refuse_the_shared_settings_alike(kind, describe, overrides, problem):
    attributes = dict(do_convert_rgb=True, do_resize=True, size={"shortest_edge": 336}, resample=3,
                      do_center_crop=True, crop_size={"height": 336, "width": 336}, do_rescale=True,
                      rescale_factor=1 / 255, do_normalize=True, image_mean=OPENAI_CLIP_MEAN,
                      image_std=OPENAI_CLIP_STD, image_grid_pinpoints=PINPOINTS)
    lookalike = type(kind, (), {**attributes, **overrides})()
    with pytest.raises(TransPruneError, match=f"^{kind} has {problem}"):
        describe(lookalike)
