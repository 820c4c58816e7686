"""CelebA / LFWA readers: round trips and every malformed-file case (file and line named)."""

import re

import cv2
import numpy as np
import pytest
import scipy.io

from tfattr.attributes import ATTRIBUTE_NAMES
from tfattr.data.celeba import DatasetError, load_celeba, load_lfwa, parse_data_spec

NAMES = ["000001.jpg", "000002.jpg", "000003.jpg", "000004.jpg"]
RNG = np.random.default_rng(0)
ATTRS = RNG.integers(0, 2, (4, 40))
LANDMARK_HEADER = ("lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y "
                   "leftmouth_x leftmouth_y rightmouth_x rightmouth_y")


def _attr_lines():
    # irregular whitespace, as in the official file
    rows = [f"{n}  " + " ".join(f"{(1 if v else -1):2d}" for v in a) for n, a in zip(NAMES, ATTRS)]
    return ["4", " ".join(ATTRIBUTE_NAMES) + " "] + rows


def write_celeba(root, attr_lines=None, partition=None, bbox=None, images=True, optional=True):
    root.mkdir(parents=True, exist_ok=True)
    (root / "list_attr_celeba.txt").write_text("\n".join(attr_lines or _attr_lines()) + "\n")
    (root / "list_eval_partition.txt").write_text(
        "\n".join(partition or [f"{n} {p}" for n, p in zip(NAMES, (0, 0, 1, 2))]) + "\n")
    if optional:
        (root / "list_bbox_celeba.txt").write_text("\n".join(
            bbox or ["4", "image_id x_1 y_1 width height"]
            + [f"{n}    {10 + k} {20 + k}   30  40" for k, n in enumerate(NAMES)]) + "\n")
        for fname in ("list_landmarks_celeba.txt", "list_landmarks_align_celeba.txt"):
            (root / fname).write_text("\n".join(
                ["4", LANDMARK_HEADER] + [f"{n} " + " ".join(str(k * 10 + j) for j in range(10))
                                          for k, n in enumerate(NAMES)]) + "\n")
        (root / "identity_CelebA.txt").write_text("".join(f"{n} {7 + k % 2}\n" for k, n in enumerate(NAMES)))
    if images:
        (root / "img_celeba").mkdir(exist_ok=True)
        for n in NAMES:
            cv2.imwrite(str(root / "img_celeba" / n), np.full((60, 50, 3), 128, np.uint8))
    return root


def test_round_trip(tmp_path):
    d = load_celeba(write_celeba(tmp_path / "c"))
    assert d.filenames == NAMES
    assert d.attributes.dtype == np.uint8 and d.attributes.shape == (4, 40)
    np.testing.assert_array_equal(d.attributes, ATTRS)
    np.testing.assert_array_equal(d.partition, [0, 0, 1, 2])
    assert d.partition.dtype == np.int8
    np.testing.assert_array_equal(d.identities, [7, 8, 7, 8])
    # x_1=10, y_1=20, w=30, h=40 -> (ymin, xmin, ymax, xmax) = (20, 10, 60, 40)
    assert d.bboxes.dtype == np.float32
    np.testing.assert_array_equal(d.bboxes[0], [20, 10, 60, 40])
    np.testing.assert_array_equal(d.landmarks_wild[1].ravel(), np.arange(10) + 10)
    assert d.landmarks_aligned.shape == (4, 5, 2)
    assert d.wild_path(2) == tmp_path / "c" / "img_celeba" / NAMES[2]
    assert d.aligned_dir is None and d.all_face_boxes is None and d.backgrounds_dir is None
    np.testing.assert_array_equal(d.indices(0), [0, 1])
    assert parse_data_spec(f"celeba:{tmp_path / 'c'}").filenames == NAMES


def test_optional_files_absent(tmp_path):
    d = load_celeba(write_celeba(tmp_path / "c", optional=False))
    assert d.identities is None and d.bboxes is None and d.landmarks_wild is None
    assert d.landmarks_aligned is None


def test_rows_matched_by_name_not_order(tmp_path):
    part = [f"{n} {p}" for n, p in zip(NAMES[::-1], (2, 1, 0, 0))]
    d = load_celeba(write_celeba(tmp_path / "c", partition=part))
    np.testing.assert_array_equal(d.partition, [0, 0, 1, 2])


def _bad_attr(mutate):
    lines = _attr_lines()
    mutate(lines)
    return lines


BAD_CASES = {
    # name: (kwargs for write_celeba or a callable on root, file named, line named)
    "wrong_column_count": (dict(attr_lines=_bad_attr(lambda l: l.__setitem__(3, l[3] + " 1"))),
                           "list_attr_celeba.txt", 4),
    "bad_value": (dict(attr_lines=_bad_attr(lambda l: l.__setitem__(4, l[4][:-2] + " 0"))),
                  "list_attr_celeba.txt", 5),
    "count_mismatch": (dict(attr_lines=_bad_attr(lambda l: l.__setitem__(0, "5"))),
                       "list_attr_celeba.txt", 1),
    "bad_header": (dict(attr_lines=_bad_attr(lambda l: l.__setitem__(1, l[1].replace("Smiling", "Smile")))),
                   "list_attr_celeba.txt", 2),
    "non_integer": (dict(attr_lines=_bad_attr(lambda l: l.__setitem__(5, l[5][:-2] + " x"))),
                    "list_attr_celeba.txt", 6),
    "duplicate_row": (dict(attr_lines=_bad_attr(lambda l: l.__setitem__(4, l[3])),),
                      "list_attr_celeba.txt", 5),
    "partition_bad_value": (dict(partition=[f"{n} {p}" for n, p in zip(NAMES, (0, 0, 3, 2))]),
                            "list_eval_partition.txt", 3),
    "partition_wrong_columns": (dict(partition=[f"{n} 0" for n in NAMES[:3]] + [f"{NAMES[3]} 0 1"]),
                                "list_eval_partition.txt", 4),
    "partition_unknown_image": (dict(partition=[f"{n} 0" for n in NAMES] + ["999999.jpg 0"]),
                                "list_eval_partition.txt", 5),
    "bbox_wrong_columns": (dict(bbox=["4", "image_id x_1 y_1 width height"]
                                + [f"{n} 1 2 3 4" for n in NAMES[:3]] + [f"{NAMES[3]} 1 2 3"]),
                           "list_bbox_celeba.txt", 6),
    "bbox_count_mismatch": (dict(bbox=["3", "image_id x_1 y_1 width height"]
                                 + [f"{n} 1 2 3 4" for n in NAMES]), "list_bbox_celeba.txt", 1),
    "bbox_bad_header": (dict(bbox=["4", "image_id x y w h"] + [f"{n} 1 2 3 4" for n in NAMES]),
                        "list_bbox_celeba.txt", 2),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_files_name_file_and_line(tmp_path, case):
    kwargs, fname, line = BAD_CASES[case]
    root = write_celeba(tmp_path / "c", **kwargs)
    with pytest.raises(DatasetError) as err:
        load_celeba(root)
    msg = str(err.value)
    assert re.search(re.escape(fname) + r":" + str(line) + r"\b", msg), msg


def test_missing_required_file(tmp_path):
    for fname in ("list_attr_celeba.txt", "list_eval_partition.txt"):
        root = write_celeba(tmp_path / fname)
        (root / fname).unlink()
        with pytest.raises(DatasetError, match=re.escape(fname) + ".*not found"):
            load_celeba(root)


def test_missing_image(tmp_path):
    root = write_celeba(tmp_path / "c")
    (root / "img_celeba" / NAMES[2]).unlink()
    with pytest.raises(DatasetError) as err:
        load_celeba(root)
    # names the attribute file and the line that lists the image, and the image
    assert "list_attr_celeba.txt:5" in str(err.value) and NAMES[2] in str(err.value)


def test_no_image_folder(tmp_path):
    root = write_celeba(tmp_path / "c", images=False)
    with pytest.raises(DatasetError, match="img_celeba"):
        load_celeba(root)


def test_partition_missing_row(tmp_path):
    root = write_celeba(tmp_path / "c", partition=[f"{n} 0" for n in NAMES[:3]])
    with pytest.raises(DatasetError, match=r"list_eval_partition.txt.*000004.jpg"):
        load_celeba(root)


def test_dataset_error_is_value_error():
    assert issubclass(DatasetError, ValueError)


def _write_lfwa(root, names, label, train, test):
    root.mkdir(parents=True)
    cell = np.empty((len(names), 1), dtype=object)
    for k, n in enumerate(names):
        cell[k, 0] = np.array([n])
    scipy.io.savemat(root / "lfw_att_40.mat", {"label": label, "name": cell})
    scipy.io.savemat(root / "indices_train_test.mat",
                     {"indices_img_train": np.asarray(train, float)[:, None],
                      "indices_img_test": np.asarray(test, float)[:, None]})
    for n in names:
        (root / "lfw" / n).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "lfw" / n), np.zeros((25, 25, 3), np.uint8))


def _lfwa_names(num_people=12):
    return [f"Person_{p:02d}/Person_{p:02d}_{i:04d}.jpg" for p in range(num_people) for i in (1, 2)]


def test_lfwa_round_trip(tmp_path):
    names = _lfwa_names()
    label = np.random.default_rng(1).integers(0, 2, (len(names), 40)).astype(np.uint8)
    train, test = list(range(1, 17)), list(range(17, 25))  # 1-based, people 0-7 train, 8-11 test
    _write_lfwa(tmp_path / "l", names, label, train, test)
    d = load_lfwa(tmp_path / "l")
    assert d.filenames == names and d.name == "lfwa"
    np.testing.assert_array_equal(d.attributes, label)
    assert set(d.partition[16:]) == {2}
    # val = train people whose sorted rank % 10 == 9: only 8 train people here, so no val
    assert set(d.partition[:16]) == {0}
    np.testing.assert_array_equal(d.identities[:4], [1, 1, 2, 2])
    assert d.wild_path(0) == tmp_path / "l" / "lfw" / names[0]
    assert parse_data_spec(f"lfwa:{tmp_path / 'l'}").filenames == names


def test_lfwa_val_split_by_identity(tmp_path):
    names = _lfwa_names(25)
    label = np.zeros((len(names), 40), np.uint8)
    _write_lfwa(tmp_path / "l", names, label, range(1, 41), range(41, 51))
    d = load_lfwa(tmp_path / "l")
    val_people = {n.split("/")[0] for n, p in zip(d.filenames, d.partition) if p == 1}
    assert val_people == {"Person_09", "Person_19"}  # train ranks 9 and 19
    train_people = {n.split("/")[0] for n, p in zip(d.filenames, d.partition) if p == 0}
    assert not val_people & train_people


@pytest.mark.parametrize("problem", ["bad_label", "overlap", "uncovered", "missing_image", "bad_index"])
def test_lfwa_errors(tmp_path, problem):
    names = _lfwa_names(4)
    label = np.zeros((8, 40), np.uint8)
    train, test = list(range(1, 5)), list(range(5, 9))
    if problem == "bad_label":
        label[3, 5] = 2
    elif problem == "overlap":
        test = test + [2]
    elif problem == "uncovered":
        test = test[:-1]
    elif problem == "bad_index":
        test = test + [9]
    _write_lfwa(tmp_path / "l", names, label, train, test)
    if problem == "missing_image":
        (tmp_path / "l" / "lfw" / names[6]).unlink()
    fname = "lfw_att_40.mat" if problem in ("bad_label", "missing_image") else "indices_train_test.mat"
    with pytest.raises(DatasetError, match=re.escape(fname)):
        load_lfwa(tmp_path / "l")


def test_parse_data_spec_rejects_unknown():
    with pytest.raises(ValueError, match="unknown dataset kind"):
        parse_data_spec("imagenet:/x")
    with pytest.raises(ValueError):
        parse_data_spec("celeba")
