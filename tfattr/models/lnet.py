"""LNet_o / LNet_s: the localization networks (paper Sec. 2.1).

AlexNet-like, fully convolutional: C1 (96@11x11/4, valid), max pool 3/2,
C2 (256@5x5, same), max pool 3/2, C3 (384@3x3), C4 (384@3x3), C5 (256@3x3)
(same padding) in the `paper` preset; every size is a `build_lnet` kwarg. LRN
and AlexNet's two-GPU filter groups are omitted. Any input H, W works.

Outputs `{"features": ReLU(C5) [B,h,w,C], "response_map": mean_c ReLU(C5) [B,h,w]}`
(the averaged response map that localizes faces, Fig. 1/3).
`LNetClassifier` adds the pre-training / fine-tuning head (global average or
log-sum-exp pool + Dense logits), dropped at inference. `build_box_head` is LNet_s'
optional self-trained box regressor (docs/localization.md, eighth pass).
`response_map_geometry` maps response-map cells to input pixels.
"""

import copy
import dataclasses

import keras
import numpy as np

FEATURES = "features"
RESPONSE_MAP = "response_map"
_NUM_STAGES = 5


@keras.saving.register_keras_serializable(package="tfattr")
class ChannelMean(keras.layers.Layer):
    """Mean over the last axis: [B, h, w, C] -> [B, h, w] (the response map)."""

    def call(self, inputs):
        return keras.ops.mean(inputs, axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1])


def build_lnet(name="lnet", stagewise_filters=(96, 256, 384, 384, 256),
               stagewise_kernel_sizes=(11, 5, 3, 3, 3), stagewise_strides=(4, 1, 1, 1, 1),
               stagewise_padding=("valid", "same", "same", "same", "same"),
               pool_size=3, pool_strides=2, pool_after=(1, 2),
               kernel_initializer="he_normal", batch_norm=False):
    """Builds an LNet backbone (functional `keras.Model`).

    Args:
      name: model name (also prefixes layer names: `<name>_conv1`...).
      stagewise_filters: C1..C5 output channels.
      stagewise_kernel_sizes: C1..C5 square kernel sizes.
      stagewise_strides: C1..C5 strides.
      stagewise_padding: C1..C5 paddings ("valid"/"same").
      pool_size, pool_strides: max pooling ("valid") after the stages listed
        in `pool_after` (1-based).
      kernel_initializer: conv kernel initializer.
      batch_norm: Conv -> BatchNormalization -> ReLU at every stage (the conv
        then has no bias). Off = the plain AlexNet-like stack (ReLU convs).

    Input float [B, H, W, 3] (any H, W large enough). Outputs dict
    `features` [B, h, w, C5] (ReLU'd C5) and `response_map` [B, h, w].
    """
    for arg, value in (("stagewise_filters", stagewise_filters),
                       ("stagewise_kernel_sizes", stagewise_kernel_sizes),
                       ("stagewise_strides", stagewise_strides),
                       ("stagewise_padding", stagewise_padding)):
        if len(value) != _NUM_STAGES:
            raise ValueError(f"build_lnet: `{arg}` needs {_NUM_STAGES} entries, got {value!r}")
    inputs = keras.Input((None, None, 3), name=f"{name}_image")
    x = inputs
    for i in range(_NUM_STAGES):
        x = keras.layers.Conv2D(
            stagewise_filters[i], stagewise_kernel_sizes[i], strides=stagewise_strides[i],
            padding=stagewise_padding[i], activation=None if batch_norm else "relu",
            use_bias=not batch_norm, kernel_initializer=kernel_initializer,
            name=f"{name}_conv{i + 1}")(x)
        if batch_norm:
            x = keras.layers.BatchNormalization(synchronized=True, name=f"{name}_bn{i + 1}")(x)
            x = keras.layers.ReLU(name=f"{name}_relu{i + 1}")(x)
        if i + 1 in pool_after:
            x = keras.layers.MaxPooling2D(pool_size, pool_strides, padding="valid",
                                          name=f"{name}_pool{i + 1}")(x)
    features = x
    response_map = ChannelMean(name=f"{name}_response_map")(features)
    return keras.Model(inputs, {FEATURES: features, RESPONSE_MAP: response_map}, name=name)


@keras.saving.register_keras_serializable(package="tfattr")
class LogSumExpPooling2D(keras.layers.Layer):
    """Global log-sum-exp pooling [B, h, w, C] -> [B, C]: (1/r) log mean exp(r x).

    A smooth maximum over positions: r -> 0 is the average, r -> inf the max.
    Used by the tag fine-tuning head (docs/localization.md): the few cells that
    see the face carry the image-level tags, so the C5 filters learn to fire
    there instead of spreading over the clutter as an average pool lets them.
    """

    def __init__(self, sharpness=5.0, **kwargs):
        super().__init__(**kwargs)
        self.sharpness = float(sharpness)

    def call(self, inputs):
        r = self.sharpness
        cells = keras.ops.cast(keras.ops.shape(inputs)[1] * keras.ops.shape(inputs)[2], inputs.dtype)
        return (keras.ops.logsumexp(r * inputs, axis=(1, 2)) - keras.ops.log(cells)) / r

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "sharpness": self.sharpness}


POOLINGS = ("avg", "lse")


@keras.saving.register_keras_serializable(package="tfattr")
class LNetClassifier(keras.Model):
    """LNet backbone + head: global pool of C5 + Dense logits.

    Used for object pre-training (softmax over `num_outputs` classes) and
    attribute fine-tuning (sigmoid over the 40 attributes); dropped at
    inference. Input float [B, H, W, 3] -> logits float32 [B, num_outputs].

    Args:
      backbone: a `build_lnet` model.
      num_outputs: number of logits.
      dropout: dropout rate before the Dense layer.
      pooling: "avg" (global average) or "lse" (`LogSumExpPooling2D`).
      lse_sharpness: r of the log-sum-exp pool.
    """

    def __init__(self, backbone, num_outputs, dropout=0.0, pooling="avg", lse_sharpness=5.0,
                 name="lnet_classifier", **kwargs):
        if pooling not in POOLINGS:
            raise ValueError(f"LNetClassifier: pooling must be one of {POOLINGS}, got {pooling!r}")
        inputs = keras.Input((None, None, 3), name=f"{name}_image")
        features = backbone(inputs)[FEATURES]
        if pooling == "lse":
            x = LogSumExpPooling2D(lse_sharpness, name=f"{name}_pool")(features)
        else:
            x = keras.layers.GlobalAveragePooling2D(name=f"{name}_pool")(features)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"{name}_dropout")(x)
        logits = keras.layers.Dense(num_outputs, dtype="float32", name=f"{name}_logits")(x)
        super().__init__(inputs, logits, name=name, **kwargs)
        self.backbone = backbone
        self.num_outputs = int(num_outputs)
        self.dropout = float(dropout)
        self.pooling = pooling
        self.lse_sharpness = float(lse_sharpness)

    def get_config(self):
        return {
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "num_outputs": self.num_outputs,
            "dropout": self.dropout,
            "pooling": self.pooling,
            "lse_sharpness": self.lse_sharpness,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        # deep copy: deserialization consumes the nested dict
        config["backbone"] = keras.saving.deserialize_keras_object(
            copy.deepcopy(config["backbone"]))
        return cls(**config)


def build_box_head(feature_shape, conv_filters=16, hidden_units=128, dropout=0.3,
                   name="box_head"):
    """LNet_s' box regressor: C5 features of a head-shoulder crop -> its face box.

    Input float [B, h, w, C] (`feature_shape` = (h, w, C), static: the crop side
    is fixed); output float32 [B, 4] = (centre y, centre x, log height, log
    width) of the face box, centre and size in units of the crop side. A 3x3
    conv, Flatten (the box is a position, so no global pool), Dense, Dense(4).
    Trained on LNet's own boxes, never on labelled ones (`tfattr.stages.lnet`).
    """
    inputs = keras.Input(tuple(int(d) for d in feature_shape), name=f"{name}_features")
    x = keras.layers.Conv2D(conv_filters, 3, padding="same", activation="relu",
                            name=f"{name}_conv")(inputs)
    x = keras.layers.Flatten(name=f"{name}_flatten")(x)
    x = keras.layers.Dropout(dropout, name=f"{name}_dropout")(x)
    x = keras.layers.Dense(hidden_units, activation="relu", name=f"{name}_hidden")(x)
    box = keras.layers.Dense(4, dtype="float32", name=f"{name}_box")(x)
    return keras.Model(inputs, box, name=name)


def build_box_head_for(lnet_s, input_size, **kwargs):
    """`build_box_head` sized for `lnet_s`' C5 features of input_size x input_size crops."""
    side = response_map_size(lnet_s, input_size)
    return build_box_head((side, side, int(lnet_s.output[FEATURES].shape[-1])), **kwargs)


@dataclasses.dataclass(frozen=True)
class MapGeometry:
    """How response-map cells relate to input pixels.

    Cell (i, j) of the response map is centered at input pixel
    `(offset + stride * i, offset + stride * j)` (pixel-center coordinates,
    pixel k spans [k, k+1)) and sees a `receptive_field`-pixel square.
    Exact for the stride-1 "same" and all "valid" layers LNet uses.
    """

    stride: int
    offset: float
    receptive_field: int

    def cell_centers(self, size):
        """Input-pixel centers of `size` cells along one axis."""
        return self.offset + self.stride * np.arange(size, dtype=np.float32)

    def cell_boxes(self, height, width):
        """[height*width, 4] receptive-field boxes (ymin, xmin, ymax, xmax) in
        input pixels, row-major (may extend past the image)."""
        ys, xs = np.meshgrid(self.cell_centers(height), self.cell_centers(width), indexing="ij")
        half = self.receptive_field / 2.0
        cy, cx = ys.reshape(-1) + 0.5, xs.reshape(-1) + 0.5
        return np.stack([cy - half, cx - half, cy + half, cx + half], axis=-1).astype(np.float32)


def _spatial_layers(backbone):
    """(layer, kernel, stride, padding) of each conv / max-pool layer, input to output."""
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.Conv2D):
            yield layer, layer.kernel_size[0], layer.strides[0], layer.padding
        elif isinstance(layer, keras.layers.MaxPooling2D):
            yield layer, layer.pool_size[0], layer.strides[0], layer.padding


def response_map_geometry(backbone):
    """`MapGeometry` of a `build_lnet` backbone's response map."""
    jump, start, rf = 1, 0.0, 1  # start = center of cell 0, in input pixel index units
    for layer, k, s, pad in _spatial_layers(backbone):
        if pad == "same" and s != 1:
            raise ValueError(f"response_map_geometry: layer {layer.name} uses 'same' padding "
                             f"with stride {s}: its offset depends on the input size")
        left = (k - 1) // 2 if pad == "same" else 0
        start += ((k - 1) / 2.0 - left) * jump
        rf += (k - 1) * jump
        jump *= s
    return MapGeometry(stride=jump, offset=start, receptive_field=rf)


def response_map_stride(backbone):
    """Input pixels per response-map cell."""
    return response_map_geometry(backbone).stride


def response_map_size(backbone, input_size):
    """Response-map side for a square input of `input_size` pixels."""
    size = input_size
    for layer, k, s, pad in _spatial_layers(backbone):
        size = (size - k) // s + 1 if pad == "valid" else -(-size // s)
    return size
