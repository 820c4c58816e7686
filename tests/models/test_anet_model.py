import keras
import numpy as np
import pytest
import tensorflow as tf

from tfattr.layers import LocallySharedConv2D
from tfattr.models import anet_geometry, build_anet, rebuild_anet
from tfattr.presets import get_preset

SMALL = dict(patch_size=32, stagewise_filters=(4, 6, 5, 3), stagewise_kernel_sizes=(3, 3, 3, 2),
             stagewise_grids=(2, 3), fc_units=7)


def test_structure_and_shapes():
    keras.utils.set_random_seed(0)
    anet = build_anet(**SMALL)
    x = np.random.default_rng(0).uniform(-1, 1, (3, 32, 32, 3)).astype(np.float32)
    assert anet(x).shape == (3, 7)
    ls = [l for l in anet.layers if isinstance(l, LocallySharedConv2D)]
    assert [l.name for l in ls] == ["anet_conv3_ls", "anet_conv4_ls"]
    assert ls[0].grid == (2, 2) and ls[1].grid == (3, 3)
    assert tuple(anet.get_layer("anet_conv3_ls").kernel.shape) == (2, 2, 3, 3, 6, 5)
    geo = anet_geometry(**SMALL)
    assert (geo.conv1_size, geo.pool1_size, geo.conv2_size, geo.pool2_size) == (30, 15, 13, 6)
    assert (geo.conv3_size, geo.conv4_size, geo.total_stride) == (4, 3, 4)
    assert geo.conv3_cell == (2, 2) and geo.stride_unit == (8, 8)


def test_geometry_errors():
    with pytest.raises(ValueError, match=r"C3 output 5x5.*2x2 grid"):
        anet_geometry(patch_size=36, stagewise_kernel_sizes=(3, 3, 3, 3), stagewise_grids=(2, 2))
    with pytest.raises(ValueError, match="too small"):
        build_anet(patch_size=12)
    with pytest.raises(ValueError, match="implementation"):
        build_anet(**SMALL, implementation="fast")


def test_rebuild_with_builtin_same_outputs():
    keras.utils.set_random_seed(1)
    anet = build_anet(**SMALL)
    lite = rebuild_anet(anet, "builtin", **SMALL)
    assert lite.get_layer("anet_conv3_ls").implementation == "builtin"
    assert [v.path for v in lite.weights] == [v.path for v in anet.weights]
    x = np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(lite(x).numpy(), anet(x).numpy(), atol=1e-5)


def test_contract(tmp_path):
    keras.utils.set_random_seed(2)
    anet = build_anet(**SMALL)
    x = np.random.default_rng(2).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(anet(x, training=True)))
    grads = tape.gradient(loss, anet.trainable_variables)
    assert len(grads) == 10
    for v, g in zip(anet.trainable_variables, grads):
        assert g is not None and np.all(np.isfinite(g.numpy())), v.path
    anet.compile(optimizer="sgd", loss="mse")
    hist = anet.fit(x, np.zeros((4, 7), np.float32), epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0])
    path = tmp_path / "anet.keras"
    anet.save(path)
    np.testing.assert_array_equal(keras.saving.load_model(path)(x).numpy(), anet(x).numpy())


@pytest.mark.parametrize("name", ["tiny", "paper"])
def test_preset_anet_shapes(name):
    preset = get_preset(name)
    anet = build_anet(**preset.anet)
    p = preset.patch_size
    assert anet.input_shape == (None, p, p, 3)
    assert anet.output_shape == (None, preset.anet["fc_units"])


def test_batch_norm_structure_and_rebuild():
    keras.utils.set_random_seed(3)
    anet = build_anet(**SMALL, batch_norm=True)
    names = [l.name for l in anet.layers]
    for conv in ("anet_conv1", "anet_conv2", "anet_conv3_ls", "anet_conv4_ls"):
        i = names.index(conv)
        assert names[i + 1:i + 3] == [conv + "_bn", conv + "_relu"]
        assert not anet.get_layer(conv).use_bias
    x = np.random.default_rng(3).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    anet.fit(x, np.zeros((2, 7), np.float32), epochs=1, verbose=0) if anet.compile(
        optimizer="sgd", loss="mse") is None else None  # moves the BN statistics
    lite = rebuild_anet(anet, "builtin", **SMALL, batch_norm=True)
    np.testing.assert_allclose(lite(x).numpy(), anet(x).numpy(), atol=1e-5)
