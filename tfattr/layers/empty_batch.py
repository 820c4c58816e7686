"""Zero-size batches through conv stacks (no face found, no valid proposal).

TensorFlow 2.21's oneDNN CPU convolution (the default on x86; measured on an
AVX-512/AMX Xeon, 2026-11-29) returns a tensor shaped like its INPUT for a
zero-size batch: `tf.nn.conv2d(zeros [0, 8, 8, 3], kernel [3, 3, 3, 16])` has
shape [0, 8, 8, 3], and the next layer then fails on the channel count
(`TF_ENABLE_ONEDNN_OPTS=0` gives [0, 8, 8, 16]). Every conv stack that can be
handed no image goes through `call_on_nonempty_batch`.
"""

import tensorflow as tf


def call_on_nonempty_batch(fn, images):
    """fn(images), with a zero-size batch padded to one zero image and the outputs
    (any nest of tensors) sliced back to the batch size.

    A batch whose static size is known and positive is passed through unchanged
    (the TFLite graphs keep their static shapes); otherwise one zero image is
    appended only when the batch is empty, so a non-empty batch costs one concat.
    """
    static = images.shape[0]
    if static is not None and static > 0:
        return fn(images)
    n = tf.shape(images)[0]
    pad_shape = tf.concat([[tf.maximum(1 - n, 0)], tf.shape(images)[1:]], axis=0)
    padded = tf.concat([images, tf.zeros(pad_shape, images.dtype)], axis=0)
    return tf.nest.map_structure(lambda t: t[:n], fn(padded))
