"""`FaceLocalizer`: the LNet_o -> LNet_s cascade as stock TF ops (paper Sec. 2.1).

    image float [H, W, 3] in [-1, 1], any size
      -> letterbox to S_o x S_o                      (exact per-axis scales kept)
      -> LNet_o -> averaged C5 map m_o [h_o, w_o]    (head-shoulders)
      -> density peaks on m_o: up to K = max_faces peaks, densest first
      -> per peak: the best window on m_o containing the peak and no
         higher-ranked peak, enlarged by `head_shoulder_enlarge`, squared
      -> crop each VALID head-shoulder window from the INPUT image to S_s x S_s
      -> LNet_s, ONE batched call over those M <= K crops -> maps m_s [M, h_s, w_s]
      -> per crop: the best window on m_s = the face box (or, with `s_box_head`,
         the box LNet_s' self-trained regressor reads off its C5 features; with
         `s_box_refine_code` too, once more on a crop re-made around that box)
      -> back to input pixels through the crop and letterbox transforms
      -> score = the LNet_o window score of the proposal (LNet_o decides where
         and whether, LNet_s refines the box: docs/localization.md)
      -> duplicates (IoU > nms_iou with a better box) dropped, sorted by score
    outputs: boxes [K, 4] (ymin, xmin, ymax, xmax, input pixels), box_scores [K],
             num_faces [] int32 = number of boxes whose score >= threshold.

Multiple faces: density peaks on LNet_o's map propose up to K head-shoulder
regions; every valid region is refined by LNet_s in one batched call, so a
second face costs one more crop in the same batch, not another pass. A slot
without a valid proposal (fewer separated peaks than K, or no window) costs
no LNet_s work: its result was never used. Every valid proposal is refined,
even one that ends as a duplicate (duplicates are only known from the refined
boxes). With `faces_only=True` (the exported cascade) only the valid
proposals whose LNet_o score reaches the threshold are refined: the others
are never faces and can only suppress proposals scored lower still, so the
first num_faces slots are unchanged, the slots beyond get zero boxes (the
cascade zeroes them anyway), and an image whose best proposal is below the
threshold (no face) runs no LNet_s at all. Face 0 is the one with the
highest LNet_o window score (the "dominant" face).

Coordinates are *edge* coordinates (pixel i spans [i, i + 1)), like the
CelebA boxes (xmax = x_1 + width). The transforms are exact:
- letterbox: `tf.image.resize` (half-pixel centres) to (new_h, new_w) maps an
  edge coordinate u to u * new_h / H (per axis; not the rounded single
  `scale`), so input = letterbox / (new_h / H).
- crop: a square box [Y0, Y1) is sampled with S pixels whose centres are at
  Y0 + (j + 0.5) L / S (L = Y1 - Y0), so crop coordinate c maps to Y0 + c L / S.
- map: C5 cell i is centred on pixel `offset + stride i` of the LNet input
  (`tfattr.models.lnet.response_map_geometry`) and stands for a stride-wide strip.

TFLite (`lite=True`): with a static image shape the letterbox and crops use
the builtin-op versions in `tfattr.layers.resample` and LNet_s runs on all K
crops (static shapes); all window/peak ops are cumsum, slices, reduce, top_k
and gather. The server graph crops with the stock CropAndResize op instead
(the same bilinear samples to float rounding, ~4x cheaper).
"""

import keras
import numpy as np
import tensorflow as tf

from tfattr.data import preprocess
from tfattr.layers import resample
from tfattr.layers.empty_batch import call_on_nonempty_batch
from tfattr.localize import peaks as peaks_lib
from tfattr.localize import windows as windows_lib
from tfattr.models import lnet as lnet_lib

DEFAULT_CONFIG = {
    "max_faces": 3,
    # LNet_o windows (fractions of the map's shorter side, height / width).
    "o_window_scales": (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7),
    "o_window_aspects": (1.0, 1.3),
    # LNet_s windows on the head-shoulder crop.
    "s_window_scales": (0.5, 0.6, 0.7, 0.8),  # tuned on the val partition (docs/localization.md)
    "s_window_aspects": (1.0, 1.2),
    "size_exponent": 0.75,
    # > 0: a window's extent is chosen by `windows.extent_scores` with the blob cut at
    # this fraction of its peak (over the map minimum); 0: by sum / area ** size_exponent.
    "o_extent_fraction": 0.3,  # docs/localization.md, fourth pass
    "s_extent_fraction": 0.0,
    # LNet_s' face box scaled about its centre: sqrt-area by s_box_scale, height / width
    # by s_box_aspect (1, 1: the window as chosen; docs/localization.md, seventh pass).
    "s_box_scale": 1.0,
    "s_box_aspect": 1.0,
    "head_shoulder_enlarge": 2.0,
    "min_peak_separation": 2.0,
    "nms_iou": 0.4,
    "threshold": 0.0,
    # None: LNet_o's map is the averaged C5 (the paper); C weights: the face tag's
    # class activation map ReLU(C5 . w) (docs/localization.md, sixth pass).
    "o_map_weights": None,
    # How a face box is scored (ranked, deduplicated, thresholded): "lnet_o", LNet_o's
    # window score (the paper); "cascade", that score times LNet_s' face-window score on
    # the zoomed crop: both stages must see a face (docs/localization.md, eleventh pass).
    "box_score": "lnet_o",
}
BOX_SCORES = ("lnet_o", "cascade")


def check_window_config(max_faces, head_shoulder_enlarge, o_extent_fraction, s_extent_fraction,
                        s_box_scale, s_box_aspect, box_score=DEFAULT_CONFIG["box_score"], **_):
    """Raises ValueError for a window config `FaceLocalizer` cannot use (the other keys
    are accepted and ignored, so `LNetOptions.localizer_kwargs()` can be checked whole)."""
    if int(max_faces) < 1:
        raise ValueError(f"max_faces must be >= 1, got {max_faces!r}")
    if float(head_shoulder_enlarge) <= 0:
        raise ValueError(f"head_shoulder_enlarge must be positive, got {head_shoulder_enlarge!r}")
    for name, value in (("o_extent_fraction", o_extent_fraction),
                        ("s_extent_fraction", s_extent_fraction)):
        if not 0.0 <= float(value) < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    if not (float(s_box_scale) > 0 and float(s_box_aspect) > 0):
        raise ValueError(f"s_box_scale and s_box_aspect must be positive, got {s_box_scale!r} "
                         f"and {s_box_aspect!r}")
    if box_score not in BOX_SCORES:
        raise ValueError(f"box_score must be one of {BOX_SCORES}, got {box_score!r}")


def response_map(backbone, images):
    """Runs an LNet backbone, returns its averaged C5 map [B, h, w] (B may be 0)."""
    out = call_on_nonempty_batch(lambda x: backbone(x, training=False), images)
    if isinstance(out, dict):
        return out["response_map"]
    raise TypeError(f"LNet backbone must return a dict with 'response_map', got {type(out)}")


def static_map_size(backbone, input_size):
    """The (h, w) of the response map for an input_size x input_size image."""
    out = response_map(backbone, tf.zeros([1, input_size, input_size, 3]))
    return int(out.shape[1]), int(out.shape[2])


def letterbox_with_scales(image, size):
    """Letterbox (top-left) -> (image [size, size, 3], scale_yx [2]) with exact per-axis scales.

    A point (y, x) of the letterboxed image is (y / scale_yx[0], x / scale_yx[1])
    in the input (edge coordinates). Uses builtin ops when the shape is static.
    """
    image = tf.convert_to_tensor(image)
    if image.dtype == tf.uint8:
        image = preprocess.normalize(image)
    image = tf.cast(image, tf.float32)
    height, width = image.shape[0], image.shape[1]
    if height is not None and width is not None:
        boxed, _ = resample.letterbox_static(image, size)
        scale = np.float32(size) / np.float32(max(height, width))
        new_h = int(np.clip(np.round(np.float32(height) * scale), 1, size))
        new_w = int(np.clip(np.round(np.float32(width) * scale), 1, size))
        scale_yx = tf.constant([new_h / height, new_w / width], tf.float32)
        return boxed, scale_yx
    boxed, scale = preprocess.letterbox(image, size)
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    # The same float32 arithmetic as preprocess.letterbox.
    new_hw = tf.clip_by_value(tf.round(hw * scale), 1.0, float(size))
    return boxed, new_hw / hw


def crop_boxes_for_sampling(boxes, size):
    """Edge-coordinate boxes -> the pixel-index boxes `crop_and_resize` samples.

    crop_and_resize puts the first/last output pixel centre on the box's
    ymin/ymax (pixel-index coordinates); we want S centres at
    Y0 + (j + 0.5) L / S in edge coordinates (index = edge - 0.5).
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    half_step = (boxes[..., 2:] - boxes[..., :2]) / (2.0 * size)
    return tf.concat([boxes[..., :2] - 0.5 + half_step, boxes[..., 2:] - 0.5 - half_step], -1)


def crop_to_image(crop_boxes, regions, size):
    """Boxes in crop coordinates ([0, size) edges) -> input-image coordinates."""
    crop_boxes = tf.convert_to_tensor(crop_boxes, tf.float32)
    regions = tf.convert_to_tensor(regions, tf.float32)
    step = (regions[..., 2:] - regions[..., :2]) / float(size)  # [.., 2] (y, x)
    step = tf.concat([step, step], -1)
    origin = tf.concat([regions[..., :2], regions[..., :2]], -1)
    return origin + crop_boxes * step


def encode_boxes(boxes, regions):
    """Boxes [N, 4] inside square regions [N, 4] (input px) -> box codes [N, 4]:
    (centre y, centre x, log height, log width) in units of the region side
    (origin at the region's top-left); what `build_box_head` regresses."""
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    regions = tf.convert_to_tensor(regions, tf.float32)
    side = (regions[:, 2:3] - regions[:, 0:1])
    centre = ((boxes[:, :2] + boxes[:, 2:]) / 2 - regions[:, :2]) / side
    return tf.concat([centre, tf.math.log((boxes[:, 2:] - boxes[:, :2]) / side)], -1)


def decode_box_codes(codes):
    """Box codes [N, 4] (`encode_boxes`) -> boxes [N, 4] in region-side units."""
    codes = tf.convert_to_tensor(codes, tf.float32)
    half = tf.exp(codes[:, 2:]) / 2
    return tf.concat([codes[:, :2] - half, codes[:, :2] + half], -1)


def regions_at_code(boxes, code):
    """Square regions [N, 4] in which boxes [N, 4] have the box code `code` in centre and
    height (`encode_boxes`; the width follows the box): side = h / exp(log h)."""
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    side = (boxes[:, 2] - boxes[:, 0]) / float(np.exp(code[2]))
    top = (boxes[:, 0] + boxes[:, 2]) / 2 - float(code[0]) * side
    left = (boxes[:, 1] + boxes[:, 3]) / 2 - float(code[1]) * side
    return tf.stack([top, left, top + side, left + side], axis=1)


def box_iou(a, b):
    """IoU matrix of boxes a [N, 4] and b [M, 4] -> [N, M]."""
    a = a[:, None, :]
    b = b[None, :, :]
    inter_h = tf.nn.relu(tf.minimum(a[..., 2], b[..., 2]) - tf.maximum(a[..., 0], b[..., 0]))
    inter_w = tf.nn.relu(tf.minimum(a[..., 3], b[..., 3]) - tf.maximum(a[..., 1], b[..., 1]))
    inter = inter_h * inter_w
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / tf.maximum(area_a + area_b - inter, 1e-9)


@keras.saving.register_keras_serializable(package="tfattr")
class FaceLocalizer(keras.layers.Layer):
    """LNet_o -> LNet_s cascade: one image -> up to `max_faces` face boxes (see module doc).

    Args:
      lnet_o, lnet_s: LNet backbones (`tfattr.models.lnet.build_lnet`), each
        returning {"features", "response_map"}; fully convolutional. `lnet_o` may
        also be a list of K backbones of one architecture (an ensemble of LNet_o
        runs): LNet_o's map is then the mean of their K maps (`lnet.o_ensemble`,
        docs/localization.md, thirteenth pass).
      lnet_o_input_size: side the whole image is letterboxed to.
      lnet_s_input_size: side each head-shoulder crop is resized to.
      threshold: face / background boundary on box scores (calibrated, Fig. 3b).
      max_faces: K, boxes returned.
      o_window_scales, o_window_aspects, s_window_scales, s_window_aspects:
        window sizes on the two maps (fractions of the map side; height / width).
      size_exponent: window score = sum / area ** size_exponent.
      o_extent_fraction, s_extent_fraction: on LNet_o's / LNet_s' map, > 0
        chooses each window's extent as the box of the response blob cut at
        this fraction of its peak (`windows.extent_scores`) and scores it by
        its mean response (the paper's score); 0 chooses and scores windows
        by sum / area ** size_exponent.
      s_box_scale, s_box_aspect: LNet_s' chosen window is scaled about its
        centre, heights by s_box_scale * sqrt(s_box_aspect) and widths by
        s_box_scale / sqrt(s_box_aspect); (1, 1) keeps the window. A fixed
        correction for a map whose blob is smaller than the face (tuned on the
        val partition, never in training).
      head_shoulder_enlarge: LNet_o window -> head-shoulder crop factor.
      min_peak_separation: density-peak sigma threshold (map cells).
      nms_iou: a box overlapping a better box by more than this is dropped.
      o_map_weights: None, or C5 channel weights w [C]: LNet_o's map is then
        ReLU(sum_c C5_c w_c), the class activation map of LNet_o's "face is
        present" tag (its fine-tuning head's weights), instead of the averaged
        C5 map. LNet_s keeps the averaged map. With K LNet_o backbones: [K * C]
        (each backbone's weights in turn), the map ReLU(mean_k sum_c C5_kc w_kc).
      s_box_head: None, or a `tfattr.models.lnet.build_box_head` model on
        LNet_s' C5 features: each crop's face box is then its regressed
        (centre, log size) in crop-side units instead of the best LNet_s
        window (`s_window_*`, `s_extent_fraction`, `s_box_*` unused); the
        scores are unchanged (docs/localization.md, eighth pass).
      s_box_refine_code: None, or the box code (centre y, centre x, log h, log w)
        the box head saw on average in training: with a box head, each box is
        then regressed a second time on a crop re-made so that the first box sits
        at that code (`regions_at_code`), the framing the head knows best (a
        proposal crop far too large for a small face misleads it; ninth pass).

    Call arguments:
      image: float [H, W, 3] in [-1, 1] (or uint8), any H, W.
    Returns:
      (boxes [K, 4] float32 input pixels, box_scores [K] float32, num_faces [] int32).
      Slots without a proposal have a zero box and score 0.
    """

    def __init__(self, lnet_o, lnet_s, lnet_o_input_size, lnet_s_input_size,
                 threshold=DEFAULT_CONFIG["threshold"], max_faces=DEFAULT_CONFIG["max_faces"],
                 o_window_scales=DEFAULT_CONFIG["o_window_scales"],
                 o_window_aspects=DEFAULT_CONFIG["o_window_aspects"],
                 s_window_scales=DEFAULT_CONFIG["s_window_scales"],
                 s_window_aspects=DEFAULT_CONFIG["s_window_aspects"],
                 size_exponent=DEFAULT_CONFIG["size_exponent"],
                 o_extent_fraction=DEFAULT_CONFIG["o_extent_fraction"],
                 s_extent_fraction=DEFAULT_CONFIG["s_extent_fraction"],
                 s_box_scale=DEFAULT_CONFIG["s_box_scale"],
                 s_box_aspect=DEFAULT_CONFIG["s_box_aspect"],
                 head_shoulder_enlarge=DEFAULT_CONFIG["head_shoulder_enlarge"],
                 min_peak_separation=DEFAULT_CONFIG["min_peak_separation"],
                 nms_iou=DEFAULT_CONFIG["nms_iou"], o_map_weights=None, s_box_head=None,
                 s_box_refine_code=None, box_score=DEFAULT_CONFIG["box_score"], **kwargs):
        super().__init__(**kwargs)
        check_window_config(max_faces=max_faces, head_shoulder_enlarge=head_shoulder_enlarge,
                            o_extent_fraction=o_extent_fraction,
                            s_extent_fraction=s_extent_fraction, s_box_scale=s_box_scale,
                            s_box_aspect=s_box_aspect, box_score=box_score)
        self.box_score = box_score
        members = list(lnet_o) if isinstance(lnet_o, (list, tuple)) else [lnet_o]
        if not members:
            raise ValueError("lnet_o: an LNet backbone or a non-empty list of them")
        shapes = [[tuple(w.shape) for w in m.weights] for m in members]
        if any(s != shapes[0] for s in shapes):
            raise ValueError("an LNet_o ensemble needs backbones of one architecture")
        self.lnet_o = members[0]  # the map geometry and sizes: every member's
        self.lnet_o_members = members
        self.lnet_s = lnet_s
        self.lnet_o_input_size = int(lnet_o_input_size)
        self.lnet_s_input_size = int(lnet_s_input_size)
        self.threshold = float(threshold)
        self.max_faces = int(max_faces)
        self.o_window_scales = tuple(float(s) for s in o_window_scales)
        self.o_window_aspects = tuple(float(a) for a in o_window_aspects)
        self.s_window_scales = tuple(float(s) for s in s_window_scales)
        self.s_window_aspects = tuple(float(a) for a in s_window_aspects)
        self.size_exponent = float(size_exponent)
        self.o_extent_fraction = float(o_extent_fraction)
        self.s_extent_fraction = float(s_extent_fraction)
        self.s_box_scale = float(s_box_scale)
        self.s_box_aspect = float(s_box_aspect)
        self.head_shoulder_enlarge = float(head_shoulder_enlarge)
        self.min_peak_separation = float(min_peak_separation)
        self.nms_iou = float(nms_iou)
        self.o_map_weights = None
        if o_map_weights is not None:
            channels = int(self.lnet_o.output[lnet_lib.FEATURES].shape[-1]) * len(members)
            self.o_map_weights = tuple(float(v) for v in np.ravel(o_map_weights))
            if len(self.o_map_weights) != channels:
                raise ValueError(f"o_map_weights needs {channels} values (LNet_o's C5 "
                                 f"channels x {len(members)} backbone(s)), got "
                                 f"{len(self.o_map_weights)}")
        self.o_map_size = static_map_size(self.lnet_o, self.lnet_o_input_size)
        self.s_map_size = static_map_size(lnet_s, self.lnet_s_input_size)
        self.s_box_head = s_box_head
        if s_box_head is not None:
            want = (*self.s_map_size, int(lnet_s.output[lnet_lib.FEATURES].shape[-1]))
            got = tuple(s_box_head.inputs[0].shape[1:])
            if got != want:
                raise ValueError(f"s_box_head takes features {got}, LNet_s gives {want} at "
                                 f"its {self.lnet_s_input_size}-px input")
        self.s_box_refine_code = None
        if s_box_refine_code is not None:
            code = tuple(float(v) for v in np.ravel(s_box_refine_code))
            if len(code) != 4 or not np.all(np.isfinite(code)):
                raise ValueError(f"s_box_refine_code must be 4 finite numbers (centre y, centre x, "
                                 f"log h, log w), got {s_box_refine_code!r}")
            self.s_box_refine_code = code
        self.o_window_sizes = windows_lib.window_sizes_from_scales(
            self.o_map_size, self.o_window_scales, self.o_window_aspects)
        self.s_window_sizes = windows_lib.window_sizes_from_scales(
            self.s_map_size, self.s_window_scales, self.s_window_aspects)
        self.o_geometry = lnet_lib.response_map_geometry(self.lnet_o)
        self.s_geometry = lnet_lib.response_map_geometry(lnet_s)
        self.threshold_var = tf.Variable(self.threshold, trainable=False, dtype=tf.float32,
                                         name="face_threshold")

    def window_config(self):
        """The JSON-able localization config (stored with the model)."""
        return {
            "threshold": self.threshold, "max_faces": self.max_faces,
            "o_window_scales": list(self.o_window_scales),
            "o_window_aspects": list(self.o_window_aspects),
            "s_window_scales": list(self.s_window_scales),
            "s_window_aspects": list(self.s_window_aspects),
            "size_exponent": self.size_exponent,
            "o_extent_fraction": self.o_extent_fraction,
            "s_extent_fraction": self.s_extent_fraction,
            "s_box_scale": self.s_box_scale, "s_box_aspect": self.s_box_aspect,
            "head_shoulder_enlarge": self.head_shoulder_enlarge,
            "min_peak_separation": self.min_peak_separation, "nms_iou": self.nms_iou,
            "box_score": self.box_score,
            "o_map_weights": None if self.o_map_weights is None else list(self.o_map_weights),
            "s_box_head": self.s_box_head is not None,
            "s_box_refine_code": (None if self.s_box_refine_code is None
                                  else list(self.s_box_refine_code)),
            "lnet_o_input_size": self.lnet_o_input_size,
            "lnet_s_input_size": self.lnet_s_input_size,
        }

    def set_threshold(self, value):
        self.threshold = float(value)
        self.threshold_var.assign(self.threshold)

    def get_config(self):
        config = super().get_config()
        config.update(self.window_config())
        config.pop("lnet_o_input_size")
        config.pop("lnet_s_input_size")
        config.update({
            "lnet_o": [keras.saving.serialize_keras_object(m) for m in self.lnet_o_members],
            "lnet_s": keras.saving.serialize_keras_object(self.lnet_s),
            "s_box_head": (None if self.s_box_head is None
                           else keras.saving.serialize_keras_object(self.s_box_head)),
            "lnet_o_input_size": self.lnet_o_input_size,
            "lnet_s_input_size": self.lnet_s_input_size,
        })
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.setdefault("o_extent_fraction", 0.0)  # saved before the extent rule existed
        members = config["lnet_o"] if isinstance(config["lnet_o"], list) else [config["lnet_o"]]
        config["lnet_o"] = [keras.saving.deserialize_keras_object(m) for m in members]
        config["lnet_s"] = keras.saving.deserialize_keras_object(config["lnet_s"])
        if config.get("s_box_head") is not None:
            config["s_box_head"] = keras.saving.deserialize_keras_object(config["s_box_head"])
        return cls(**config)

    # ----------------------------------------------------------------- stages
    def lnet_o_map(self, images):
        """LNet_o's response map [B, h, w] of letterboxed images: the averaged C5 map,
        or the face tag's class activation map when `o_map_weights` is set; with several
        LNet_o backbones, the mean over them (`lnet.o_ensemble`)."""
        if self.o_map_weights is None:
            return tf.add_n([response_map(m, images) for m in self.lnet_o_members]) / len(
                self.lnet_o_members)
        features = tf.concat([call_on_nonempty_batch(
            lambda x, m=m: m(x, training=False)[lnet_lib.FEATURES], images)
            for m in self.lnet_o_members], axis=-1)
        weights = tf.constant(self.o_map_weights, features.dtype) / len(self.lnet_o_members)
        return tf.nn.relu(tf.reduce_sum(features * weights, axis=-1))

    def _window_choice(self, maps, window_sizes, peak_values, extent_fraction):
        """(select [..., N], rank [N] or [B, N], boxes [N, 4]) for maps [h, w] or [B, h, w].

        `select` picks a window's extent (per peak: `peak_values` [...]), `rank`
        is the score the picked window is reported with.
        """
        if extent_fraction > 0:
            sums, boxes, areas = windows_lib.window_sums(maps, window_sizes)
            level = windows_lib.cut_level(maps, peak_values, extent_fraction)
            if sums.shape.rank == 1:  # one map, several peaks: [K, N]
                return windows_lib.extent_scores(sums[tf.newaxis], areas, level), sums / areas, boxes
            return windows_lib.extent_scores(sums, areas, level), sums / areas, boxes
        scores, boxes = windows_lib.window_scores(maps, window_sizes, self.size_exponent)
        return scores, scores, boxes

    def head_shoulder_windows(self, image):
        """LNet_o stage. Returns dict: regions [K, 4] (input px, square), valid [K],
        o_map [h, w], o_boxes [K, 4] (input px, before enlarging), scale_yx [2]."""
        boxed, scale_yx = letterbox_with_scales(image, self.lnet_o_input_size)
        o_map = self.lnet_o_map(boxed[tf.newaxis])[0]
        o_map = tf.ensure_shape(o_map, self.o_map_size)
        peaks = peaks_lib.density_peaks(o_map, self.max_faces, self.min_peak_separation)
        peak_values = peaks["rho"] * tf.reduce_max(o_map)
        select, rank, boxes = self._window_choice(o_map, self.o_window_sizes, peak_values,
                                                  self.o_extent_fraction)
        pos = peaks["positions"]  # [K, 2] cell centres
        inside = ((boxes[None, :, 0] <= pos[:, None, 0]) & (pos[:, None, 0] < boxes[None, :, 2])
                  & (boxes[None, :, 1] <= pos[:, None, 1]) & (pos[:, None, 1] < boxes[None, :, 3]))
        # A window may not contain a higher-ranked valid peak (the dominant face keeps any).
        k = self.max_faces
        higher = tf.linalg.band_part(tf.ones([k, k]), -1, 0) - tf.eye(k)  # [k, j]: j < k
        higher = higher * tf.cast(peaks["valid"], tf.float32)[None, :]
        blocked = tf.matmul(higher, tf.cast(inside, tf.float32)) > 0  # [K, N]
        allowed = inside & ~blocked
        masked = tf.where(allowed, select, -np.inf)  # select: [N] or [K, N]
        best = tf.argmax(masked, axis=1, output_type=tf.int32)
        has_window = tf.reduce_any(allowed, axis=1)
        o_scores = tf.where(has_window, tf.gather(rank, best), -np.inf)
        o_cells = tf.gather(boxes, best)
        letter_px = windows_lib.map_boxes_to_pixels(
            o_cells, self.o_geometry.stride, self.o_geometry.offset)
        o_boxes = letter_px / tf.concat([scale_yx, scale_yx], 0)
        regions = preprocess.square_box(preprocess.enlarge_box(o_boxes, self.head_shoulder_enlarge))
        return {"regions": regions, "valid": peaks["valid"] & has_window, "o_map": o_map,
                "o_boxes": o_boxes, "o_scores": o_scores,
                "scale_yx": scale_yx}

    def face_windows(self, image, regions, valid=None, lite=False):
        """LNet_s stage over K regions (ONE batched call) -> boxes [K, 4] input px, scores [K], maps.

        Args:
          image: float [H, W, 3] in [-1, 1] (or uint8).
          regions: [K, 4] square head-shoulder regions (input px).
          valid: bool [K] or None. Given, LNet_s runs only on the valid
            regions (a dynamic batch of M <= K crops; M = 0 runs no
            convolution worth the name) and the slots of the other regions
            get a zero box, score 0 and an all-zero map: they are never
            used (`localize` masks them), so the valid slots are exactly
            what the full K-crop batch gives them.
          lite: crop with the builtin-op `tfattr.layers.resample` (TFLite)
            and run all K regions (static shapes); otherwise the stock
            CropAndResize op (the same bilinear samples, ~4x cheaper than
            the builtin-op twin).
        """
        size = self.lnet_s_input_size
        image = tf.convert_to_tensor(image)
        if image.dtype == tf.uint8:
            image = preprocess.normalize(image)
        index = None
        if valid is not None and not lite:
            index = tf.cast(tf.where(valid)[:, 0], tf.int32)  # [M]
            regions = tf.gather(regions, index)
        crop = resample.crop_and_resize if lite else preprocess.crop_and_resize
        crops = crop(image, crop_boxes_for_sampling(regions, size), size)
        if self.s_box_head is None:
            s_maps = response_map(self.lnet_s, crops)
        else:
            s_maps, codes = call_on_nonempty_batch(self._s_maps_and_box_codes, crops)
        s_maps = tf.ensure_shape(s_maps, [None, *self.s_map_size])
        select, rank, boxes = self._window_choice(s_maps, self.s_window_sizes,
                                                  tf.reduce_max(s_maps, axis=[1, 2]),
                                                  self.s_extent_fraction)
        best = tf.argmax(select, axis=1, output_type=tf.int32)
        cells = tf.gather(boxes, best)
        crop_px = windows_lib.map_boxes_to_pixels(cells, self.s_geometry.stride,
                                                  self.s_geometry.offset)
        if self.s_box_head is not None:
            crop_px = decode_box_codes(codes) * float(size)
        face_boxes = crop_to_image(crop_px, regions, size)
        if self.s_box_head is not None and self.s_box_refine_code is not None:
            again = regions_at_code(face_boxes, self.s_box_refine_code)
            crops = crop(image, crop_boxes_for_sampling(again, size), size)
            codes = call_on_nonempty_batch(self._box_codes, crops)
            face_boxes = crop_to_image(decode_box_codes(codes) * float(size), again, size)
        if self.s_box_head is None and (self.s_box_scale, self.s_box_aspect) != (1.0, 1.0):
            stretch = float(np.sqrt(self.s_box_aspect))
            face_boxes = preprocess.enlarge_box(face_boxes, self.s_box_scale * stretch,
                                                self.s_box_scale / stretch)
        face_scores = tf.gather(rank, best, batch_dims=1)
        if index is None:
            return face_boxes, face_scores, s_maps
        k = self.max_faces
        slots = index[:, tf.newaxis]
        return (tf.scatter_nd(slots, face_boxes, [k, 4]),
                tf.scatter_nd(slots, face_scores, [k]),
                tf.scatter_nd(slots, s_maps, [k, *self.s_map_size]))

    def _box_codes(self, crops):
        return self._s_maps_and_box_codes(crops)[1]  # LNet_s computes its map anyway

    def _s_maps_and_box_codes(self, crops):
        out = self.lnet_s(crops, training=False)
        return out[lnet_lib.RESPONSE_MAP], self.s_box_head(out[lnet_lib.FEATURES], training=False)

    def localize(self, image, lite=False, faces_only=False):
        """Everything: dict with boxes, box_scores, num_faces, valid, and the
        intermediate maps/windows (for plots and evaluation).

        LNet_s runs on the valid head-shoulder proposals only (`face_windows`;
        `s_maps` of the other slots are zeros); `lite=True` is the static-shape
        TFLite form (every proposal, builtin-op crops). Both give the same
        boxes, scores and num_faces (to float rounding of the crop).
        `faces_only=True` (ignored with `lite`) also skips the valid proposals
        whose LNet_o score is below the threshold: the same num_faces and the
        same first num_faces boxes and scores; slots beyond num_faces may then
        hold a zero box (evaluation sweeping the threshold needs the default).
        """
        hs = self.head_shoulder_windows(image)
        valid = hs["valid"]
        # LNet_o decides where and whether (its window score ranks the faces and is
        # thresholded, Fig. 3b); LNet_s refines each box inside its head-shoulder crop.
        scores = tf.where(valid, hs["o_scores"], 0.0)
        refine = valid
        if faces_only and not lite and self.box_score == "lnet_o":
            # Below the threshold: never a face, and it can only suppress (NMS)
            # proposals scored lower still, i.e. below the threshold too. (A cascade
            # score is only known once LNet_s has run: every valid proposal is refined.)
            refine = valid & (scores >= self.threshold_var)
        boxes, s_scores, s_maps = self.face_windows(image, hs["regions"], refine, lite=lite)
        if self.box_score == "cascade":
            # Both maps are ReLU outputs (scores >= 0): a face needs both stages' response.
            scores = tf.where(valid, scores * s_scores, 0.0)
        # Drop duplicates: a box overlapping a better valid box by > nms_iou.
        iou = box_iou(boxes, boxes)
        better = (scores[None, :] > scores[:, None]) | (
            tf.equal(scores[None, :], scores[:, None])
            & (tf.range(self.max_faces)[None, :] < tf.range(self.max_faces)[:, None]))
        duplicate = tf.reduce_any(better & valid[None, :] & (iou > self.nms_iou), axis=1)
        valid = valid & ~duplicate
        ranked = tf.where(valid, scores, -np.inf)
        _, order = tf.math.top_k(ranked, k=self.max_faces)
        valid = tf.gather(valid, order)
        boxes = tf.where(valid[:, None], tf.gather(boxes, order), 0.0)
        box_scores = tf.where(valid, tf.gather(scores, order), 0.0)
        num_faces = tf.reduce_sum(tf.cast(valid & (box_scores >= self.threshold_var), tf.int32))
        return {"boxes": boxes, "box_scores": box_scores, "num_faces": num_faces,
                "valid": valid, "o_map": hs["o_map"], "s_maps": tf.gather(s_maps, order),
                "regions": tf.gather(hs["regions"], order),
                "o_boxes": tf.gather(hs["o_boxes"], order), "scale_yx": hs["scale_yx"]}

    def call(self, image, lite=False, faces_only=False):
        out = self.localize(image, lite=lite, faces_only=faces_only)
        return out["boxes"], out["box_scores"], out["num_faces"]

    def compute_output_shape(self, input_shape):
        k = self.max_faces
        return (k, 4), (k,), ()
