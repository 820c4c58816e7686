import numpy as np
import pytest

from tfattr.localize.threshold import calibrate, calibrate_threshold


def test_separates_planted_distributions():
    rng = np.random.default_rng(0)
    face = rng.normal(2.0, 0.2, 500)
    background = rng.normal(1.0, 0.2, 800)
    cal = calibrate(face, background)
    assert 1.3 < cal.threshold < 1.7
    assert cal.balanced_error < 0.02
    # Measured rates are what the threshold gives.
    assert cal.face_miss_rate == pytest.approx((face < cal.threshold).mean())


def test_separable_threshold_is_midpoint_of_gap():
    assert calibrate_threshold([3.0, 4.0, 5.0], [0.0, 1.0]) == pytest.approx(2.0)
    cal = calibrate([3.0, 4.0], [0.5, 1.0])
    assert cal.balanced_error == 0.0


def test_overlapping_distributions_balanced_boundary():
    # Equal-variance normals: the balanced boundary is halfway between the means.
    rng = np.random.default_rng(1)
    face = rng.normal(1.0, 1.0, 20000)
    background = rng.normal(-1.0, 1.0, 5000)
    assert calibrate_threshold(face, background) == pytest.approx(0.0, abs=0.1)


def test_rejects_empty():
    with pytest.raises(ValueError):
        calibrate([], [1.0])
