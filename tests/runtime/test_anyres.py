"""The torch-free LLaVA-NeXT anyres handling equals transformers: tiles, token count and packing.

The references are a real ``LlavaNextImageProcessorPil`` / ``LlavaNextProcessor`` with the
llava-v1.6-vicuna-7b-hf settings, built from keyword arguments (no hub access), and a tiny
``LlavaNextModel`` whose vision tower keeps the real 336 px / 14 px geometry. Images are seeded noise
over gradients, so any interpolation, rounding or ordering difference would show.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from transprune.errors import TransPruneError
from transprune.runtime.anyres import (
    AnyresPreprocess,
    best_resolution,
    image_feature_count,
    num_tiles,
    pack_features,
    packing_plan,
    pad_tile_batch,
    preprocess_anyres,
)
from transprune.runtime.image_loading import ImageError, load_image

transformers = pytest.importorskip("transformers")
from transformers.image_processing_utils import select_best_resolution  # noqa: E402
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD  # noqa: E402
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil  # noqa: E402
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches  # noqa: E402

# The runtime's description of a real processor, as the exporter makes it (tested in tests/export).
from transprune.export.processor_settings import describe_anyres_processor  # noqa: E402

PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def _processor(**overrides):
    """llava-v1.6-vicuna-7b-hf's image processor, with ``overrides``."""
    kwargs = dict(image_grid_pinpoints=PINPOINTS, size={"shortest_edge": 336},
                  crop_size={"height": 336, "width": 336}, do_pad=True, resample=Image.Resampling.BICUBIC,
                  do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=OPENAI_CLIP_MEAN,
                  image_std=OPENAI_CLIP_STD, do_convert_rgb=True)
    kwargs.update(overrides)
    return LlavaNextImageProcessorPil(**kwargs)


def _photo(width, height, seed=0):
    """Noise over diagonal gradients: smooth and sharp content, different in every channel."""
    rng = np.random.default_rng(seed)
    # Broadcast 1-D ramps rather than full coordinate grids: the 4000x3000 image stays quick to make.
    y = np.arange(height, dtype=np.float32)[:, None]
    x = np.arange(width, dtype=np.float32)[None, :]
    ramps = [x / max(width - 1, 1), y / max(height - 1, 1), (x + y) / max(width + height - 2, 1)]
    channels = [np.broadcast_to((ramp * 200).astype(np.uint8), (height, width)) for ramp in ramps]
    noise = rng.integers(0, 56, (height, width, 3), dtype=np.uint8)
    pixels = np.stack(channels, -1) + noise  # at most 200 + 55, no overflow
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def processor():
    return _processor()


@pytest.fixture(scope="module")
def settings(processor):
    return AnyresPreprocess.from_dict(describe_anyres_processor(processor))


# (height, width) of images whose extent in feature cells is a whole number that floating point
# misses by an ulp (e.g. 88 x 99 gives 26.999999999999996 cells), with an odd margin: transformers rounds
# to 7 decimals before truncating, and truncating alone would unpad one more row or column.
_ULP_SIZES = [(55, 176), (88, 99), (328, 861), (704, 396), (376, 987), (352, 748), (752, 423)]

# (height, width) of images whose token counts are compared: every pinpoint and its neighbours one
# pixel off, both orientations of common photo shapes, extremes, and seeded random sizes.
_COUNT_SIZES = sorted({
    *[(h, w) for h, w in PINPOINTS], *[(h + 1, w) for h, w in PINPOINTS], *[(h, w - 1) for h, w in PINPOINTS],
    (480, 640), (640, 480), (1080, 1920), (1920, 1080), (3000, 4000), (100, 1000), (1000, 100),
    (1, 1), (1, 2000), (2000, 1), (7, 5), (336, 336), (335, 337), (5000, 200), (200, 5000),
    *_ULP_SIZES,
    *[tuple(int(v) for v in pair) for pair in np.random.default_rng(7).integers(1, 2500, (12, 2))],
})


# --------------------------------------------------------------------------------------------
# Pixels, bit for bit


@pytest.mark.parametrize("width, height", [
    (640, 480), (480, 640), (336, 336), (1, 1), (5, 3), (4000, 3000), (1000, 100), (100, 1000),
    (2000, 1), (1, 2000), (337, 999), (1500, 1501), (1, 20000), (20000, 1), (3, 10007),
    *[(w, h) for h, w in PINPOINTS],  # each pinpoint's exact size (PINPOINTS are height, width)
])
def test_pixels_and_image_size_match_transformers_bit_for_bit(processor, settings, width, height):
    image = _photo(width, height, seed=width * 7 + height)
    reference = processor(images=[image], return_tensors="np")
    ours, image_size = preprocess_anyres(image, settings)
    assert ours.dtype == np.float32
    assert ours.shape == (num_tiles(image_size, settings), 3, 336, 336)
    # A single image is not batch-padded, so the whole reference row is this image's tiles.
    assert reference["pixel_values"].shape[1:] == ours.shape
    assert np.array_equal(ours, reference["pixel_values"][0])
    assert image_size == (height, width) == tuple(reference["image_sizes"][0].tolist())


def test_a_batch_is_padded_with_zero_tiles_like_transformers(processor, settings):
    images = [_photo(1000, 100, 1), _photo(640, 480, 2), _photo(1, 1, 3)]  # 4, 5 and 3 tiles
    reference = processor(images=images, return_tensors="np")
    singles = [preprocess_anyres(image, settings) for image in images]
    assert sorted({len(pixels) for pixels, _ in singles}) == [3, 4, 5]
    assert np.array_equal(pad_tile_batch([pixels for pixels, _ in singles]), reference["pixel_values"])
    assert [size for _, size in singles] == [tuple(s) for s in reference["image_sizes"].tolist()]


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P+transparency"])
def test_other_colour_modes_go_through_load_image_and_match(processor, settings, mode, tmp_path):
    image = _photo(700, 300, seed=11)
    if mode in ("RGBA", "LA"):
        alpha = Image.fromarray(np.tile(np.linspace(0, 255, 700, dtype=np.uint8), (300, 1)))
        image = image.convert(mode[:-1])
        image.putalpha(alpha)
    elif mode == "P+transparency":
        image = image.convert("P")
        image.info["transparency"] = int(np.asarray(image)[0, 0])
    else:
        image = image.convert(mode)
    reference = processor(images=[image], return_tensors="np")["pixel_values"][0]
    rgb = load_image(image)
    assert rgb.mode == "RGB" and rgb.size == image.size
    assert np.array_equal(preprocess_anyres(rgb, settings)[0], reference)
    # The original image, and the same image as a file, load the same way.
    assert np.array_equal(preprocess_anyres(image, settings)[0], reference)
    path = tmp_path / "image.png"
    image.save(path)
    pixels, size = preprocess_anyres(path, settings)
    assert np.array_equal(pixels, reference) and size == (300, 700)


def test_the_pad_colour_fills_the_canvas_margin(settings):
    # A wide image on the 336x1008 canvas leaves padding above and below it in every tile.
    pixels, _ = preprocess_anyres(_photo(1000, 100), settings)
    top_row = pixels[1:, :, 0, :]
    black = (0 - np.asarray(OPENAI_CLIP_MEAN)) / np.asarray(OPENAI_CLIP_STD)
    assert np.allclose(top_row, black[None, :, None].astype(np.float32), atol=1e-6)
    red = AnyresPreprocess.from_dict({**settings.to_dict(), "pad_colour": [255, 0, 0]})
    red_row = preprocess_anyres(_photo(1000, 100), red)[0][1:, :, 0, :]
    expected = (np.array([1.0, 0, 0]) - np.asarray(OPENAI_CLIP_MEAN)) / np.asarray(OPENAI_CLIP_STD)
    assert np.allclose(red_row, expected[None, :, None].astype(np.float32), atol=1e-6)


# --------------------------------------------------------------------------------------------
# Token counts


@pytest.fixture(scope="module")
def llava_next_processor(processor):
    """``LlavaNextProcessor`` with the 7B processor config and a stand-in word-level tokenizer."""
    tokenizers = pytest.importorskip("tokenizers")
    vocab = tokenizers.Tokenizer(tokenizers.models.WordLevel({"<unk>": 0, "describe": 1}, unk_token="<unk>"))
    vocab.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=vocab, unk_token="<unk>")
    # "<image>" must be a special token: the processor expands it to N copies with no spaces between.
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return transformers.LlavaNextProcessor(image_processor=processor, tokenizer=tokenizer, patch_size=14,
                                           vision_feature_select_strategy="default",
                                           num_additional_image_tokens=1)


def test_the_count_sizes_cover_every_pinpoint_and_thirty_sizes(settings):
    assert len(_COUNT_SIZES) >= 30
    chosen = {best_resolution(size, settings) for size in _COUNT_SIZES}
    assert chosen == {tuple(pair) for pair in PINPOINTS}


def test_feature_count_matches_the_processor_for_many_sizes(settings, llava_next_processor):
    reference = llava_next_processor._get_num_multimodal_tokens(image_sizes=_COUNT_SIZES).num_image_tokens
    ours = [image_feature_count(size, settings) for size in _COUNT_SIZES]
    assert ours == reference
    for size in _COUNT_SIZES:
        # The same selection and tile count as transformers' own helpers.
        assert best_resolution(size, settings) == select_best_resolution(size, PINPOINTS)
        assert num_tiles(size, settings) == image_size_to_num_patches(size, PINPOINTS, 336)
        assert len(packing_plan(size, settings)) == image_feature_count(size, settings)


@pytest.mark.parametrize("width, height", [(640, 480), (100, 1000), (1, 2000), (2000, 1), (1009, 337)])
def test_feature_count_matches_the_image_tokens_in_the_prompt(settings, llava_next_processor, width, height):
    # The full processor path: the count comes from the processed pixel_values and image_sizes.
    image = _photo(width, height)
    batch = llava_next_processor(images=[image], text=["describe <image> describe"], return_tensors="np")
    inserted = int((batch["input_ids"] == llava_next_processor.image_token_id).sum())
    assert image_feature_count(preprocess_anyres(image, settings)[1], settings) == inserted


# --------------------------------------------------------------------------------------------
# Packing


@pytest.fixture(scope="module")
def tiny_model():
    """A LlavaNextModel with 8-wide layers but LLaVA-NeXT's 336 px tiles of 14 px patches."""
    torch = pytest.importorskip("torch")
    vision = transformers.CLIPVisionConfig(image_size=336, patch_size=14, hidden_size=8, intermediate_size=8,
                                           num_hidden_layers=1, num_attention_heads=1, projection_dim=8)
    text = transformers.LlamaConfig(hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1,
                                    num_key_value_heads=1, vocab_size=16)
    config = transformers.LlavaNextConfig(vision_config=vision, text_config=text, image_grid_pinpoints=PINPOINTS,
                                          vision_feature_select_strategy="default", vision_feature_layer=-1,
                                          image_token_id=3)
    torch.manual_seed(0)
    return transformers.LlavaNextModel(config).eval()


@pytest.mark.parametrize("height, width", [
    (480, 640), (640, 480), (100, 1000), (1000, 100), (1, 2000), (2000, 1), (1, 1), (336, 336), (999, 337),
    (672, 672), (1080, 1920), (5000, 200), (401, 1601), *_ULP_SIZES[:3],
])
def test_packing_plan_reproduces_pack_image_features(settings, tiny_model, height, width):
    torch = pytest.importorskip("torch")
    size = (height, width)
    generator = torch.Generator().manual_seed(height * 10007 + width)
    dim = 5
    features = torch.randn(num_tiles(size, settings), 24 * 24, dim, generator=generator)
    newline = torch.randn(dim, generator=generator)
    with torch.no_grad():
        packed, lengths = tiny_model.pack_image_features([features], torch.tensor([size]), "default", newline)
    plan = packing_plan(size, settings)
    assert plan.dtype == np.int64 and int(lengths[0]) == len(plan) == image_feature_count(size, settings)
    ours = np.where(plan[:, None] >= 0, features.reshape(-1, dim).numpy()[plan.clip(0)], newline.numpy())
    assert np.array_equal(ours, packed[0].numpy())
    assert np.array_equal(pack_features(features.reshape(-1, dim).numpy(), plan, newline.numpy()), ours)


def test_our_tiles_and_plan_give_the_models_image_features(processor, settings, tiny_model):
    """End to end: processor -> get_image_features equals our tiles -> vision tower -> our packing.

    Checks the tile order and the image_sizes convention together, with a batch whose tile counts
    differ so the processor pads and the model drops the padding.
    """
    torch = pytest.importorskip("torch")
    images = [_photo(640, 480, 5), _photo(300, 900, 6)]
    reference = processor(images=images, return_tensors="pt")
    with torch.no_grad():
        expected = tiny_model.get_image_features(reference["pixel_values"], reference["image_sizes"],
                                                 vision_feature_layer=-1,
                                                 vision_feature_select_strategy="default").pooler_output
        singles = [preprocess_anyres(image, settings) for image in images]
        # The same batch the model builds (all real tiles, in order), so the float results are identical.
        tiles = torch.from_numpy(np.concatenate([pixels for pixels, _ in singles]))
        hidden = tiny_model.vision_tower(tiles, output_hidden_states=True).hidden_states[-1][:, 1:]
        projected = tiny_model.multi_modal_projector(hidden).numpy()
    newline = tiny_model.image_newline.detach().numpy()
    start = 0
    for (pixels, size), want in zip(singles, expected):
        features = projected[start:start + len(pixels)].reshape(-1, projected.shape[-1])
        start += len(pixels)
        assert np.array_equal(pack_features(features, packing_plan(size, settings), newline), want.numpy())


# --------------------------------------------------------------------------------------------
# Settings: serialisation, errors


def test_to_dict_round_trips_through_json(settings):
    data = json.loads(json.dumps(settings.to_dict()))
    assert type(data["resample"]) is int
    assert AnyresPreprocess.from_dict(data) == settings


@pytest.mark.parametrize("field, value, problem", [
    ("grid_pinpoints", [], "non-empty"),
    ("grid_pinpoints", [[336, 500]], "multiple of tile_size"),
    ("grid_pinpoints", [[336]], "pairs"),
    ("grid_pinpoints", "336x672", "non-empty"),
    ("tile_size", 0, "positive integer"),
    ("tile_size", 336.0, "positive integer"),
    ("base_image", "pad_to_square", "one of"),
    ("resample", 9, "Pillow"),
    ("rescale_factor", -1.0, "positive number"),
    ("std", [0.5, 0.0, 0.5], "positive"),
    ("mean", None, "both be set"),
    ("pad_colour", [256, 0, 0], "0..255"),
    ("pad_colour", "black", "0..255"),
])
def test_from_dict_rejects_a_bad_field_naming_it(settings, field, value, problem):
    data = settings.to_dict()
    data[field] = value
    with pytest.raises(TransPruneError, match=problem) as info:
        AnyresPreprocess.from_dict(data)
    assert field in str(info.value)


@pytest.mark.parametrize("field, value, problem", [
    ("tile_size", 4097, "up to 4096"),
    ("grid_pinpoints", [[336 * 13, 336]], r"integers 1..4096, got \[4368, 336\]"),
    ("grid_pinpoints", [[336, 336 * 1000]], "integers 1..4096"),
    ("grid_pinpoints", [[336 * 9, 336 * 8]], "72 tiles of tile_size=336, more than the limit of 64 per image"),
    ("grid_pinpoints", [[336, 336]] * 257, "257 pinpoints, more than the limit of 256"),
])
def test_from_dict_refuses_a_grid_out_of_range(settings, field, value, problem):
    """Every number here sizes each image's canvas and tiles: a hostile manifest must not ask for gigabytes."""
    data = settings.to_dict()
    data[field] = value
    with pytest.raises(TransPruneError, match=problem) as info:
        AnyresPreprocess.from_dict(data)
    assert field in str(info.value) and "\n" not in str(info.value)
    # the largest grid allowed still loads: 8 x 8 tiles
    assert AnyresPreprocess.from_dict({**settings.to_dict(), "grid_pinpoints": [[2688, 2688]]}).max_tiles == 65


def _closed_image():
    image = Image.new("RGB", (8, 8))
    image.close()
    return image


@pytest.mark.parametrize("make, problem", [
    (lambda: None, r"no image was given \(None\)"),
    (lambda: Image.new("RGB", (0, 0)), r"has no pixels \(0x0\)"),
    (lambda: Image.new("RGB", (640, 0)), r"has no pixels \(640x0\)"),
    (_closed_image, "PIL image is closed"),
    (lambda: np.zeros((4, 4, 3), np.uint8), "not numpy.ndarray"),
    (lambda: 1.5, "not float"),
])
def test_a_value_that_is_not_an_image_raises_image_error(settings, make, problem):
    with pytest.raises(ImageError, match=problem):
        preprocess_anyres(make(), settings)


def test_an_image_over_the_pixel_limit_is_refused_before_decoding(settings, tmp_path, monkeypatch):
    from transprune.runtime import image_loading

    monkeypatch.setattr(image_loading, "MAX_IMAGE_PIXELS", 100 * 100)
    path = tmp_path / "photo.png"
    _photo(101, 100).save(path)
    for source in (path, _photo(101, 100)):
        with pytest.raises(ImageError, match="101x100 pixels .* is above the limit of 100x100"):
            preprocess_anyres(source, settings)


def test_from_dict_rejects_missing_and_unknown_fields(settings):
    data = settings.to_dict()
    with pytest.raises(TransPruneError, match="missing field.*'pad_colour'"):
        AnyresPreprocess.from_dict({k: v for k, v in data.items() if k != "pad_colour"})
    with pytest.raises(TransPruneError, match="unknown field.*'gamma'"):
        AnyresPreprocess.from_dict({**data, "gamma": 2.2})
    with pytest.raises(TransPruneError, match="JSON object"):
        AnyresPreprocess.from_dict([1, 2, 3])


@pytest.mark.parametrize("image_size", [(0, 10), (10,), (1.5, 2), "336x336", (True, 5)])
def test_a_bad_image_size_is_refused(settings, image_size):
    with pytest.raises(TransPruneError, match="image_size"):
        image_feature_count(image_size, settings)
    with pytest.raises(TransPruneError, match="image_size"):
        packing_plan(image_size, settings)


def test_bad_arguments_of_the_helpers_are_refused(settings):
    with pytest.raises(TransPruneError, match="patches_per_side"):
        packing_plan((480, 640), settings, patches_per_side=0)
    # more patches than pixels per tile side: the plan's arrays would grow with its square
    with pytest.raises(TransPruneError, match="patches_per_side must be an integer 1..tile_size=336"):
        packing_plan((480, 640), settings, patches_per_side=10**6)
    with pytest.raises(TransPruneError, match="no images"):
        pad_tile_batch([])
    with pytest.raises(TransPruneError, match="one tile shape"):
        pad_tile_batch([np.zeros((2, 3, 4, 4)), np.zeros((2, 3, 5, 5))])
    plan = packing_plan((480, 640), settings)
    with pytest.raises(TransPruneError, match="only 576 were given"):
        pack_features(np.zeros((576, 4)), plan, np.zeros(4))
    with pytest.raises(TransPruneError, match="newline"):
        pack_features(np.zeros((5 * 576, 4)), plan, np.zeros(3))


def test_the_module_imports_neither_torch_nor_transformers():
    code = ("import sys; import transprune.runtime.anyres; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, "
            "sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))")
    subprocess.run([sys.executable, "-c", code], check=True)
