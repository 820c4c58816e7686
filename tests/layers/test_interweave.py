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
from tfattr.layers import InterweavedANet, extract_patch_crops
from tfattr.models import build_anet
from tfattr.presets import get_preset

IMPLS = ["extract_patches", "builtin"]

# Small ANets. "a": patch 32, maps 30-15-13-6, C3 4x4 (2x2 cells of 2), C4 3x3
# (3x3 cells of 1), stride unit 8. "tiny": the tiny preset (patch 40, C3 6x6
# in 2x2 cells of 3, C4 4x4 in 2x2 cells of 2, stride unit 12). "rect":
# non-square grids, stride unit 12 x 8.
ANETS = {
    "a": dict(patch_size=32, stagewise_filters=(4, 6, 5, 3), stagewise_kernel_sizes=(3, 3, 3, 2),
              stagewise_grids=(2, 3), fc_units=7),
    "tiny": get_preset("tiny").anet,
    "rect": dict(patch_size=40, stagewise_filters=(4, 6, 5, 3),
                 stagewise_kernel_sizes=(5, 3, 3, 3), stagewise_grids=((2, 3), (1, 2)),
                 fc_units=6),
    # batch_norm=True: conv -> BN -> ReLU; BN in inference mode per channel.
    "a_bn": dict(patch_size=32, stagewise_filters=(4, 6, 5, 3),
                 stagewise_kernel_sizes=(3, 3, 3, 2), stagewise_grids=(2, 3), fc_units=7,
                 batch_norm=True),
    "tiny_bn": {**get_preset("tiny").anet, "batch_norm": True},
}
_CACHE = {}


def make_anet(key):
    """A seeded ANet with random (non-zero) biases, cached per key."""
    if key not in _CACHE:
        keras.utils.set_random_seed(10)
        anet = build_anet(**ANETS[key])
        rng = np.random.default_rng(11)
        anet.set_weights([w if w.ndim > 1 and w.ndim != 3 else  # kernels (not LS biases)
                          0.1 * rng.normal(size=w.shape).astype(np.float32)
                          for w in anet.get_weights()])
        for layer in anet.layers:  # BN: non-trivial, valid statistics
            if isinstance(layer, keras.layers.BatchNormalization):
                c = layer.get_weights()[0].shape
                layer.set_weights([rng.uniform(0.5, 1.5, c), 0.2 * rng.normal(size=c),
                                   0.2 * rng.normal(size=c), rng.uniform(0.5, 1.5, c)])
        _CACHE[key] = anet
    return _CACHE[key]


def naive_features(anet, region, patch_size, stride):
    """Reference: crop every patch and run ANet on it, one call per patch."""
    _, h, w, _ = region.shape
    feats = []
    for y in range(0, h - patch_size + 1, stride):
        for x in range(0, w - patch_size + 1, stride):
            feats.append(anet(region[:, y:y + patch_size, x:x + patch_size, :]))
    return tf.stack(feats, axis=1)


CASES = [  # (anet, region (h, w), stride, expected number of patches)
    ("a", (32, 32), 8, 1),
    ("a", (40, 40), 8, 4),
    ("a", (41, 43), 8, 4),     # odd: extra border pixels unused
    ("a", (48, 48), 8, 9),
    ("a", (57, 57), 8, 16),    # odd
    ("a", (64, 64), 16, 9),    # stride 2 units
    ("a", (48, 57), 8, 12),    # non-square region
    ("tiny", (64, 64), 12, 9),
    ("tiny", (77, 77), 12, 16),  # odd
    ("tiny", (63, 63), 24, 1),   # region > patch, one patch
    ("rect", (64, 65), 24, 4),
    ("a_bn", (48, 57), 8, 12),
    ("tiny_bn", (64, 64), 12, 9),
    ("tiny_bn", (77, 77), 12, 16),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("key,region_hw,stride,num_patches", CASES)
def test_equals_patch_by_patch(key, region_hw, stride, num_patches, impl):
    anet = make_anet(key)
    p = ANETS[key]["patch_size"]
    region = tf.constant(np.random.default_rng(1).uniform(-1, 1, (2, *region_hw, 3)),
                         tf.float32)
    layer = InterweavedANet(anet, p, stride, implementation=impl)
    out = layer(region)
    ref = naive_features(anet, region, p, stride)
    assert out.shape == ref.shape == (2, num_patches, anet.output_shape[-1])
    assert layer.compute_output_shape(region.shape) == (2, num_patches, anet.output_shape[-1])
    assert float(tf.reduce_max(tf.abs(ref))) > 0.1  # not a dead network
    np.testing.assert_allclose(out.numpy(), ref.numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("key,region_hw,stride", [("a", (57, 50), 8), ("tiny", (64, 64), 12)])
def test_extract_patch_crops_order(key, region_hw, stride):
    """The naive training path: same patches, same row-major order."""
    anet = make_anet(key)
    p = ANETS[key]["patch_size"]
    region = tf.constant(np.random.default_rng(4).uniform(-1, 1, (2, *region_hw, 3)), tf.float32)
    crops = extract_patch_crops(region, p, stride)
    ref = naive_features(anet, region, p, stride)
    assert crops.shape[0] == ref.shape[0] * ref.shape[1]
    np.testing.assert_allclose(anet(crops).numpy().reshape(ref.shape), ref.numpy(), atol=1e-4)


@pytest.mark.parametrize("key,region_hw,stride", [("a", (57, 57), 8), ("tiny", (77, 77), 12),
                                                   ("rect", (64, 65), 24)])
def test_implementations_agree(key, region_hw, stride):
    anet = make_anet(key)
    p = ANETS[key]["patch_size"]
    region = np.random.default_rng(2).uniform(-1, 1, (3, *region_hw, 3)).astype(np.float32)
    a = InterweavedANet(anet, p, stride, implementation="extract_patches")(region)
    b = InterweavedANet(anet, p, stride, implementation="builtin")(region)
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("key,region_hw,stride", [("a", (49, 49), 8), ("tiny", (64, 64), 12),
                                                   ("tiny_bn", (64, 64), 12)])
def test_gradients_equal_patch_by_patch(key, region_hw, stride, impl):
    anet = make_anet(key)
    p = ANETS[key]["patch_size"]
    rng = np.random.default_rng(3)
    region = tf.Variable(rng.uniform(-1, 1, (2, *region_hw, 3)).astype(np.float32))
    layer = InterweavedANet(anet, p, stride, implementation=impl)
    n = layer.compute_output_shape(region.shape)[1]
    probe = tf.constant(rng.normal(size=(2, n, anet.output_shape[-1])), tf.float32)
    grads = []
    for fn in (lambda r: layer(r), lambda r: naive_features(anet, r, p, stride)):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(fn(region) * probe)
        grads.append(tape.gradient(loss, [region] + anet.trainable_variables))
    for var, g_iw, g_ref in zip([region] + anet.trainable_variables, *grads):
        assert g_iw is not None and g_ref is not None, var.name
        scale = max(1.0, float(tf.reduce_max(tf.abs(g_ref))))
        np.testing.assert_allclose(g_iw.numpy(), g_ref.numpy(), atol=1e-4 * scale, rtol=0,
                                   err_msg=var.name)
    assert float(tf.reduce_max(tf.abs(grads[1][0]))) > 0


@pytest.mark.parametrize("key,region_hw,stride", [("tiny_bn", (64, 64), 12), ("a", (49, 49), 8)])
def test_training_pass_equals_plain_slices(key, region_hw, stride, monkeypatch):
    """The training pass (batch-norm statistics over the shared maps, PAD-gradient windows)
    against the same pass with plain slices: same features, same gradients."""
    import tfattr.layers.interweave as interweave
    import tfattr.layers.locally_shared as locally_shared

    anet = make_anet(key)
    p = ANETS[key]["patch_size"]
    rng = np.random.default_rng(5)
    region = tf.Variable(rng.uniform(-1, 1, (3, *region_hw, 3)).astype(np.float32))
    layer = InterweavedANet(anet, p, stride)
    n = layer.compute_output_shape(region.shape)[1]
    probe = tf.constant(rng.normal(size=(3, n, anet.output_shape[-1])), tf.float32)
    variables = [region] + anet.trainable_variables

    def run():
        with tf.GradientTape() as tape:
            out = layer(region, training=True)
            loss = tf.reduce_sum(out * probe)
        return out, tape.gradient(loss, variables)

    out_fast, g_fast = run()
    plain = locally_shared.window
    for module in (interweave, locally_shared):
        monkeypatch.setattr(module, "window", lambda x, r, c, h, w, pad_gradient=False:
                            plain(x, r, c, h, w, pad_gradient=False))
    out_ref, g_ref = run()
    np.testing.assert_allclose(out_fast.numpy(), out_ref.numpy(), rtol=1e-6, atol=1e-6)
    for var, a, b in zip(variables, g_fast, g_ref):
        scale = max(1.0, float(tf.reduce_max(tf.abs(b))))
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5 * scale, rtol=0,
                                   err_msg=var.name)
    assert float(tf.reduce_max(tf.abs(g_ref[0]))) > 0


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_fused_batch_norm_equals_keras_layer(dtype):
    """The fine-tuning pass' fused BN against `BatchNormalization(training=True)`: output,
    gradients (input, gamma, beta) and both moving averages (the biased batch variance:
    with momentum 0.5 and 18 values per channel, the kernel's Bessel-corrected variance
    would be 6 % off)."""
    from tfattr.layers.interweave import _can_fuse_batch_norm, _fused_batch_norm_train

    rng = np.random.default_rng(8)
    bn = keras.layers.BatchNormalization(momentum=0.5, dtype=dtype)
    x = tf.Variable(rng.normal(2.0, 3.0, (2, 3, 3, 5)).astype(np.float32))
    bn.build(x.shape)
    state = [rng.uniform(0.5, 1.5, 5), rng.normal(size=5), rng.normal(size=5),
             rng.uniform(0.5, 1.5, 5)]
    bn.set_weights([w.astype(np.float32) for w in state])
    probe = tf.constant(rng.normal(size=x.shape), tf.float32)
    compute = tf.bfloat16 if dtype == "mixed_bfloat16" else tf.float32
    assert _can_fuse_batch_norm(bn, tf.cast(x, compute))

    def run(fn):
        bn.set_weights([w.astype(np.float32) for w in state])
        with tf.GradientTape() as tape:
            y = fn(tf.cast(x, compute))
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * probe)
        grads = tape.gradient(loss, [x, bn.gamma, bn.beta])
        return [y.numpy().astype(np.float32)] + [g.numpy() for g in grads] + \
            [bn.moving_mean.numpy(), bn.moving_variance.numpy()]

    fused = run(lambda v: _fused_batch_norm_train(bn, v))
    plain = run(lambda v: bn(v, training=True))
    assert fused[0].dtype == plain[0].dtype
    tol = 2e-2 if dtype == "mixed_bfloat16" else 1e-5
    for name, a, b in zip(["y", "dx", "dgamma", "dbeta", "moving_mean", "moving_variance"],
                          fused, plain):
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, atol=tol * scale, rtol=0, err_msg=name)
    assert not np.allclose(fused[5], state[3])  # the moving variance moved
    frozen = keras.layers.BatchNormalization()
    frozen.build(x.shape)
    frozen.trainable = False  # Keras normalizes with the moving statistics: not fused
    assert not _can_fuse_batch_norm(frozen, x)
    assert not _can_fuse_batch_norm(keras.layers.BatchNormalization(axis=1), x)


def test_training_pass_fused_batch_norm_equals_keras(monkeypatch):
    """The interweaved fine-tuning pass with the fused BN (the default) against the same
    pass through the Keras BN layers: features, gradients and moving statistics."""
    import tfattr.layers.interweave as interweave

    anet = make_anet("tiny_bn")
    rng = np.random.default_rng(9)
    region = tf.Variable(rng.uniform(-1, 1, (3, 64, 64, 3)).astype(np.float32))
    layer = InterweavedANet(anet, 40, 12)
    n = layer.compute_output_shape(region.shape)[1]
    probe = tf.constant(rng.normal(size=(3, n, anet.output_shape[-1])), tf.float32)
    variables = [region] + anet.trainable_variables
    state = anet.get_weights()  # the BN moving statistics move in a training pass
    calls = []
    fused_train = interweave._fused_batch_norm_train
    monkeypatch.setattr(interweave, "_fused_batch_norm_train",
                        lambda bn, x: calls.append(bn.name) or fused_train(bn, x))

    def run():
        anet.set_weights(state)
        with tf.GradientTape() as tape:
            out = layer(region, training=True)
            loss = tf.reduce_sum(out * probe)
        grads = tape.gradient(loss, variables)
        return out.numpy(), [g.numpy() for g in grads], anet.get_weights()

    out_fused, g_fused, stats_fused = run()
    assert len(calls) == 4  # one fused BN per conv, over all of its maps at once
    monkeypatch.setattr(interweave, "_can_fuse_batch_norm", lambda bn, x: False)
    out_ref, g_ref, stats_ref = run()
    anet.set_weights(state)
    assert len(calls) == 4
    np.testing.assert_allclose(out_fused, out_ref, rtol=0, atol=1e-5)
    for var, a, b in zip(variables, g_fused, g_ref):
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, atol=1e-4 * scale, rtol=0, err_msg=var.name)
    for a, b in zip(stats_fused, stats_ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(a, b) for a, b in zip(stats_fused, state))


def test_reuses_anet_variables():
    anet = make_anet("a")
    layer = InterweavedANet(anet, 32, 8)
    layer(np.zeros((1, 40, 40, 3), np.float32))
    assert {id(v) for v in layer.weights} == {id(v) for v in anet.weights}


def test_validation_errors():
    anet = make_anet("a")
    with pytest.raises(ValueError, match=r"patch_stride=12 .*stride unit 8x8"):
        InterweavedANet(anet, 32, 12)
    with pytest.raises(ValueError, match="patch_stride=4"):
        InterweavedANet(anet, 32, 4)  # multiple of S=4 but not of the C3 cell
    with pytest.raises(ValueError, match="patch_size=40"):
        InterweavedANet(anet, 40, 8)
    with pytest.raises(ValueError, match="smaller than one patch"):
        InterweavedANet(anet, 32, 8)(np.zeros((1, 31, 40, 3), np.float32))
    with pytest.raises(ValueError, match="static size"):
        InterweavedANet(anet, 32, 8).build((None, None, None, 3))
    with pytest.raises(ValueError, match="implementation"):
        InterweavedANet(anet, 32, 8, implementation="gather")
    other = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="build_anet"):
        InterweavedANet(other, 32, 8)


@pytest.mark.parametrize("impl", IMPLS)
def test_layer_contract(impl, tmp_path):
    keras.utils.set_random_seed(5)
    anet = build_anet(**ANETS["a"])
    layer = InterweavedANet(anet, 32, 8, implementation=impl, name="iw")
    clone = check_config_round_trip(layer)
    assert clone.implementation == impl and clone.patch_stride == 8
    model = check_symbolic_shape(layer, (None, 49, 48, 3))
    x = np.random.default_rng(5).uniform(-1, 1, (2, 49, 48, 3)).astype(np.float32)
    y = model(x)
    assert tuple(y.shape) == (2, 9, 7) and y.dtype == "float32"
    assert len(model.trainable_weights) == len(anet.trainable_weights) == 10
    check_gradients(model, x)
    check_fit_step(model, x)
    loaded = check_keras_save_load(model, x, tmp_path)
    assert loaded.get_layer("iw").implementation == impl


@pytest.mark.parametrize("key", ["tiny", "tiny_bn"])
def test_builtin_converts_to_tflite_builtins_only(key):
    """The builtin path has no ExtractImagePatches and converts with builtins only."""
    anet = make_anet(key)
    layer = InterweavedANet(anet, 40, 12, implementation="builtin")
    fn = tf.function(lambda r: layer(r), input_signature=[tf.TensorSpec([1, 64, 64, 3])])
    concrete = fn.get_concrete_function()
    assert "ExtractImagePatches" not in {op.type for op in concrete.graph.get_operations()}
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete])  # freezes variables
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    tflite_model = converter.convert()
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    interpreter = litert.Interpreter(model_content=tflite_model)
    interpreter.allocate_tensors()
    x = np.random.default_rng(6).uniform(-1, 1, (1, 64, 64, 3)).astype(np.float32)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(out, naive_features(anet, tf.constant(x), 40, 12).numpy(),
                               atol=1e-4)


_SYNC_BN_SCRIPT = r"""
import numpy as np, tensorflow as tf
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from tfattr.layers import InterweavedANet
from tfattr.layers.interweave import _can_fuse_batch_norm
from tfattr.models import build_anet
from tfattr.presets import get_preset

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    keras.utils.set_random_seed(3)
    anet = build_anet(**{**get_preset("tiny").anet, "batch_norm": True})
    layer = InterweavedANet(anet, 40, 12)
bn = [l for l in anet.layers if isinstance(l, keras.layers.BatchNormalization)][0]
region = np.random.default_rng(4).normal(0.5, 1.0, (4, 64, 64, 3)).astype(np.float32)
x = tf.zeros((1, 2, 2, bn.gamma.shape[0]))
fusable = strategy.run(lambda: tf.constant(_can_fuse_batch_norm(bn, x)))
assert not any(bool(v) for v in strategy.experimental_local_results(fusable)), fusable
assert _can_fuse_batch_norm(bn, x)  # one replica (the cross-replica context's default)
start = [v.numpy() for v in anet.weights]
data = strategy.experimental_distribute_dataset(
    tf.data.Dataset.from_tensor_slices(region).batch(4))
per_replica = strategy.run(lambda r: layer(r, training=True), args=(next(iter(data)),))
two = np.concatenate([t.numpy() for t in strategy.experimental_local_results(per_replica)])
moving_two = bn.moving_variance.numpy()
for v, w in zip(anet.weights, start):
    v.assign(w)
one = layer(region, training=True).numpy()  # one device, the global batch, fused BN
np.testing.assert_allclose(two, one, rtol=0, atol=1e-4)
np.testing.assert_allclose(moving_two, bn.moving_variance.numpy(), rtol=1e-5, atol=1e-6)
print("SYNC_BN_OK")
"""


def test_training_pass_synchronized_batch_norm_across_replicas():
    """Under MirroredStrategy on 2 logical CPUs the synchronized BN is not fused (the Keras
    layer all-reduces the statistics): the 2-replica training pass equals one device's pass
    over the global batch. A subprocess: logical devices must be set before TF starts."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", _SYNC_BN_SCRIPT], capture_output=True,
                          text=True, timeout=300, env=env,
                          cwd=str(Path(__file__).resolve().parents[2]))
    assert proc.returncode == 0 and "SYNC_BN_OK" in proc.stdout, proc.stderr[-3000:]
