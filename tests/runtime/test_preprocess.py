"""The torch-free preprocessing equals transformers' PIL-backend processors bit for bit.

The references are real ``CLIPImageProcessorPil`` / ``LlavaImageProcessorPil`` objects; the images
are seeded noise over gradients, so every interpolation and rounding difference would show.
"""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageOps

from transprune.errors import TransPruneError
from transprune.runtime import preprocess as preprocess_module
from transprune.runtime.preprocess import (
    ImageError,
    ImagePreprocess,
    load_image,
    preprocess,
)

transformers = pytest.importorskip("transformers")
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD  # noqa: E402

# The runtime's description of a real processor, as the exporter makes it (tested in tests/export).
from transprune.export.processor_settings import describe_image_processor  # noqa: E402

BICUBIC = Image.Resampling.BICUBIC


def _clip(**overrides):
    """The LLaVA-1.5 vision preprocessing (CLIP ViT-L/14-336), with ``overrides``."""
    kwargs = dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, resample=BICUBIC,
                  image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD)
    kwargs.update(overrides)
    return transformers.CLIPImageProcessorPil(**kwargs)


def _llava_pad(**overrides):
    kwargs = dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, resample=BICUBIC,
                  image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD, do_pad=True)
    kwargs.update(overrides)
    return transformers.LlavaImageProcessorPil(**kwargs)


def _reference(processor, images):
    return processor(images=images, return_tensors="np")["pixel_values"]


def _ours(processor, images):
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


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "P+transparency", "PA", "CMYK", "L"])
def test_other_colour_modes_match_transformers(mode, clip):
    image = _photo(120, 90, seed=11)
    if mode in ("RGBA", "LA", "PA"):
        alpha = Image.fromarray(np.tile(np.linspace(0, 255, 120, dtype=np.uint8), (90, 1)))
        image = image.convert(mode[:-1])
        image.putalpha(alpha)
    elif mode == "P+transparency":
        image = image.convert("P")
        image.info["transparency"] = int(np.asarray(image)[0, 0])
    else:
        image = image.convert(mode)
    rgb = load_image(image)
    assert rgb.mode == "RGB" and rgb.size == image.size
    assert np.array_equal(preprocess([rgb], describe_image_processor(clip)), _reference(clip, [image]))
    # Passing the original image loads it the same way.
    assert np.array_equal(preprocess([image], describe_image_processor(clip)), _reference(clip, [image]))


def test_transparency_is_composited_onto_white():
    image = Image.new("RGBA", (4, 2), (10, 20, 30, 0))
    image.putpixel((0, 0), (10, 20, 30, 255))
    pixels = np.asarray(load_image(image))
    assert pixels[0, 0].tolist() == [10, 20, 30]
    assert pixels[1, 3].tolist() == [255, 255, 255]


@pytest.mark.parametrize("mode", ["1", "I;16", "I", "F"])
def test_high_depth_and_bilevel_modes_load_as_rgb(mode):
    image = _photo(40, 30, seed=12, mode="L")
    if mode == "1":
        image = image.convert("1")
    elif mode == "I;16":
        image = Image.fromarray(np.asarray(image).astype(np.uint16) * 257)
    elif mode == "I":
        image = Image.fromarray(np.asarray(image).astype(np.int32) * 257)
    else:
        image = Image.fromarray(np.asarray(image).astype(np.float32) / 255)
    assert image.mode == mode
    rgb = load_image(image)
    assert rgb.mode == "RGB" and rgb.size == (40, 30)
    if mode != "1":
        # 16-bit samples map back onto the 8-bit values; floats are stretched to 0..255.
        gray = np.asarray(_photo(40, 30, seed=12, mode="L")).astype(np.float64)
        expected = gray if mode != "F" else (gray - gray.min()) * 255 / (gray.max() - gray.min())
        assert np.abs(np.asarray(rgb)[..., 0] - expected).max() <= 1


def test_a_16_bit_image_is_not_clipped_to_white():
    image = Image.fromarray(np.array([[0, 1000, 32768, 65535]], dtype=np.uint16))
    assert np.asarray(load_image(image))[0, :, 0].tolist() == [0, 4, 128, 255]


def test_the_first_frame_of_an_animated_image_is_used(tmp_path):
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert np.asarray(load_image(path))[0, 0].tolist() == [255, 0, 0]


# --------------------------------------------------------------------------------------------
# EXIF orientation


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_is_applied(tmp_path, fmt):
    path = tmp_path / f"photo.{fmt.lower()}"
    image = _photo(64, 32, seed=13)
    exif = image.getexif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to view
    image.save(path, format=fmt, exif=exif.tobytes())

    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == (32, 64)
    with Image.open(path) as raw:
        assert raw.size == (64, 32)
        assert np.array_equal(np.asarray(loaded), np.asarray(ImageOps.exif_transpose(raw).convert("RGB")))
        # transformers given the raw PIL image sees it sideways, which is what the transpose fixes.
        processor = _clip(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        assert not np.array_equal(_ours(processor, [path]), _reference(processor, [raw]))
    assert np.array_equal(load_image(path.read_bytes()), loaded)


# --------------------------------------------------------------------------------------------
# Errors


def _truncated_png(path):
    _photo(64, 64).save(path)
    path.write_bytes(path.read_bytes()[:200])


@pytest.mark.parametrize("make, problem", [
    (lambda p: None, "file not found"),
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: p.write_text("not an image"), "not an image format"),
    (_truncated_png, "truncated or corrupt"),
])
def test_unreadable_images_raise_image_error_naming_the_file(tmp_path, make, problem):
    path = tmp_path / "x.png"
    make(path)
    with pytest.raises(ImageError, match=problem) as info:
        load_image(path)
    assert str(path) in str(info.value)
    with pytest.raises(ImageError):
        preprocess([str(path)], describe_image_processor(_clip()))


def test_garbage_bytes_raise_image_error():
    with pytest.raises(ImageError, match="bytes of image data"):
        load_image(b"\x89PNG not really")


def test_a_decompression_bomb_raises_image_error(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    _photo(64, 64).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageError, match="too large"):
        load_image(path)


def _closed():
    image = Image.new("RGB", (4, 4))
    image.close()
    return image


@pytest.mark.parametrize("make, problem", [
    (lambda: None, r"no image was given \(None\)"),
    (lambda: Image.new("RGB", (0, 0)), r"has no pixels \(0x0\)"),
    (lambda: Image.new("RGBA", (3, 0)), r"has no pixels \(3x0\)"),
    (_closed, "the PIL image is closed; pass an open image"),
    (lambda: 7, "not int"),
    (lambda: np.zeros((2, 2, 3), np.uint8), r"not numpy.ndarray.*Image.fromarray"),
])
def test_a_value_that_is_not_an_image_raises_image_error(make, problem):
    for call in (load_image, lambda v: preprocess(v, describe_image_processor(_clip())),
                 lambda v: preprocess([v], describe_image_processor(_clip()))):
        with pytest.raises(ImageError, match=problem) as info:
            call(make())
        assert "\n" not in str(info.value)


def test_an_image_over_the_pixel_limit_is_refused_before_decoding(monkeypatch, tmp_path):
    path = tmp_path / "photo.png"
    _photo(64, 48).save(path)
    monkeypatch.setattr(preprocess_module, "MAX_IMAGE_PIXELS", 64 * 48 - 1)
    for source in (path, path.read_bytes(), Image.open(path), _photo(64, 48)):
        with pytest.raises(ImageError, match=r"64x48 pixels \(0.0 Mpx\) is above the limit of .*; downscale"):
            load_image(source)
        with pytest.raises(ImageError, match="is above the limit of"):
            preprocess([source], describe_image_processor(_clip()))


def test_files_and_bytes_over_the_size_limit_are_refused(monkeypatch, tmp_path):
    path = tmp_path / "photo.png"
    _photo(64, 48).save(path)
    size = path.stat().st_size
    monkeypatch.setattr(preprocess_module, "MAX_IMAGE_BYTES", size - 1)
    with pytest.raises(ImageError, match=f"the file is {size} bytes or more, above the {size - 1} bytes limit for "
                                         f"image files; downscale or recompress"):
        load_image(path)
    with pytest.raises(ImageError, match=f"<{size} bytes of image data>: more than the {size - 1} bytes limit"):
        load_image(path.read_bytes())
    monkeypatch.setattr(preprocess_module, "MAX_IMAGE_BYTES", size)
    assert load_image(path).size == (64, 48) and load_image(path.read_bytes()).size == (64, 48)


def test_a_plain_rgb_image_is_used_as_given_and_not_copied():
    image = _photo(40, 30)
    assert load_image(image) is image


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
