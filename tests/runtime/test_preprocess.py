"""The torch-free preprocessing equals transformers' PIL-backend processors bit for bit.

The references are real ``CLIPImageProcessorPil`` / ``LlavaImageProcessorPil`` objects; the images
are seeded noise over gradients, so every interpolation and rounding difference would show. Loading
(colour modes, EXIF, unreadable images) is tested in test_image_loading.py.
"""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from transprune.errors import TransPruneError
from transprune.runtime.image_loading import ImageError, load_image
from transprune.runtime.preprocess import ImagePreprocess, preprocess

from .conftest import BICUBIC, _clip, _ours, _photo, _reference

transformers = pytest.importorskip("transformers")
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD  # noqa: E402

# The runtime's description of a real processor, as the exporter makes it (tested in tests/export).
from transprune.export.processor_settings import describe_image_processor  # noqa: E402


def _llava_pad(**overrides):
    kwargs = dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, resample=BICUBIC,
                  image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD, do_pad=True)
    kwargs.update(overrides)
    return transformers.LlavaImageProcessorPil(**kwargs)


@pytest.fixture(scope="module")
def llava_pad():
    return _llava_pad()


# --------------------------------------------------------------------------------------------
# Bit-exact against transformers


@pytest.mark.parametrize("size", [(640, 480), (300, 500), (20, 10), (336, 336), (337, 999)])
@pytest.mark.parametrize("reference", ["clip", "llava_pad"])
def test_matches_transformers_bit_for_bit(size, reference, request):
    processor = request.getfixturevalue(reference)
    image = _photo(*size, seed=sum(size))
    ours = _ours(processor, [image])
    assert ours.dtype == np.float32 and ours.shape == (1, 3, 336, 336)
    assert np.array_equal(ours, _reference(processor, [image]))


def test_a_batch_of_different_sizes_matches(clip, llava_pad):
    images = [_photo(640, 480, 1), _photo(300, 500, 2), _photo(20, 10, 3), _photo(337, 999, 4)]
    for processor in (clip, llava_pad):
        ours = _ours(processor, images)
        assert ours.shape == (4, 3, 336, 336)
        assert np.array_equal(ours, _reference(processor, images))


def test_pad_to_square_with_an_odd_remainder_matches(llava_pad):
    images = [_photo(401, 200, 14), _photo(200, 401, 15), _photo(5, 2, 16)]
    assert np.array_equal(_ours(llava_pad, images), _reference(llava_pad, images))


def test_pad_to_square_uses_the_truncated_mean_colour(llava_pad):
    config = describe_image_processor(llava_pad)
    assert config.pad_to_square == [122, 116, 104]
    # A wide image keeps its full width, so the top rows are pure background.
    top_row = preprocess([_photo(400, 100)], config)[0, :, 0, :]
    background = (np.array([122, 116, 104]) / 255 - np.array(OPENAI_CLIP_MEAN)) / np.array(OPENAI_CLIP_STD)
    assert np.allclose(top_row, background[:, None].astype(np.float32), atol=1e-6)


@pytest.mark.parametrize("shortest_edge, crop, size", [
    (32, {"height": 49, "width": 40}, (50, 30)),  # rows zero-padded (odd shortfall), columns cropped
    (20, {"height": 33, "width": 31}, (20, 20)),  # both axes zero-padded
    (16, {"height": 15, "width": 30}, (17, 40)),  # columns padded, rows cropped
])
def test_a_crop_larger_than_the_resized_image_is_zero_padded_like_transformers(shortest_edge, crop, size):
    processor = _clip(size={"shortest_edge": shortest_edge}, crop_size=crop)
    image = _photo(*size, seed=7)
    ours = _ours(processor, [image])
    assert ours.shape == (1, 3, crop["height"], crop["width"])
    assert np.array_equal(ours, _reference(processor, [image]))


def test_a_fixed_height_and_width_resize_without_crop_matches():
    processor = _clip(size={"height": 224, "width": 300}, do_center_crop=False)
    config = describe_image_processor(processor)
    assert config.output_size == [224, 300]
    images = [_photo(640, 480, 5), _photo(31, 77, 6)]
    assert np.array_equal(preprocess(images, config), _reference(processor, images))


@pytest.mark.parametrize("flags", [
    {"do_normalize": False},
    {"do_rescale": False},
    {"do_rescale": False, "do_normalize": False},
    {"do_resize": False},
    {"resample": Image.Resampling.BILINEAR},
    {"resample": Image.Resampling.LANCZOS},
    {"resample": Image.Resampling.NEAREST},
])
def test_each_step_switched_or_varied_still_matches(flags):
    processor = _clip(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}, **flags)
    images = [_photo(97, 81, 8), _photo(50, 120, 9)]
    ours = _ours(processor, images)
    assert ours.dtype == np.float32
    assert np.array_equal(ours, _reference(processor, images))


# --------------------------------------------------------------------------------------------
# Images too elongated to resize whole (issue 19): refused from their sizes, with the fix

_REFUSED_RESIZE = (r"would be resized to {resized} \({mpx} Mpx\) before the center crop, above the limit of "
                   r"4096x4096 \(16.8 Mpx\); crop the image to a less extreme aspect ratio \(at most about {aspect}:1\)$")


@pytest.mark.parametrize("width, height, resized, mpx", [
    (1, 3000, "336x1008000", "338.7"),  # the reported case: 339 Mpx before the 336 x 336 crop
    (3000, 1, "1008000x336", "338.7"),
    (1, 20000, "336x6720000", "2257.9"),
    (5, 3001, "336x201667", "67.8"),
    (1, 149, "336x50064", "16.8"),  # just outside the aspect limit
])
def test_an_image_too_elongated_to_resize_is_refused_from_its_size(width, height, resized, mpx):
    config = describe_image_processor(_clip())
    message = _REFUSED_RESIZE.format(resized=resized, mpx=mpx, aspect=148)
    with pytest.raises(ImageError, match=rf"^image photo.png: {width}x{height} pixels {message}"):
        config.check_image_size(height, width, "photo.png")
    # the same from preprocess, before a pixel is resized
    with pytest.raises(ImageError, match=message):
        preprocess([Image.new("RGB", (width, height))], config)


@pytest.mark.parametrize("resample", [BICUBIC, Image.Resampling.NEAREST])
def test_the_most_elongated_image_within_the_limit_matches_transformers(resample):
    """1 x 148 resizes to 336 x 49728 (16.7 Mpx, just inside 16.8): made whole, as transformers makes it;
    1 x 149 (336 x 50064) is refused. The limit is the same for every filter."""
    processor = _clip(resample=resample)
    config = describe_image_processor(processor)
    for width, height in ((1, 148), (148, 1), (2, 297)):
        image = _photo(width, height, seed=width + height)
        assert np.array_equal(preprocess([image], config), _reference(processor, [image])), (width, height)
    for width, height in ((1, 149), (149, 1)):
        with pytest.raises(ImageError, match="at most about 148:1"):
            preprocess([_photo(width, height)], config)


def test_the_aspect_limit_follows_the_resize_edge():
    """The ratio in the message is the limit divided by the edge squared: 334:1 at 224 px."""
    config = describe_image_processor(_clip(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}))
    config.check_image_size(334, 1)  # 224 x 74816: 16.76 Mpx
    config.check_image_size(1, 334)
    with pytest.raises(ImageError, match=r"1x335 pixels would be resized to 224x75040 .*at most about 334:1\)$"):
        config.check_image_size(335, 1)


def test_padding_to_a_square_is_bounded(llava_pad):
    config = describe_image_processor(llava_pad)
    config.check_image_size(3024, 4032)  # a phone photo: a 4032 x 4032 canvas
    config.check_image_size(3000, 1)
    with pytest.raises(ImageError, match=r"1x20000 pixels would be padded to a 20000x20000 square \(400.0 Mpx\), "
                                         r"above the limit of 8192x8192 \(67.1 Mpx\); crop the image"):
        config.check_image_size(20000, 1)
    with pytest.raises(ImageError, match="20000x1 pixels would be padded"):
        preprocess([Image.new("RGB", (20000, 1))], config)


def test_sizes_are_checked_from_the_header_before_decoding(tmp_path):
    """load_image's check_size sees the header's size first: a refusal there costs no decoding (this
    file holds no pixels, so decoding it would fail differently)."""
    path = tmp_path / "strip.png"
    Image.new("RGB", (1, 20000)).save(path)
    path.write_bytes(path.read_bytes()[:60])  # header only
    seen = []

    def refuse(height, width, name):
        seen.append((height, width, name))
        raise ImageError("refused from the header")

    with pytest.raises(ImageError, match="refused from the header"):
        load_image(path, check_size=refuse)
    assert seen == [(20000, 1, str(path))]
    pad = describe_image_processor(_llava_pad())
    with pytest.raises(ImageError, match="padded to a 20000x20000 square"):
        preprocess([path], pad)


def test_images_of_different_output_sizes_cannot_be_batched():
    config = describe_image_processor(_clip(do_center_crop=False))
    with pytest.raises(TransPruneError, match="different sizes"):
        preprocess([_photo(40, 30), _photo(30, 40)], config)
    with pytest.raises(TransPruneError, match="depends on each image"):
        config.output_size


# --------------------------------------------------------------------------------------------
# ImagePreprocess serialisation


def test_to_dict_round_trips_through_json(clip, llava_pad):
    for config in (describe_image_processor(clip), describe_image_processor(llava_pad)):
        data = json.loads(json.dumps(config.to_dict()))
        assert type(data["resample"]) is int
        assert ImagePreprocess.from_dict(data) == config


def test_output_size(clip, llava_pad):
    assert describe_image_processor(clip).output_size == [336, 336]
    no_crop = dataclasses.replace(describe_image_processor(llava_pad), center_crop=None)
    assert no_crop.output_size == [336, 336]


@pytest.mark.parametrize("field, value", [
    ("resample", "3"),
    ("resample", 9),
    ("resample", True),
    ("resize", {"longest_edge": 500}),
    ("resize", {"shortest_edge": 0}),
    ("resize", [336, 336]),
    ("center_crop", [336]),
    ("center_crop", [336.0, 336]),
    ("pad_to_square", [300, 0, 0]),
    ("rescale_factor", "1/255"),
    ("rescale_factor", -1.0),
    ("mean", [0.5, 0.5]),
    ("std", [0.5, 0.0, 0.5]),
    ("mean", None),
])
def test_from_dict_rejects_a_mistyped_field(clip, field, value):
    data = describe_image_processor(clip).to_dict()
    data[field] = value
    with pytest.raises(TransPruneError, match="'mean' and 'std'" if field == "mean" and value is None else field):
        ImagePreprocess.from_dict(data)


@pytest.mark.parametrize("field, value", [
    ("center_crop", [50000, 50000]),  # 7.5 GB of uint8 and 28 GiB of float32 per image
    ("center_crop", [336, 4097]),
    ("center_crop", [0, 336]),
    ("resize", {"shortest_edge": 4097}),
    ("resize", {"height": 336, "width": 100_000}),
])
def test_from_dict_refuses_a_size_out_of_range(clip, field, value):
    data = describe_image_processor(clip).to_dict()
    data[field] = value
    with pytest.raises(TransPruneError, match=f"'{field}'.*1..4096"):
        ImagePreprocess.from_dict(data)
    data[field] = [4096, 4096] if field == "center_crop" else {"height": 4096, "width": 4096}
    assert getattr(ImagePreprocess.from_dict(data), field) == data[field]


def test_from_dict_rejects_missing_and_unknown_fields(clip):
    data = describe_image_processor(clip).to_dict()
    with pytest.raises(TransPruneError, match="missing field.*'std'"):
        ImagePreprocess.from_dict({k: v for k, v in data.items() if k != "std"})
    with pytest.raises(TransPruneError, match="unknown field.*'gamma'"):
        ImagePreprocess.from_dict({**data, "gamma": 2.2})
    with pytest.raises(TransPruneError, match="JSON object"):
        ImagePreprocess.from_dict([1, 2, 3])


def test_the_module_imports_neither_torch_nor_transformers():
    code = ("import sys; import transprune.runtime.preprocess; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, "
            "sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))")
    subprocess.run([sys.executable, "-c", code], check=True)
