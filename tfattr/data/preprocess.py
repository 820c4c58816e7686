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


ANTIALIAS_TAPS = 4  # sub-samples per axis of an antialiased crop (16 per output pixel)


def antialias_shifts(boxes, size, taps=ANTIALIAS_TAPS):
    """Pixel shifts [K, taps * taps, 4] of the sub-sampled crops whose mean is the
    antialiased crop of `boxes` [K, 4] at `size` x `size`.

    A crop whose output pixels are `pitch` > 1 input pixels apart (a downscale: most face
    regions of a photo) is aliased by bilinear sampling alone: detail finer than the pitch
    (hair strands, eyelids) falls between samples or not. Averaging `taps` x `taps` bilinear
    crops shifted across a box of side `f` per axis low-passes it; `f = sqrt(2 (pitch^2 - 1))`
    gives the filter (box * bilinear tent) the variance of `tf.image.resize(antialias=True)`'s
    tent of radius `pitch`. `pitch` <= 1 (an upscale): no shift, the plain bilinear crop.
    """
    boxes = tf.cast(boxes, tf.float32)
    denom = float(max(int(size) - 1, 1))
    pitch_y = (boxes[:, 2] - boxes[:, 0]) / denom
    pitch_x = (boxes[:, 3] - boxes[:, 1]) / denom
    foot_y = tf.sqrt(2.0 * tf.maximum(tf.square(pitch_y) - 1.0, 0.0))
    foot_x = tf.sqrt(2.0 * tf.maximum(tf.square(pitch_x) - 1.0, 0.0))
    unit = tf.constant([(j - (taps - 1) / 2) / taps for j in range(taps)], tf.float32)
    grid_y = tf.repeat(unit, taps)  # [T*T]: row-major (y, x) grid of the taps
    grid_x = tf.tile(unit, [taps])
    dy = foot_y[:, tf.newaxis] * grid_y  # [K, T*T]
    dx = foot_x[:, tf.newaxis] * grid_x
    return tf.stack([dy, dx, dy, dx], axis=-1)


def crop_antialiased(image, boxes, size, crop=crop_and_resize, taps=ANTIALIAS_TAPS):
    """`crop(image, boxes, size)` low-passed to the output pitch (`antialias_shifts`): the
    mean of taps x taps shifted crops, cut in ONE call of `crop` (K * taps^2 boxes), so the
    builtin-op twin (`tfattr.layers.resample.crop_and_resize`) gives the same values.
    Returns float32 [K, size, size, 3]."""
    boxes = tf.cast(boxes, tf.float32)
    shifted = boxes[:, tf.newaxis, :] + antialias_shifts(boxes, size, taps)
    crops = crop(image, tf.reshape(shifted, [-1, 4]), size)
    crops = tf.reshape(crops, [-1, taps * taps, size, size, crops.shape[-1] or 3])
    return tf.reduce_mean(crops, axis=1)


def crop_framed(image, boxes, size, crop=crop_and_resize, antialias=True):
    """`crop` (`crop_and_resize` or its builtin-op twin) of the image framed by ONE zero
    pixel: inside the image the samples are the same, and a sample just outside the border
    blends towards 0 instead of jumping to 0. Without the frame the crop is discontinuous at
    the border: a box edge on the border (common for enlarged face boxes) gave crops
    differing by a whole pixel value between eager and graph execution, from a 1e-6
    difference in the box. `antialias`: low-passed to the output pitch (`crop_antialiased`).
    The face regions (and the framer's context crops) of training and serving are cut this
    way."""
    image = tf.convert_to_tensor(image)
    if image.dtype == tf.uint8:
        image = normalize(image)
    framed = tf.pad(image, [[1, 1], [1, 1], [0, 0]])
    boxes = tf.cast(boxes, tf.float32) + 1.0
    if antialias:
        return crop_antialiased(framed, boxes, size, crop=crop)
    return crop(framed, boxes, size)


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
