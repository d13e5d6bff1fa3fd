"""Images load as transformers' PIL backend sees them: RGB from every colour mode, upright by their
EXIF orientation, and refused with an ImageError naming the problem when they cannot be used.

The references are real ``CLIPImageProcessorPil`` objects (see conftest.py).
"""

import numpy as np
import pytest
from PIL import Image, ImageOps

from transprune.runtime import image_loading
from transprune.runtime.image_loading import ImageError, load_image
from transprune.runtime.preprocess import preprocess

from .conftest import _clip, _ours, _photo, _reference

pytest.importorskip("transformers")

# The runtime's description of a real processor, as the exporter makes it (tested in tests/export).
from transprune.export.processor_settings import describe_image_processor  # noqa: E402


# --------------------------------------------------------------------------------------------
# Colour modes and frames


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
    monkeypatch.setattr(image_loading, "MAX_IMAGE_PIXELS", 64 * 48 - 1)
    for source in (path, path.read_bytes(), Image.open(path), _photo(64, 48)):
        with pytest.raises(ImageError, match=r"64x48 pixels \(0.0 Mpx\) is above the limit of .*; downscale"):
            load_image(source)
        with pytest.raises(ImageError, match="is above the limit of"):
            preprocess([source], describe_image_processor(_clip()))


def test_files_and_bytes_over_the_size_limit_are_refused(monkeypatch, tmp_path):
    path = tmp_path / "photo.png"
    _photo(64, 48).save(path)
    size = path.stat().st_size
    monkeypatch.setattr(image_loading, "MAX_IMAGE_BYTES", size - 1)
    with pytest.raises(ImageError, match=f"the file is {size} bytes or more, above the {size - 1} bytes limit for "
                                         f"image files; downscale or recompress"):
        load_image(path)
    with pytest.raises(ImageError, match=f"<{size} bytes of image data>: more than the {size - 1} bytes limit"):
        load_image(path.read_bytes())
    monkeypatch.setattr(image_loading, "MAX_IMAGE_BYTES", size)
    assert load_image(path).size == (64, 48) and load_image(path.read_bytes()).size == (64, 48)


def test_a_plain_rgb_image_is_used_as_given_and_not_copied():
    image = _photo(40, 30)
    assert load_image(image) is image
