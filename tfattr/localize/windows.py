"""Dense windows scored on an LNet response map with an integral image (paper Sec. 2.1).

The paper proposes windows with EdgeBox and scores each by "the sum of its
response values normalized by its window size". EdgeBox is not a TF op, so we
score *every* window of a few sizes/aspect ratios at every position of the
(small) C5 response map. With an integral image (two `tf.cumsum`) each window
sum is four gathers, so the whole search is a handful of slice/reduce ops:
no Python loop over windows, no py_function, TFLite builtins only (CUMSUM,
STRIDED_SLICE, CONCATENATION, ARG_MAX/TOP_K, GATHER).

Score: `sum / area ** size_exponent`. `size_exponent=1` is the paper's mean
response. With *dense* windows (no object-proposal prior) the pure mean is
maximised by the smallest window on the peak, so the window *extent* is
chosen with `size_exponent < 1` (a mild preference for windows that cover
more of a high-response blob); see docs/localization.md.

Coordinates: a window covering map cells [y0, y0 + wh) x [x0, x0 + ww) has the
box (y0, x0, y0 + wh, x0 + ww) in *map cell edge* coordinates (cell i spans
[i, i + 1)); `map_boxes_to_pixels` converts them to input pixels.
"""

import numpy as np
import tensorflow as tf


def window_sizes_from_scales(map_size, scales, aspect_ratios):
    """Window sizes in map cells from fractions of the map side and aspect ratios.

    Args:
      map_size: (h, w) of the response map (static ints).
      scales: window side (sqrt of area) as a fraction of the map's shorter side.
      aspect_ratios: window height / width.
    Returns:
      A sorted list of unique (wh, ww) int pairs with 1 <= wh <= h, 1 <= ww <= w.
    """
    h, w = int(map_size[0]), int(map_size[1])
    if h < 1 or w < 1:
        raise ValueError(f"map_size must be positive, got {map_size}")
    side = min(h, w)
    sizes = set()
    for scale in scales:
        if not 0 < scale <= 1.5:
            raise ValueError(f"window scale must be in (0, 1.5], got {scale}")
        for aspect in aspect_ratios:
            if aspect <= 0:
                raise ValueError(f"aspect ratio must be positive, got {aspect}")
            wh = int(round(scale * side * np.sqrt(aspect)))
            ww = int(round(scale * side / np.sqrt(aspect)))
            sizes.add((min(max(wh, 1), h), min(max(ww, 1), w)))
    return sorted(sizes)


def integral_image(response_map):
    """[..., h, w] -> [..., h + 1, w + 1] with a leading zero row and column."""
    response_map = tf.convert_to_tensor(response_map, tf.float32)
    ii = tf.cumsum(tf.cumsum(response_map, axis=-2), axis=-1)
    rank = response_map.shape.rank
    paddings = [[0, 0]] * (rank - 2) + [[1, 0], [1, 0]]
    return tf.pad(ii, paddings)


def window_boxes(map_size, window_sizes):
    """Boxes [N, 4] (map cell edges) of all windows, in the order of `window_scores`."""
    h, w = int(map_size[0]), int(map_size[1])
    boxes = []
    for wh, ww in window_sizes:
        if wh > h or ww > w:
            raise ValueError(f"window {(wh, ww)} larger than the map {(h, w)}")
        ys, xs = np.meshgrid(np.arange(h - wh + 1), np.arange(w - ww + 1), indexing="ij")
        ys, xs = ys.ravel(), xs.ravel()
        boxes.append(np.stack([ys, xs, ys + wh, xs + ww], axis=1))
    return np.concatenate(boxes, 0).astype(np.float32)


def window_sums(response_map, window_sizes):
    """Response sum of every window of every size at every position.

    Args:
      response_map: float [h, w] or [B, h, w] with STATIC h, w (the LNet input
        is letterboxed/cropped to a fixed size, so its map size is static).
      window_sizes: list of (wh, ww) in map cells, each <= (h, w).
    Returns:
      (sums [N] or [B, N], boxes [N, 4] float32 in map cell edge coordinates,
      areas [N] float32 in cells), windows ordered by size (as given), then
      row-major by top-left corner.
    """
    response_map = tf.convert_to_tensor(response_map, tf.float32)
    h, w = response_map.shape[-2], response_map.shape[-1]
    if h is None or w is None:
        raise ValueError(f"window scoring needs a static map size, got {response_map.shape}")
    ii = integral_image(response_map)
    sums, areas = [], []
    for wh, ww in window_sizes:
        if wh > h or ww > w:
            raise ValueError(f"window {(wh, ww)} larger than the map {(h, w)}")
        total = (ii[..., wh:, ww:] - ii[..., :-wh or None, ww:]
                 - ii[..., wh:, :-ww or None] + ii[..., :-wh or None, :-ww or None])
        # [..., h - wh + 1, w - ww + 1] -> [..., positions]
        positions = (h - wh + 1) * (w - ww + 1)
        flat_shape = tf.concat([tf.shape(total)[:-2], [positions]], 0)
        sums.append(tf.reshape(total, flat_shape))
        areas.append(np.full(positions, wh * ww, np.float32))
    return (tf.concat(sums, axis=-1), tf.constant(window_boxes((h, w), window_sizes)),
            tf.constant(np.concatenate(areas)))


def window_scores(response_map, window_sizes, size_exponent=1.0):
    """Scores every window: sum / area ** size_exponent (1 = the paper's mean response).

    Same arguments and window order as `window_sums`, plus `size_exponent`.
    Returns (scores [N] or [B, N], boxes [N, 4] in map cell edges).
    """
    sums, boxes, areas = window_sums(response_map, window_sizes)
    return sums / areas ** size_exponent, boxes


def extent_scores(sums, areas, level):
    """Window-extent criterion: sum of (response - level) over the window.

    = sums - level * areas. Maximised by the window that covers the cells
    above `level` and as few below it as possible, i.e. the box of the blob
    cut at `level` (the box rule of weakly supervised localization), found
    with the same integral image as the paper's mean score. Dense windows need
    it: the plain mean always prefers the smallest window on the peak.

    Args:
      sums: [..., N] window sums (`window_sums`).
      areas: [N] window areas.
      level: [...] the cut level per map (or per peak), broadcast over N.
    Returns [..., N].
    """
    level = tf.convert_to_tensor(level, tf.float32)
    return sums - level[..., tf.newaxis] * areas


def cut_level(response_map, peak_value, fraction):
    """min(map) + fraction * (peak_value - min(map)): where a blob is cut.

    response_map [..., h, w]; peak_value [...] (the blob's peak response).
    """
    low = tf.reduce_min(response_map, axis=[-2, -1])
    return low + fraction * (peak_value - low)


def best_window(response_map, window_sizes, size_exponent=1.0):
    """The highest-scoring window: (box [4] / [B, 4] in map cells, score [] / [B])."""
    scores, boxes = window_scores(response_map, window_sizes, size_exponent)
    index = tf.argmax(scores, axis=-1, output_type=tf.int32)
    return tf.gather(boxes, index), tf.reduce_max(scores, axis=-1)


def map_boxes_to_pixels(boxes, stride, offset):
    """Map-cell-edge boxes -> pixel (edge-coordinate) boxes of the network input.

    Cell i of the response map is centred on input pixel index
    `offset + stride * i` (`tfattr.models.lnet.response_map_geometry`) and
    stands for the `stride`-wide strip around that centre, so the cell edge e
    maps to the pixel edge `stride * e + offset + 0.5 - stride / 2`. (For a
    'same'-padded stack, offset + 0.5 = stride / 2 and this is stride * e.)
    Returns float32 boxes of the same shape.
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    return boxes * float(stride) + (float(offset) + 0.5 - float(stride) / 2.0)
