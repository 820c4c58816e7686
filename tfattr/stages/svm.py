"""SVM stage (paper Sec. 2.2 Fig. 2(d), Sec. 3): LinearSVC per attribute on per-patch FC.

1. The SVM split: images whose identities ANet never trained on
   (`svm.split=val`: the val partition; `train_heldout`: the train identities
   with rank % 10 == 9, which the ANet stages then leave out). The paper used
   1,000 separate CelebA identities. `svm.split=train+val` fits the SVMs on
   ANet's own training images PLUS the fit part of val (C, threshold and Platt
   still chosen on the held-out val identities, which nothing was trained on;
   the val fit part may be empty): not the paper's protocol, but on a small
   dataset the SVMs are data-starved otherwise (docs/training.md has both measured).
2. FC features of every patch of each face region in ONE interweaved pass
   (`InterweavedANet`), [N, num_patches, F].
3. The split's identities are divided again (rank-based, `svm.holdout_fraction`
   of them held out). Per attribute and per C in `svm.c_grid`, scikit-learn's
   LinearSVC (liblinear, as the paper) is fitted on every patch of the fit
   part (label = the image's label) on standardised features; C is chosen by
   the held-out accuracy of the patch-AVERAGED score (what inference does).
   With `svm.threshold=holdout` the decision threshold of the averaged score is
   then moved (per attribute) to the value with the best held-out accuracy
   (folded into the intercept; the SVM's own threshold 0 when none is better):
   for rare attributes the hinge-loss optimum is not the accuracy optimum.
4. The standardisation is folded into the weights (w / sigma, b - w.mu / sigma)
   and copied into `AttributeSVMHead` (Dense(40)); a Platt sigmoid per
   attribute is fitted on the held-out averaged scores.

Results in `workdir/svm/`: `svm_head.npz` (coef [40, F], intercept, platt_scale,
platt_offset), `model.weights.h5` (the head as a Keras model), `DONE` with
per-attribute C and held-out accuracy.
"""

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tfattr.attributes import ATTRIBUTE_NAMES, NUM_ATTRIBUTES
from tfattr.data import preprocess
from tfattr.layers.interweave import InterweavedANet
from tfattr.layers.svm_head import AttributeSVMHead
from tfattr.stages import anet as anet_stage

STAGE = "svm"


SPLITS = ("val", "train_heldout", "train+val")
THRESHOLDS = ("zero", "holdout")


def svm_indices(data, split):
    """Images of the identity-disjoint SVM split (divided into fit/held-out by identity)."""
    if split in ("val", "train+val"):
        return data.indices(1)
    return np.flatnonzero(anet_stage.heldout_identity_mask(data))


def best_threshold(scores, labels):
    """Threshold t (predict scores > t) with the best accuracy; ties: the one nearest 0.

    Candidates: 0 and the midpoints between consecutive distinct sorted scores
    (plus one below the smallest / above the largest score)."""
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels).astype(bool)
    uniq = np.unique(scores)
    cands = np.concatenate([[0.0, uniq[0] - 1.0, uniq[-1] + 1.0], (uniq[1:] + uniq[:-1]) / 2])
    acc = ((scores[None, :] > cands[:, None]) == labels[None, :]).mean(1)
    best = np.flatnonzero(acc >= acc.max() - 1e-12)
    return float(cands[best[np.argmin(np.abs(cands[best]))]])


def split_by_identity(data, indices, holdout_fraction, seed=0):
    """(fit, holdout) index arrays: identities (or images if none) divided by a seeded permutation."""
    indices = np.asarray(indices)
    keys = data.identities[indices] if data.identities is not None else indices
    uniq = np.unique(keys)
    perm = np.random.default_rng(seed).permutation(len(uniq))
    n_hold = max(1, int(round(holdout_fraction * len(uniq))))
    held = set(uniq[perm[:n_hold]].tolist())
    mask = np.isin(keys, list(held))
    return indices[~mask], indices[mask]


def patch_features(anet, preset, regions_u8, batch=64):
    """uint8 regions [N, R, R, 3] -> FC of every patch [N, num_patches, F] (interweaved pass)."""
    interweaved = InterweavedANet(anet, preset.patch_size, preset.patch_stride)

    @tf.function(reduce_retracing=True)
    def run(x):
        return interweaved(preprocess.normalize(x))

    out = [run(tf.constant(np.asarray(regions_u8[k:k + batch]))).numpy()
           for k in range(0, len(regions_u8), batch)]
    return np.concatenate(out, 0)


def _fit_platt(scores, labels):
    """(scale, offset) of p = sigmoid(scale * s + offset) by logistic regression."""
    from sklearn.linear_model import LogisticRegression

    if labels.min() == labels.max():
        return 1.0, 0.0
    lr = LogisticRegression(C=1e4, max_iter=1000).fit(scores.reshape(-1, 1), labels)
    return float(lr.coef_[0, 0]), float(lr.intercept_[0])


def fit_svms(features_fit, labels_fit, features_hold, labels_hold, c_grid, max_iter=5000, log=print,
             threshold="zero"):
    """Per-attribute LinearSVC with C chosen on the held-out set.

    features_*: [N, P, F] per-patch features; labels_*: [N, 40] in {0, 1}.
    threshold: "zero" (the SVM's own decision) or "holdout" (the averaged-score
      threshold with the best held-out accuracy, folded into the intercept).
    Returns dict coef [40, F], intercept [40], platt_scale, platt_offset [40],
    c [40], holdout_accuracy [40] (with the final threshold), threshold [40]
    (the shift folded into the intercept) (all in the raw feature space).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC
    import warnings

    n, p, f = features_fit.shape
    flat = features_fit.reshape(-1, f).astype(np.float64)
    mu = flat.mean(0)
    sigma = flat.std(0)
    sigma[sigma < 1e-6] = 1.0
    x_fit = (flat - mu) / sigma
    hold_flat = ((features_hold.reshape(-1, f) - mu) / sigma)
    coef = np.zeros((NUM_ATTRIBUTES, f))
    intercept = np.zeros(NUM_ATTRIBUTES)
    chosen_c = np.zeros(NUM_ATTRIBUTES)
    hold_acc = np.zeros(NUM_ATTRIBUTES)
    scale = np.ones(NUM_ATTRIBUTES)
    offset = np.zeros(NUM_ATTRIBUTES)
    shift = np.zeros(NUM_ATTRIBUTES)
    if threshold not in THRESHOLDS:
        raise ValueError(f"svm threshold must be one of {THRESHOLDS}, got {threshold!r}")

    def fit(a, c):
        svm = LinearSVC(C=float(c), max_iter=max_iter, dual="auto").fit(
            x_fit, np.repeat(labels_fit[:, a], p))
        return svm.coef_[0], float(svm.intercept_[0])

    # liblinear releases the GIL: the (attribute, C) fits run on every core, with the
    # results of one-by-one fits (the warning filter is process-wide, so it is set here)
    two_class = [a for a in range(NUM_ATTRIBUTES) if labels_fit[:, a].min() != labels_fit[:, a].max()]
    with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        warnings.simplefilter("ignore", ConvergenceWarning)
        jobs = {(a, c): pool.submit(fit, a, c) for a in two_class for c in c_grid}
        fits = {key: job.result() for key, job in jobs.items()}
    for a in range(NUM_ATTRIBUTES):
        y = labels_fit[:, a]
        y_hold = labels_hold[:, a].astype(int)
        if a not in two_class:  # one class only: a constant classifier
            w, b = np.zeros(f), (1.0 if y[0] else -1.0)
            best = (float(np.mean((b > 0) == y_hold)), None, w, b)
        else:
            best = None
            for c in c_grid:
                w, b = fits[(a, c)]
                avg = (hold_flat @ w + b).reshape(-1, p).mean(1)
                acc = float(np.mean((avg > 0) == y_hold))
                if best is None or acc > best[0]:
                    best = (acc, float(c), w, b)
        acc, c, w, b = best
        # Fold the standardisation into the weights: w.(x - mu)/sigma + b.
        coef[a] = w / sigma
        intercept[a] = b - np.dot(w / sigma, mu)
        chosen_c[a] = np.nan if c is None else c
        hold_scores = (features_hold.reshape(-1, f) @ coef[a] + intercept[a]).reshape(-1, p).mean(1)
        if threshold == "holdout" and c is not None:
            shift[a] = best_threshold(hold_scores, y_hold)
            intercept[a] -= shift[a]
            hold_scores = hold_scores - shift[a]
            acc = float(np.mean((hold_scores > 0) == y_hold))
        hold_acc[a] = acc
        scale[a], offset[a] = _fit_platt(hold_scores, y_hold)
    log(f"[svm] held-out accuracy (patch-averaged) mean {hold_acc.mean():.4f}")
    return {"coef": coef, "intercept": intercept, "platt_scale": scale, "platt_offset": offset,
            "c": chosen_c, "holdout_accuracy": hold_acc, "threshold": shift}


def build_head(params, num_features):
    head = AttributeSVMHead(name="attribute_svm_head")
    head.build((None, None, num_features))
    head.set_svm(params["coef"], params["intercept"], params["platt_scale"], params["platt_offset"])
    return head


def load_svm_head(workdir):
    """The AttributeSVMHead of a training workdir (svm stage DONE)."""
    params = np.load(Path(workdir) / STAGE / "svm_head.npz")
    return build_head(params, params["coef"].shape[1])


def run_svm(ctx):
    data = ctx.data
    cfg = ctx.config.svm
    idx = svm_indices(data, cfg.split)
    if cfg.max_images and len(idx) > cfg.max_images:
        idx = np.sort(np.random.default_rng(ctx.seed).choice(idx, cfg.max_images, replace=False))
    fit_idx, hold_idx = split_by_identity(data, idx, cfg.holdout_fraction, ctx.seed)
    # train+val fits on ANet's training images too: its val fit part may be empty
    if len(hold_idx) == 0 or (len(fit_idx) == 0 and cfg.split != "train+val"):
        raise ValueError(f"svm: split {cfg.split!r} has too few images/identities "
                         f"({len(idx)}) for a fit + held-out division")
    source = anet_stage.run_summary(ctx.workdir, "anet").get("face_source") or \
        anet_stage.face_source(ctx.workdir, data, ctx.config.anet.face_source)
    anet = anet_stage.load_anet(ctx.workdir, ctx.preset)
    parts = [("svm_fit", fit_idx), ("svm_holdout", hold_idx)]
    if cfg.split == "train+val":  # ANet's training images (cached by the anet stage) + val fit
        parts.insert(0, ("train", anet_stage.training_indices(ctx)))
    feats = {}
    for name, ids in parts:
        if len(ids):
            regions, _ = anet_stage.run_face_regions(ctx.workdir, ctx.preset, data, ids, name,
                                                     source, ctx.log)
            feats[name] = patch_features(anet, ctx.preset, regions)
    if cfg.split == "train+val":
        train_idx = parts[0][1]
        val_fit = [feats["svm_fit"]] if "svm_fit" in feats else []
        feats["svm_fit"] = np.concatenate([feats.pop("train")] + val_fit)
        fit_idx = np.concatenate([train_idx, fit_idx])
    ctx.log(f"[svm] split {cfg.split}: {len(fit_idx)} fit + {len(hold_idx)} held-out images, "
            f"{feats['svm_fit'].shape[1]} patches x {feats['svm_fit'].shape[2]} features, "
            f"C grid {list(cfg.c_grid)}, threshold {cfg.threshold}")
    params = fit_svms(feats["svm_fit"], data.attributes[fit_idx], feats["svm_holdout"],
                      data.attributes[hold_idx], cfg.c_grid, cfg.max_iter, ctx.log,
                      threshold=cfg.threshold)
    head = build_head(params, feats["svm_fit"].shape[2])
    # The folded head must reproduce the SVM decision values (float32 tolerance).
    check = head(feats["svm_holdout"][:8])["attribute_scores"].numpy()
    expect = (feats["svm_holdout"][:8] @ params["coef"].T + params["intercept"]).mean(1)
    if not np.allclose(check, expect, atol=1e-3, rtol=1e-4):
        raise AssertionError(f"svm: folded head differs from the SVMs by "
                             f"{np.abs(check - expect).max()}")
    out = ctx.stage_dir(STAGE)
    np.savez(out / "svm_head.npz", **{k: params[k].astype(np.float32) for k in
                                      ("coef", "intercept", "platt_scale", "platt_offset")})
    model = keras.Sequential([keras.Input((None, feats["svm_fit"].shape[2])), head])
    ctx.save_weights(model, out / "model.weights.h5")
    ctx.mark_done(STAGE, {
        "split": cfg.split, "fit_images": int(len(fit_idx)), "holdout_images": int(len(hold_idx)),
        "face_source": source, "threshold": cfg.threshold,
        "holdout_accuracy_mean": float(params["holdout_accuracy"].mean()),
        "per_attribute": {n: {"C": None if np.isnan(params["c"][a]) else float(params["c"][a]),
                              "holdout_accuracy": float(params["holdout_accuracy"][a]),
                              "threshold": float(params["threshold"][a])}
                          for a, n in enumerate(ATTRIBUTE_NAMES)}})
    return True
