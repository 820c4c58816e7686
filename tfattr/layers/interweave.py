"""ANet on every patch of a face region in ONE pass: the interweaved operation.

Paper Sec. 2.2 "Efficient Feature Extractions", Fig. 5. Given a face region
R_h x R_w (> one patch) and the patches of side P at top-left corners
`range(0, R - P + 1, patch_stride)` in both axes (row-major; extra border
pixels of odd-sized regions are unused), `InterweavedANet` computes ANet's FC
feature of every patch with shared computation and the SAME variables as the
ANet model it is built from:

1. C1, pool, C2, pool (globally shared, "valid") run ONCE on the region. They
   are translation-equivariant for shifts that are multiples of their total
   stride S, so the region's C2 map, cropped at patch p's offset / S, IS patch
   p's C2 map.
2. C3 (locally shared, grid g3, output cells c3): each cell's filter bank is
   applied as an ordinary convolution over the part of the region's C2 map
   where that cell of SOME patch lies (Fig. 5 (b): one response map per local
   filter, h_i).
3. C4 (locally shared, grid g4): for each C4 filter (a, b), its interweaved
   map is assembled from the h_i of the C3 cells its receptive field covers,
   cell by cell, exactly as each patch sees them (Fig. 5 (c), (d)). Then the
   C4 filter is an ordinary convolution over its interweaved map. When the
   receptive-field blocks of neighbouring patches do not overlap these blocks
   tile the region as in the paper; with heavily overlapping patches the same
   region row belongs to different C3 cells for different patches, so the
   blocks are kept side by side (stacked on the batch axis) rather than
   merged. C4 work is per patch either way (no two patches share a C4 input).
4. FC per patch.

Alignment: patch_stride must be a multiple of `S * c3` (the paper's cell
lattice: patches start on C3 cell boundaries, so each C3 value computed in
step 2 is used by exactly one patch when patch_stride == S * c3); validated
with a clear error.

Implementations (same result to float tolerance, same variables). In the
interweaved pass every local filter is an ordinary convolution, so both run
CONV_2D per local filter; they differ in how the per-patch windows are cut:
  * "extract_patches" (server/GPU graph): `tf.image.extract_patches` cuts the
    c3 x c3 cell windows of every patch (stride t) out of each h_i; each
    patch's C3 map is assembled (RESHAPE/TRANSPOSE) and the C4 blocks sliced.
  * "builtin" (TFLite): one GATHER with static indices builds all C4
    interweaved maps. Ops: CONV_2D, MAX_POOL_2D, STRIDED_SLICE, PACK, GATHER,
    RESHAPE, CONCATENATION, FULLY_CONNECTED.

In training (`training=True`) the region, C3-window and C4-block cuts are
`tfattr.layers.locally_shared.window`s: the same values, their gradient a PAD
instead of StridedSliceGrad (measured: a fifth of the anet stage's step).

`extract_patch_crops` is the naive path (crop every patch; training and tests).
"""

import copy

import keras
import numpy as np
import tensorflow as tf

from tfattr.layers.empty_batch import call_on_nonempty_batch
from tfattr.layers.locally_shared import (IMPLEMENTATIONS, LocallySharedConv2D, cell_kernels,
                                          conv_output_size, window)

_ANET_STRUCTURE = (keras.layers.Conv2D, keras.layers.MaxPooling2D, keras.layers.Conv2D,
                   keras.layers.MaxPooling2D, LocallySharedConv2D, LocallySharedConv2D,
                   keras.layers.Flatten, keras.layers.Dense)


def patch_grid(region_size, patch_size, patch_stride):
    """Number of patches along one axis (0 if the region is smaller than a patch)."""
    if region_size is None or region_size < patch_size:
        return 0
    return (region_size - patch_size) // patch_stride + 1


def extract_patch_crops(region, patch_size, patch_stride):
    """Naive path: every patch cropped. float [B, H, W, C] ->
    [B * num_patches, P, P, C], patches of each image in row-major order of
    their top-left corners `range(0, R - P + 1, patch_stride)`."""
    region = tf.convert_to_tensor(region)
    channels = region.shape[-1]
    crops = tf.image.extract_patches(
        region, sizes=[1, patch_size, patch_size, 1], strides=[1, patch_stride, patch_stride, 1],
        rates=[1, 1, 1, 1], padding="VALID")
    return tf.reshape(crops, [-1, patch_size, patch_size, channels])


def _anet_layers(anet):
    """(conv1, pool1, conv2, pool2, conv3, conv4, flatten, fc) and the per-conv
    post-ops: a tuple of (BatchNormalization, Activation) layers after each conv
    (`build_anet(batch_norm=True)`), else empty."""
    layers = [l for l in anet.layers if not isinstance(l, keras.layers.InputLayer)]
    main, post, k = [], [], 0
    for t in _ANET_STRUCTURE:
        if k >= len(layers) or not isinstance(layers[k], t):
            main = None
            break
        main.append(layers[k])
        k += 1
        if t in (keras.layers.Conv2D, LocallySharedConv2D):
            extra = ()
            if k + 1 < len(layers) and isinstance(layers[k], keras.layers.BatchNormalization) \
                    and isinstance(layers[k + 1], keras.layers.Activation):
                extra = (layers[k], layers[k + 1])
                k += 2
            post.append(extra)
    if main is None or k != len(layers):
        raise ValueError(
            "InterweavedANet needs an ANet built by tfattr.models.build_anet (Conv2D, "
            "MaxPooling2D, Conv2D, MaxPooling2D, LocallySharedConv2D x2, Flatten, Dense; "
            "each conv optionally followed by BatchNormalization, Activation); "
            f"got layers {[type(l).__name__ for l in layers]}")
    return main, post


def _apply_post(x, post, training=False):
    """BN + activation. In inference mode BN is a per-channel affine map, exact at every
    position of a shared map; `training=True` uses the batch statistics of `x` (with the
    fused kernel when `_can_fuse_batch_norm`, else the Keras layer)."""
    if training and post and _can_fuse_batch_norm(post[0], x):
        return post[1](_fused_batch_norm_train(post[0], x))
    for layer in post:
        x = layer(x, training=training) if isinstance(layer, keras.layers.BatchNormalization) \
            else layer(x)
    return x


def _can_fuse_batch_norm(bn, x):
    """Whether `_fused_batch_norm_train` computes exactly what `bn(x, training=True)` does:
    a trainable channels-last BN with scale and offset, no renormalization, on a 4-D map,
    and (a synchronized BN) one replica in sync: across replicas the Keras layer all-reduces
    the statistics, which the fused kernel cannot."""
    if not (isinstance(bn, keras.layers.BatchNormalization) and bn.trainable and bn.center
            and bn.scale and not bn.renorm and bn.axis in (-1, 3) and x.shape.rank == 4):
        return False
    if bn.synchronized:
        replica = tf.distribute.get_replica_context()
        replicas = (replica.num_replicas_in_sync if replica is not None
                    else tf.distribute.get_strategy().num_replicas_in_sync)
        return replicas == 1
    return True


def _fused_batch_norm_train(bn, x):
    """`bn(x, training=True)` (ANet fine-tuning, paper Sec. 2.2) with TF's fused batch-norm
    kernel (one pass for the statistics, one fused gradient op) instead of Keras' moments +
    normalization graph: 16 % of the CPU time of a fine-tuning step over the shared maps
    (docs/training.md, twelfth look). Same arithmetic: statistics in float32 for bfloat16
    maps, the moving averages updated with Keras' momentum rule from the biased batch
    variance (the kernel returns the Bessel-corrected one, undone here)."""
    y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
        x, tf.cast(bn.gamma, tf.float32), tf.cast(bn.beta, tf.float32),
        epsilon=bn.epsilon, is_training=True)
    count = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)
    variance = variance * (count - 1.0) / tf.maximum(count, 1.0)
    bn.moving_mean.assign(bn.moving_mean * bn.momentum + mean * (1.0 - bn.momentum))
    bn.moving_variance.assign(
        bn.moving_variance * bn.momentum + variance * (1.0 - bn.momentum))
    return tf.cast(y, bn.compute_dtype)


@keras.saving.register_keras_serializable(package="tfattr")
class InterweavedANet(keras.layers.Layer):
    """ANet FC features of all overlapping patches of a region in one pass.

    Args:
      anet: the ANet `keras.Model` (from `build_anet`); its layers and
        variables are reused (not copied).
      patch_size: P, must equal the ANet input size.
      patch_stride: stride between patches in region pixels; a multiple of
        the ANet's total C1+C2 stride times the C3 cell size.
      implementation: "extract_patches" (server) or "builtin" (TFLite).

    Call arguments:
      inputs: float region `[B, R_h, R_w, 3]`, static R_h, R_w >= P.

    Output: `[B, num_patches, F]`, patches row-major by top-left corner,
    equal to `anet(extract_patch_crops(inputs, P, stride))` reshaped.
    """

    def __init__(self, anet, patch_size, patch_stride, implementation="extract_patches",
                 **kwargs):
        super().__init__(**kwargs)
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"`implementation` must be one of {IMPLEMENTATIONS}, got {implementation!r}")
        self.anet = anet
        self.patch_size = int(patch_size)
        self.patch_stride = int(patch_stride)
        self.implementation = implementation
        main, post = _anet_layers(anet)
        (self._conv1, self._pool1, self._conv2, self._pool2, self._conv3, self._conv4,
         _, self._fc) = main
        # Keyed by layer name: a trackable dict needs string keys (SavedModel export).
        self._post = {c.name: p for c, p in zip(
            (self._conv1, self._conv2, self._conv3, self._conv4), post)}
        in_shape = anet.input_shape
        if tuple(in_shape[1:3]) != (self.patch_size, self.patch_size):
            raise ValueError(f"InterweavedANet: patch_size={patch_size} but the ANet input "
                             f"is {in_shape}")
        self._check_geometry()

    # -- geometry ---------------------------------------------------------------
    def _check_geometry(self):
        stride, size = 1, self.patch_size
        for layer in (self._conv1, self._pool1, self._conv2, self._pool2):
            if layer.padding != "valid":
                raise ValueError(f"InterweavedANet: layer {layer.name} must use 'valid' "
                                 f"padding, got {layer.padding!r}")
            if isinstance(layer, keras.layers.Conv2D):
                k, s = layer.kernel_size, layer.strides
                if layer.dilation_rate != (1, 1):
                    raise ValueError(f"InterweavedANet: {layer.name} is dilated")
            else:
                k, s = layer.pool_size, layer.strides
            if k[0] != k[1] or s[0] != s[1]:
                raise ValueError(f"InterweavedANet: {layer.name} must be square, got "
                                 f"kernel {k}, strides {s}")
            size = conv_output_size(size, k[0], s[0], "valid")
            stride *= s[0]
        self.total_stride = stride  # S: region pixels per C2-map pixel
        self.conv2_map_size = size  # m2: a patch's C2 map side
        for layer in (self._conv3, self._conv4):
            if layer.padding != "valid" or layer.strides != (1, 1):
                raise ValueError(f"InterweavedANet: {layer.name} must use padding 'valid' and "
                                 f"strides 1, got {layer.padding!r}, {layer.strides}")
        shape = (None, size, size, self._conv3.input_channels)
        self.conv3_cell = self._conv3.cell_size(shape)
        shape3 = self._conv3.compute_output_shape(shape)
        self.conv4_cell = self._conv4.cell_size(shape3)
        unit_r, unit_c = (stride * self.conv3_cell[0], stride * self.conv3_cell[1])
        if self.patch_stride <= 0 or self.patch_stride % unit_r or self.patch_stride % unit_c:
            raise ValueError(
                f"InterweavedANet: patch_stride={self.patch_stride} must be a positive multiple "
                f"of the ANet stride unit {unit_r}x{unit_c} = total C1+C2 stride {stride} x C3 "
                f"cell size {self.conv3_cell} (patches must start on the C3 cell lattice)")
        self.map_stride = self.patch_stride // stride  # t: patch stride in C2/C3/C4 maps

    def num_patches_for(self, height, width):
        return (patch_grid(height, self.patch_size, self.patch_stride)
                * patch_grid(width, self.patch_size, self.patch_stride))

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        n = None if h is None or w is None else self.num_patches_for(h, w)
        return (b, n, self._fc.units)

    def build(self, input_shape):
        _, h, w, c = input_shape
        if h is None or w is None:
            raise ValueError(f"{self.name}: the region needs a static size, got {input_shape}")
        if h < self.patch_size or w < self.patch_size:
            raise ValueError(f"{self.name}: region {h}x{w} is smaller than one patch "
                             f"({self.patch_size})")
        self.grid_rows = patch_grid(h, self.patch_size, self.patch_stride)
        self.grid_cols = patch_grid(w, self.patch_size, self.patch_stride)
        self.num_patches = self.grid_rows * self.grid_cols
        t = self.map_stride
        (c3r, c3c), (c4r, c4c) = self.conv3_cell, self.conv4_cell
        g3r, g3c = self._conv3.grid
        g4r, g4c = self._conv4.grid
        k4r, k4c = self._conv4.kernel_size
        # Step 2 window of every C3 cell: where that cell lies in some patch.
        self._c3_window = ((self.grid_rows - 1) * t + c3r, (self.grid_cols - 1) * t + c3c)
        lr, lc = self._c3_window
        # Step 3: flat indices into the C3 cell responses [G3 * lr * lc] that
        # build the interweaved map of each C4 filter: [G4, N, span_r, span_c].
        span_r, span_c = c4r + k4r - 1, c4c + k4c - 1
        self._span = (span_r, span_c)
        idx = np.zeros((g4r * g4c, self.num_patches, span_r, span_c), np.int32)
        for a in range(g4r):
            for b in range(g4c):
                rows = np.arange(a * c4r, a * c4r + span_r)  # patch-relative C3 rows
                cols = np.arange(b * c4c, b * c4c + span_c)
                ci, cj = rows // c3r, cols // c3c  # C3 cell of each row / col
                for pr in range(self.grid_rows):
                    for pc in range(self.grid_cols):
                        hr = pr * t + rows - ci * c3r  # row inside cell ci's window
                        hc = pc * t + cols - cj * c3c
                        cell = ci[:, None] * g3c + cj[None, :]
                        idx[a * g4c + b, pr * self.grid_cols + pc] = (
                            (cell * lr + hr[:, None]) * lc + hc[None, :])
        self._gather_index = idx.reshape(-1)
        self._used_size = ((self.grid_rows - 1) * self.patch_stride + self.patch_size,
                           (self.grid_cols - 1) * self.patch_stride + self.patch_size)
        self.built = True

    # -- forward ----------------------------------------------------------------
    def _interweaved_maps_extract_patches(self, h3, training=False):
        """Server path: cut every patch's C3 cells with `tf.image.extract_patches`
        (windows c3 x c3 at stride t over each h_i), assemble each patch's C3
        map, and slice the receptive-field block of every C4 filter from it.
        Returns G4 interweaved maps `[B*N, span_r, span_c, F3]`."""
        (c3r, c3c), (c4r, c4c) = self.conv3_cell, self.conv4_cell
        g3r, g3c = self._conv3.grid
        t = self.map_stride
        f3 = h3[0].shape[-1]
        cells = [tf.image.extract_patches(h, sizes=[1, c3r, c3c, 1], strides=[1, t, t, 1],
                                          rates=[1, 1, 1, 1], padding="VALID") for h in h3]
        cells = tf.reshape(tf.stack(cells, axis=3), [-1, g3r, g3c, c3r, c3c, f3])
        c3 = tf.reshape(tf.transpose(cells, [0, 1, 3, 2, 4, 5]),
                        [-1, g3r * c3r, g3c * c3c, f3])  # every patch's C3 map
        span_r, span_c = self._span
        g4r, g4c = self._conv4.grid
        return [window(c3, a * c4r, b * c4c, span_r, span_c, pad_gradient=training)
                for a in range(g4r) for b in range(g4c)]

    def _interweaved_maps_builtin(self, h3):
        """TFLite path: one static-index GATHER builds the interweaved map of
        every C4 filter from the C3 cell responses. Returns G4 maps
        `[B*N, span_r, span_c, F3]`."""
        lr, lc = self._c3_window
        f3 = h3[0].shape[-1]
        flat = tf.reshape(tf.stack(h3, axis=1), [-1, len(h3) * lr * lc, f3])
        maps = tf.gather(flat, self._gather_index, axis=1)
        g4 = self._conv4.num_cells
        span_r, span_c = self._span
        maps = tf.reshape(maps, [-1, g4, self.num_patches * span_r, span_c, f3])
        return [tf.reshape(maps[:, f], [-1, span_r, span_c, f3]) for f in range(g4)]

    def call(self, inputs, training=None):
        """`training=True` (fine-tuning on whole regions, `anet.patches=all`) runs ANet's
        batch normalization in training mode over the shared maps; otherwise inference."""
        if training:
            return self._forward(inputs, training=True)
        return call_on_nonempty_batch(self._forward, inputs)  # no face: a zero-size batch

    def _post_of(self, layer, maps, training):
        """`layer`'s BN + activation on each of its maps. Training: one BN call over all the
        maps at once, so the batch statistics are those of all of them together (for C4
        exactly the patch-by-patch ones) and the moving averages move once per step."""
        post = self._post.get(layer.name, ())
        if not training:
            return [_apply_post(m, post) for m in maps]
        sizes = [tf.shape(m)[0] for m in maps]
        return tf.split(_apply_post(tf.concat(maps, axis=0), post, training=True), sizes, axis=0)

    def _forward(self, inputs, training=False):
        hu, wu = self._used_size
        x = window(inputs, 0, 0, hu, wu, pad_gradient=training)
        # 1. globally shared layers once over the region
        for layer in (self._conv1, self._pool1, self._conv2, self._pool2):
            x = self._post_of(layer, [layer(x)], training)[0]
        # 2. every C3 local filter as an ordinary conv where its cells lie
        lr, lc = self._c3_window
        h3 = self._conv3.cell_responses(x, lr, lc, cell_stride=self.conv3_cell, training=training)
        h3 = self._post_of(self._conv3, list(h3), training)
        # 3. one interweaved map per C4 local filter, which is then an ordinary conv
        if self.implementation == "extract_patches":
            maps = self._interweaved_maps_extract_patches(h3, training=training)
        else:
            maps = self._interweaved_maps_builtin(h3)
        conv4 = self._conv4
        kernel = cell_kernels(conv4.kernel, maps[0].dtype)
        bias = cell_kernels(conv4.bias, maps[0].dtype) if conv4.use_bias else None
        g4r, g4c = conv4.grid
        outs = []
        for f, m in enumerate(maps):
            a, b = divmod(f, g4c)
            y = tf.nn.conv2d(m, kernel[a][b], strides=1, padding="VALID")
            if conv4.use_bias:
                y = tf.nn.bias_add(y, bias[a][b])
            y = conv4.activation(y) if conv4.activation is not None else y
            outs.append(y)
        outs = self._post_of(conv4, outs, training)
        rows = [tf.concat(outs[a * g4c:(a + 1) * g4c], axis=2) if g4c > 1 else outs[a * g4c]
                for a in range(g4r)]
        c4 = tf.concat(rows, axis=1) if g4r > 1 else rows[0]  # [B*N, m4r, m4c, F4]
        # 4. FC per patch
        fc = self._fc(tf.reshape(c4, [-1, c4.shape[1] * c4.shape[2] * c4.shape[3]]))
        return tf.reshape(fc, [-1, self.num_patches, self._fc.units])

    def get_config(self):
        config = super().get_config()
        config.update({
            "anet": keras.saving.serialize_keras_object(self.anet),
            "patch_size": self.patch_size,
            "patch_stride": self.patch_stride,
            "implementation": self.implementation,
        })
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        # deep copy: deserialization consumes the nested dict
        config["anet"] = keras.saving.deserialize_keras_object(
            copy.deepcopy(config["anet"]))
        return cls(**config)
