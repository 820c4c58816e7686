"""Locally shared 2-D convolution (DeepID2-style), paper Sec. 2 / 2.2.

Keras 3 has no LocallyConnected2D; this is the layer ANet's C3/C4 use.

Definition. The layer's OUTPUT map (the map an ordinary `Conv2D` with the
same `kernel_size`/`strides`/`padding` would produce, `Ho x Wo`) is split into
a `grid = (grid_rows, grid_cols)` grid of equal cells (`Ho % grid_rows == 0`
and `Wo % grid_cols == 0`, else a clear error). Every output position in cell
`(i, j)` is computed with the cell's own filter bank `kernel[i, j]`
(`kh x kw x C_in x filters`) and bias `bias[i, j]` over its ordinary receptive
field in the input (which may reach into the neighbouring cells' input rows).
With `grid=(1, 1)` the layer is an ordinary `Conv2D`.

Two implementations with the SAME variables (a model trained with one can be
rebuilt with the other and `set_weights`):
  * `"extract_patches"` (server/GPU graph): `tf.image.extract_patches`
    (im2col), then per cell one matmul of its rows with the cell's bank.
  * `"builtin"` (TFLite): per cell, a STRIDED_SLICE of the (explicitly PADded)
    input and one CONV_2D with that cell's bank, then CONCATENATION of the
    cells. Only TFLite builtin ops (ExtractImagePatches is not one).
"""


import keras
import numpy as np
import tensorflow as tf

IMPLEMENTATIONS = ("extract_patches", "builtin")


def _pair(value, name):
    if isinstance(value, int):
        return (value, value)
    value = tuple(value)
    if len(value) != 2 or not all(isinstance(v, (int, np.integer)) for v in value):
        raise ValueError(f"`{name}` must be an int or a pair of ints, got {value!r}")
    return tuple(int(v) for v in value)


def conv_output_size(size, kernel, stride, padding):
    """Output length of a convolution/pooling along one axis (TF semantics)."""
    if size is None:
        return None
    if padding == "valid":
        return (size - kernel) // stride + 1 if size >= kernel else 0
    return -(-size // stride)


def same_padding(size, kernel, stride):
    """(before, after) padding TF uses for `padding="same"` along one axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def window(x, row, col, height, width, pad_gradient=False):
    """`x[:, row:row + height, col:col + width, :]` of a `[B, H, W, C]` map.

    `pad_gradient=True` (training): the same values and the same gradient, computed as a
    zero PAD of the incoming gradient instead of TF's StridedSliceGrad, which on CPU was
    5-8x slower for ANet's maps and took a fifth of the anet stage's step (docs/training.md,
    eleventh look). Inference graphs (export, TFLite) keep the plain slice."""
    if not pad_gradient:
        return x[:, row:row + height, col:col + width, :]
    h, w = x.shape[1], x.shape[2]
    if (row, col, height, width) == (0, 0, h, w):
        return x

    @tf.custom_gradient
    def crop(v):
        def grad(dy):
            return tf.pad(dy, [[0, 0], [row, h - row - height], [col, w - col - width], [0, 0]])
        return v[:, row:row + height, col:col + width, :], grad

    return crop(x)


def cell_kernels(kernel, dtype):
    """A `[gr, gc, ...]` per-cell variable as a nested list `[i][j]` of `dtype` tensors, cut
    with UNPACK (its gradient is one PACK; per-cell slices cost a StridedSliceGrad each)."""
    return [tf.unstack(row) for row in tf.unstack(tf.cast(kernel, dtype))]


@keras.saving.register_keras_serializable(package="tfattr")
class LocallySharedConv2D(keras.layers.Layer):
    """Convolution whose filters are shared only inside each cell of a grid.

    Args:
      filters: output channels (per cell, the same for every cell).
      kernel_size: int or (kh, kw).
      grid: int or (grid_rows, grid_cols): cells of the OUTPUT map.
      strides: int or pair.
      padding: "valid" or "same" (TF semantics, as `Conv2D`).
      activation: Keras activation applied after the bias.
      use_bias: add a per-cell bias `[grid_rows, grid_cols, filters]`.
      implementation: "extract_patches" or "builtin" (TFLite builtin ops only).
      kernel_initializer, bias_initializer, kernel_regularizer,
      bias_regularizer: as in `Conv2D`. The kernel initializer is called once
        on the stacked conv shape `(kh, kw, C_in, cells * filters)` (correct
        fan-in; fan-out counts all cells).

    Call arguments:
      inputs: float `[B, H, W, C_in]` with static H, W.

    Input shape: `[B, H, W, C_in]`. Output shape: `[B, Ho, Wo, filters]`, Ho/Wo
    as for `Conv2D`, divisible by the grid.

    Variables: `kernel [grid_rows, grid_cols, kh, kw, C_in, filters]`,
    `bias [grid_rows, grid_cols, filters]`.
    """

    def __init__(self, filters, kernel_size, grid, strides=1, padding="valid",
                 activation=None, use_bias=True, implementation="extract_patches",
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(filters, (int, np.integer)) or filters <= 0:
            raise ValueError(f"`filters` must be a positive int, got {filters!r}")
        self.filters = int(filters)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.grid = _pair(grid, "grid")
        self.strides = _pair(strides, "strides")
        if min(self.kernel_size + self.grid + self.strides) <= 0:
            raise ValueError(
                f"kernel_size/grid/strides must be positive, got {kernel_size!r}, "
                f"{grid!r}, {strides!r}")
        padding = str(padding).lower()
        if padding not in ("valid", "same"):
            raise ValueError(f"`padding` must be 'valid' or 'same', got {padding!r}")
        self.padding = padding
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"`implementation` must be one of {IMPLEMENTATIONS}, got {implementation!r}")
        self.implementation = implementation
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)

    @property
    def num_cells(self):
        return self.grid[0] * self.grid[1]

    def cell_size(self, input_shape):
        """(cell_rows, cell_cols) of the output grid for `input_shape`."""
        _, ho, wo, _ = self.compute_output_shape(input_shape)
        return ho // self.grid[0], wo // self.grid[1]

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        (kh, kw), (sh, sw) = self.kernel_size, self.strides
        return (b, conv_output_size(h, kh, sh, self.padding),
                conv_output_size(w, kw, sw, self.padding), self.filters)

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"{self.name}: expected [B, H, W, C] input, got {input_shape}")
        _, h, w, cin = input_shape
        if h is None or w is None or cin is None:
            raise ValueError(
                f"{self.name}: LocallySharedConv2D needs static H, W, C (the grid is "
                f"defined on the output map), got input shape {input_shape}")
        _, ho, wo, _ = self.compute_output_shape(input_shape)
        gr, gc = self.grid
        if ho <= 0 or wo <= 0 or ho % gr or wo % gc:
            raise ValueError(
                f"{self.name}: output map {ho}x{wo} (input {h}x{w}, kernel "
                f"{self.kernel_size}, strides {self.strides}, padding {self.padding!r}) "
                f"is not divisible into a {gr}x{gc} grid of cells")
        self.input_channels = int(cin)
        kh, kw = self.kernel_size
        init = self.kernel_initializer
        cells, filters = self.num_cells, self.filters

        def kernel_init(shape, dtype=None):
            # One call on the stacked conv shape, then cells to the front.
            k = init((kh, kw, int(cin), cells * filters), dtype=dtype)
            k = keras.ops.reshape(k, (kh, kw, int(cin), gr, gc, filters))
            return keras.ops.transpose(k, (3, 4, 0, 1, 2, 5))

        self.kernel = self.add_weight(
            name="kernel", shape=(gr, gc, kh, kw, int(cin), filters),
            initializer=kernel_init, regularizer=self.kernel_regularizer)
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias", shape=(gr, gc, filters),
                initializer=self.bias_initializer, regularizer=self.bias_regularizer)
        else:
            self.bias = None

    # -- implementations -------------------------------------------------------
    def _pad_same(self, x):
        """Explicit zero padding so that "same" becomes "valid" (PAD builtin)."""
        if self.padding == "valid":
            return x
        h, w = x.shape[1], x.shape[2]
        ph = same_padding(h, self.kernel_size[0], self.strides[0])
        pw = same_padding(w, self.kernel_size[1], self.strides[1])
        if ph == (0, 0) and pw == (0, 0):
            return x
        return tf.pad(x, [[0, 0], list(ph), list(pw), [0, 0]])

    def _call_extract_patches(self, x, training=False):
        """im2col with `tf.image.extract_patches`, then per cell one matmul of
        its patch rows with its bank (measured faster on CPU than one 6-D
        einsum, which lowers to transposes + BatchMatMul)."""
        kh, kw = self.kernel_size
        sh, sw = self.strides
        gr, gc = self.grid
        patches = tf.image.extract_patches(
            x, sizes=[1, kh, kw, 1], strides=[1, sh, sw, 1], rates=[1, 1, 1, 1],
            padding=self.padding.upper())
        ho, wo = patches.shape[1], patches.shape[2]
        ch, cw = ho // gr, wo // gc
        depth = kh * kw * self.input_channels
        kernel = cell_kernels(tf.reshape(self.kernel, [gr, gc, depth, self.filters]), x.dtype)
        bias = cell_kernels(self.bias, x.dtype) if self.use_bias else None
        rows = []
        for i in range(gr):
            cols = []
            for j in range(gc):
                cell = tf.reshape(window(patches, i * ch, j * cw, ch, cw, pad_gradient=training),
                                  [-1, depth])
                y = tf.matmul(cell, kernel[i][j])
                if self.use_bias:
                    y = tf.nn.bias_add(y, bias[i][j])
                cols.append(tf.reshape(y, [-1, ch, cw, self.filters]))
            rows.append(cols[0] if gc == 1 else tf.concat(cols, axis=2))
        return rows[0] if gr == 1 else tf.concat(rows, axis=1)

    def _call_builtin(self, x):
        kh, kw = self.kernel_size
        sh, sw = self.strides
        gr, gc = self.grid
        _, ho, wo, _ = self.compute_output_shape(x.shape)
        ch, cw = ho // gr, wo // gc
        x = self._pad_same(x)
        kernel = tf.cast(self.kernel, x.dtype)
        rows = []
        for i in range(gr):
            r0 = i * ch * sh
            cols = []
            for j in range(gc):
                c0 = j * cw * sw
                xi = x[:, r0:r0 + (ch - 1) * sh + kh, c0:c0 + (cw - 1) * sw + kw, :]
                y = tf.nn.conv2d(xi, kernel[i, j], strides=[1, sh, sw, 1], padding="VALID")
                if self.use_bias:
                    y = tf.nn.bias_add(y, tf.cast(self.bias[i, j], x.dtype))
                cols.append(y)
            rows.append(cols[0] if gc == 1 else tf.concat(cols, axis=2))
        return rows[0] if gr == 1 else tf.concat(rows, axis=1)

    def call(self, inputs, training=None):
        x = tf.cast(inputs, self.compute_dtype)
        if self.implementation == "extract_patches":
            y = self._call_extract_patches(x, training=bool(training))
        else:
            y = self._call_builtin(x)
        return self.activation(y) if self.activation is not None else y

    def cell_responses(self, inputs, cell_rows, cell_cols, cell_stride, training=False):
        """Every cell's filter bank applied as an ORDINARY convolution (CONV_2D).

        Used by the interweaved pass (paper Fig. 5 (b): "each local filter can
        be applied on the entire image"). Cell (i, j)'s bank is evaluated on
        the output window `[i*cell_stride[0], +cell_rows) x [j*cell_stride[1],
        +cell_cols)` of the ordinary-conv ("valid", stride 1) output map of
        `inputs`: where cell (i, j) of every patch lies. Bias and activation
        included. `training=True`: the windows' gradients are PADs (`window`).

        Returns a list (row-major over cells) of `[B, cell_rows, cell_cols, filters]`.
        """
        if self.padding != "valid" or self.strides != (1, 1):
            raise ValueError(
                f"{self.name}: the interweaved pass needs padding='valid' and strides=1, "
                f"got padding={self.padding!r}, strides={self.strides}")
        kh, kw = self.kernel_size
        gr, gc = self.grid
        sr, sc = cell_stride
        x = tf.cast(inputs, self.compute_dtype)
        kernel = cell_kernels(self.kernel, x.dtype)
        bias = cell_kernels(self.bias, x.dtype) if self.use_bias else None
        outs = []
        for i in range(gr):
            for j in range(gc):
                xi = window(x, i * sr, j * sc, cell_rows + kh - 1, cell_cols + kw - 1,
                            pad_gradient=training)
                yi = tf.nn.conv2d(xi, kernel[i][j], strides=1, padding="VALID")
                if self.use_bias:
                    yi = tf.nn.bias_add(yi, bias[i][j])
                outs.append(self.activation(yi) if self.activation is not None else yi)
        return outs

    def get_config(self):
        config = super().get_config()
        config.update({
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "grid": self.grid,
            "strides": self.strides,
            "padding": self.padding,
            "activation": keras.activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "implementation": self.implementation,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
        })
        return config
