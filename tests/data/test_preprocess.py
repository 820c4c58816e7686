"""The antialiased face-region crop (`preprocess.crop_framed`, `crop_antialiased`)."""

import numpy as np
import pytest
import tensorflow as tf

from tfattr.data import preprocess
from tfattr.layers import resample

SIZE = 41


def _stripes(height=300, width=300):
    """Vertical 1-px stripes (+-0.8): all of their energy at the input's Nyquist rate."""
    x = np.arange(width)[np.newaxis, :, np.newaxis]
    return np.broadcast_to(np.where(x % 2 == 0, 0.8, -0.8), (height, width, 3)).astype(np.float32)


def _ramp(height=300, width=300):
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.stack([y * 0.003 - 0.3, x * 0.002 - 0.3, (y + x) * 0.001 - 0.5], -1)


def _box(pitch, top=20.0, left=20.0):
    """A square pixel box whose SIZE samples are `pitch` input pixels apart."""
    return tf.constant([[top, left, top + (SIZE - 1) * pitch, left + (SIZE - 1) * pitch]])


@pytest.mark.parametrize("pitch", [1.5, 2.5, 3.0, 3.7])
def test_antialiased_crop_removes_detail_finer_than_its_pitch(pitch):
    """A bilinear crop of Nyquist-rate stripes at a downscale keeps most of their contrast
    (aliased into a false pattern); the antialiased crop, like `tf.image.resize(antialias=
    True)`, leaves them a near-uniform grey."""
    stripes = _stripes()
    plain = preprocess.crop_framed(stripes, _box(pitch), SIZE, antialias=False).numpy()
    smooth = preprocess.crop_framed(stripes, _box(pitch), SIZE).numpy()
    assert plain.std() > 0.45
    assert smooth.std() < 0.15
    assert abs(smooth.mean()) < 0.05


def test_antialiased_crop_is_close_to_tf_resize_antialias_on_noise():
    """On white noise, downscaled 3x: the antialiased crop is nearer to TF's antialiased
    resize of the same window than the bilinear crop is (the same low-pass, not only less
    contrast)."""
    rng = np.random.default_rng(0)
    noise = rng.uniform(-1, 1, (300, 300, 3)).astype(np.float32)
    # resize's output pixel i of a 3 * SIZE window at row 20 is centred on row 20 + 1 + 3 i:
    # the crop samples the same points
    window = noise[20:20 + 3 * SIZE, 20:20 + 3 * SIZE]
    reference = tf.image.resize(window, [SIZE, SIZE], antialias=True).numpy()
    box = _box(3.0, top=21.0, left=21.0)
    plain = preprocess.crop_framed(noise, box, SIZE, antialias=False).numpy()[0]
    smooth = preprocess.crop_framed(noise, box, SIZE).numpy()[0]
    err_plain = np.abs(plain - reference).mean()
    err_smooth = np.abs(smooth - reference).mean()
    assert err_smooth < 0.5 * err_plain, (err_smooth, err_plain)
    # the same amount of smoothing: standard deviations within 25 %
    assert abs(smooth.std() / reference.std() - 1.0) < 0.25, (smooth.std(), reference.std())


@pytest.mark.parametrize("pitch", [0.6, 1.0, 2.0, 4.5])
def test_antialiased_crop_keeps_linear_images_and_upscales(pitch):
    """A symmetric low-pass leaves a linear image as it is (inside the image), and a crop
    whose samples are at most one pixel apart is the plain bilinear crop (to the rounding of
    the mean of 16 equal crops)."""
    ramp = _ramp()
    plain = preprocess.crop_framed(ramp, _box(pitch), SIZE, antialias=False).numpy()
    smooth = preprocess.crop_framed(ramp, _box(pitch), SIZE).numpy()
    np.testing.assert_allclose(smooth, plain, atol=1e-5)
    if pitch <= 1.0:
        stripes = _stripes()
        np.testing.assert_allclose(
            preprocess.crop_framed(stripes, _box(pitch), SIZE).numpy(),
            preprocess.crop_framed(stripes, _box(pitch), SIZE, antialias=False).numpy(),
            atol=1e-6)


def test_antialias_shifts_follow_each_box_and_axis():
    """Per box and axis: no shift at pitch <= 1, a footprint sqrt(2 (pitch^2 - 1)) beyond,
    the taps centred on the plain sample."""
    boxes = tf.constant([[0.0, 0.0, 40.0, 40.0], [0.0, 0.0, 120.0, 80.0], [5.0, 5.0, 5.0, 5.0]])
    shifts = preprocess.antialias_shifts(boxes, SIZE, taps=4).numpy()
    assert shifts.shape == (3, 16, 4)
    np.testing.assert_array_equal(shifts[0], 0.0)  # pitch 1
    np.testing.assert_array_equal(shifts[2], 0.0)  # an empty (padding) box
    dy, dx = shifts[1, :, 0], shifts[1, :, 1]
    np.testing.assert_array_equal(shifts[1, :, 2:], shifts[1, :, :2])  # boxes moved, not scaled
    for d, pitch in ((dy, 3.0), (dx, 2.0)):
        assert abs(d.mean()) < 1e-6
        np.testing.assert_allclose(d.max() - d.min(), np.sqrt(2 * (pitch ** 2 - 1)) * 3 / 4,
                                   rtol=1e-6)


def test_builtin_twin_gives_the_same_antialiased_crops():
    """The lite graph's crop (`resample.crop_and_resize`) through `crop_framed`: the same
    values as the TF op, boxes across the border included, eager and in a tf.function."""
    image = tf.random.uniform([90, 120, 3], -1, 1, seed=7)
    boxes = tf.constant([[10.0, 20.0, 80.0, 90.0], [-15.0, 60.0, 95.0, 170.0],
                         [30.0, 30.0, 50.0, 50.0]])
    expected = preprocess.crop_framed(image, boxes, 24).numpy()
    got = preprocess.crop_framed(image, boxes, 24, crop=resample.crop_and_resize).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)  # float rounding of the twins
    graph = tf.function(lambda i, b: preprocess.crop_framed(i, b, 24, crop=resample.crop_and_resize))
    np.testing.assert_allclose(graph(image, boxes).numpy(), expected, atol=1e-4)
    assert got.shape == (3, 24, 24, 3)


def test_uint8_images_and_empty_box_lists():
    image = np.random.default_rng(1).integers(0, 256, (50, 60, 3), dtype=np.uint8)
    boxes = tf.constant([[0.0, 0.0, 49.0, 59.0]])
    np.testing.assert_allclose(preprocess.crop_framed(image, boxes, 16).numpy(),
                               preprocess.crop_framed(preprocess.normalize(image), boxes, 16).numpy(),
                               atol=1e-6)
    none = preprocess.crop_framed(image, tf.zeros([0, 4]), 16)
    assert none.shape == (0, 16, 16, 3)
