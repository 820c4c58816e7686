"""tf.data input pipelines for every training stage (docs/interfaces.md).

All builders return batched `tf.data.Dataset`s of float32 images in [-1, 1]
made by the plain TF functions of `tfattr.data.preprocess` (the export graph
uses the same functions):

- `whole_image_dataset`: whole in-the-wild images letterboxed to a square (LNet_o).
- `crop_dataset`: one box per image cropped and resized (LNet_s windows, ANet face regions).
- `identity_dataset`: (image, identity class) batches of k identities x m images
  (ANet identity pre-training: softmax + same-identity similarity pairs).
- `background_dataset`: face-free images letterboxed (threshold calibration).

Common arguments: `training` turns on shuffling and augmentation (horizontal
flip, crop jitter, brightness/contrast jitter; all label-preserving: the 40
attributes are mirror-symmetric); `seed` seeds the shuffle and every random op;
`deterministic=True` keeps the element order fixed (parallel maps stay
ordered), so a given seed yields the same tensors on every run. Augmentation
uses stateless random ops whose seeds come from `tf.data.Dataset.random(seed)`
(rerandomized each epoch, still reproducible for a fixed seed). Decoding and
preprocessing run with `num_parallel_calls=AUTOTUNE`, the dataset ends with
`prefetch(AUTOTUNE)`. Training datasets drop the last partial batch (static
batch shapes for tf.distribute); evaluation datasets keep it.
"""

import numpy as np
import tensorflow as tf

from tfattr.data import preprocess

AUTOTUNE = tf.data.AUTOTUNE
MAX_SHUFFLE_BUFFER = 50_000


def _options(deterministic):
    options = tf.data.Options()
    options.deterministic = bool(deterministic)
    return options


def _as_paths(paths):
    return tf.constant([str(p) for p in paths], dtype=tf.string)


def _with_seeds(ds, seed):
    """Zips each element with a [2, 2] int64 block of stateless seeds."""
    randoms = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(4)
    return tf.data.Dataset.zip((ds, randoms)).map(
        lambda x, r: (x, tf.reshape(r, [2, 2])), num_parallel_calls=AUTOTUNE)


def load_image(path):
    """File path -> uint8 [H, W, 3] (JPEG/PNG/BMP/GIF)."""
    return preprocess.decode_image(tf.io.read_file(path))


def color_jitter(image, seed, brightness=0.12, contrast=0.2):
    """Brightness (additive, in [-1, 1] units) and contrast jitter of a float image in [-1, 1]."""
    seed = tf.cast(seed, tf.int64)
    image = tf.image.stateless_random_brightness(image, brightness, seed=seed)
    image = tf.image.stateless_random_contrast(image, 1.0 - contrast, 1.0 + contrast,
                                               seed=seed + tf.constant([0, 1], tf.int64))
    return tf.clip_by_value(image, -1.0, 1.0)


def jitter_boxes(boxes, seed, jitter):
    """Random shift (+-jitter x size) and scale (x exp(+-jitter)) of boxes [K, 4]."""
    boxes = tf.cast(boxes, tf.float32)
    k = tf.shape(boxes)[0]
    u = tf.random.stateless_uniform([k, 3], tf.cast(seed, tf.int64), minval=-1.0, maxval=1.0)
    h = boxes[:, 2] - boxes[:, 0]
    w = boxes[:, 3] - boxes[:, 1]
    cy = (boxes[:, 0] + boxes[:, 2]) / 2 + u[:, 0] * jitter * h
    cx = (boxes[:, 1] + boxes[:, 3]) / 2 + u[:, 1] * jitter * w
    s = tf.exp(u[:, 2] * jitter)
    return tf.stack([cy - h * s / 2, cx - w * s / 2, cy + h * s / 2, cx + w * s / 2], axis=1)


def whole_image_example(path, image_size, training=False, seed=None, crop_jitter=0.1):
    """One in-the-wild image -> letterboxed float [S, S, 3].

    Training: a random crop keeping >= (1 - crop_jitter) of each side, a random
    horizontal flip and colour jitter; `seed` is a [2, 2] int64 block of
    stateless seeds (required when training).
    """
    image = load_image(path)
    if training:
        seed = tf.cast(seed, tf.int64)
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        u = tf.random.stateless_uniform([4], seed[0], 0.0, 1.0)
        size = shape * (1.0 - crop_jitter * u[:2])
        off = (shape - size) * u[2:]
        crop_h = tf.cast(tf.round(size[0]), tf.int32)
        crop_w = tf.cast(tf.round(size[1]), tf.int32)
        y0 = tf.cast(tf.round(off[0]), tf.int32)
        x0 = tf.cast(tf.round(off[1]), tf.int32)
        image = image[y0:y0 + crop_h, x0:x0 + crop_w]
        image = tf.image.stateless_random_flip_left_right(image, seed=seed[1])
    out, _ = preprocess.letterbox(image, image_size)
    if training:
        out = color_jitter(out, seed[1] + tf.constant([1, 0], tf.int64))
    return out


def crop_example(path, box, image_size, training=False, seed=None, jitter=0.05):
    """One image and one box (ymin, xmin, ymax, xmax pixels) -> float [S, S, 3].

    Training: box jitter (`jitter_boxes`), horizontal flip, colour jitter.
    """
    image = load_image(path)
    boxes = tf.reshape(tf.cast(box, tf.float32), [1, 4])
    if training:
        seed = tf.cast(seed, tf.int64)
        boxes = jitter_boxes(boxes, seed[0], jitter)
    out = preprocess.crop_and_resize(image, boxes, image_size)[0]
    if training:
        out = tf.image.stateless_random_flip_left_right(out, seed=seed[1])
        out = color_jitter(out, seed[1] + tf.constant([1, 0], tf.int64))
    return out


def _finish(ds, batch_size, training, deterministic):
    ds = ds.batch(batch_size, drop_remainder=bool(training), num_parallel_calls=AUTOTUNE,
                  deterministic=bool(deterministic))
    return ds.prefetch(AUTOTUNE).with_options(_options(deterministic))


def _base(tensors, training, seed, deterministic):
    n = int(tensors[0].shape[0])
    ds = tf.data.Dataset.from_tensor_slices(tensors)
    if training:
        ds = ds.shuffle(min(n, MAX_SHUFFLE_BUFFER), seed=seed, reshuffle_each_iteration=True)
    return _with_seeds(ds, seed)


def whole_image_dataset(paths, labels, image_size, batch_size, training=False, seed=0,
                        deterministic=False, crop_jitter=0.1):
    """(letterboxed float [B, S, S, 3], labels float32 [B, 40]) for LNet_o."""
    labels = tf.constant(np.asarray(labels, np.float32))
    ds = _base((_as_paths(paths), labels), training, seed, deterministic)

    def fn(x, s):
        return whole_image_example(x[0], image_size, training, s, crop_jitter), x[1]

    ds = ds.map(fn, num_parallel_calls=AUTOTUNE, deterministic=bool(deterministic))
    return _finish(ds, batch_size, training, deterministic)


def crop_dataset(paths, boxes, labels, image_size, batch_size, training=False, seed=0,
                 deterministic=False, jitter=0.05):
    """(crops float [B, S, S, 3], labels float32 [B, 40]): one box [N, 4] per image.

    For ANet pass the enlarged face boxes (`preprocess.enlarge_box`), for LNet_s
    the head-shoulder windows; boxes may extend past the border (zero padding).
    """
    labels = tf.constant(np.asarray(labels, np.float32))
    boxes = tf.constant(np.asarray(boxes, np.float32).reshape(-1, 4))
    ds = _base((_as_paths(paths), boxes, labels), training, seed, deterministic)

    def fn(x, s):
        return crop_example(x[0], x[1], image_size, training, s, jitter), x[2]

    ds = ds.map(fn, num_parallel_calls=AUTOTUNE, deterministic=bool(deterministic))
    return _finish(ds, batch_size, training, deterministic)


def background_dataset(paths, image_size, batch_size, deterministic=True):
    """Face-free images letterboxed: float [B, S, S, 3] (no augmentation, file order)."""
    ds = tf.data.Dataset.from_tensor_slices(_as_paths(paths))
    ds = ds.map(lambda p: preprocess.letterbox(load_image(p), image_size)[0],
                num_parallel_calls=AUTOTUNE, deterministic=bool(deterministic))
    return _finish(ds, batch_size, False, deterministic)


def identity_classes(identities):
    """(sorted unique identity ids, class index int32 [N]) : ids -> 0..C-1."""
    identities = np.asarray(identities)
    unique, classes = np.unique(identities, return_inverse=True)
    return unique, classes.astype(np.int32)


def identity_dataset(paths, identities, image_size, identities_per_batch, images_per_identity,
                     boxes=None, steps=None, training=True, seed=0, deterministic=False, jitter=0.05):
    """(images float [k*m, S, S, 3], identity class int32 [k*m]) for ANet pre-training.

    Every batch holds `identities_per_batch` (k) distinct identities with
    `images_per_identity` (m) images each, consecutive (rows i*m .. i*m+m-1 share
    an identity), so a similarity loss always has positive pairs. Only
    identities with >= 2 images are sampled; images of an identity are drawn
    without replacement (wrapping around when it has fewer than m). Classes
    are `identity_classes(identities)` (all identities, so the softmax size is
    len(unique)). `boxes` [N, 4]: crop these (e.g. enlarged face boxes); None:
    the whole image (e.g. aligned crops). `steps` batches per epoch (default
    N // (k*m)).
    """
    k, m = int(identities_per_batch), int(images_per_identity)
    _, classes = identity_classes(identities)
    n = len(classes)
    order = np.argsort(classes, kind="stable")
    counts_all = np.bincount(classes)
    starts_all = np.concatenate([[0], np.cumsum(counts_all)[:-1]])
    eligible = np.flatnonzero(counts_all >= 2)
    if len(eligible) < k:
        raise ValueError(f"identity_dataset needs >= {k} identities with >= 2 images, got {len(eligible)}")
    starts = tf.constant(starts_all[eligible], tf.int64)
    counts = tf.constant(counts_all[eligible], tf.int64)
    max_count = int(counts_all[eligible].max())
    order_t = tf.constant(order, tf.int64)
    paths_t = _as_paths(paths)
    classes_t = tf.constant(classes, tf.int32)
    boxes_t = None if boxes is None else tf.constant(np.asarray(boxes, np.float32).reshape(-1, 4))
    steps = int(steps) if steps else max(1, n // (k * m))

    def batch_indices(r):
        r = tf.cast(tf.reshape(r, [2, 2]), tf.int64)
        pick = tf.argsort(tf.random.stateless_uniform([len(eligible)], r[0]))[:k]
        cnt = tf.gather(counts, pick)
        u = tf.random.stateless_uniform([k, max_count], r[1])
        u = tf.where(tf.range(max_count, dtype=tf.int64)[tf.newaxis] < cnt[:, tf.newaxis], u, 2.0)
        perm = tf.cast(tf.argsort(u, axis=1), tf.int64)  # a random permutation of 0..count-1 first
        cols = tf.range(m, dtype=tf.int64)[tf.newaxis] % cnt[:, tf.newaxis]
        within = tf.gather(perm, cols, batch_dims=1)
        idx = tf.gather(order_t, tf.gather(starts, pick)[:, tf.newaxis] + within)
        return tf.reshape(idx, [k * m])

    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(4).take(steps)
    ds = seeds.map(batch_indices).unbatch()
    ds = _with_seeds(ds, seed + 1)

    def load(i, s):
        path = tf.gather(paths_t, i)
        if boxes_t is None:
            image = load_image(path)
            shape = tf.cast(tf.shape(image)[:2], tf.float32)
            box = tf.stack([0.0, 0.0, shape[0] - 1.0, shape[1] - 1.0])
            img = preprocess.crop_and_resize(image, box[tf.newaxis], image_size)[0]
            if training:
                s = tf.cast(s, tf.int64)
                img = preprocess.crop_and_resize(image, jitter_boxes(box[tf.newaxis], s[0], jitter),
                                                 image_size)[0]
                img = tf.image.stateless_random_flip_left_right(img, seed=s[1])
                img = color_jitter(img, s[1] + tf.constant([1, 0], tf.int64))
        else:
            img = crop_example(path, tf.gather(boxes_t, i), image_size, training, s, jitter)
        return img, tf.gather(classes_t, i)

    ds = ds.map(load, num_parallel_calls=AUTOTUNE, deterministic=bool(deterministic))
    ds = ds.batch(k * m, drop_remainder=True)
    return ds.prefetch(AUTOTUNE).with_options(_options(deterministic))
