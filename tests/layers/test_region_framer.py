"""RegionFramer: geometry equals cutting the image at the re-framed box; the tag loss reaches it."""

import numpy as np
import pytest
import tensorflow as tf

from tfattr.data import preprocess
from tfattr.layers import resample
from tfattr.layers.region_framer import (RegionFramer, crop_from_context, reframe,
                                         region_in_context)
from tests.layers.layer_contract import check_config_round_trip, check_symbolic_shape


def _ramp_image(h=150, w=170):
    """A linear image: bilinear resampling of it is exact, so a crop of a crop equals one crop."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([y / h - 0.5, x / w - 0.5, (y + x) / (h + w) - 0.5], -1)


def _random_out_layer(framer, seed=0):
    rng = np.random.default_rng(seed)
    kernel, bias = framer.out.get_weights()
    framer.out.set_weights([rng.normal(0, 0.05, kernel.shape).astype(np.float32),
                            rng.normal(0, 1.0, bias.shape).astype(np.float32)])


def test_contract_and_zero_init_keeps_the_regions():
    framer = RegionFramer(context=1.5, context_size=48, name="framer")
    check_config_round_trip(framer)
    check_symbolic_shape(framer, (2, 48, 48, 3))
    crops = tf.random.uniform([4, 48, 48, 3], -1, 1, seed=1)
    np.testing.assert_array_equal(framer(crops).numpy(), 0.0)
    regions = tf.constant([[10.0, 20.0, 50.0, 60.0], [0.0, 0.0, 0.0, 0.0]])
    image = tf.constant(_ramp_image())
    np.testing.assert_allclose(framer.frame(image, regions).numpy(), regions.numpy(), atol=1e-5)
    for bad in (dict(context=1.0), dict(context_size=8), dict(max_shift=0.0), dict(passes=0),
                dict(passes=1.5), dict(filters=(8, 16)), dict(filters=(8, 0, 16)),
                dict(input_pool=0), dict(context_size=28, input_pool=4)):
        with pytest.raises(ValueError):
            RegionFramer(**bad)


def test_lighter_framer_widths_and_pooling():
    """`filters` and `input_pool` (anet.framer_filters / anet.framer_input_pool) size the
    framer: a coarser, narrower look at the same context crop, same offsets contract."""
    default = RegionFramer(context=1.75, context_size=112)
    light = RegionFramer(context=1.75, context_size=112, filters=(16, 32, 32), input_pool=4)
    check_config_round_trip(light)
    check_symbolic_shape(light, (2, 112, 112, 3))
    default.build((None, 112, 112, 3))
    # 112 / 4 / 2 / 2 / 2 = 3 (floor): a 3 x 3 x 32 map feeds the hidden layer (7 x 7 x 64 for
    # the default's 112 / 2 / 2 / 2 / 2)
    assert light.hidden.kernel.shape == (3 * 3 * 32, 64)
    assert default.hidden.kernel.shape == (7 * 7 * 64, 64)
    assert [conv.filters for conv, _, _ in light.blocks] == [16, 32, 32]
    assert light.count_params() < default.count_params() / 3
    _random_out_layer(light)
    offsets = light(tf.random.uniform([3, 112, 112, 3], -1, 1, seed=2)).numpy()
    assert offsets.shape == (3, 3) and np.all(np.abs(offsets[:, :2]) <= light.max_shift)


def test_offsets_are_bounded():
    framer = RegionFramer(context=1.75, context_size=32, max_shift=0.2, max_log_scale=0.3)
    framer.build((None, 32, 32, 3))
    kernel, bias = framer.out.get_weights()
    framer.out.set_weights([kernel, np.array([1e3, -1e3, 1e3], np.float32)])
    offsets = framer(tf.zeros([1, 32, 32, 3])).numpy()[0]
    np.testing.assert_allclose(offsets, [0.2, -0.2, 0.3], rtol=1e-5)


def test_crop_from_context_equals_cutting_the_image_at_the_reframed_box():
    """The anet stage trains on crops of context crops; serving cuts the image at `reframe`:
    the same sample points (exact on a linear image, where bilinear resampling is exact)."""
    context, region_size = 1.75, 24
    image = tf.constant(_ramp_image())
    regions = tf.constant([[40.0, 50.0, 80.0, 90.0], [55.0, 60.0, 85.0, 90.0]])
    offsets = tf.constant([[0.1, -0.2, 0.3], [-0.25, 0.15, -0.4]])
    framer = RegionFramer(context=context, context_size=42)
    contexts = preprocess.crop_framed(image, framer.context_boxes(regions), 42)
    from_context = crop_from_context(contexts, offsets, context, region_size).numpy()
    direct = preprocess.crop_framed(image, reframe(regions, offsets), region_size).numpy()
    np.testing.assert_allclose(from_context, direct, atol=1e-5)
    # zero offsets: the region itself, centred in its context crop
    np.testing.assert_allclose(region_in_context(tf.zeros([1, 3]), context).numpy(),
                               [[0.5 - 0.5 / context, 0.5 - 0.5 / context,
                                 0.5 + 0.5 / context, 0.5 + 0.5 / context]], atol=1e-7)


def test_a_window_of_a_larger_context_crop_is_the_moved_regions_context_crop():
    """`crop_from_context(side=)` (the anet stage's `framer_jitter`): the window `side` x the
    moved region's side, cut from a crop `outer` x the region's side, samples the points of the
    moved region's own context crop (exact on a linear image)."""
    context, outer, size = 1.75, 2.2, 42
    image = tf.constant(_ramp_image())
    regions = tf.constant([[40.0, 50.0, 80.0, 90.0], [55.0, 60.0, 85.0, 90.0]])
    moves = tf.constant([[0.1, -0.1, 0.1], [-0.08, 0.05, -0.1]])
    framer = RegionFramer(context=context, context_size=size)
    outer_crops = preprocess.crop_framed(image, preprocess.enlarge_box(regions, outer), 55)
    window = crop_from_context(outer_crops, moves, outer, size, side=context).numpy()
    direct = preprocess.crop_framed(image, framer.context_boxes(reframe(regions, moves)),
                                    size).numpy()
    np.testing.assert_allclose(window, direct, atol=1e-5)


def test_frame_with_builtin_crop_equals_frame_with_tf_crop():
    framer = RegionFramer(context=1.75, context_size=56)
    framer.build((None, 56, 56, 3))
    _random_out_layer(framer)
    image = tf.random.uniform([90, 120, 3], -1, 1, seed=3)
    regions = tf.constant([[10.0, 20.0, 50.0, 60.0], [-5.0, 70.0, 45.0, 120.0]])
    plain = framer.frame(image, regions).numpy()
    builtin = framer.frame(image, regions, crop=resample.crop_and_resize).numpy()
    np.testing.assert_allclose(builtin, plain, atol=1e-3)
    assert np.abs(plain - regions.numpy()).max() > 1.0  # it did move them


def test_two_passes_reframe_the_first_pass_regions():
    """`passes=2` (anet.framer_passes): the second pass re-frames, from a context crop around
    it, the region the first pass gave (the same weights), in both crop functions."""
    once = RegionFramer(context=1.75, context_size=56)
    once.build((None, 56, 56, 3))
    _random_out_layer(once, seed=1)
    twice = RegionFramer.from_config({**once.get_config(), "passes": 2})
    twice.build((None, 56, 56, 3))
    twice.set_weights(once.get_weights())
    assert twice.passes == 2
    image = tf.random.uniform([90, 120, 3], -1, 1, seed=5)
    regions = tf.constant([[10.0, 20.0, 50.0, 60.0], [-5.0, 70.0, 45.0, 120.0]])
    for crop in (preprocess.crop_and_resize, resample.crop_and_resize):
        first = once.frame(image, regions, crop=crop)
        np.testing.assert_allclose(twice.frame(image, regions, crop=crop).numpy(),
                                   once.frame(image, first, crop=crop).numpy(), atol=1e-4)
    assert np.abs(once.frame(image, first).numpy() - first.numpy()).max() > 1.0  # it moved again


def test_the_attribute_loss_reaches_the_framer():
    """Gradients of a loss on the cut regions reach the framer's output layer from its zero
    start (the anet stage's joint training)."""
    framer = RegionFramer(context=1.75, context_size=28)
    ramp = _ramp_image(28, 28)
    noise = np.random.default_rng(0).normal(0, 0.1, ramp.shape).astype(np.float32)
    contexts = tf.constant(np.stack([ramp, ramp + noise]))
    with tf.GradientTape() as tape:
        regions = crop_from_context(contexts, framer(contexts, training=True), 1.75, 16)
        loss = tf.reduce_sum(regions[..., 0])  # brighter lower rows: the loss wants a shift
    grads = dict(zip([v.path.split("/", 1)[1] for v in framer.trainable_variables],
                     tape.gradient(loss, framer.trainable_variables)))
    assert np.abs(np.asarray(grads["framer_offsets/bias"])).max() > 0
    assert np.abs(np.asarray(grads["framer_offsets/kernel"])).max() > 0


def test_framer_keeps_reading_the_crop_under_adam():
    """Adam's normalised steps (anet's 2e-3) on the framer's 3,136-input hidden layer killed
    every ReLU of a plain Dense + ReLU within the anet stage (a constant framer, measured);
    batch norm before the ReLU keeps it reading the crop."""
    import keras

    keras.utils.set_random_seed(0)
    framer = RegionFramer(context=1.75, context_size=112)
    inputs = keras.Input((112, 112, 3))
    model = keras.Model(inputs, framer(inputs))
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="mse")
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (64, 112, 112, 3)).astype(np.float32)
    y = rng.normal(0, 0.05, (64, 3)).astype(np.float32)  # offsets unrelated to the input
    model.fit(x, y, epochs=30, batch_size=16, verbose=0)
    hidden = framer.hidden_activations(tf.constant(x[:32])).numpy()
    assert (hidden.max(0) > 0).mean() > 0.5  # most units alive
    assert framer(tf.constant(x[:32])).numpy().std(0).min() > 0  # not constant
