import keras
import numpy as np
import pytest
import tensorflow as tf

try:  # rootdir-relative (prepend) or package/importlib import modes
    from layer_contract import (check_config_round_trip, check_fit_step, check_gradients,
                                check_keras_save_load, check_symbolic_shape)
except ImportError:  # pragma: no cover
    from tests.layers.layer_contract import (
        check_config_round_trip, check_fit_step, check_gradients, check_keras_save_load,
        check_symbolic_shape)
from tfattr.layers import LocallySharedConv2D
from tfattr.layers.locally_shared import same_padding, window

IMPLS = ["extract_patches", "builtin"]


def numpy_reference(x, kernel, bias, strides, padding):
    """Convolves each cell region separately with that cell's filter bank."""
    gr, gc, kh, kw, cin, filters = kernel.shape
    sh, sw = strides
    b, h, w, _ = x.shape
    if padding == "same":
        ph, pw = same_padding(h, kh, sh), same_padding(w, kw, sw)
        x = np.pad(x, [(0, 0), ph, pw, (0, 0)])
        ho, wo = -(-h // sh), -(-w // sw)
    else:
        ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
    ch, cw = ho // gr, wo // gc
    out = np.zeros((b, ho, wo, filters), np.float64)
    for i in range(gr):
        for j in range(gc):
            # the input region cell (i, j) reads
            region = x[:, i * ch * sh:(i * ch + ch - 1) * sh + kh,
                       j * cw * sw:(j * cw + cw - 1) * sw + kw, :].astype(np.float64)
            for u in range(ch):
                for v in range(cw):
                    win = region[:, u * sh:u * sh + kh, v * sw:v * sw + kw, :]
                    out[:, i * ch + u, j * cw + v, :] = (
                        np.einsum("bhwc,hwcf->bf", win, kernel[i, j]) + bias[i, j])
    return out


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("input_hw,kernel_size,grid,strides,padding", [
    ((8, 8), 3, 2, 1, "valid"),        # 6x6 output, 2x2 cells of 3x3
    ((9, 11), (3, 2), (1, 2), 1, "valid"),  # non-square, 7x10 output
    ((12, 12), 3, 3, 1, "same"),       # same padding
    ((11, 13), 3, (2, 1), 2, "same"),  # stride 2 + same: 6x7 output
    ((13, 13), 5, 3, 2, "valid"),      # 5x5 output? (13-5)//2+1 = 5 -> not /3
])
def test_matches_numpy_reference(impl, input_hw, kernel_size, grid, strides, padding):
    keras.utils.set_random_seed(1)
    x = np.random.default_rng(0).normal(size=(2, *input_hw, 3)).astype(np.float32)
    layer = LocallySharedConv2D(4, kernel_size, grid, strides=strides, padding=padding,
                                implementation=impl)
    out_shape = layer.compute_output_shape(x.shape)
    gr, gc = layer.grid
    if out_shape[1] % gr or out_shape[2] % gc:
        with pytest.raises(ValueError, match="not divisible"):
            layer(x)
        return
    layer.build(x.shape)
    rng = np.random.default_rng(2)
    kernel = rng.normal(size=layer.kernel.shape).astype(np.float32)
    bias = rng.normal(size=layer.bias.shape).astype(np.float32)
    layer.set_weights([kernel, bias])
    y = np.asarray(layer(x))
    ref = numpy_reference(x, kernel, bias, layer.strides, padding)
    assert y.shape == ref.shape == (2, *out_shape[1:])
    np.testing.assert_allclose(y, ref, atol=1e-4, rtol=1e-5)
    # the cells really differ: a plain conv with cell (0, 0)'s bank does not match
    if gr * gc > 1:
        plain = numpy_reference(x, np.broadcast_to(kernel[:1, :1], kernel.shape),
                                np.broadcast_to(bias[:1, :1], bias.shape), layer.strides, padding)
        assert np.abs(plain - ref).max() > 1e-2


def test_implementations_share_variables_and_agree():
    keras.utils.set_random_seed(3)
    x = np.random.default_rng(3).normal(size=(3, 10, 10, 5)).astype(np.float32)
    a = LocallySharedConv2D(6, 3, 2, implementation="extract_patches", activation="relu")
    b = LocallySharedConv2D(6, 3, 2, implementation="builtin", activation="relu")
    a.build(x.shape), b.build(x.shape)
    assert [v.shape for v in a.weights] == [v.shape for v in b.weights]
    assert [v.name for v in a.weights] == [v.name for v in b.weights]
    b.set_weights(a.get_weights())
    np.testing.assert_allclose(np.asarray(a(x)), np.asarray(b(x)), atol=1e-5)


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16])
@pytest.mark.parametrize("box", [(0, 0, 7, 9), (2, 3, 4, 5), (3, 0, 4, 9), (0, 4, 7, 5)])
def test_window_pad_gradient_equals_the_slice(box, dtype):
    """The training window (PAD gradient): the slice's values and the slice's gradient,
    also under tf.function and where windows overlap."""
    rng = np.random.default_rng(7)
    x = tf.Variable(rng.normal(size=(2, 7, 9, 3)).astype(np.float32))
    probe = tf.constant(rng.normal(size=(2, box[2], box[3], 3)), dtype)

    @tf.function
    def run(pad_gradient):
        with tf.GradientTape() as tape:
            v = tf.cast(x, dtype)
            a = window(v, *box, pad_gradient=pad_gradient)
            b = window(v, 0, 0, box[2], box[3], pad_gradient=pad_gradient)  # overlaps a
            loss = tf.reduce_sum(tf.cast(a * probe + b * b, tf.float32))
        return a, tape.gradient(loss, x)

    (a_fast, g_fast), (a_ref, g_ref) = run(True), run(False)
    np.testing.assert_array_equal(a_fast.numpy(), a_ref.numpy())
    np.testing.assert_allclose(g_fast.numpy(), g_ref.numpy(), rtol=1e-6, atol=1e-6)
    assert float(tf.reduce_max(tf.abs(g_ref))) > 0


def test_training_gradients_equal_inference_gradients():
    """`training=True` cuts the extract_patches cells with PAD-gradient windows: same outputs
    and gradients (the builtin TFLite path has no training variant)."""
    keras.utils.set_random_seed(4)
    x = tf.Variable(np.random.default_rng(4).normal(size=(2, 10, 10, 5)).astype(np.float32))
    layer = LocallySharedConv2D(6, 3, 2, implementation="extract_patches", activation="relu",
                                bias_initializer="random_normal")
    results = []
    for training in (True, False):
        with tf.GradientTape() as tape:
            y = layer(x, training=training)
            loss = tf.reduce_sum(y * tf.range(1.0, 1.0 + y.shape[-1]))
        results.append((y, tape.gradient(loss, [x, layer.kernel, layer.bias])))
    (y_t, g_t), (y_i, g_i) = results
    np.testing.assert_allclose(y_t.numpy(), y_i.numpy(), rtol=1e-6, atol=1e-6)
    for a, b in zip(g_t, g_i):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)


def test_builtin_graph_has_no_extract_patches():
    layer = LocallySharedConv2D(4, 3, 2, implementation="builtin")
    fn = tf.function(lambda t: layer(t))
    graph = fn.get_concrete_function(tf.TensorSpec([1, 8, 8, 3], tf.float32)).graph
    ops = {op.type for op in graph.get_operations()}
    assert "ExtractImagePatches" not in ops and "Conv2D" in ops
    server = LocallySharedConv2D(4, 3, 2)
    fn2 = tf.function(lambda t: server(t))
    ops2 = {op.type for op in fn2.get_concrete_function(
        tf.TensorSpec([1, 8, 8, 3], tf.float32)).graph.get_operations()}
    assert "ExtractImagePatches" in ops2


@pytest.mark.parametrize("impl", IMPLS)
def test_layer_contract(impl, tmp_path):
    keras.utils.set_random_seed(4)
    layer = LocallySharedConv2D(4, 3, (2, 3), padding="same", activation="relu",
                                implementation=impl, kernel_regularizer="l2", name="ls")
    check_config_round_trip(layer)
    model = check_symbolic_shape(layer, (None, 6, 9, 3))
    x = np.random.default_rng(4).normal(size=(2, 6, 9, 3)).astype(np.float32)
    y = model(x)
    assert tuple(y.shape) == (2, 6, 9, 4) and y.dtype == "float32"
    assert len(layer.trainable_weights) == 2
    assert tuple(layer.kernel.shape) == (2, 3, 3, 3, 3, 4)
    assert tuple(layer.bias.shape) == (2, 3, 4)
    check_gradients(model, x)
    check_fit_step(model, x)
    loaded = check_keras_save_load(model, x, tmp_path)
    assert loaded.get_layer("ls").implementation == impl


def test_mixed_bfloat16():
    layer = LocallySharedConv2D(4, 3, 2, dtype="mixed_bfloat16")
    y = layer(np.ones((1, 8, 8, 3), np.float32))
    assert y.dtype == "bfloat16" and layer.kernel.dtype == "float32"


def test_validation_errors():
    with pytest.raises(ValueError, match="implementation"):
        LocallySharedConv2D(4, 3, 2, implementation="xla")
    with pytest.raises(ValueError, match="padding"):
        LocallySharedConv2D(4, 3, 2, padding="full")
    with pytest.raises(ValueError, match="filters"):
        LocallySharedConv2D(0, 3, 2)
    with pytest.raises(ValueError, match=r"7x7.*2x2 grid"):
        LocallySharedConv2D(4, 3, 2)(np.zeros((1, 9, 9, 3), np.float32))
    with pytest.raises(ValueError, match="static"):
        LocallySharedConv2D(4, 3, 2).build((None, None, None, 3))
