"""RegionFramer: re-frames each LNet face region, trained by the attribute tags only.

An extension of the paper's idea that localization can be learned from image-level
attribute tags (Sec. 2.1): LNet finds the face, but its box spreads by ~8 % of the
face height in position and ~18 % in size around the face's own frame, and ANet
reads the attributes by their position in the region (docs/training.md, "third
look"). The framer is a small spatial transformer: from a context crop around the
region (`context` x the region's side, resized to `context_size` px) it predicts a
shift (dy, dx, in region sides) and a log scale; the region is then re-cut at the
shifted, scaled square. The anet stage trains it jointly with ANet by the sigmoid
cross-entropy of the 40 tags, through a differentiable `crop_and_resize`
(`region_in_context`); no box is ever labelled.

Call arguments:
  context_crops: float [K, context_size, context_size, 3] (normalized images).
Returns:
  offsets float32 [K, 3]: (dy, dx) in region sides, bounded by `max_shift`, and the
  log scale, bounded by `max_log_scale` (tanh). Zero-initialised: an untrained
  framer keeps the region as it is.

`frame(image, regions, crop)` applies it to square pixel regions of one image, `passes`
times: each further pass re-frames the previous pass's region from a context crop around
it (a second look; trained with one pass; docs/training.md, "sixth look").
"""

import keras
import tensorflow as tf

from tfattr.data import preprocess

# The framer of every run trained before `anet.framer_filters` / `anet.framer_input_pool`.
DEFAULT_FILTERS = (24, 48, 64)
DEFAULT_INPUT_POOL = 2


@keras.saving.register_keras_serializable(package="tfattr")
class RegionFramer(keras.layers.Layer):
    """Predicts each face region's re-framing from a context crop around it.

    Args:
      context: side of the context crop over the region's side (> 1).
      context_size: pixels of the context crop's side.
      max_shift: bound of |dy|, |dx| in region sides.
      max_log_scale: bound of the |log scale|.
      units: width of the hidden Dense layer.
      passes: how many times `frame` applies the framer (>= 1; training uses one).
      filters: the three conv blocks' widths.
      input_pool: the average pooling that first downsamples the context crop (the framer
        only needs a coarse look; 4 = a quarter of the pixels of 2).
    """

    def __init__(self, context=1.75, context_size=112, max_shift=0.3, max_log_scale=0.5,
                 units=64, passes=1, filters=DEFAULT_FILTERS, input_pool=DEFAULT_INPUT_POOL,
                 **kwargs):
        super().__init__(**kwargs)
        if float(context) <= 1.0:
            raise ValueError(f"context must be > 1 (the crop holds the region), got {context!r}")
        if int(context_size) < 16:
            raise ValueError(f"context_size must be >= 16, got {context_size!r}")
        if float(max_shift) <= 0 or float(max_log_scale) <= 0:
            raise ValueError(f"max_shift and max_log_scale must be positive, got "
                             f"{max_shift!r}, {max_log_scale!r}")
        if int(passes) < 1 or int(passes) != passes:
            raise ValueError(f"passes must be an integer >= 1, got {passes!r}")
        filters = tuple(int(f) for f in filters)
        if len(filters) != 3 or min(filters) < 1:
            raise ValueError(f"filters must be three positive widths, got {filters!r}")
        if int(input_pool) < 1 or int(input_pool) != input_pool:
            raise ValueError(f"input_pool must be an integer >= 1, got {input_pool!r}")
        if int(context_size) // int(input_pool) < 8:
            raise ValueError(f"context_size // input_pool must be >= 8 (three 2x poolings), got "
                             f"{context_size!r} // {input_pool!r}")
        self.context = float(context)
        self.context_size = int(context_size)
        self.max_shift = float(max_shift)
        self.max_log_scale = float(max_log_scale)
        self.units = int(units)
        self.passes = int(passes)
        self.filters = filters
        self.input_pool = int(input_pool)
        self.pool = keras.layers.AveragePooling2D(self.input_pool, name="framer_pool0")
        self.blocks = []
        for i, width in enumerate(filters, 1):
            self.blocks.append((
                keras.layers.Conv2D(width, 3, padding="same", use_bias=False,
                                    name=f"framer_conv{i}"),
                keras.layers.BatchNormalization(name=f"framer_conv{i}_bn"),
                keras.layers.MaxPooling2D(2, name=f"framer_pool{i}")))
        self.flatten = keras.layers.Flatten(name="framer_flatten")
        # BN before the ReLU: Adam's normalised steps on a plain Dense + ReLU (3,136 inputs)
        # killed every unit within the anet stage, leaving a constant framer.
        self.hidden = keras.layers.Dense(self.units, use_bias=False, name="framer_fc")
        self.hidden_bn = keras.layers.BatchNormalization(name="framer_fc_bn")
        self.out = keras.layers.Dense(3, kernel_initializer="zeros", name="framer_offsets")

    def build(self, input_shape):
        shape = (None, self.context_size, self.context_size, 3)
        self.pool.build(shape)
        shape = self.pool.compute_output_shape(shape)
        for conv, bn, pool in self.blocks:
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            bn.build(shape)
            shape = pool.compute_output_shape(shape)
        self.flatten.build(shape)
        shape = self.flatten.compute_output_shape(shape)
        self.hidden.build(shape)
        self.hidden_bn.build((None, self.units))
        self.out.build((None, self.units))
        super().build(input_shape)

    def hidden_activations(self, context_crops, training=None):
        """The hidden layer's ReLU outputs [K, units]."""
        x = self.pool(context_crops)
        for conv, bn, pool in self.blocks:
            x = pool(tf.nn.relu(bn(conv(x), training=training)))
        return tf.nn.relu(self.hidden_bn(self.hidden(self.flatten(x)), training=training))

    def call(self, context_crops, training=None):
        raw = tf.cast(self.out(self.hidden_activations(context_crops, training)), tf.float32) * 0.1
        bound = tf.constant([self.max_shift, self.max_shift, self.max_log_scale], tf.float32)
        return bound * tf.tanh(raw / bound)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 3)

    def get_config(self):
        return {**super().get_config(), "context": self.context, "context_size": self.context_size,
                "max_shift": self.max_shift, "max_log_scale": self.max_log_scale,
                "units": self.units, "passes": self.passes, "filters": list(self.filters),
                "input_pool": self.input_pool}

    # ------------------------------------------------------------ geometry
    def context_boxes(self, regions):
        """Square pixel regions [K, 4] -> their context boxes [K, 4] (same centres)."""
        return preprocess.enlarge_box(regions, self.context)

    def frame(self, image, regions, crop=preprocess.crop_and_resize):
        """One normalized image [H, W, 3], square pixel regions [K, 4] -> re-framed regions
        [K, 4] (`reframe` of the framer's offsets on their context crops, `passes` times).
        `crop`: the crop function (`tfattr.layers.resample.crop_and_resize` for TFLite
        builtin ops)."""
        for _ in range(self.passes):
            crops = preprocess.crop_framed(image, self.context_boxes(regions), self.context_size,
                                           crop=crop)
            regions = reframe(regions, self(crops, training=False))
        return regions


def reframe(regions, offsets):
    """Square pixel regions [K, 4] moved by (dy, dx) region sides and scaled by exp(log scale)
    about the moved centre: the re-framed regions [K, 4]."""
    regions = tf.cast(regions, tf.float32)
    offsets = tf.cast(offsets, tf.float32)
    side = regions[:, 2] - regions[:, 0]
    cy = (regions[:, 0] + regions[:, 2]) / 2 + offsets[:, 0] * side
    cx = (regions[:, 1] + regions[:, 3]) / 2 + offsets[:, 1] * side
    half = side * tf.exp(offsets[:, 2]) / 2
    return tf.stack([cy - half, cx - half, cy + half, cx + half], axis=-1)


def region_in_context(offsets, context, side=1.0):
    """The re-framed region in `tf.image.crop_and_resize` coordinates of its context crop
    (0 and 1 = the crop's first and last samples): [K, 4]. Cropping the context crop there
    samples the same points as cropping the image at `reframe(region, offsets)`. `side` > 1:
    a window `side` x the re-framed region's side instead (the anet stage's jittered context
    crops, `anet.framer_jitter`)."""
    offsets = tf.cast(offsets, tf.float32)
    cy = 0.5 + offsets[:, 0] / context
    cx = 0.5 + offsets[:, 1] / context
    half = float(side) * tf.exp(offsets[:, 2]) / (2 * context)
    return tf.stack([cy - half, cx - half, cy + half, cx + half], axis=-1)


def crop_from_context(context_crops, offsets, context, size, side=1.0):
    """Context crops [B, C, C, 3] -> the re-framed regions [B, size, size, 3], differentiable
    in `offsets` (the anet stage's joint training); `side` > 1: windows that many times the
    re-framed region's side (`region_in_context`: the anet stage's jittered context crops)."""
    boxes = region_in_context(offsets, context, side)
    index = tf.range(tf.shape(context_crops)[0])
    return tf.image.crop_and_resize(context_crops, boxes, index, [size, size], method="bilinear",
                                    extrapolation_value=0.0)
