"""tools/oracle_regions.py: the diagnosis tool that frames face regions by the labels."""

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from tfattr.data.celeba import load_celeba
from tfattr.presets import get_preset
from tfattr.stages import anet as anet_stages

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("oracle_regions", REPO / "tools" / "oracle_regions.py")
oracle = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(oracle)

SIZE = 64
KEY = "train_lnet_x1.5"  # a run with anet.face_enlarge=1.5 keys its cache this way


@pytest.fixture()
def source(tmp_path, synthetic_root):
    """A workdir as the anet stage leaves it: LNet stages and cached LNet regions."""
    data = load_celeba(synthetic_root, name="synthetic")
    src = tmp_path / "run"
    (src / "faces").mkdir(parents=True)
    (src / "lnet_o").mkdir()
    (src / "lnet_o" / "DONE").write_text("{}")
    (src / "config.json").write_text(json.dumps({"preset": "tiny"}))
    indices = data.indices(0)[:4]
    np.save(src / "faces" / f"indices_{KEY}.npy", indices)
    np.save(src / "faces" / f"boxes_{KEY}.npy", np.arange(16, dtype=np.float32).reshape(4, 4))
    np.save(src / "faces" / f"regions_{KEY}.npy", np.zeros((4, SIZE, SIZE, 3), np.uint8))
    return data, src, indices


def test_the_stages_read_the_oracle_regions_under_the_runs_cache_key(source, tmp_path):
    data, src, indices = source
    out = tmp_path / "oracle"
    assert oracle.write_oracle_workdir(data, src, out, "box", enlarge=1.2) == {KEY: 4}
    assert (out / "lnet_o" / "DONE").exists() and (out / "config.json").exists()
    np.testing.assert_array_equal(np.load(out / "faces" / f"boxes_{KEY}.npy"),
                                  np.load(src / "faces" / f"boxes_{KEY}.npy"))
    regions, _ = anet_stages.face_regions(out, get_preset("tiny"), data, indices, "train", "lnet",
                                          enlarge=1.5)
    assert regions.shape == (4, SIZE, SIZE, 3) and regions.dtype == np.uint8
    for k, i in enumerate(indices):
        np.testing.assert_array_equal(regions[k], oracle.oracle_region(data, i, "box", SIZE))
    assert regions.std() > 5  # photo pixels, not the source's zeros


def test_box_framing_centres_the_labelled_box_enlarged(synthetic_root):
    data = load_celeba(synthetic_root, name="synthetic")
    for i in range(3):
        y0, x0, y1, x1 = data.bboxes[i]
        m, warp = oracle.region_matrix(data, i, "box", SIZE, enlarge=1.2)
        assert warp is None
        side = 1.2 * max(y1 - y0, x1 - x0)
        centre = m @ [(x0 + x1) / 2, (y0 + y1) / 2, 1.0]
        np.testing.assert_allclose(centre, [SIZE / 2, SIZE / 2], atol=1e-3)
        np.testing.assert_allclose(np.hypot(*m[:, 0]) * side, SIZE, rtol=1e-5)


def test_box_jitter_is_fixed_per_photo_and_zero_jitter_is_the_box(synthetic_root):
    data = load_celeba(synthetic_root, name="synthetic")
    plain, _ = oracle.region_matrix(data, 2, "box", SIZE)
    still, _ = oracle.region_matrix(data, 2, "box-jitter", SIZE, jitter=0.0)
    np.testing.assert_allclose(still, plain, atol=1e-6)
    a, _ = oracle.region_matrix(data, 2, "box-jitter", SIZE, jitter=0.05, seed=9)
    b, _ = oracle.region_matrix(data, 2, "box-jitter", SIZE, jitter=0.05, seed=9)
    c, _ = oracle.region_matrix(data, 2, "box-jitter", SIZE, jitter=0.05, seed=10)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, plain) and not np.allclose(a, c)


def test_landmark_framing_puts_the_landmarks_where_the_aligned_crop_has_them(synthetic_root):
    data = load_celeba(synthetic_root, name="synthetic")
    for i in range(3):
        m, warp = oracle.region_matrix(data, i, "landmarks", SIZE)
        assert warp == oracle.ALIGNED_SIZE
        moved = cv2.transform(data.landmarks_wild[i][None].astype(np.float64), m)[0]
        # the files store integer pixels: the fitted similarity is exact up to their
        # rounding, magnified by the similarity's scale (aligned px per in-the-wild px)
        magnification = np.hypot(*m[:, 0])
        assert np.abs(moved - data.landmarks_aligned[i]).max() < magnification + 1.0
        assert oracle.oracle_region(data, i, "landmarks", SIZE).shape == (SIZE, SIZE, 3)
        rotated, _ = oracle.region_matrix(data, i, "landmarks-rotated", SIZE, seed=1)
        assert not np.allclose(rotated, m)


def test_a_workdir_without_lnet_regions_is_a_clear_error(tmp_path, synthetic_root, capsys):
    (tmp_path / "empty" / "faces").mkdir(parents=True)
    code = oracle.main(["--data", f"synthetic:{synthetic_root}", "--from", str(tmp_path / "empty"),
                        "--out", str(tmp_path / "o"), "--framing", "box"])
    assert code == 2
    assert "no LNet face regions" in capsys.readouterr().err
