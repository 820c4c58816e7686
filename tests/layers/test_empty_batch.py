"""A zero-size batch (no face, no valid proposal) through the conv stacks.

On this machine's TensorFlow (oneDNN CPU kernels) a conv2d of a zero-size batch
returns its INPUT's shape; `call_on_nonempty_batch` keeps the stacks correct.
"""

import keras
import numpy as np
import tensorflow as tf

from tfattr.layers import InterweavedANet
from tfattr.layers.empty_batch import call_on_nonempty_batch
from tfattr.models import build_anet
from tfattr.presets import get_preset


def _conv_stack():
    keras.utils.set_random_seed(3)
    return keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(16, 3, padding="same"),
                             keras.layers.BatchNormalization(), keras.layers.Conv2D(5, 3)])


def test_empty_batch_has_the_output_shape_and_others_are_unchanged():
    stack = _conv_stack()
    run = tf.function(lambda x: call_on_nonempty_batch(lambda y: stack(y, training=False), x),
                      input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32)])
    assert run(tf.zeros([0, 8, 8, 3])).shape == (0, 6, 6, 5)
    x = tf.random.stateless_normal([3, 8, 8, 3], seed=[1, 2])
    np.testing.assert_array_equal(run(x).numpy(), stack(x, training=False).numpy())
    # eager, and a nest of outputs
    out = call_on_nonempty_batch(lambda y: {"a": stack(y), "b": y[:, 0, 0, :]}, tf.zeros([0, 8, 8, 3]))
    assert out["a"].shape == (0, 6, 6, 5) and out["b"].shape == (0, 3)


def test_interweaved_anet_of_no_region_is_an_empty_feature_batch():
    preset = get_preset("tiny")
    anet = build_anet(**preset.anet)
    layer = InterweavedANet(anet, preset.patch_size, preset.patch_stride)
    size = preset.face_region_size
    features = tf.function(layer)(tf.zeros([0, size, size, 3]))
    assert features.shape == (0, layer.num_patches, preset.anet["fc_units"])
