"""Density peaks on a response map, to separate several faces (paper Sec. 2.1).

For each map position i: rho_i is the (max-normalised) response, sigma_i the
distance to the nearest position with a larger response (ties broken by
position index so plateaus have one peak), normalised by the map diagonal;
the position with the largest response gets sigma = 1 (the map diagonal).
d_i = sqrt(rho_i^2 + sigma_i^2) as in the paper.

A cell next to a high peak has a large rho but a tiny sigma (one cell), so a
peak must also be a *separated* maximum: sigma_i >= min_separation cells. The
peaks are the positions with the largest d among those, largest first.

Everything is one pairwise-distance matrix over the h*w positions, masked
reductions and `tf.math.top_k`: no Python loop, TFLite builtins only. The C5
map is small (13 x 13 in the paper), so the [hw, hw] matrix is cheap.
"""

import tensorflow as tf


def density_peaks(response_map, max_peaks, min_separation=2.0):
    """Up to `max_peaks` density peaks of one response map.

    Args:
      response_map: float [h, w] (static or dynamic size).
      max_peaks: number of peaks returned (static int).
      min_separation: a peak's sigma must be >= this many map cells.
    Returns:
      dict with
        "positions": float32 [max_peaks, 2] (y, x) cell centres (i + 0.5),
        "d": float32 [max_peaks] the peak measure, -inf where there is no peak,
        "rho", "sigma": float32 [max_peaks] (sigma in cells),
        "valid": bool [max_peaks].
      Peaks are ordered by decreasing d; the first is the global maximum.
    """
    response_map = tf.convert_to_tensor(response_map, tf.float32)
    shape = tf.shape(response_map)
    h, w = shape[0], shape[1]
    n = h * w
    values = tf.reshape(response_map, [-1])
    # rho in [0, 1] (responses are ReLU'd, hence >= 0; guard an all-zero map).
    rho = tf.nn.relu(values) / tf.maximum(tf.reduce_max(values), 1e-12)

    idx = tf.range(n)
    ys = tf.cast(idx // w, tf.float32)
    xs = tf.cast(idx % w, tf.float32)
    dist = tf.sqrt(tf.square(ys[:, None] - ys[None, :]) + tf.square(xs[:, None] - xs[None, :]))
    # denser[i, j]: j is denser than i (ties: the lower index is denser).
    denser = tf.logical_or(values[None, :] > values[:, None],
                           tf.logical_and(tf.equal(values[None, :], values[:, None]),
                                          idx[None, :] < idx[:, None]))
    diagonal = tf.sqrt(tf.cast(h * h + w * w, tf.float32))
    big = diagonal + 1.0
    sigma_cells = tf.reduce_min(tf.where(denser, dist, big), axis=1)
    sigma_cells = tf.minimum(sigma_cells, diagonal)  # the global maximum: the diagonal
    sigma = sigma_cells / diagonal
    d = tf.sqrt(tf.square(rho) + tf.square(sigma))

    candidate = sigma_cells >= min_separation
    masked = tf.where(candidate, d, tf.fill(tf.shape(d), -float("inf")))
    k = tf.minimum(max_peaks, n)
    top_d, top_idx = tf.math.top_k(masked, k=k)
    pad = max_peaks - k
    top_d = tf.pad(top_d, [[0, pad]], constant_values=-float("inf"))
    top_idx = tf.pad(top_idx, [[0, pad]])
    valid = tf.math.is_finite(top_d)
    positions = tf.stack([tf.gather(ys, top_idx), tf.gather(xs, top_idx)], axis=1) + 0.5
    zeros = tf.zeros_like(top_d)
    return {
        "positions": tf.ensure_shape(positions, [max_peaks, 2]),
        "d": tf.ensure_shape(top_d, [max_peaks]),
        "rho": tf.where(valid, tf.gather(rho, top_idx), zeros),
        "sigma": tf.where(valid, tf.gather(sigma_cells, top_idx), zeros),
        "valid": tf.ensure_shape(valid, [max_peaks]),
    }
