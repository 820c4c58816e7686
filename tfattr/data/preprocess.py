"""Plain TF preprocessing shared by the tf.data pipelines and the export graph.

Everything here is stock TF ops (no py_function), works eagerly and inside
`tf.data.Dataset.map` / `tf.function`, so training and serving see the same
pixels (STYLE.md section 2). Images are HWC RGB; float images are in [-1, 1].
"""

import tensorflow as tf

MAX_IMAGE_PIXELS = 40_000_000  # refuse decoding anything larger (DoS guard)


def decode_image(image_bytes):
    """Decodes JPEG/PNG/BMP/GIF bytes to uint8 RGB [H, W, 3].

    Grayscale is tiled to 3 channels, alpha is dropped, 16-bit PNG is scaled
    to 8 bits, an animated GIF keeps its first frame.
    """
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False,
                               dtype=tf.uint8)
    image.set_shape([None, None, 3])
    return image


def normalize(image):
    """uint8 [.., H, W, 3] -> float32 in [-1, 1]."""
    return tf.cast(image, tf.float32) / 127.5 - 1.0


def letterbox(image, size):
    """Resizes `image` [H, W, 3] so its longer side is `size`, pads to size x size.

    The image is placed at the top-left corner and the padding is 0 (mid grey
    in normalized units). Returns (letterboxed float32 [size, size, 3], scale)
    where a point (y, x) of the letterboxed image is (y / scale, x / scale) in
    the input image.
    """
    image = tf.convert_to_tensor(image)
    if image.dtype == tf.uint8:
        image = normalize(image)
    shape = tf.shape(image)
    height = tf.cast(shape[0], tf.float32)
    width = tf.cast(shape[1], tf.float32)
    scale = tf.cast(size, tf.float32) / tf.maximum(height, width)
    new_h = tf.clip_by_value(tf.cast(tf.round(height * scale), tf.int32), 1, size)
    new_w = tf.clip_by_value(tf.cast(tf.round(width * scale), tf.int32), 1, size)
    resized = tf.image.resize(image, [new_h, new_w], method="bilinear", antialias=True)
    padded = tf.image.pad_to_bounding_box(resized, 0, 0, size, size)
    padded.set_shape([size, size, 3])
    return padded, scale


def crop_and_resize(image, boxes, size):
    """Crops boxes (ymin, xmin, ymax, xmax in pixels) of one image, resizes to size x size.

    `image` is [H, W, 3] (uint8 or float), `boxes` [K, 4]. Boxes may extend
    past the image border; outside pixels are 0 (mid grey once normalized).
    Returns float32 [K, size, size, 3] in [-1, 1].
    """
    image = tf.convert_to_tensor(image)
    if image.dtype == tf.uint8:
        image = normalize(image)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    boxes = tf.cast(boxes, tf.float32)
    # crop_and_resize samples at box corners; normalize by (dim - 1).
    denom = tf.maximum(shape - 1.0, 1.0)
    norm = tf.stack([boxes[:, 0] / denom[0], boxes[:, 1] / denom[1],
                     boxes[:, 2] / denom[0], boxes[:, 3] / denom[1]], axis=1)
    box_indices = tf.zeros([tf.shape(boxes)[0]], tf.int32)
    return tf.image.crop_and_resize(image[tf.newaxis], norm, box_indices, [size, size],
                                    method="bilinear", extrapolation_value=0.0)


def crop_framed(image, boxes, size, crop=crop_and_resize):
    """`crop` (`crop_and_resize` or its builtin-op twin) of the image framed by ONE zero
    pixel: inside the image the samples are the same, and a sample just outside the border
    blends towards 0 instead of jumping to 0. Without the frame the crop is discontinuous at
    the border: a box edge on the border (common for enlarged face boxes) gave crops
    differing by a whole pixel value between eager and graph execution, from a 1e-6
    difference in the box. The face regions of training and serving are cut this way."""
    image = tf.convert_to_tensor(image)
    if image.dtype == tf.uint8:
        image = normalize(image)
    framed = tf.pad(image, [[1, 1], [1, 1], [0, 0]])
    return crop(framed, tf.cast(boxes, tf.float32) + 1.0, size)


def enlarge_box(boxes, factor, width_factor=None):
    """Scales boxes (ymin, xmin, ymax, xmax) about their centres by `factor`
    (heights by `factor` and widths by `width_factor` when that is given)."""
    boxes = tf.cast(boxes, tf.float32)
    width_factor = factor if width_factor is None else width_factor
    cy = (boxes[..., 0] + boxes[..., 2]) / 2
    cx = (boxes[..., 1] + boxes[..., 3]) / 2
    half_h = (boxes[..., 2] - boxes[..., 0]) * factor / 2
    half_w = (boxes[..., 3] - boxes[..., 1]) * width_factor / 2
    return tf.stack([cy - half_h, cx - half_w, cy + half_h, cx + half_w], axis=-1)


def square_box(boxes):
    """The square box (side = the longer side) with the same centre."""
    boxes = tf.cast(boxes, tf.float32)
    cy = (boxes[..., 0] + boxes[..., 2]) / 2
    cx = (boxes[..., 1] + boxes[..., 3]) / 2
    half = tf.maximum(boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]) / 2
    return tf.stack([cy - half, cx - half, cy + half, cx + half], axis=-1)
