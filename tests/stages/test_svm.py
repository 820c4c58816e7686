"""SVM stage: LinearSVC per attribute folded into the head equals sklearn (per patch, averaged)."""

import numpy as np
from sklearn.svm import LinearSVC

from tfattr.stages.svm import best_threshold, build_head, fit_svms, split_by_identity


W = np.random.default_rng(42).normal(size=(10, 40))


def _features(rng, n, patches=4, dims=10, w=W):
    feats = rng.normal(loc=2.0, scale=3.0, size=(n, patches, dims)).astype(np.float32)
    labels = ((feats.mean(1) - 2.0) @ w + rng.normal(scale=0.5, size=(n, 40)) > 0).astype(np.uint8)
    labels[:, 7] = 1  # one attribute with a single class
    return feats, labels


def test_folded_head_equals_sklearn_decision_function():
    rng = np.random.default_rng(0)
    f_fit, y_fit = _features(rng, 60)
    f_hold, y_hold = _features(rng, 30)
    params = fit_svms(f_fit, y_fit, f_hold, y_hold, c_grid=(0.1,), log=lambda m: None)
    head = build_head(params, 10)

    flat = f_fit.reshape(-1, 10).astype(np.float64)
    mu, sigma = flat.mean(0), flat.std(0)
    test = rng.normal(loc=2.0, scale=3.0, size=(5, 4, 10)).astype(np.float32)
    per_patch = head.patch_scores(test).numpy()
    averaged = head(test)["attribute_scores"].numpy()
    for a in (0, 3, 39):
        svm = LinearSVC(C=0.1, max_iter=5000, dual="auto").fit((flat - mu) / sigma,
                                                               np.repeat(y_fit[:, a], 4))
        sk = svm.decision_function((test.reshape(-1, 10) - mu) / sigma).reshape(5, 4)
        np.testing.assert_allclose(per_patch[..., a], sk, atol=1e-5)
        np.testing.assert_allclose(averaged[:, a], sk.mean(1), atol=1e-5)
    # The single-class attribute is a constant "present".
    assert (averaged[:, 7] > 0).all()
    assert params["holdout_accuracy"].mean() > 0.75
    probs = head(test)["attribute_probabilities"].numpy()
    assert ((probs >= 0) & (probs <= 1)).all()


def test_split_by_identity_is_identity_disjoint():
    class Data:
        identities = np.repeat(np.arange(10), 3)

    fit, hold = split_by_identity(Data, np.arange(30), 0.3, seed=1)
    assert len(fit) + len(hold) == 30 and len(hold) == 9
    assert not set(Data.identities[fit]) & set(Data.identities[hold])


def test_best_threshold_maximises_accuracy_and_prefers_zero():
    scores = np.array([-2.0, -1.0, 0.5, 1.0, 3.0])
    assert best_threshold(scores, [0, 0, 0, 1, 1]) == 0.75  # 0 would misclassify 0.5
    assert best_threshold(scores, [0, 0, 1, 1, 1]) == 0.0  # 0 is already perfect
    assert best_threshold(np.array([0.2, 0.3]), [0, 0]) > 0.3  # all negative: above the max


def test_holdout_threshold_is_folded_into_the_intercept():
    rng = np.random.default_rng(1)
    f_fit, y_fit = _features(rng, 60)
    f_hold, y_hold = _features(rng, 30)
    zero = fit_svms(f_fit, y_fit, f_hold, y_hold, c_grid=(0.1,), log=lambda m: None)
    held = fit_svms(f_fit, y_fit, f_hold, y_hold, c_grid=(0.1,), log=lambda m: None,
                    threshold="holdout")
    np.testing.assert_allclose(held["coef"], zero["coef"])
    np.testing.assert_allclose(held["intercept"], zero["intercept"] - held["threshold"])
    assert (held["holdout_accuracy"] >= zero["holdout_accuracy"] - 1e-12).all()
    scores = (f_hold @ held["coef"].T + held["intercept"]).mean(1)
    np.testing.assert_allclose(((scores > 0) == y_hold).mean(0), held["holdout_accuracy"])
    assert held["threshold"][7] == 0.0  # the single-class attribute keeps its constant
