"""Face localization from LNet response maps (paper Sec. 2.1): windows, density peaks,
threshold calibration, and the LNet_o -> LNet_s `FaceLocalizer`."""

from tfattr.localize.localizer import FaceLocalizer
from tfattr.localize.peaks import density_peaks
from tfattr.localize.threshold import calibrate_threshold
from tfattr.localize.windows import best_window, window_scores

__all__ = ["FaceLocalizer", "best_window", "calibrate_threshold", "density_peaks", "window_scores"]
