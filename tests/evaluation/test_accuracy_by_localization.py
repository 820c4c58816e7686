"""The attribute evaluator's split by what the localizer did (LNet's errors vs ANet's)."""

import numpy as np

from tfattr.evaluation.attributes import accuracy_by_localization


def test_groups_partition_the_images_and_average_within_each():
    rng = np.random.default_rng(0)
    correct = rng.uniform(size=(9, 5)) < 0.7
    majority = rng.uniform(size=(9, 5)) < 0.6
    num_faces = np.array([0, 0, 1, 2, 1, 1, 3, 1, 1])
    top_iou = np.array([0.9, 0.0, 0.5, 0.49, 0.8, 0.1, 0.7, 0.0, 0.55])
    groups = accuracy_by_localization(correct, majority, num_faces, top_iou)
    expected = {"no face": [0, 1], "top box hits (IoU >= 0.5)": [2, 4, 6, 8],
                "top box misses": [3, 5, 7]}
    assert list(groups) == list(expected)
    for name, rows in expected.items():
        assert groups[name]["images"] == len(rows)
        assert np.isclose(groups[name]["accuracy"], correct[rows].mean())
        assert np.isclose(groups[name]["majority_baseline"], majority[rows].mean())
    assert sum(g["images"] for g in groups.values()) == len(correct)


def test_an_empty_group_has_no_accuracy():
    correct = np.ones((2, 3), bool)
    groups = accuracy_by_localization(correct, correct, np.array([1, 1]), np.array([0.6, 0.7]))
    assert groups["no face"] == {"images": 0, "accuracy": None, "majority_baseline": None}
    assert groups["top box hits (IoU >= 0.5)"]["accuracy"] == 1.0
