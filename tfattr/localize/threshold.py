"""Face / background threshold on max window scores (paper Sec. 2.1, Fig. 3b).

Each image is represented by the maximum score over its windows; the
threshold is the decision boundary between the face images' and the
face-free (background) images' histograms. We take the boundary that
minimises the balanced error (mean of the miss rate on faces and the false
alarm rate on backgrounds), at the midpoint of the widest optimal gap, so
with separable histograms it sits halfway between them.
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class ThresholdCalibration:
    threshold: float
    balanced_error: float
    face_miss_rate: float
    background_false_alarm_rate: float
    num_faces: int
    num_backgrounds: int

    def to_dict(self):
        return dataclasses.asdict(self)


def calibrate(face_scores, background_scores):
    """Full calibration record (see module doc). Scores: 1-D arrays, face >= threshold."""
    face = np.asarray(face_scores, np.float64).ravel()
    background = np.asarray(background_scores, np.float64).ravel()
    if face.size == 0 or background.size == 0:
        raise ValueError(f"need face and background scores, got {face.size} and {background.size}")
    if not (np.all(np.isfinite(face)) and np.all(np.isfinite(background))):
        raise ValueError("scores must be finite")
    values = np.unique(np.concatenate([face, background]))
    # Candidate thresholds: below everything, between consecutive values, above everything.
    mids = (values[:-1] + values[1:]) / 2
    span = max(values[-1] - values[0], 1e-6)
    candidates = np.concatenate([[values[0] - span * 1e-3], mids, [values[-1] + span * 1e-3]])
    face_sorted = np.sort(face)
    bg_sorted = np.sort(background)
    miss = np.searchsorted(face_sorted, candidates, side="left") / face.size  # face < t
    false_alarm = 1.0 - np.searchsorted(bg_sorted, candidates, side="left") / background.size
    error = (miss + false_alarm) / 2
    best = np.flatnonzero(np.isclose(error, error.min(), rtol=0, atol=1e-12))
    # Optimal thresholds form runs; take the run whose value interval is widest, its centre.
    runs = np.split(best, np.flatnonzero(np.diff(best) > 1) + 1)

    def interval(run):
        lo = values[run[0] - 1] if run[0] > 0 else values[0] - span
        hi = values[run[-1]] if run[-1] < len(values) else values[-1] + span
        return lo, hi

    lo, hi = max((interval(r) for r in runs), key=lambda b: b[1] - b[0])
    threshold = (lo + hi) / 2
    return ThresholdCalibration(
        threshold=float(threshold),
        balanced_error=float(((face < threshold).mean() + (background >= threshold).mean()) / 2),
        face_miss_rate=float((face < threshold).mean()),
        background_false_alarm_rate=float((background >= threshold).mean()),
        num_faces=int(face.size), num_backgrounds=int(background.size))


def calibrate_threshold(face_scores, background_scores):
    """The decision boundary (float): a score >= it is a face."""
    return calibrate(face_scores, background_scores).threshold
