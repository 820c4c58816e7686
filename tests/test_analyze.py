"""tfattr.analyze: the Sec. 3.1 analyses recover planted structure; the CLI writes its files."""

import csv
import json

import numpy as np
import pytest

from tfattr import analyze
from tfattr.attributes import NUM_ATTRIBUTES


# ------------------------------------------------------------------ k-means (Fig. 11)

def test_kmeans_recovers_planted_weight_groups():
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(0)
    num_features, k = 64, 6
    centers = rng.normal(size=(k, num_features))
    planted = np.arange(NUM_ATTRIBUTES) % k
    # Each attribute: its group's direction at its own scale, plus noise.
    scale = rng.uniform(0.1, 10.0, size=NUM_ATTRIBUTES)
    weights = (centers[planted] + 0.15 * rng.normal(size=(NUM_ATTRIBUTES, num_features)))
    weights = (weights * scale[:, None]).T                        # [F, 40]
    weights[:, 7] = 0.0                                           # a constant classifier
    result = analyze.group_attributes(weights, k=k, seed=0)
    valid = np.arange(NUM_ATTRIBUTES) != 7
    assert result["labels"][7] == -1 and not result["valid"][7]
    assert adjusted_rand_score(planted[valid], result["labels"][valid]) == 1.0
    assert result["embedding"].shape == (NUM_ATTRIBUTES, 2)
    # The heatmap order keeps each group contiguous.
    order = analyze.cluster_order(result["labels"], result["cosine"])
    assert sorted(order) == list(range(NUM_ATTRIBUTES))
    runs = [result["labels"][a] for a in order]
    changes = sum(1 for x, y in zip(runs, runs[1:]) if x != y)
    assert changes == k  # k groups then the left-out attribute


# ------------------------------------------------------- best neurons (Fig. 10b)

def _planted_features(rng, n, informative, weights, num_patches=3, num_features=50):
    z = rng.normal(size=(n, num_features))
    x = z[:, None, :] + 0.5 * rng.normal(size=(n, num_patches, num_features))
    labels = np.zeros((n, NUM_ATTRIBUTES), np.uint8)
    for a, (cols, w) in enumerate(zip(informative, weights)):
        labels[:, a] = (z[:, cols] @ w) > 0
    return x, labels


def test_neuron_curve_reaches_full_accuracy_with_the_best_neurons():
    rng = np.random.default_rng(1)
    num_features = 50
    attrs = [0, 1, 2, 3]
    informative = [rng.choice(num_features, 3, replace=False) for _ in range(NUM_ATTRIBUTES)]
    weights = [rng.uniform(1.0, 2.0, 3) * rng.choice([-1, 1], 3) for _ in range(NUM_ATTRIBUTES)]
    x_fit, y_fit = _planted_features(rng, 600, informative, weights)
    x_test, y_test = _planted_features(rng, 600, informative, weights)
    importance = np.zeros((num_features, NUM_ATTRIBUTES))
    for a in range(NUM_ATTRIBUTES):
        importance[informative[a], a] = weights[a]
    percents = (2, 10, 50, 100)
    acc, counts = analyze.neuron_curve(x_fit, y_fit, x_test, y_test, importance, percents,
                                       c=1.0, attributes=attrs)
    assert counts.tolist() == [1, 5, 25, 50]
    assert np.isnan(acc[4:]).all()
    acc = acc[attrs]
    rel = acc / acc[:, -1:]
    assert (acc[:, -1] > 0.8).all()
    assert np.allclose(rel[:, -1], 1.0)
    assert (rel[:, 1] > 0.97).all()              # 10 % (all 3 informative neurons) ~ full
    assert (rel[:, 0] < rel[:, 1] - 0.1).all()   # one neuron of the three is clearly worse
    # Past the informative neurons the curve is flat (the extra neurons are noise; a
    # little overfitting may even cost a few points).
    assert (np.abs(rel[:, 1:] - rel[:, 1:2]) < 0.06).all()
    # The ranking matters: the WORST 10 % (uninformative neurons) are near chance.
    worst, _ = analyze.neuron_curve(x_fit, y_fit, x_test, y_test, -importance + 10.0 * (importance == 0),
                                    (10, 100), c=1.0, attributes=attrs)
    assert (worst[attrs, 0] < 0.65).all()


# ------------------------------------------------------------- regions (Fig. 9)

@pytest.fixture(scope="module")
def tiny_anet():
    import keras

    from tfattr.models.anet import build_anet
    from tfattr.presets import get_preset

    keras.utils.set_random_seed(0)
    preset = get_preset("tiny")
    return build_anet(**preset.anet), preset


def test_patch_correlation_peaks_on_the_planted_patch(tiny_anet):
    from tfattr.layers.svm_head import AttributeSVMHead
    from tfattr.stages.svm import patch_features

    anet, preset = tiny_anet
    rng = np.random.default_rng(2)
    size = preset.face_region_size
    regions = rng.integers(0, 256, size=(64, size, size, 3), dtype=np.uint8)
    feats = patch_features(anet, preset, regions)                 # [64, 9, F]
    head = AttributeSVMHead()
    head.set_svm(rng.normal(size=(NUM_ATTRIBUTES, feats.shape[2])), np.zeros(NUM_ATTRIBUTES))
    scores = head.patch_scores(feats).numpy()                     # [64, 9, 40]
    num_patches = preset.num_patches
    planted = np.arange(NUM_ATTRIBUTES) % num_patches
    # Attribute a is present iff ITS patch's SVM score is above the median.
    own = scores[:, planted, np.arange(NUM_ATTRIBUTES)]
    labels = (own > np.median(own, 0)).astype(np.uint8)
    corr = analyze.patch_score_correlation(scores, labels)
    assert corr.shape == (NUM_ATTRIBUTES, num_patches)
    np.testing.assert_array_equal(np.nanargmax(corr, axis=1), planted)
    # On the pixels, the planted patch's footprint carries the most evidence.
    offsets = preset.patch_offsets()
    pixels = analyze.patch_values_to_pixels(corr, offsets, preset.patch_size, size)
    for a in range(NUM_ATTRIBUTES):
        y, x = offsets[planted[a]]
        inside = np.zeros((size, size), bool)
        inside[y:y + preset.patch_size, x:x + preset.patch_size] = True
        assert pixels[a][inside].mean() > pixels[a][~inside].mean()
    # A one-class attribute has no correlation.
    labels[:, 0] = 1
    assert np.isnan(analyze.patch_score_correlation(scores, labels)[0]).all()


def test_occlusion_map_peaks_on_the_planted_cell():
    rng = np.random.default_rng(3)
    size, grid = 64, 8
    edges = analyze.cell_edges(size, grid)
    cells = [((a * 5) % grid, (a * 3 + a // grid) % grid) for a in range(NUM_ATTRIBUTES)]

    def score_fn(x):  # attribute a: the brightness of its cell's red channel
        x = np.asarray(x, np.float64)
        return np.stack([x[:, edges[i]:edges[i + 1], edges[j]:edges[j + 1], 0].mean((1, 2)) - 128.0
                         for i, j in cells], 1)

    regions = rng.integers(0, 256, size=(10, size, size, 3), dtype=np.uint8)
    scores = score_fn(regions)
    labels = (scores > 0).astype(np.uint8)
    occ = analyze.occlusion_map(score_fn, regions, labels, grid, batch=50)
    assert occ.shape == (NUM_ATTRIBUTES, grid, grid)
    for a, (i, j) in enumerate(cells):
        expected = np.zeros((grid, grid))
        expected[i, j] = np.abs(scores[:, a] - 0.0).mean()  # the margin |s| is lost
        np.testing.assert_allclose(occ[a], expected, atol=1e-6)
    # Wrong labels: hiding the evidence HELPS (negative drop).
    assert (analyze.occlusion_map(score_fn, regions, 1 - labels, grid) <= 1e-9).all()
    pixels = analyze.cell_values_to_pixels(occ, size)
    i, j = cells[5]
    assert pixels[5, edges[i], edges[j]] == occ[5, i, j] and pixels.shape == (NUM_ATTRIBUTES, size, size)


# ------------------------------------------------------------------------- CLI

@pytest.fixture(scope="module")
def tiny_workdir(tmp_path_factory, tiny_anet):
    """A workdir with a random tiny ANet and a planted SVM head (aligned face regions)."""
    anet, preset = tiny_anet
    workdir = tmp_path_factory.mktemp("analyze_run")
    (workdir / "config.json").write_text(json.dumps({"preset": "tiny", "svm": {"split": "val"}}))
    (workdir / "anet").mkdir()
    anet.save_weights(str(workdir / "anet" / "model.weights.h5"))
    (workdir / "anet" / "DONE").write_text(json.dumps({"face_source": "aligned"}))
    (workdir / "svm").mkdir()
    rng = np.random.default_rng(4)
    num_features = anet.output_shape[-1]
    coef = rng.normal(size=(NUM_ATTRIBUTES, num_features)).astype(np.float32)
    coef[3] = 0.0  # a constant classifier
    np.savez(workdir / "svm" / "svm_head.npz", coef=coef,
             intercept=np.zeros(NUM_ATTRIBUTES, np.float32),
             platt_scale=np.ones(NUM_ATTRIBUTES, np.float32),
             platt_offset=np.zeros(NUM_ATTRIBUTES, np.float32))
    (workdir / "svm" / "DONE").write_text(json.dumps({"per_attribute": {}}))
    return workdir


def test_cli_all_writes_the_figures(tiny_workdir, synthetic_root, tmp_path):
    import matplotlib.image

    out = tmp_path / "out"
    rc = analyze.main(["all", "--data", f"synthetic:{synthetic_root}", "--model", str(tiny_workdir),
                       "--out", str(out), "--max-images", "12", "--grid", "4",
                       "--occlusion-images", "6", "--k", "3", "--percents", "10,50,100",
                       "--attributes", "Male,Smiling"])
    assert rc == 0
    for name in ("regions_correlation.png", "regions_occlusion.png", "kmeans_embedding.png",
                 "kmeans_similarity.png", "neurons.png"):
        image = matplotlib.image.imread(out / name)
        assert image.ndim == 3 and min(image.shape[:2]) > 100, name
    summary = json.loads((out / "regions.json").read_text())
    assert summary["num_images"] == 12 and summary["grid"] == 4
    assert summary["per_attribute"]["Bags_Under_Eyes"]["constant_svm"]
    with np.load(out / "regions.npz") as z:
        assert z["occlusion"].shape == (NUM_ATTRIBUTES, 4, 4)
        assert z["correlation_pixels"].shape == (NUM_ATTRIBUTES, 64, 64)
    groups = json.loads((out / "kmeans_groups.json").read_text())
    assert groups["k"] == 3 and groups["left_out"] == ["Bags_Under_Eyes"]
    assert sum(len(g) for g in groups["groups"]) == NUM_ATTRIBUTES - 1
    with open(out / "neurons.csv") as f:
        rows = list(csv.DictReader(f))
    mean = [r for r in rows if r["attribute"] == "mean_all"]
    assert [int(r["percent"]) for r in mean] == [10, 50, 100]
    assert float(mean[-1]["relative_accuracy"]) == pytest.approx(1.0)


def test_cli_rejects_an_untrained_workdir(tmp_path, synthetic_root, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    rc = analyze.main(["kmeans", "--data", f"synthetic:{synthetic_root}", "--model",
                       str(tmp_path / "run"), "--out", str(tmp_path / "out")])
    assert rc == 2
    assert "not DONE" in capsys.readouterr().err
