import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfattr.models import (LNetClassifier, build_lnet, response_map_geometry,
                           response_map_size, response_map_stride)
from tfattr.presets import get_preset

SMALL = dict(stagewise_filters=(4, 6, 8, 8, 5), stagewise_kernel_sizes=(5, 3, 3, 3, 3),
             stagewise_strides=(2, 1, 1, 1, 1))


def test_fully_convolutional_outputs():
    keras.utils.set_random_seed(0)
    lnet = build_lnet(name="lnet_o", **SMALL)
    for h, w in [(33, 33), (48, 61)]:
        x = np.random.default_rng(0).uniform(-1, 1, (2, h, w, 3)).astype(np.float32)
        out = lnet(x)
        assert set(out) == {"features", "response_map"}
        fh, fw = response_map_size(lnet, h), response_map_size(lnet, w)
        assert out["features"].shape == (2, fh, fw, 5)
        assert out["response_map"].shape == (2, fh, fw)
        assert np.all(out["features"].numpy() >= 0)  # ReLU'd C5
        np.testing.assert_allclose(out["response_map"].numpy(),
                                   out["features"].numpy().mean(-1), atol=1e-6)
    assert lnet.get_layer("lnet_o_conv1").kernel.shape == (5, 5, 3, 4)


def test_tiny_preset_shapes():
    preset = get_preset("tiny")
    lnet = build_lnet(**preset.lnet_o)
    out = lnet(np.zeros((1, preset.lnet_o_input_size, preset.lnet_o_input_size, 3), np.float32))
    side = response_map_size(lnet, preset.lnet_o_input_size)
    assert out["features"].shape == (1, side, side, preset.lnet_o["stagewise_filters"][-1])
    assert side >= 8


def test_paper_preset_alexnet_shape():
    """AlexNet arithmetic: 227 -> C1 55 -> pool 27 -> pool 13; C5 has 256 channels."""
    lnet = build_lnet(**get_preset("paper").lnet_s)
    assert lnet.compute_output_spec(keras.KerasTensor((1, 227, 227, 3)))["features"].shape == (
        1, 13, 13, 256)
    assert response_map_size(lnet, 227) == 13
    geo = response_map_geometry(lnet)
    assert geo.stride == 16 == response_map_stride(lnet)
    assert geo.receptive_field == 163  # AlexNet conv5 receptive field
    assert geo.offset == 17.0  # center of cell 0: (11-1)/2 + 4*(3-1)/2 + ... (valid layers)


def test_geometry_matches_gradient_support():
    """Input pixels that influence response-map cell (i, j) lie in its receptive
    field box, and the box's center is the geometry's cell center."""
    keras.utils.set_random_seed(1)
    lnet = build_lnet(**SMALL)
    geo = response_map_geometry(lnet)
    size = 64
    x = tf.Variable(np.random.default_rng(1).uniform(0.5, 1, (1, size, size, 3)).astype(np.float32))
    side = response_map_size(lnet, size)
    i = j = side // 2
    with tf.GradientTape() as tape:
        feats = lnet(x)["features"]
        y = tf.reduce_sum(feats[0, i, j])
    g = np.abs(tape.gradient(y, x).numpy()[0]).sum(-1)
    rows, cols = np.nonzero(g)
    box = geo.cell_boxes(side, side)[i * side + j]  # ymin, xmin, ymax, xmax
    assert rows.min() >= box[0] and rows.max() + 1 <= box[2]
    assert cols.min() >= box[1] and cols.max() + 1 <= box[3]
    center = geo.cell_centers(side)[i]
    assert box[0] + geo.receptive_field / 2 - 0.5 == pytest.approx(center)
    # the receptive field is tight: the support reaches within a pool stride of its edges
    assert rows.max() + 1 - rows.min() > geo.receptive_field - 2 * geo.stride


def test_classifier_contract(tmp_path):
    keras.utils.set_random_seed(2)
    backbone = build_lnet(**SMALL)
    clf = LNetClassifier(backbone, num_outputs=3, dropout=0.1)
    x = np.random.default_rng(2).uniform(-1, 1, (4, 40, 40, 3)).astype(np.float32)
    logits = clf(x)
    assert logits.shape == (4, 3) and logits.dtype == "float32"
    # config round trip (identical JSON)
    config = clf.get_config()
    expected = json.dumps(config, sort_keys=True)
    clone = LNetClassifier.from_config(config)
    assert json.dumps(clone.get_config(), sort_keys=True) == expected
    assert json.dumps(config, sort_keys=True) == expected  # from_config leaves it intact
    # every trainable variable gets a gradient
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(keras.losses.binary_crossentropy(
            np.ones((4, 3), np.float32), clf(x, training=True), from_logits=True))
    grads = tape.gradient(loss, clf.trainable_variables)
    assert len(grads) == 2 * 5 + 2
    for v, g in zip(clf.trainable_variables, grads):
        assert g is not None and np.all(np.isfinite(g.numpy())), v.path
    # one fit step (sigmoid fine-tuning as in the lnet stages)
    clf.compile(optimizer="sgd", loss=keras.losses.BinaryCrossentropy(from_logits=True))
    hist = clf.fit(x, np.ones((4, 3), np.float32), epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0])
    # .keras save/load: identical logits, backbone weights shared with the head's graph
    path = tmp_path / "clf.keras"
    clf.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded(x).numpy(), clf(x).numpy())
    np.testing.assert_array_equal(loaded.backbone(x)["response_map"].numpy(),
                                  backbone(x)["response_map"].numpy())


def test_bad_stage_lists():
    with pytest.raises(ValueError, match="stagewise_filters"):
        build_lnet(stagewise_filters=(4, 4))


def test_log_sum_exp_pooling_matches_numpy():
    from tfattr.models.lnet import LogSumExpPooling2D

    x = np.random.default_rng(5).uniform(0, 3, (2, 4, 5, 3)).astype(np.float32)
    for r in (0.5, 5.0):
        expected = np.log(np.exp(r * x).mean(axis=(1, 2))) / r
        np.testing.assert_allclose(LogSumExpPooling2D(r)(x).numpy(), expected, rtol=1e-5)
    # between the average (r -> 0) and the max (r -> inf)
    np.testing.assert_allclose(LogSumExpPooling2D(1e-2)(x).numpy(), x.mean(axis=(1, 2)), atol=2e-2)
    np.testing.assert_allclose(LogSumExpPooling2D(200.0)(x).numpy(), x.max(axis=(1, 2)), atol=0.05)


def test_classifier_lse_head_round_trip(tmp_path):
    keras.utils.set_random_seed(3)
    clf = LNetClassifier(build_lnet(**SMALL), num_outputs=2, pooling="lse", lse_sharpness=3.0)
    x = np.random.default_rng(3).uniform(-1, 1, (2, 40, 40, 3)).astype(np.float32)
    features = clf.backbone(x)["features"].numpy()
    pooled = np.log(np.exp(3.0 * features).mean(axis=(1, 2))) / 3.0
    dense = clf.get_layer("lnet_classifier_logits")
    expected = pooled @ dense.kernel.numpy() + dense.bias.numpy()
    np.testing.assert_allclose(clf(x).numpy(), expected, rtol=1e-4, atol=1e-5)
    path = tmp_path / "lse.keras"
    clf.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.pooling == "lse" and loaded.lse_sharpness == 3.0
    np.testing.assert_array_equal(loaded(x).numpy(), clf(x).numpy())
    with pytest.raises(ValueError, match="pooling"):
        LNetClassifier(build_lnet(**SMALL), num_outputs=2, pooling="max")
