"""`python -m tfattr.analyze {regions,kmeans,neurons,all}`: the paper's Sec. 3.1 analyses as PNGs.

  python -m tfattr.analyze all --data synthetic:DIR --model RUN --out DIR [--max-images N]

MODEL is a training workdir (`config.json`, `anet/` and `svm/` DONE). Every
analysis reads the trained ANet (`anet/model.weights.h5`) and the folded SVM
head (`svm/svm_head.npz`); face regions come from the same source as the run
(LNet localizer or whole aligned crops, `anet/DONE` face_source) through
`tfattr.stages.anet.face_regions` (cached in the workdir's `faces/`). See
docs/analyses.md for the methods and how to read the figures.

- `regions` (Fig. 9, attribute-specific regions): two maps per attribute over
  the mean face region of the test images.
  * patch correlation: the per-patch SVM score (folded head applied to each
    patch's FC feature, before the average over patches) correlated with the
    label over the test images; one value per patch, spread over the pixels
    each patch covers (pixel = mean over the patches covering it).
  * occlusion: a cell of a G x G grid of the face region is set to grey
    (normalized 0) and the drop of the signed patch-averaged score
    (2y - 1) * s, i.e. of the correct class's margin, is averaged over images.
  Writes `regions_correlation.png`, `regions_occlusion.png` (40 small maps
  each), `regions/<attribute>.png` for a few, `regions.npz`, `regions.json`.
- `kmeans` (Fig. 11, attribute grouping): the 40 SVM weight vectors (columns
  of the head's kernel, multiplied by the per-neuron standard deviation of the
  SVM-split features, i.e. the standardised space LinearSVC was fitted in,
  then L2-normalised), k-means (scikit-learn) into k groups. Writes
  `kmeans_embedding.png` (2-D PCA, coloured by group), `kmeans_similarity.png`
  (40 x 40 cosine similarity ordered by group), `kmeans_groups.json`.
- `neurons` (Fig. 10b, accuracy vs fraction of the best FC neurons): per
  attribute, FC neurons ranked by |standardised SVM weight|, a LinearSVC
  (the C the svm stage chose) retrained on the top p % of them on the SVM
  split, test accuracy of the patch-averaged score; relative to the same
  procedure on 100 %. Writes `neurons.png`, `neurons.csv`.
"""

import argparse
import csv
import dataclasses
import json
import sys
import warnings
from pathlib import Path

import numpy as np

from tfattr.attributes import ATTRIBUTE_INDEX, ATTRIBUTE_NAMES, NUM_ATTRIBUTES

PERCENTS = (1, 2, 5, 10, 20, 50, 100)
# Attributes with a per-attribute region figure (when present in the data): the
# paper's Fig. 9 examples (local: Bags_Under_Eyes, Straight_Hair,
# Wearing_Necklace; global: Young, Male, Attractive) plus a few salient ones.
HIGHLIGHT = ("Bags_Under_Eyes", "Straight_Hair", "Wearing_Necklace", "Young", "Male",
             "Attractive", "Eyeglasses", "Bangs", "Smiling", "Wearing_Hat", "Wearing_Necktie",
             "Mustache")
PARTITION_TEST = 2


class AnalysisError(ValueError):
    """The data or the workdir cannot be analysed; the message says why."""


# ===================================================================== pure analysis functions

def patch_score_correlation(patch_scores, labels):
    """Pearson correlation over images of each patch's SVM score with the label.

    patch_scores: float [N, P, A] (per-patch decision values); labels: {0,1} [N, A].
    Returns float [A, P]; NaN where the label or the patch score is constant.
    """
    s = np.asarray(patch_scores, np.float64)
    y = np.asarray(labels, np.float64)
    s = s - s.mean(0, keepdims=True)                       # [N, P, A]
    y = y - y.mean(0, keepdims=True)                       # [N, A]
    num = np.einsum("npa,na->ap", s, y)
    den = np.sqrt(np.einsum("npa,npa->ap", s, s) * (y * y).sum(0)[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    out[~(den > 1e-12)] = np.nan
    return out


def patch_values_to_pixels(values, offsets, patch_size, region_size):
    """Per-patch values [..., P] -> per-pixel [..., R, R]: the mean over the patches
    covering each pixel (NaN patches ignored; pixels no patch covers are NaN)."""
    values = np.asarray(values, np.float64)
    lead = values.shape[:-1]
    total = np.zeros(lead + (region_size, region_size))
    count = np.zeros(lead + (region_size, region_size))
    for p, (y, x) in enumerate(offsets):
        v = values[..., p]
        ok = np.isfinite(v)
        total[..., y:y + patch_size, x:x + patch_size] += np.where(ok, v, 0.0)[..., None, None]
        count[..., y:y + patch_size, x:x + patch_size] += ok[..., None, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def cell_edges(region_size, grid):
    """Pixel edges [grid + 1] of a grid x grid division of a region side."""
    return np.round(np.linspace(0, region_size, grid + 1)).astype(int)


def cell_values_to_pixels(values, region_size):
    """[..., G, G] cell values -> [..., R, R] (each pixel takes its cell's value)."""
    values = np.asarray(values)
    grid = values.shape[-1]
    edges = cell_edges(region_size, grid)
    cell_of = np.repeat(np.arange(grid), np.diff(edges))   # [R] pixel -> cell
    return values[..., cell_of[:, None], cell_of[None, :]]


def occlusion_map(score_fn, regions_u8, labels, grid, fill=128, batch=256):
    """Occlusion sensitivity per attribute on a grid x grid division of the region.

    score_fn: uint8 [B, R, R, 3] -> float [B, A] (patch-averaged SVM scores).
    regions_u8: uint8 [N, R, R, 3]; labels {0,1} [N, A].
    Returns float [A, grid, grid]: the mean over images of the drop of the
    correct-class margin (2y - 1) * score when that cell is set to `fill`
    (128 = 0 after normalization); > 0 where hiding the cell hurts.
    """
    regions_u8 = np.asarray(regions_u8)
    n, size = regions_u8.shape[0], regions_u8.shape[1]
    sign = 2.0 * np.asarray(labels, np.float64) - 1.0       # [N, A]
    edges = cell_edges(size, grid)
    cells = [(i, j) for i in range(grid) for j in range(grid)]
    base = np.concatenate([np.asarray(score_fn(regions_u8[k:k + batch]), np.float64)
                           for k in range(0, n, batch)], 0)
    drop = np.zeros((sign.shape[1], grid * grid))
    per_image = max(1, batch // len(cells))
    for k in range(0, n, per_image):
        chunk = regions_u8[k:k + per_image]
        occluded = np.repeat(chunk[:, None], len(cells), axis=1)   # [b, G*G, R, R, 3]
        for c, (i, j) in enumerate(cells):
            occluded[:, c, edges[i]:edges[i + 1], edges[j]:edges[j + 1]] = fill
        flat = occluded.reshape((-1,) + chunk.shape[1:])
        scores = np.concatenate([np.asarray(score_fn(flat[m:m + batch]), np.float64)
                                 for m in range(0, len(flat), batch)], 0)
        scores = scores.reshape(len(chunk), len(cells), -1)          # [b, G*G, A]
        s = sign[k:k + len(chunk)]
        margin_drop = (base[k:k + len(chunk), None, :] - scores) * s[:, None, :]
        drop += margin_drop.sum(0).T
    return (drop / n).reshape(-1, grid, grid)


def locality(values, threshold=0.5):
    """Fraction of the cells/patches whose value reaches `threshold` x the map's max
    (small = local evidence, near 1 = global); NaN for a map without positive values."""
    v = np.asarray(values, np.float64).reshape(len(values), -1)
    out = np.full(len(v), np.nan)
    for a, row in enumerate(v):
        row = row[np.isfinite(row)]
        if row.size and row.max() > 0:
            out[a] = float(np.mean(row >= threshold * row.max()))
    return out


def standardized_weights(kernel, features):
    """Head kernel [F, A] (raw feature space) -> the weights in the standardised space
    LinearSVC was fitted in: w * sigma, sigma = per-neuron std of `features` [..., F]."""
    f = np.asarray(features, np.float64).reshape(-1, np.shape(kernel)[0])
    sigma = f.std(0)
    sigma[sigma < 1e-6] = 0.0  # dead neurons carry no weight
    return np.asarray(kernel, np.float64) * sigma[:, None]


def group_attributes(weights, k=6, seed=0):
    """k-means of the attribute weight vectors (Fig. 11).

    weights: [F, A], column a = attribute a's SVM weights. Columns are
    L2-normalised (all-zero columns, i.e. constant classifiers, are left out).
    Returns dict: `labels` int [A] (-1 for left out), `valid` bool [A],
    `cosine` [A, A] (NaN rows/cols for left out), `embedding` [A, 2] (PCA of
    the normalised vectors; NaN for left out), `centers` [k, F], `k`.
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    w = np.asarray(weights, np.float64).T                   # [A, F]
    norms = np.linalg.norm(w, axis=1)
    valid = norms > 1e-12
    if valid.sum() < 2:
        raise AnalysisError(f"k-means needs at least 2 non-zero weight vectors, got {int(valid.sum())}")
    k = int(min(max(1, k), valid.sum()))
    unit = np.zeros_like(w)
    unit[valid] = w[valid] / norms[valid, None]
    km = KMeans(n_clusters=k, n_init=20, random_state=seed).fit(unit[valid])
    labels = np.full(len(w), -1)
    labels[valid] = km.labels_
    cosine = unit @ unit.T
    cosine[~valid] = np.nan
    cosine[:, ~valid] = np.nan
    embedding = np.full((len(w), 2), np.nan)
    n_comp = min(2, int(valid.sum()), w.shape[1])
    embedding[valid, :n_comp] = PCA(n_components=n_comp, random_state=seed).fit_transform(unit[valid])
    if n_comp < 2:
        embedding[valid, 1] = 0.0
    return {"labels": labels, "valid": valid, "cosine": cosine, "embedding": embedding,
            "centers": km.cluster_centers_, "k": k}


def cluster_order(labels, cosine):
    """Attribute order for the heatmap: groups by size (largest first), inside a group
    by similarity to the group mean; left-out attributes last."""
    labels = np.asarray(labels)
    groups = [g for g in np.unique(labels) if g >= 0]
    groups.sort(key=lambda g: (-np.sum(labels == g), g))
    order = []
    for g in groups:
        members = np.flatnonzero(labels == g)
        sim = np.nanmean(cosine[np.ix_(members, members)], axis=1)
        order.extend(members[np.argsort(-sim, kind="stable")].tolist())
    order.extend(np.flatnonzero(labels < 0).tolist())
    return order


def neuron_curve(x_fit, y_fit, x_test, y_test, importance, percents=PERCENTS, c=0.1,
                 max_iter=5000, attributes=None):
    """Accuracy vs fraction of the most important FC neurons (Fig. 10b).

    x_fit, x_test: per-patch features [N, P, F]; y_fit, y_test: {0,1} [N, A].
    importance: [F, A] (|importance| ranks the neurons of each attribute).
    c: LinearSVC C, a float or one per attribute (NaN -> 0.1).
    For each attribute and percent p: LinearSVC on the top ceil(p% * F)
    neurons of every patch of the fit images (standardised, label = the
    image's), test accuracy of the patch-averaged decision value > 0.
    Returns (accuracy [A, len(percents)] (NaN for attributes with one class in
    y_fit or not in `attributes`), num_neurons [len(percents)]).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    x_fit = np.asarray(x_fit, np.float64)
    x_test = np.asarray(x_test, np.float64)
    n, p, f = x_fit.shape
    flat = x_fit.reshape(-1, f)
    mu, sigma = flat.mean(0), flat.std(0)
    sigma[sigma < 1e-6] = 1.0
    z_fit = (flat - mu) / sigma
    z_test = (x_test.reshape(-1, f) - mu) / sigma
    num_attr = np.shape(y_fit)[1]
    cs = np.broadcast_to(np.asarray(c, np.float64), (num_attr,))
    counts = np.array([max(1, int(np.ceil(q / 100.0 * f))) for q in percents])
    acc = np.full((num_attr, len(percents)), np.nan)
    for a in range(num_attr) if attributes is None else attributes:
        y = np.repeat(np.asarray(y_fit)[:, a], p)
        if y.min() == y.max():
            continue
        ranked = np.argsort(-np.abs(np.asarray(importance)[:, a]), kind="stable")
        ca = float(cs[a]) if np.isfinite(cs[a]) and cs[a] > 0 else 0.1
        for j, m in enumerate(counts):
            cols = ranked[:m]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                svm = LinearSVC(C=ca, max_iter=max_iter, dual="auto").fit(z_fit[:, cols], y)
            avg = svm.decision_function(z_test[:, cols]).reshape(-1, x_test.shape[1]).mean(1)
            acc[a, j] = float(np.mean((avg > 0) == np.asarray(y_test)[:, a].astype(bool)))
    return acc, counts


# ===================================================================== the trained run

@dataclasses.dataclass
class Run:
    """A trained workdir and the data it is analysed on (features computed lazily)."""

    workdir: Path
    data: object
    preset: object
    anet: object
    head: object
    source: str
    svm_split: str
    svm_c: np.ndarray
    max_images: int = 0
    seed: int = 0
    log: object = print

    def __post_init__(self):
        self._cache = {}

    # ---- images
    def _cap(self, idx):
        if self.max_images and len(idx) > self.max_images:
            idx = np.sort(np.random.default_rng(self.seed).choice(idx, self.max_images, replace=False))
        return idx

    def split_indices(self, split):
        from tfattr.stages import svm as svm_stage

        if split == "test":
            idx = self.data.indices(PARTITION_TEST)
        else:
            idx = svm_stage.svm_indices(self.data, self.svm_split)
        idx = self._cap(np.asarray(idx))
        if len(idx) == 0:
            raise AnalysisError(f"the dataset has no {split} images "
                                f"({'partition 2' if split == 'test' else 'svm split ' + self.svm_split})")
        return idx

    def regions(self, split):
        if ("regions", split) not in self._cache:
            from tfattr.stages import anet as anet_stage

            idx = self.split_indices(split)
            regions, _ = anet_stage.run_face_regions(self.workdir, self.preset, self.data, idx,
                                                     f"analyze_{split}", self.source, self.log)
            self._cache["regions", split] = (np.asarray(regions), idx)
        return self._cache["regions", split]

    def features(self, split):
        """(per-patch FC [N, P, F], labels [N, 40], regions uint8 [N, R, R, 3])."""
        if ("features", split) not in self._cache:
            from tfattr.stages.svm import patch_features

            regions, idx = self.regions(split)
            self.log(f"[analyze] FC features of {len(idx)} {split} images "
                     f"({self.preset.num_patches} patches each)")
            self._cache["features", split] = (patch_features(self.anet, self.preset, regions),
                                              self.data.attributes[idx], regions)
        return self._cache["features", split]

    def kernel(self):
        return self.head.kernel.numpy()                      # [F, 40]

    def standardized_weights(self):
        feats, _, _ = self.features("svm")
        return standardized_weights(self.kernel(), feats)

    def score_fn(self):
        """uint8 regions [B, R, R, 3] -> patch-averaged SVM scores [B, 40] (numpy)."""
        import tensorflow as tf

        from tfattr.data import preprocess
        from tfattr.layers.interweave import InterweavedANet

        interweaved = InterweavedANet(self.anet, self.preset.patch_size, self.preset.patch_stride)
        head = self.head

        @tf.function(reduce_retracing=True)
        def run(x):
            return head(interweaved(preprocess.normalize(x)))["attribute_scores"]

        return lambda x: run(tf.constant(np.asarray(x))).numpy()


def load_run(data, workdir, max_images=0, seed=0, log=print):
    """A `Run` of a training workdir (anet + svm DONE) on `data` (a CelebADataset)."""
    from tfattr.evaluation.attributes import ModelError, check_workdir
    from tfattr.presets import get_preset
    from tfattr.stages import anet as anet_stage
    from tfattr.stages import svm as svm_stage

    workdir = Path(workdir)
    try:
        config = check_workdir(workdir)
    except ModelError as e:
        raise AnalysisError(str(e)) from e
    preset = get_preset(config.get("preset", "tiny"))
    source = anet_stage.run_summary(workdir, "anet").get("face_source") or "aligned"
    if source == "lnet" and data.wild_dir is None:
        raise AnalysisError("the run localizes faces with LNet but the dataset has no in-the-wild images")
    if source == "aligned" and data.aligned_dir is None:
        raise AnalysisError("the run was trained on aligned crops but the dataset has no img_align_celeba/")
    summary = anet_stage.run_summary(workdir, "svm").get("per_attribute", {})
    svm_c = np.array([np.nan if summary.get(n, {}).get("C") is None else summary[n]["C"]
                      for n in ATTRIBUTE_NAMES], np.float64)
    return Run(workdir=workdir, data=data, preset=preset,
               anet=anet_stage.load_anet(workdir, preset), head=svm_stage.load_svm_head(workdir),
               source=source, svm_split=config.get("svm", {}).get("split", "val"), svm_c=svm_c,
               max_images=max_images, seed=seed, log=log)


def rendered_attributes(data):
    from tfattr.evaluation.attributes import rendered_attributes as rendered

    return rendered(data)


# ===================================================================== plotting helpers

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _normalize_map(m):
    """Map scaled to [0, 1] by its max (negatives -> 0); all-NaN/non-positive -> None."""
    m = np.asarray(m, np.float64)
    if not np.isfinite(m).any():
        return None
    top = np.nanmax(m)
    if not top > 0:
        return np.zeros_like(m)
    return np.clip(np.nan_to_num(m / top, nan=0.0), 0.0, 1.0)


def _overlay(ax, face, heat, title, note=""):
    ax.imshow(face)
    if heat is not None:
        ax.imshow(heat, cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
    ax.set_title(title + (f"\n{note}" if note else ""), fontsize=6)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_map_grid(path, face, maps, notes, title, cols=8):
    """One PNG: a small heatmap over the mean face per attribute (maps [40, R, R])."""
    plt = _pyplot()
    rows = int(np.ceil(len(maps) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.45, rows * 1.7))
    for a, ax in enumerate(np.ravel(axes)):
        if a >= len(maps):
            ax.axis("off")
            continue
        _overlay(ax, face, None if "n/a" in notes[a] else _normalize_map(maps[a]),
                 ATTRIBUTE_NAMES[a], notes[a])
    fig.suptitle(title, fontsize=9)
    # Fixed margins: tight_layout over 40 panels costs seconds and changes nothing here.
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.7 / fig.get_figheight(),
                        wspace=0.08, hspace=0.32)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ===================================================================== the analyses

def analyze_regions(run, out_dir, grid=8, occlusion_images=64, attributes=HIGHLIGHT):
    """Fig. 9: patch-correlation and occlusion maps per attribute. Returns the summary dict."""
    out_dir = Path(out_dir)
    feats, labels, regions = run.features("test")
    preset = run.preset
    size = preset.face_region_size
    offsets = preset.patch_offsets()
    patch_scores = run.head.patch_scores(feats).numpy()                    # [N, P, 40]
    corr = patch_score_correlation(patch_scores, labels)                    # [40, P]
    corr_px = patch_values_to_pixels(corr, offsets, preset.patch_size, size)
    face = regions.astype(np.float64).mean(0) / 255.0
    n_occ = min(len(regions), occlusion_images) if occlusion_images > 0 else len(regions)
    pick = np.sort(np.random.default_rng(run.seed).choice(len(regions), n_occ, replace=False))
    run.log(f"[analyze] occlusion: {n_occ} test images x {grid * grid} cells")
    occ = occlusion_map(run.score_fn(), regions[pick], labels[pick], grid)  # [40, G, G]
    occ_px = cell_values_to_pixels(occ, size)
    # n/a: one class among the images, or a constant SVM (all-zero weights: the
    # svm stage saw one class), whose per-patch scores do not vary.
    zero_svm = ~np.any(run.kernel() != 0, axis=0)
    constant = (labels.min(0) == labels.max(0)) | zero_svm | ~np.isfinite(corr).any(1)
    occ_constant = (labels[pick].min(0) == labels[pick].max(0)) | zero_svm
    corr_loc, occ_loc = locality(corr), locality(occ)

    def note_corr(a):
        if constant[a]:
            return "constant SVM: n/a" if zero_svm[a] else "one class: n/a"
        return f"r {np.nanmin(corr[a]):.2f}..{np.nanmax(corr[a]):.2f}"

    def note_occ(a):
        if occ_constant[a]:
            return "constant SVM: n/a" if zero_svm[a] else "one class: n/a"
        return f"max drop {np.nanmax(occ[a]):.2g}"

    out_dir.mkdir(parents=True, exist_ok=True)
    plot_map_grid(out_dir / "regions_correlation.png", face, corr_px,
                  [note_corr(a) for a in range(NUM_ATTRIBUTES)],
                  f"Per-patch SVM score vs label correlation ({len(labels)} test images, "
                  f"{preset.num_patches} patches; each map scaled to its max)")
    plot_map_grid(out_dir / "regions_occlusion.png", face, occ_px,
                  [note_occ(a) for a in range(NUM_ATTRIBUTES)],
                  f"Occlusion: drop of the correct-class margin, {grid}x{grid} grey cells "
                  f"({n_occ} test images; each map scaled to its max)")
    per_attr_dir = out_dir / "regions"
    per_attr_dir.mkdir(exist_ok=True)
    plt = _pyplot()
    written = []
    for name in attributes:
        a = ATTRIBUTE_INDEX[name]
        if constant[a]:
            continue
        pos = labels[:, a] == 1
        fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.8))
        # (constant-SVM / one-class maps are drawn without a heatmap)
        axes[0].imshow(regions[pos].astype(np.float64).mean(0) / 255.0)
        axes[0].set_title(f"mean face, {name} ({int(pos.sum())})", fontsize=7)
        axes[0].set_xticks([])
        axes[0].set_yticks([])
        _overlay(axes[1], face, _normalize_map(corr_px[a]), "patch score correlation", note_corr(a))
        _overlay(axes[2], face, None if occ_constant[a] else _normalize_map(occ_px[a]),
                 "occlusion sensitivity", note_occ(a))
        fig.tight_layout()
        fig.savefig(per_attr_dir / f"{name}.png", dpi=110)
        plt.close(fig)
        written.append(name)
    np.savez(out_dir / "regions.npz", correlation=corr.astype(np.float32),
             correlation_pixels=corr_px.astype(np.float32), occlusion=occ.astype(np.float32),
             occlusion_pixels=occ_px.astype(np.float32), mean_face=face.astype(np.float32),
             patch_offsets=np.asarray(offsets, np.int32))
    summary = {"num_images": int(len(labels)), "occlusion_images": int(n_occ), "grid": grid,
               "num_patches": preset.num_patches, "per_attribute": {}}
    for a, name in enumerate(ATTRIBUTE_NAMES):
        row = {"one_class": bool(labels[:, a].min() == labels[:, a].max()),
               "constant_svm": bool(zero_svm[a])}
        if not constant[a]:
            best = int(np.nanargmax(corr[a]))
            row.update(correlation_peak_patch=best, correlation_peak_offset=list(offsets[best]),
                       correlation_max=float(np.nanmax(corr[a])),
                       correlation_min=float(np.nanmin(corr[a])),
                       correlation_locality=float(corr_loc[a]))
        if not occ_constant[a] and np.isfinite(occ_loc[a]):
            cell = np.unravel_index(int(np.nanargmax(occ[a])), occ[a].shape)
            row.update(occlusion_peak_cell=[int(cell[0]), int(cell[1])],
                       occlusion_max_drop=float(np.nanmax(occ[a])),
                       occlusion_locality=float(occ_loc[a]))
        summary["per_attribute"][name] = row
    (out_dir / "regions.json").write_text(json.dumps(summary, indent=2) + "\n")
    run.log(f"[analyze] regions: wrote regions_correlation.png, regions_occlusion.png, "
            f"regions/ ({len(written)} attributes), regions.npz, regions.json")
    return summary


def analyze_kmeans(run, out_dir, k=6):
    """Fig. 11: k-means of the standardised SVM weight vectors. Returns the groups dict."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = group_attributes(run.standardized_weights(), k, run.seed)
    labels, valid = result["labels"], result["valid"]
    groups = [[ATTRIBUTE_NAMES[a] for a in np.flatnonzero(labels == g)] for g in range(result["k"])]
    groups.sort(key=len, reverse=True)
    doc = {"k": result["k"], "groups": groups,
           "left_out": [ATTRIBUTE_NAMES[a] for a in np.flatnonzero(~valid)],
           "weights": "SVM kernel columns x per-neuron std of the SVM-split FC features, L2-normalised",
           "assignment": {n: int(labels[a]) for a, n in enumerate(ATTRIBUTE_NAMES)}}
    (out_dir / "kmeans_groups.json").write_text(json.dumps(doc, indent=2) + "\n")

    plt = _pyplot()
    colors = plt.get_cmap("tab10")
    emb = result["embedding"]
    fig, ax = plt.subplots(figsize=(8, 6.5))
    for a in np.flatnonzero(valid):
        col = colors(labels[a] % 10)
        ax.scatter(emb[a, 0], emb[a, 1], color=col, s=30)
        ax.annotate(ATTRIBUTE_NAMES[a], emb[a], fontsize=7, color=col,
                    xytext=(3, 2), textcoords="offset points")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(f"Attribute SVM weight vectors: k-means, k = {result['k']} (PCA of the "
                 f"normalised vectors)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_dir / "kmeans_embedding.png", dpi=110)
    plt.close(fig)

    order = cluster_order(labels, result["cosine"])
    cos = result["cosine"][np.ix_(order, order)]
    fig, ax = plt.subplots(figsize=(9, 8))
    im = ax.imshow(cos, cmap="RdBu_r", vmin=-1, vmax=1)
    names = [ATTRIBUTE_NAMES[a] for a in order]
    ax.set_xticks(range(len(order)), names, rotation=90, fontsize=6)
    ax.set_yticks(range(len(order)), names, fontsize=6)
    for t, a in zip(ax.get_yticklabels(), order):
        t.set_color(colors(labels[a] % 10) if labels[a] >= 0 else "grey")
    ordered = labels[order]
    for b in np.flatnonzero(ordered[1:] != ordered[:-1]):
        ax.axhline(b + 0.5, color="k", lw=0.8)
        ax.axvline(b + 0.5, color="k", lw=0.8)
    fig.colorbar(im, ax=ax, fraction=0.04, label="cosine similarity")
    ax.set_title(f"Cosine similarity of the attribute weight vectors, ordered by k-means group "
                 f"(k = {result['k']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_dir / "kmeans_similarity.png", dpi=110)
    plt.close(fig)
    run.log(f"[analyze] kmeans: {result['k']} groups " +
            "; ".join("{" + ", ".join(g) + "}" for g in groups))
    return doc


def analyze_neurons(run, out_dir, percents=PERCENTS):
    """Fig. 10b: accuracy vs fraction of the best FC neurons. Returns the curve dict."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    x_fit, y_fit, _ = run.features("svm")
    x_test, y_test, _ = run.features("test")
    importance = standardized_weights(run.kernel(), x_fit)
    run.log(f"[analyze] neurons: LinearSVC per attribute x {len(percents)} fractions on "
            f"{len(y_fit)} svm-split images, tested on {len(y_test)}")
    acc, counts = neuron_curve(x_fit, y_fit, x_test, y_test, importance, percents, run.svm_c)
    full = acc[:, -1:] if percents[-1] == 100 else None
    if full is None:
        raise AnalysisError("percents must end with 100 (the reference accuracy)")
    with np.errstate(invalid="ignore", divide="ignore"):
        relative = acc / full
    majority = np.maximum(y_test.mean(0), 1 - y_test.mean(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        gain = (acc - majority[:, None]) / (full - majority[:, None])
    useful = np.isfinite(acc[:, -1]) & (acc[:, -1] > majority + 1e-9)
    gain[~useful] = np.nan
    rendered = rendered_attributes(run.data)
    rendered_idx = None if not rendered else [ATTRIBUTE_INDEX[n] for n in rendered]

    def mean_rows(rows):
        m = relative[rows]
        g = gain[rows]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return (np.nanmean(m, 0), np.nanmean(g, 0), int(np.isfinite(m[:, -1]).sum()),
                    int(np.isfinite(g[:, -1]).sum()))

    all_rows = np.arange(NUM_ATTRIBUTES)
    curves = {"all": mean_rows(all_rows)}
    if rendered_idx:
        curves["rendered"] = mean_rows(np.array(rendered_idx))
    with open(out_dir / "neurons.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["attribute", "percent", "num_neurons", "accuracy", "relative_accuracy",
                    "relative_gain_over_majority", "majority_baseline"])
        for a, name in enumerate(ATTRIBUTE_NAMES):
            for j, q in enumerate(percents):
                w.writerow([name, q, int(counts[j]), _fmt(acc[a, j]), _fmt(relative[a, j]),
                            _fmt(gain[a, j]), _fmt(majority[a])])
        for key, (rel, g, n_rel, n_gain) in curves.items():
            for j, q in enumerate(percents):
                w.writerow([f"mean_{key}", q, int(counts[j]), "", _fmt(rel[j]), _fmt(g[j]), ""])

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for a in range(NUM_ATTRIBUTES):
        axes[0].plot(percents, relative[a], color="0.85", lw=0.6)
        if useful[a]:
            axes[1].plot(percents, gain[a], color="0.85", lw=0.6)
    styles = {"all": ("C0", "mean, all attributes"), "rendered": ("C3", "mean, rendered attributes")}
    for key, (rel, g, n_rel, n_gain) in curves.items():
        col, label = styles[key]
        axes[0].plot(percents, rel, "o-", color=col, label=f"{label} ({n_rel})")
        axes[1].plot(percents, g, "o-", color=col, label=f"{label} ({n_gain} above majority)")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xticks(percents, [str(q) for q in percents])
        ax.axvline(10, color="k", ls=":", lw=0.8)
        ax.axhline(0.9, color="k", ls=":", lw=0.8)
        ax.axhline(1.0, color="k", lw=0.5)
        ax.set_xlabel(f"% of the best FC neurons (of {x_fit.shape[2]}) per attribute")
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("test accuracy / accuracy with 100 %")
    axes[0].set_title("Accuracy relative to all neurons (Fig. 10b)", fontsize=9)
    axes[1].set_ylabel("(acc - majority) / (acc(100 %) - majority)")
    axes[1].set_title("Share of the gain over the majority baseline", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_dir / "neurons.png", dpi=110)
    plt.close(fig)
    out = {"percents": list(percents), "num_neurons": counts.tolist(),
           **{f"mean_relative_{k}": v[0].tolist() for k, v in curves.items()},
           **{f"mean_gain_{k}": v[1].tolist() for k, v in curves.items()}}
    run.log("[analyze] neurons: mean relative accuracy " +
            ", ".join(f"{q}%: {r:.3f}" for q, r in zip(percents, curves["all"][0])))
    return out


def _fmt(x):
    return "" if not np.isfinite(x) else f"{x:.4f}"


# ===================================================================== CLI

ANALYSES = ("regions", "kmeans", "neurons")


def _arguments(parser):
    parser.add_argument("--data", required=True, help="KIND:DIR (celeba, lfwa or synthetic)")
    parser.add_argument("--model", required=True, help="a training workdir (anet + svm DONE)")
    parser.add_argument("--out", required=True, help="output folder for the PNGs, CSV and JSON")
    parser.add_argument("--max-images", type=int, default=2000,
                        help="cap on the images of each split (test; svm split), 0 = all (default 2000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", type=int, default=8, help="regions: occlusion grid G (G x G cells)")
    parser.add_argument("--occlusion-images", type=int, default=200,
                        help="regions: test images used for occlusion (0 = all)")
    parser.add_argument("--attributes", default=",".join(HIGHLIGHT),
                        help="regions: comma-separated attributes with their own PNG")
    parser.add_argument("--k", type=int, default=6, help="kmeans: number of groups")
    parser.add_argument("--percents", default=",".join(map(str, PERCENTS)),
                        help="neurons: percents of FC neurons, ending with 100")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tfattr.analyze",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    helps = {"regions": "attribute-specific region maps (Fig. 9)",
             "kmeans": "k-means grouping of the attribute SVM weight vectors (Fig. 11)",
             "neurons": "accuracy vs fraction of the best FC neurons (Fig. 10b)",
             "all": "regions, kmeans and neurons"}
    for name, text in helps.items():
        _arguments(sub.add_parser(name, help=text, description=text))
    args = parser.parse_args(argv)
    prog = f"tfattr.analyze {args.command}"
    try:
        attributes = tuple(a for a in args.attributes.split(",") if a)
        unknown = [a for a in attributes if a not in ATTRIBUTE_INDEX]
        if unknown:
            raise AnalysisError(f"--attributes: unknown attribute(s) {unknown}")
        percents = tuple(int(p) for p in args.percents.split(","))
        if not percents or percents[-1] != 100 or any(not 0 < p <= 100 for p in percents):
            raise AnalysisError(f"--percents must be in (0, 100] and end with 100, got {args.percents}")
        if args.grid < 1 or args.k < 1:
            raise AnalysisError("--grid and --k must be positive")
        from tfattr.data.celeba import DatasetError, parse_data_spec

        try:
            data = parse_data_spec(args.data)
        except (DatasetError, OSError) as e:
            raise AnalysisError(str(e)) from e
        run = load_run(data, args.model, args.max_images, args.seed,
                       log=lambda m: print(m, flush=True))
    except (AnalysisError, ValueError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    todo = ANALYSES if args.command == "all" else (args.command,)
    out = Path(args.out)
    if "regions" in todo:
        analyze_regions(run, out, args.grid, args.occlusion_images, attributes)
    if "kmeans" in todo:
        analyze_kmeans(run, out, args.k)
    if "neurons" in todo:
        analyze_neurons(run, out, percents)
    print(f"wrote {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
