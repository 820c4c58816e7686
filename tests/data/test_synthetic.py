"""Synthetic generator: layout, determinism, boxes, identity split, label rates, labels vs pixels."""

import subprocess
import sys

import cv2
import numpy as np
import pytest

from tfattr.attributes import ATTRIBUTE_INDEX, ATTRIBUTE_NAMES
from tfattr.data import synthetic
from tfattr.data.celeba import load_celeba

LIST_FILES = ("list_attr_celeba.txt", "list_eval_partition.txt", "list_bbox_celeba.txt",
              "list_landmarks_celeba.txt", "list_landmarks_align_celeba.txt", "identity_CelebA.txt",
              "list_bbox_all_faces.txt")


def _all_files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_reader(synthetic_root):
    for f in LIST_FILES:
        assert (synthetic_root / f).is_file(), f
    d = load_celeba(synthetic_root)
    assert len(d) == 24 * 6
    assert d.wild_dir is not None and d.aligned_dir is not None
    assert len(d.background_paths()) == 6
    assert set(d.all_face_boxes) == set(d.filenames)
    for i in range(len(d)):
        np.testing.assert_array_equal(d.all_face_boxes[d.filenames[i]][0], d.bboxes[i])  # dominant first
    img = cv2.imread(str(d.aligned_path(0)))
    assert img.shape == (218, 178, 3)
    np.testing.assert_allclose(d.landmarks_aligned[:, :2, 1], 112, atol=1)  # eyes at a fixed height


def test_boxes_inside_images_and_landmarks_in_box(synthetic_root):
    d = load_celeba(synthetic_root)
    sizes = []
    for i, name in enumerate(d.filenames):
        h, w = cv2.imread(str(d.wild_path(i))).shape[:2]
        sizes.append((h, w))
        b = d.all_face_boxes[name]
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all(), name
        assert (b[:, 2] <= h).all() and (b[:, 3] <= w).all(), name
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        if len(b) > 1:  # dominant = largest
            areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
            assert areas[0] >= areas[1:].max()
        eyes = d.landmarks_wild[i, :2]  # (x, y)
        y0, x0, y1, x1 = d.bboxes[i]
        assert ((eyes[:, 0] > x0 - 2) & (eyes[:, 0] < x1 + 2) & (eyes[:, 1] > y0 - 2) & (eyes[:, 1] < y1 + 2)).all()
        face_frac = (y1 - y0) / min(h, w)
        assert 0.1 <= face_frac <= 0.62, (name, face_frac)
    sizes = np.array(sizes)
    assert sizes.min() >= 150 and sizes.max() <= 480
    assert len({tuple(s) for s in sizes}) > 20  # varied sizes and aspects


def test_partition_splits_by_identity(synthetic_root):
    d = load_celeba(synthetic_root)
    for ident in np.unique(d.identities):
        assert len(set(d.partition[d.identities == ident])) == 1, ident
    counts = [len(np.unique(d.identities[d.partition == p])) for p in (0, 1, 2)]
    assert counts[0] >= 18 and counts[1] >= 2 and counts[2] >= 2, counts
    assert (np.diff(d.partition) >= 0).all()  # CelebA order: train, val, test


def test_deterministic_and_seed_dependent(tmp_path):
    kw = dict(num_identities=3, images_per_identity=3, num_backgrounds=2, progress=False, multi_face_rate=0.3)
    a = _all_files(synthetic.generate_dataset(tmp_path / "a", seed=5, **kw))
    b = _all_files(synthetic.generate_dataset(tmp_path / "b", seed=5, **kw))
    c = _all_files(synthetic.generate_dataset(tmp_path / "c", seed=6, **kw))
    assert a == b
    assert a.keys() == c.keys()
    differ = [k for k in a if a[k] != c[k]]
    assert len(differ) >= len(a) - 2, differ  # (the identical-by-construction files aside)


def test_cli_with_workers_gives_same_bytes(tmp_path):
    kw = dict(num_identities=3, images_per_identity=3, num_backgrounds=2, progress=False)
    ref = _all_files(synthetic.generate_dataset(tmp_path / "ref", seed=3, **kw))
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "tfattr.data.synthetic", "--out", str(out), "--identities", "3",
                           "--images-per-identity", "3", "--seed", "3", "--backgrounds", "2", "--workers", "2"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "images/s" in proc.stderr
    assert _all_files(out) == ref


def test_label_rates_and_rules_match_celeba():
    labs = np.concatenate([synthetic.sample_labels(np.random.default_rng([1, i]), np.random.default_rng([2, i]), 2)[0]
                           for i in range(3000)])
    rates = labs.mean(0)
    priors = np.array([synthetic.CELEBA_PRIORS[n] for n in ATTRIBUTE_NAMES])
    worst = np.argmax(np.abs(rates - priors))
    assert np.abs(rates - priors).max() < 0.035, (ATTRIBUTE_NAMES[worst], rates[worst], priors[worst])
    idx = ATTRIBUTE_INDEX
    corr = np.corrcoef(labs.T.astype(float))
    for a, b, phi in synthetic.CELEBA_CORRELATIONS[:10]:
        assert np.sign(corr[idx[a], idx[b]]) == np.sign(phi), (a, b)
    hair = labs[:, [idx[n] for n in synthetic.HAIR_COLOURS]]
    assert hair.sum(1).max() <= 1
    beard = labs[:, [idx[n] for n in ("5_o_Clock_Shadow", "Goatee", "Mustache", "Sideburns")]].any(1)
    assert not (beard & (labs[:, idx["No_Beard"]] == 1)).any()
    assert not (labs[:, idx["Male"]] & labs[:, idx["Wearing_Lipstick"]]).any()


def test_rendered_attributes_declared():
    assert len(synthetic.RENDERED_ATTRIBUTES) >= 25
    assert set(synthetic.RENDERED_ATTRIBUTES) <= set(ATTRIBUTE_NAMES)
    assert set(synthetic.RENDERED_ATTRIBUTES).isdisjoint(synthetic.NOT_RENDERED_ATTRIBUTES)
    for name in ATTRIBUTE_NAMES:
        assert name in synthetic.__doc__, name


@pytest.fixture(scope="module")
def lr_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("lr") / "data"
    return synthetic.generate_dataset(root, num_identities=60, images_per_identity=8, seed=11,
                                      num_backgrounds=0, progress=False)


def test_labels_agree_with_pixels(lr_root):
    """Logistic regression on 32x40 aligned crops beats the majority baseline on held-out identities."""
    from sklearn.linear_model import LogisticRegression

    d = load_celeba(lr_root)
    x = np.stack([cv2.resize(cv2.imread(str(d.aligned_path(i))), (32, 40), interpolation=cv2.INTER_AREA)
                  for i in range(len(d))]).reshape(len(d), -1).astype(np.float32) / 255.0
    held = np.isin(d.identities, np.unique(d.identities)[::4])  # a quarter of the identities
    # principal components of the train images via their Gram matrix (cheap, no LAPACK SVD)
    mean, std = x[~held].mean(0), x[~held].std(0) + 1e-3
    z_tr, z_te = (x[~held] - mean) / std, (x[held] - mean) / std
    w, v = np.linalg.eigh(z_tr @ z_tr.T)
    comps = (z_tr.T @ v[:, ::-1][:, :120]) / np.sqrt(np.maximum(w[::-1][:120], 1e-6))
    f_tr, f_te = z_tr @ comps, z_te @ comps
    f_std = f_tr.std(0) + 1e-6
    f_tr, f_te = f_tr / f_std, f_te / f_std
    wins, rows = [], []
    for name in synthetic.RENDERED_ATTRIBUTES:
        j = ATTRIBUTE_INDEX[name]
        y_tr, y_te = d.attributes[~held, j], d.attributes[held, j]
        majority = int(y_tr.mean() >= 0.5)
        base = float((y_te == majority).mean())
        if y_tr.min() == y_tr.max():
            rows.append(f"{name:20s} base {base:.3f}  (one class in train)")
            continue
        clf = LogisticRegression(C=0.05, solver="liblinear").fit(f_tr, y_tr)
        acc = float((clf.predict(f_te) == y_te).mean())
        rows.append(f"{name:20s} base {base:.3f}  logreg {acc:.3f}  {'+' if acc > base + 0.02 else ''}")
        if acc > base + 0.02:
            wins.append(name)
    print(f"\nheld-out images: {held.sum()}, train: {(~held).sum()}")
    print("\n".join(rows))
    print(f"beats majority (+2 points) on {len(wins)}: {wins}")
    assert len(wins) >= 10, wins
    # drawn bolder on 2026-11-28 (a dark pointed tip): before, logreg read it at the base rate
    assert "Pointy_Nose" in wins, wins
