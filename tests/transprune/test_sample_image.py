import numpy as np

from transprune.sample_image import sample_image, sample_images


def test_size_and_mode():
    img = sample_image()
    assert img.mode == "RGB" and img.size == (480, 360)
    img = sample_image(width=123, height=77, seed=5)
    assert img.mode == "RGB" and img.size == (123, 77)


def test_deterministic():
    a, b = np.asarray(sample_image(seed=3)), np.asarray(sample_image(seed=3))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, np.asarray(sample_image(seed=4)))


def test_sample_images_differ_in_size_and_aspect():
    imgs = sample_images()
    assert [im.size for im in imgs] == [(480, 360), (300, 500), (336, 336)]
    assert all(im.mode == "RGB" for im in imgs)
    again = sample_images()
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(imgs, again))


def test_has_structure():
    px = np.asarray(sample_image()).astype(float)
    sky, ground = px[:40].mean(axis=(0, 1)), px[-40:].mean(axis=(0, 1))
    assert sky[2] > sky[1] and ground[1] > ground[2]  # blue sky above, green hills below
    # 24 x 24 blocks: all different, and varied well beyond the noise (std 6 per pixel)
    blocks = px[:336, :336].reshape(14, 24, 14, 24, 3).mean(axis=(1, 3)).reshape(-1, 3)
    assert len(np.unique(blocks, axis=0)) == 14 * 14
    assert blocks.std(axis=0).min() > 20
