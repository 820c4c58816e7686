"""Image resampling made of TFLite builtin ops only, for the lite graph.

`tf.image.crop_and_resize` (CropAndResize) and antialiased `tf.image.resize`
(ScaleAndTranslate) are not TFLite builtins; a graph that uses them needs the
Flex delegate, which a phone app cannot carry cheaply (DESIGN.md, Contracts ->
TFLite). The functions here compute the same values with ops that are
builtins:

- `bilinear_crop_and_resize`: same arguments and values as
  `tf.image.crop_and_resize(..., method="bilinear")`, made of
  FLOOR/CAST/arithmetic + GATHER on the flattened image (4 gathers, one per
  bilinear corner, with TF's own interpolation formula so the results agree
  to float rounding).
- `crop_and_resize`: drop-in for `tfattr.data.preprocess.crop_and_resize`
  (pixel boxes, uint8 or float image, output normalized float).
- `resize_static` / `letterbox_static`: `tf.image.resize(bilinear,
  antialias=...)` and `tfattr.data.preprocess.letterbox` for inputs whose
  spatial shape is known when the graph is built (the lite graph's input is
  fixed size). Bilinear resizing is linear and separable, so the resize is
  two matrix products with constant interpolation matrices (FULLY_CONNECTED /
  BATCH_MATMUL); the matrices are obtained by resizing an identity with the
  TF op itself, so they reproduce its kernel (antialias included) exactly.

All functions work eagerly, in `tf.function` and in the TFLite converter, and
contain no Python loop over boxes or pixels.
"""

import functools

import numpy as np
import tensorflow as tf

__all__ = [
    "bilinear_crop_and_resize",
    "crop_and_resize",
    "resize_matrix",
    "resize_static",
    "letterbox_static",
]


def _normalize(image):
    # Same as tfattr.data.preprocess.normalize (kept local: layers must not
    # depend on the data package).
    return tf.cast(image, tf.float32) / 127.5 - 1.0


def bilinear_crop_and_resize(images, boxes, box_indices, crop_size, extrapolation_value=0.0):
    """Builtin-only equivalent of `tf.image.crop_and_resize(method="bilinear")`.

    Args:
      images: float [B, H, W, C] (any float dtype; computed in float32).
      boxes: float [N, 4] normalized (y1, x1, y2, x2); a box may be flipped
        (y1 > y2) or extend past [0, 1], as with the TF op.
      box_indices: int [N], the image of each box.
      crop_size: (crop_height, crop_width) Python ints.
      extrapolation_value: value of samples that fall outside the image.

    Returns:
      float32 [N, crop_height, crop_width, C].
    """
    images = tf.convert_to_tensor(images)
    if images.dtype != tf.float32:
        images = tf.cast(images, tf.float32)
    boxes = tf.cast(tf.convert_to_tensor(boxes), tf.float32)
    box_indices = tf.cast(tf.convert_to_tensor(box_indices), tf.int32)
    crop_h, crop_w = int(crop_size[0]), int(crop_size[1])
    if crop_h < 1 or crop_w < 1:
        raise ValueError(f"crop_size must be positive, got {crop_size!r}")

    shape = tf.shape(images)
    height, width, channels = shape[1], shape[2], images.shape[-1]
    if channels is None:
        channels = shape[3]
    h1 = tf.cast(height - 1, tf.float32)
    w1 = tf.cast(width - 1, tf.float32)

    def sample_coords(lo, hi, dim1, size):
        # lo, hi: [N]; returns in-image coordinates [N, size] as the TF kernel.
        if size > 1:
            steps = tf.range(size, dtype=tf.float32)[tf.newaxis, :]
            scale = (hi - lo) * dim1 / float(size - 1)
            return lo[:, tf.newaxis] * dim1 + steps * scale[:, tf.newaxis]
        return (0.5 * (lo + hi) * dim1)[:, tf.newaxis]

    in_y = sample_coords(boxes[:, 0], boxes[:, 2], h1, crop_h)  # [N, Hc]
    in_x = sample_coords(boxes[:, 1], boxes[:, 3], w1, crop_w)  # [N, Wc]
    valid_y = tf.cast((in_y >= 0.0) & (in_y <= h1), tf.float32)
    valid_x = tf.cast((in_x >= 0.0) & (in_x <= w1), tf.float32)

    # Clamp before floor so out-of-image samples gather a valid (ignored) pixel.
    cy = tf.clip_by_value(in_y, 0.0, h1)
    cx = tf.clip_by_value(in_x, 0.0, w1)
    top = tf.floor(cy)
    left = tf.floor(cx)
    bottom = tf.minimum(tf.math.ceil(cy), h1)
    right = tf.minimum(tf.math.ceil(cx), w1)
    y_lerp = (cy - top)[:, :, tf.newaxis, tf.newaxis]  # [N, Hc, 1, 1]
    x_lerp = (cx - left)[:, tf.newaxis, :, tf.newaxis]  # [N, 1, Wc, 1]

    top_i = tf.cast(top, tf.int32)
    bottom_i = tf.cast(bottom, tf.int32)
    left_i = tf.cast(left, tf.int32)
    right_i = tf.cast(right, tf.int32)
    base = (box_indices * height * width)[:, tf.newaxis, tf.newaxis]  # [N, 1, 1]
    flat = tf.reshape(images, [-1, channels])  # [B*H*W, C]

    def corner(rows, cols):
        index = base + rows[:, :, tf.newaxis] * width + cols[:, tf.newaxis, :]
        return tf.gather(flat, index)  # [N, Hc, Wc, C]

    top_left = corner(top_i, left_i)
    top_right = corner(top_i, right_i)
    bottom_left = corner(bottom_i, left_i)
    bottom_right = corner(bottom_i, right_i)
    top_row = top_left + (top_right - top_left) * x_lerp
    bottom_row = bottom_left + (bottom_right - bottom_left) * x_lerp
    crops = top_row + (bottom_row - top_row) * y_lerp

    valid = (valid_y[:, :, tf.newaxis] * valid_x[:, tf.newaxis, :])[..., tf.newaxis]
    if extrapolation_value == 0.0:
        return crops * valid
    return crops * valid + float(extrapolation_value) * (1.0 - valid)


def crop_and_resize(image, boxes, size):
    """Builtin-only drop-in for `tfattr.data.preprocess.crop_and_resize`.

    Args:
      image: [H, W, 3] uint8 (normalized to [-1, 1] first) or float.
      boxes: [K, 4] (ymin, xmin, ymax, xmax) in pixels; may extend past the
        border, outside samples are 0 (mid grey once normalized).
      size: output side (Python int).

    Returns:
      float32 [K, size, size, 3].
    """
    image = tf.convert_to_tensor(image)
    if image.dtype == tf.uint8:
        image = _normalize(image)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    boxes = tf.cast(boxes, tf.float32)
    denom = tf.maximum(shape - 1.0, 1.0)
    norm = tf.stack([boxes[:, 0] / denom[0], boxes[:, 1] / denom[1],
                     boxes[:, 2] / denom[0], boxes[:, 3] / denom[1]], axis=1)
    box_indices = tf.zeros_like(boxes[:, 0], dtype=tf.int32)
    return bilinear_crop_and_resize(image[tf.newaxis], norm, box_indices, (size, size))


@functools.lru_cache(maxsize=64)
def _resize_matrix_cached(in_size, out_size, antialias):
    # Resizing is linear along each axis: resize an identity "image" whose
    # channels are the unit vectors and read the interpolation matrix off it.
    # init_scope: computed eagerly even while a tf.function is being traced.
    with tf.init_scope():
        eye = tf.eye(in_size, dtype=tf.float32)[:, tf.newaxis, :]  # [in, 1, in] (H, W, C)
        out = tf.image.resize(eye, [out_size, 1], method="bilinear", antialias=antialias)
        matrix = np.asarray(out.numpy()[:, 0, :], np.float32)  # [out, in]
    matrix.setflags(write=False)
    return matrix


def resize_matrix(in_size, out_size, antialias=True):
    """[out_size, in_size] float32 matrix M with resize(x) = M @ x along one axis.

    Reproduces `tf.image.resize(method="bilinear", antialias=antialias)`
    (half-pixel centres) along one spatial axis.
    """
    in_size, out_size = int(in_size), int(out_size)
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got in_size={in_size}, out_size={out_size}")
    return _resize_matrix_cached(in_size, out_size, bool(antialias))


def resize_static(images, size, antialias=True):
    """`tf.image.resize(images, size, "bilinear", antialias)` with builtin ops.

    Args:
      images: float [B, H, W, C] or [H, W, C] with H, W, C known statically.
      size: (out_height, out_width) Python ints.
      antialias: as in `tf.image.resize`.

    Returns:
      float32 [B, out_height, out_width, C] (or [out_h, out_w, C]).
    """
    images = tf.convert_to_tensor(images)
    if images.dtype != tf.float32:
        images = tf.cast(images, tf.float32)
    squeeze = images.shape.rank == 3
    if squeeze:
        images = images[tf.newaxis]
    height, width, channels = images.shape[1], images.shape[2], images.shape[3]
    if None in (height, width, channels):
        raise ValueError(f"resize_static needs static H, W, C; got shape {images.shape}")
    out_h, out_w = int(size[0]), int(size[1])
    if (out_h, out_w) == (height, width):
        resized = images
    else:
        my = tf.constant(resize_matrix(height, out_h, antialias))  # [h, H]
        mx = tf.constant(resize_matrix(width, out_w, antialias))  # [w, W]
        # Rows: [B, H, W, C] -> [B, W, C, H] @ my^T -> [B, W, C, h]
        x = tf.transpose(images, [0, 2, 3, 1])
        x = tf.reshape(tf.matmul(tf.reshape(x, [-1, height]), my, transpose_b=True),
                       [-1, width, channels, out_h])
        # Columns: [B, W, C, h] -> [B, h, C, W] @ mx^T -> [B, h, C, w] -> [B, h, w, C]
        x = tf.transpose(x, [0, 3, 2, 1])
        x = tf.reshape(tf.matmul(tf.reshape(x, [-1, width]), mx, transpose_b=True),
                       [-1, out_h, channels, out_w])
        resized = tf.transpose(x, [0, 1, 3, 2])
    return resized[0] if squeeze else resized


def letterbox_static(image, size):
    """`tfattr.data.preprocess.letterbox` for an image of static shape, builtin ops.

    Args:
      image: [H, W, 3] or [B, H, W, 3], uint8 (normalized first) or float,
        H and W known when the graph is built.
      size: output side (Python int).

    Returns:
      (float32 [(B,) size, size, 3], scale) with `scale` a Python float: a
      point (y, x) of the output is (y / scale, x / scale) in the input.
    """
    image = tf.convert_to_tensor(image)
    if image.dtype == tf.uint8:
        image = _normalize(image)
    squeeze = image.shape.rank == 3
    if squeeze:
        image = image[tf.newaxis]
    height, width = image.shape[1], image.shape[2]
    if height is None or width is None:
        raise ValueError(f"letterbox_static needs static H, W; got shape {image.shape}")
    # Same float32 arithmetic as preprocess.letterbox.
    scale = np.float32(size) / np.float32(max(height, width))
    new_h = int(np.clip(np.round(np.float32(height) * scale), 1, size))
    new_w = int(np.clip(np.round(np.float32(width) * scale), 1, size))
    resized = resize_static(image, (new_h, new_w), antialias=True)
    if (new_h, new_w) != (size, size):
        resized = tf.pad(resized, [[0, 0], [0, size - new_h], [0, size - new_w], [0, 0]])
    return (resized[0] if squeeze else resized), float(scale)
