"""ANet: the attribute network (paper Sec. 2, 2.2; DeepID2-like).

C1, C2: globally shared convolutions, each followed by max pooling.
C3, C4: locally shared convolutions (`LocallySharedConv2D`, each cell of the
map has its own filters). FC: the feature the per-attribute SVMs use.

All convolutions and poolings use "valid" padding: then C1/C2 on a large face
region, cropped at a patch's position, equal C1/C2 on that patch (for patch
offsets that are multiples of the total C1+C2 stride), which the interweaved
pass (`tfattr.layers.InterweavedANet`) relies on.
"""

import dataclasses

import keras

from tfattr.layers.locally_shared import IMPLEMENTATIONS, LocallySharedConv2D, conv_output_size

# Stable layer names (variable paths; renaming breaks saved weights).
INPUT_NAME = "anet_patch"
CONV1, POOL1, CONV2, POOL2 = "anet_conv1", "anet_pool1", "anet_conv2", "anet_pool2"
CONV3, CONV4 = "anet_conv3_ls", "anet_conv4_ls"
FLATTEN, FC = "anet_flatten", "anet_fc"
BN_SUFFIX, RELU_SUFFIX = "_bn", "_relu"  # batch_norm=True: conv (linear) -> BN -> ReLU


@dataclasses.dataclass(frozen=True)
class ANetGeometry:
    """Map sizes of ANet on one patch (square), all in pixels of each map.

    `total_stride`: input pixels per C2-pooled-map pixel (C1 and C2 strides
    times pool strides). `conv3_cell`/`conv4_cell`: (rows, cols) of one cell of
    the C3/C4 output grids. The patch stride of the interweaved pass must be a
    multiple of `stride_unit = total_stride * conv3_cell` (see
    `tfattr.layers.interweave`).
    """

    patch_size: int
    conv1_size: int
    pool1_size: int
    conv2_size: int
    pool2_size: int
    conv3_size: int
    conv4_size: int
    total_stride: int
    conv3_grid: tuple
    conv4_grid: tuple
    conv3_cell: tuple
    conv4_cell: tuple

    @property
    def stride_unit(self):
        """Smallest valid patch stride (rows, cols) in input pixels."""
        return (self.total_stride * self.conv3_cell[0], self.total_stride * self.conv3_cell[1])


def _grid_pair(grid):
    return (grid, grid) if isinstance(grid, int) else tuple(int(g) for g in grid)


def anet_geometry(patch_size, stagewise_kernel_sizes=(5, 3, 3, 3), stagewise_strides=(1, 1),
                  stagewise_grids=(3, 2), pool_size=2, **unused):
    """Sizes of every ANet map for `build_anet` kwargs; raises a clear error
    when a locally shared layer's output is not divisible by its grid."""
    k1, k2, k3, k4 = stagewise_kernel_sizes
    s1, s2 = stagewise_strides
    g3, g4 = (_grid_pair(g) for g in stagewise_grids)
    c1 = conv_output_size(patch_size, k1, s1, "valid")
    p1 = conv_output_size(c1, pool_size, pool_size, "valid")
    c2 = conv_output_size(p1, k2, s2, "valid")
    p2 = conv_output_size(c2, pool_size, pool_size, "valid")
    c3 = conv_output_size(p2, k3, 1, "valid")
    c4 = conv_output_size(c3, k4, 1, "valid")
    sizes = dict(conv1=c1, pool1=p1, conv2=c2, pool2=p2, conv3=c3, conv4=c4)
    if min(sizes.values()) <= 0:
        raise ValueError(f"ANet: patch_size={patch_size} is too small for kernels "
                         f"{stagewise_kernel_sizes}: map sizes {sizes}")
    for name, size, grid in (("C3", c3, g3), ("C4", c4, g4)):
        if size % grid[0] or size % grid[1]:
            raise ValueError(
                f"ANet: {name} output {size}x{size} (patch_size={patch_size}, map sizes "
                f"{sizes}) is not divisible into a {grid[0]}x{grid[1]} grid of cells")
    return ANetGeometry(
        patch_size=patch_size, conv1_size=c1, pool1_size=p1, conv2_size=c2,
        pool2_size=p2, conv3_size=c3, conv4_size=c4,
        total_stride=s1 * pool_size * s2 * pool_size, conv3_grid=g3, conv4_grid=g4,
        conv3_cell=(c3 // g3[0], c3 // g3[1]), conv4_cell=(c4 // g4[0], c4 // g4[1]))


def build_anet(name="anet", patch_size=64, stagewise_filters=(32, 64, 32, 32),
               stagewise_kernel_sizes=(5, 3, 3, 3), stagewise_strides=(1, 1),
               stagewise_grids=(3, 2), pool_size=2, fc_units=160, fc_activation="relu",
               implementation="extract_patches", kernel_initializer="he_normal",
               batch_norm=False):
    """Builds ANet as a functional `keras.Model`: float [B, P, P, 3] -> FC [B, F].

    Args:
      name: model name.
      patch_size: P, the square patch side in pixels.
      stagewise_filters: (C1, C2, C3, C4) output channels.
      stagewise_kernel_sizes: (C1, C2, C3, C4) square kernel sizes.
      stagewise_strides: (C1, C2) conv strides (C3/C4 use stride 1).
      stagewise_grids: (C3, C4) grids of the locally shared layers: an int
        (square grid) or (rows, cols) each.
      pool_size: max-pool size = stride after C1 and after C2.
      fc_units: F, the FC feature size.
      fc_activation: activation of FC.
      implementation: LocallySharedConv2D implementation, "extract_patches"
        (server) or "builtin" (TFLite); same variables either way.
      kernel_initializer: of every conv/dense kernel.
      batch_norm: each of C1..C4 becomes conv (linear, no bias) ->
        BatchNormalization -> ReLU (layers `<conv>_bn`, `<conv>_relu`). In
        inference mode BN is a per-channel affine map, so the interweaved pass
        applies it to every position of the shared maps and stays exact.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"`implementation` must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    geo = anet_geometry(patch_size, stagewise_kernel_sizes, stagewise_strides,
                        stagewise_grids, pool_size)
    f1, f2, f3, f4 = stagewise_filters
    k1, k2, k3, k4 = stagewise_kernel_sizes
    s1, s2 = stagewise_strides
    inputs = keras.Input((patch_size, patch_size, 3), name=INPUT_NAME)
    act = None if batch_norm else "relu"

    def post(x, conv_name):
        if not batch_norm:
            return x
        x = keras.layers.BatchNormalization(synchronized=True, name=conv_name + BN_SUFFIX)(x)
        return keras.layers.Activation("relu", name=conv_name + RELU_SUFFIX)(x)

    x = keras.layers.Conv2D(f1, k1, strides=s1, padding="valid", activation=act,
                            use_bias=not batch_norm,
                            kernel_initializer=kernel_initializer, name=CONV1)(inputs)
    x = post(x, CONV1)
    x = keras.layers.MaxPooling2D(pool_size, pool_size, padding="valid", name=POOL1)(x)
    x = keras.layers.Conv2D(f2, k2, strides=s2, padding="valid", activation=act,
                            use_bias=not batch_norm,
                            kernel_initializer=kernel_initializer, name=CONV2)(x)
    x = post(x, CONV2)
    x = keras.layers.MaxPooling2D(pool_size, pool_size, padding="valid", name=POOL2)(x)
    x = LocallySharedConv2D(f3, k3, geo.conv3_grid, padding="valid", activation=act,
                            use_bias=not batch_norm, implementation=implementation,
                            kernel_initializer=kernel_initializer, name=CONV3)(x)
    x = post(x, CONV3)
    x = LocallySharedConv2D(f4, k4, geo.conv4_grid, padding="valid", activation=act,
                            use_bias=not batch_norm, implementation=implementation,
                            kernel_initializer=kernel_initializer, name=CONV4)(x)
    x = post(x, CONV4)
    x = keras.layers.Flatten(name=FLATTEN)(x)
    outputs = keras.layers.Dense(fc_units, activation=fc_activation,
                                 kernel_initializer=kernel_initializer, name=FC)(x)
    return keras.Model(inputs, outputs, name=name)


def rebuild_anet(anet, implementation, **anet_kwargs):
    """A copy of `anet` with another LocallySharedConv2D implementation and the
    same weights (e.g. "builtin" for TFLite). `anet_kwargs` are the kwargs it
    was built with (the preset's `anet` dict)."""
    other = build_anet(**{**anet_kwargs, "implementation": implementation,
                          "name": anet_kwargs.get("name", anet.name)})
    other.set_weights(anet.get_weights())
    return other


# The interweaved pass and the naive crops live in tfattr/layers/interweave.py
# (layers <- models); re-exported here as docs/interfaces.md lists them.
from tfattr.layers.interweave import InterweavedANet, extract_patch_crops  # noqa: E402,F401
