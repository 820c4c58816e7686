"""AttributeSVMHead: folded LinearSVCs equal sklearn's decision_function (STYLE.md sec. 6)."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.svm import LinearSVC

from tfattr.layers.svm_head import OUTPUT_PROBABILITIES, OUTPUT_SCORES, AttributeSVMHead

NUM_ATTR = 40


def _fitted_svms(rng, features=12, samples=120):
    x = rng.normal(size=(samples, features)).astype(np.float32)
    true_w = rng.normal(size=(features, NUM_ATTR))
    y = (x @ true_w + rng.normal(scale=0.5, size=(samples, NUM_ATTR))) > 0
    svms = [LinearSVC(C=0.1, max_iter=5000).fit(x, y[:, a]) for a in range(NUM_ATTR)]
    coef = np.concatenate([s.coef_ for s in svms], 0)
    intercept = np.concatenate([s.intercept_ for s in svms], 0)
    return svms, coef, intercept


def test_folded_head_equals_sklearn_decision_function_per_patch_and_averaged():
    rng = np.random.default_rng(0)
    svms, coef, intercept = _fitted_svms(rng)
    head = AttributeSVMHead()
    scale = rng.uniform(0.5, 2.0, NUM_ATTR)
    offset = rng.normal(size=NUM_ATTR)
    head.set_svm(coef, intercept, scale, offset)

    batch, patches = 5, 7
    feats = rng.normal(size=(batch, patches, 12)).astype(np.float32)
    flat = feats.reshape(-1, 12)
    sk = np.stack([s.decision_function(flat) for s in svms], 1).reshape(batch, patches, NUM_ATTR)

    per_patch = head.patch_scores(tf.constant(feats)).numpy()
    np.testing.assert_allclose(per_patch, sk, atol=1e-5)
    out = head(feats)
    np.testing.assert_allclose(out[OUTPUT_SCORES].numpy(), sk.mean(1), atol=1e-5)
    expected_p = 1 / (1 + np.exp(-(scale * sk.mean(1) + offset)))
    np.testing.assert_allclose(out[OUTPUT_PROBABILITIES].numpy(), expected_p, atol=1e-5)
    # One patch ([B, F]) is the per-patch decision function itself.
    np.testing.assert_allclose(head(flat)[OUTPUT_SCORES].numpy(), sk.reshape(-1, NUM_ATTR),
                               atol=1e-5)


def test_config_round_trip_shapes_and_keras_save(tmp_path):
    rng = np.random.default_rng(1)
    _, coef, intercept = _fitted_svms(rng, features=8, samples=60)
    head = AttributeSVMHead(name="attribute_svm_head")
    head.set_svm(coef, intercept)
    config = head.get_config()
    clone = AttributeSVMHead.from_config(config)
    assert json.dumps(clone.get_config(), sort_keys=True) == json.dumps(config, sort_keys=True)
    assert clone.trainable is False

    inputs = keras.Input((4, 8))
    outputs = head(inputs)
    assert tuple(outputs[OUTPUT_SCORES].shape) == (None, NUM_ATTR)
    assert head.compute_output_shape((None, 4, 8))[OUTPUT_SCORES] == (None, NUM_ATTR)
    model = keras.Model(inputs, outputs)
    x = rng.normal(size=(3, 4, 8)).astype(np.float32)
    path = tmp_path / "head.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    for key in (OUTPUT_SCORES, OUTPUT_PROBABILITIES):
        np.testing.assert_allclose(loaded(x)[key].numpy(), model(x)[key].numpy(), atol=1e-6)
        assert model(x)[key].dtype == tf.float32


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="num_attributes"):
        AttributeSVMHead(num_attributes=0)
    head = AttributeSVMHead()
    head.build((None, 3, 6))
    with pytest.raises(ValueError, match="coef"):
        head.set_svm(np.zeros((40, 5)), np.zeros(40))
