"""LNet training stages (paper Sec. 2.1): lnet_pretrain, lnet_o, lnet_s.

- `run_lnet_pretrain(ctx)`: LNet pre-trained on object categories (softmax)
  from any ImageNet-style folder of class subfolders (`lnet.pretrain_dir`).
  No folder: skipped with a message, unless `lnet.synthetic_objects > 0`, which
  first renders a synthetic object-category folder (shape classes) so the demo
  can pre-train. The pre-trained conv weights initialise both LNet_o and LNet_s.
- `run_lnet_o(ctx)`: LNet_o fine-tuned on WHOLE in-the-wild images
  (letterboxed to `lnet.o_input_size`, default the preset's) with the attribute tags
  (sigmoid cross-entropy; `lnet.attributes` selects a subset, default all 40).
  Two choices beyond the paper (docs/localization.md has the measurements):
  the head pools C5 with a log-sum-exp (`lnet.tag_pooling`), and face-free
  images (the calibration half of `backgrounds/`, like the paper's SUN
  images of Fig. 3b) are mixed into every batch with one more image-level
  tag, "a face is present" (`lnet.background_negatives`). Still image-level
  tags only: no box, no landmark.
- `run_lnet_s(ctx)`: LNet_o proposes each training image's head-shoulder
  window (its best window, enlarged); LNet_s is fine-tuned on those crops with
  the same tags (face-free images: LNet_o's best window on them). Then the
  face/background threshold is calibrated (Fig. 3b) on train face images vs
  half of `backgrounds/`, and the localizer config +
  threshold are written to `workdir/lnet_s/localizer.json`. With
  `lnet.s_box_head_epochs > 0`, LNet_s then learns a box regressor
  (`build_box_head`) from the localizer's OWN boxes on the training photos
  (self-training: the boxes it scored as faces, on jittered crops), which
  replaces its window choice at inference (docs/localization.md, eighth pass).

Face boxes are NEVER read here (they are for evaluation only).

Results: `workdir/<stage>/model.weights.h5` (the backbone), `DONE`;
`lnet_s/regions_train.npy` (the LNet_o head-shoulder windows it trained on),
`lnet_s/localizer.json`, `lnet_s/threshold.json`; with the box head
`lnet_s/box_head.weights.h5` and `lnet_s/box_head_<round>/` (pseudo labels, weights).

Config: the stage hyper-parameters are `config.lnet_pretrain|lnet_o|lnet_s`
(epochs, learning_rate, weight_decay, max_steps); the localization options
are `config.lnet` (`LNetOptions` below; dict, dataclass or missing).
"""

import dataclasses
import json
import math
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tfattr.attributes import ATTRIBUTE_NAMES, attribute_indices
from tfattr.data import preprocess
from tfattr.localize import localizer as localizer_lib
from tfattr.localize import threshold as threshold_lib
from tfattr.models.lnet import (FEATURES, POOLINGS, LNetClassifier, build_box_head_for,
                                 build_lnet)
from tfattr.stages.context import save_arrays

O_MAPS = ("mean", "face_tag")
O_SELECTS = ("calibration", "consistency")
FACE_HEAD_FILE = "face_tag_head.npz"
BOX_HEAD_FILE = "box_head.weights.h5"
ROUND_DONE_FILE = "TRAINED"  # in lnet_s/box_head_<round>/: that round finished
CONSENSUS_MIN_IOU = 0.3  # a candidate's box votes when it overlaps the kept one's this much
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


@dataclasses.dataclass(frozen=True)
class LNetOptions:
    """`config.lnet`: what the LNet stages and the localizer need beyond epochs/lr.

    attributes: attribute names LNet is fine-tuned on (empty: all 40) (Fig. 7d).
    pretrain_dir: ImageNet-style folder (one subfolder per class) for lnet_pretrain.
    synthetic_objects: > 0 and no pretrain_dir: render this many images per class
      of a synthetic object-category folder into workdir/lnet_pretrain/objects.
    pretrain_image_size: side the object images are resized to.
    augment: random horizontal flips (and crop jitter for LNet_s).
    calibration_images: train face images used to calibrate the threshold.
    tag_pooling: "lse" (log-sum-exp, default) or "avg" (global average) pool
      of C5 in the fine-tuning head (`LNetClassifier`); lse_sharpness its r.
    background_negatives: fraction of every LNet_o / LNet_s batch drawn from the
      calibration half of `backgrounds/` (face-free images), tagged with one
      more image-level tag, "a face is present" = 0, their attribute tags
      ignored; face images carry it = 1. 0 = the attribute tags only.
    hide_probability, hide_grid: LNet_o hide-and-seek (`hide_patches`): each cell of
      a hide_grid x hide_grid partition of a training image is greyed out with this
      probability (0 = off).
    s_init: where LNet_s starts its fine-tuning: "pretrain" (the object pre-training,
      as LNet_o) or "lnet_o" (LNet_o's fine-tuned conv stack).
    o_input_size: side LNet_o sees the whole photo at, in training and in the
      localizer (0 = the preset's `lnet_o_input_size`). LNet is fully
      convolutional: a larger side gives a finer response map, so smaller faces
      get a box of their own size (docs/localization.md, sixth pass).
    o_candidates: K >= 1 LNet_o runs with different seeds; K > 1 keeps the one whose
      localizer (LNet_s = LNet_o's conv stack) separates face photos from face-free
      images best: the lowest balanced error of the threshold calibration (Fig. 3b),
      no box read. Needs backgrounds/ (docs/localization.md, sixth pass).
    o_select: how `o_candidates` > 1 are compared, both box-free: "calibration" (the
      lowest face / face-free balanced error, above) or "consistency" (the highest
      `padding_consistency` of the top box on the calibration face photos;
      docs/localization.md, eighth pass).
    o_map: LNet_o's response map in the localizer: "mean" (the averaged C5 map,
      the paper) or "face_tag" (the class activation map of LNet_o's "face is
      present" tag, ReLU(C5 . w) with w its fine-tuning head's weights; needs
      background_negatives > 0; docs/localization.md, sixth pass).
    s_box_head_epochs: > 0 trains LNet_s' box regressor for this many passes over the
      train photos the localizer calls faces, each pass a fresh jitter of the
      head-shoulder crop; the targets are the localizer's own face boxes (its LNet_s
      window, `s_box_*` applied), never a labelled box. 0 = off (the window is the box).
    s_box_head_scale_jitter, s_box_head_shift_jitter: the crop's side is scaled by
      exp(U(-a, a)) and its centre moved by U(-b, b) sides, so the regressor learns
      where the face is in a crop rather than the proposal's habits.
    s_box_head_learning_rate: Adam's rate for the regressor (and LNet_s under it).
    s_box_head_rounds: self-training rounds: round r + 1 relabels the photos with the
      localizer of round r (its box head) and trains again from LNet_s' start.
    s_box_head_refine: the trained localizer regresses each box twice, the second time
      on a crop re-made so the first box sits where the head's training targets sat
      on average (`FaceLocalizer(s_box_refine_code=...)`); the later
      rounds' targets are refined boxes too.
    s_box_head_min_face: a photo's own face box trains the regressor only when its
      height is at least this fraction of the photo's shorter side (0 = every photo
      called a face). The localizer's boxes on small faces are too large (LNet_o's crop
      is too large for them; docs/localization.md, ninth pass); the scale jitter then
      shows the regressor small faces in the crop, zoomed out from reliably boxed ones.
    s_box_head_consensus: round 1's target box on each photo is the median (centre, log
      height, log width; `consensus_boxes`) of the top boxes of every LNet_o candidate's
      window localizer (LNet_s = its conv stack) that overlap the kept candidate's box,
      instead of the kept candidate's box alone. Each LNet_o run frames the face with its
      own run-wide bias, which the box head inherits; the candidates' median averages
      the biases of independent runs. Needs o_candidates > 1; no box read
      (docs/localization.md, tenth pass).
    o_ensemble: LNet_o in the localizer is every candidate, their maps averaged
      (`FaceLocalizer` with a list of LNet_o backbones): the kept candidate first, which
      still starts LNet_s. Each LNet_o run frames faces with its own errors; the mean map
      of independent runs cancels part of them. Costs one LNet_o pass per candidate at
      inference. Needs o_candidates > 1 (docs/localization.md, thirteenth pass).
    The rest are the localizer's window config (tfattr/localize/localizer.py).
    """

    attributes: tuple = ()
    pretrain_dir: str = ""
    synthetic_objects: int = 0
    pretrain_image_size: int = 96
    augment: bool = True
    calibration_images: int = 400
    tag_pooling: str = "lse"
    lse_sharpness: float = 5.0
    background_negatives: float = 0.2
    hide_probability: float = 0.0
    hide_grid: int = 8
    s_init: str = "pretrain"
    o_input_size: int = 0
    o_candidates: int = 1
    o_select: str = "calibration"
    o_map: str = "mean"
    s_box_head_epochs: int = 0
    s_box_head_scale_jitter: float = 0.35
    s_box_head_shift_jitter: float = 0.15
    s_box_head_learning_rate: float = 1e-3
    s_box_head_rounds: int = 1
    s_box_head_min_face: float = 0.0
    s_box_head_refine: bool = False
    s_box_head_consensus: bool = False
    o_ensemble: bool = False
    max_faces: int = localizer_lib.DEFAULT_CONFIG["max_faces"]
    o_window_scales: tuple = localizer_lib.DEFAULT_CONFIG["o_window_scales"]
    o_window_aspects: tuple = localizer_lib.DEFAULT_CONFIG["o_window_aspects"]
    s_window_scales: tuple = localizer_lib.DEFAULT_CONFIG["s_window_scales"]
    s_window_aspects: tuple = localizer_lib.DEFAULT_CONFIG["s_window_aspects"]
    size_exponent: float = localizer_lib.DEFAULT_CONFIG["size_exponent"]
    o_extent_fraction: float = localizer_lib.DEFAULT_CONFIG["o_extent_fraction"]
    s_extent_fraction: float = localizer_lib.DEFAULT_CONFIG["s_extent_fraction"]
    s_box_scale: float = localizer_lib.DEFAULT_CONFIG["s_box_scale"]
    s_box_aspect: float = localizer_lib.DEFAULT_CONFIG["s_box_aspect"]
    head_shoulder_enlarge: float = localizer_lib.DEFAULT_CONFIG["head_shoulder_enlarge"]
    min_peak_separation: float = localizer_lib.DEFAULT_CONFIG["min_peak_separation"]
    nms_iou: float = localizer_lib.DEFAULT_CONFIG["nms_iou"]
    box_score: str = localizer_lib.DEFAULT_CONFIG["box_score"]

    def localizer_kwargs(self):
        return {k: getattr(self, k) for k in (
            "max_faces", "o_window_scales", "o_window_aspects", "s_window_scales",
            "s_window_aspects", "size_exponent", "o_extent_fraction", "s_extent_fraction",
            "s_box_scale", "s_box_aspect", "head_shoulder_enlarge",
            "min_peak_separation", "nms_iou", "box_score")}

    def lnet_o_input_size(self, preset):
        """The side LNet_o letterboxes whole photos to (`o_input_size` or the preset's)."""
        return self.o_input_size or preset.lnet_o_input_size


def lnet_options(config):
    """`LNetOptions` from `config.lnet` (dataclass, dict or absent), with type coercion."""
    raw = getattr(config, "lnet", None) if not isinstance(config, dict) else config.get("lnet")
    if raw is None:
        return LNetOptions()
    if dataclasses.is_dataclass(raw):
        raw = dataclasses.asdict(raw)
    elif not isinstance(raw, dict):
        raw = vars(raw)
    fields = {f.name: f for f in dataclasses.fields(LNetOptions)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ValueError(f"unknown lnet option(s) {unknown}; known: {sorted(fields)}")
    values = {}
    for key, value in raw.items():
        default = fields[key].default
        if isinstance(default, tuple):
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            value = tuple(type(default[0])(v) if default else v for v in value)
        elif isinstance(default, bool):
            value = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
        else:
            value = type(default)(value)
        values[key] = value
    options = LNetOptions(**values)
    attribute_indices(options.attributes)  # validates names
    if options.tag_pooling not in POOLINGS:
        raise ValueError(f"lnet.tag_pooling must be one of {POOLINGS}, got {options.tag_pooling!r}")
    if not 0.0 <= options.background_negatives < 1.0:
        raise ValueError(f"lnet.background_negatives must be in [0, 1), got "
                         f"{options.background_negatives!r}")
    if options.s_init not in ("pretrain", "lnet_o"):
        raise ValueError(f"lnet.s_init must be pretrain or lnet_o, got {options.s_init!r}")
    if not 0.0 <= options.hide_probability < 1.0 or options.hide_grid < 1:
        raise ValueError(f"lnet.hide_probability must be in [0, 1) and lnet.hide_grid >= 1, got "
                         f"{options.hide_probability!r} and {options.hide_grid!r}")
    if options.o_map not in O_MAPS:
        raise ValueError(f"lnet.o_map must be one of {O_MAPS}, got {options.o_map!r}")
    if options.o_map == "face_tag" and options.background_negatives <= 0:
        raise ValueError("lnet.o_map=face_tag needs the face tag: lnet.background_negatives > 0")
    if options.o_candidates < 1:
        raise ValueError(f"lnet.o_candidates must be >= 1, got {options.o_candidates!r}")
    if options.o_select not in O_SELECTS:
        raise ValueError(f"lnet.o_select must be one of {O_SELECTS}, got {options.o_select!r}")
    if (options.s_box_head_epochs < 0 or options.s_box_head_scale_jitter < 0
            or options.s_box_head_shift_jitter < 0 or options.s_box_head_learning_rate <= 0
            or options.s_box_head_rounds < 1):
        raise ValueError("lnet.s_box_head_epochs and the s_box_head jitters must be >= 0, "
                         "lnet.s_box_head_learning_rate > 0 and lnet.s_box_head_rounds >= 1, "
                         f"got {options.s_box_head_epochs!r}, {options.s_box_head_rounds!r}, "
                         f"{options.s_box_head_scale_jitter!r}, "
                         f"{options.s_box_head_shift_jitter!r}, "
                         f"{options.s_box_head_learning_rate!r}")
    if not 0.0 <= options.s_box_head_min_face < 1.0:
        raise ValueError(f"lnet.s_box_head_min_face must be in [0, 1), got "
                         f"{options.s_box_head_min_face!r}")
    if options.s_box_head_consensus and options.o_candidates < 2:
        raise ValueError("lnet.s_box_head_consensus takes the median box over the LNet_o "
                         f"candidates: it needs lnet.o_candidates >= 2, got {options.o_candidates}")
    if options.o_ensemble and options.o_candidates < 2:
        raise ValueError("lnet.o_ensemble averages the LNet_o candidates' maps: it needs "
                         f"lnet.o_candidates >= 2, got {options.o_candidates}")
    try:  # the localizer's own checks, before any training rather than at lnet_s' end
        localizer_lib.check_window_config(**options.localizer_kwargs())
    except ValueError as err:
        raise ValueError(f"lnet.{err}") from err
    if options.o_input_size and options.o_input_size < 32:
        raise ValueError(f"lnet.o_input_size must be 0 (the preset's) or >= 32, got "
                         f"{options.o_input_size!r}")
    return options


def _stage_config(ctx, stage):
    cfg = getattr(ctx.config, stage, None)
    get = (lambda k, d: cfg.get(k, d)) if isinstance(cfg, dict) else (lambda k, d: getattr(cfg, k, d))
    return {"epochs": int(get("epochs", 2)), "learning_rate": float(get("learning_rate", 1e-3)),
            "weight_decay": float(get("weight_decay", 0.0)), "max_steps": int(get("max_steps", 0))}


def _attribute_columns(options):
    return attribute_indices(options.attributes) if options.attributes else list(range(len(ATTRIBUTE_NAMES)))


def _optimizer(hp):
    if hp["weight_decay"] > 0:
        return keras.optimizers.AdamW(hp["learning_rate"], weight_decay=hp["weight_decay"])
    return keras.optimizers.Adam(hp["learning_rate"])


def _steps(hp, num_examples, batch_size):
    per_epoch = max(1, math.ceil(num_examples / batch_size))
    epochs = hp["epochs"]
    if hp["max_steps"] > 0:
        epochs = max(1, min(epochs, math.ceil(hp["max_steps"] / per_epoch)))
        per_epoch = min(per_epoch, hp["max_steps"])
    return epochs, per_epoch


def _build_backbone(ctx, which):
    return build_lnet(**getattr(ctx.preset, which))


def _init_from_pretrain(ctx, backbone):
    path = Path(ctx.workdir) / "lnet_pretrain" / "model.weights.h5"
    if not path.exists():
        ctx.log(f"[{backbone.name}] no lnet_pretrain weights: training from random init")
        return False
    pretrained = build_lnet(**ctx.preset.lnet_o)
    pretrained.load_weights(str(path))
    backbone.set_weights(pretrained.get_weights())  # same architecture, conv stack only
    ctx.log(f"[{backbone.name}] initialised from {path}")
    return True


# ----------------------------------------------------------------- datasets

def _batches(ds, batch_size, training):
    return ds.batch(batch_size, drop_remainder=training).prefetch(tf.data.AUTOTUNE)


def element_seeds(ds, seed):
    """(stateless RNG seed int64 [2], element) for every element of a training stream.

    The seed is a pure function of `seed` and the element's position in the (repeated)
    stream, so the augmentation the parallel maps draw from it is the same on every run
    with the same seed: a fixed `--seed` reproduces the LNet stages (stateful
    `tf.random` ops in a parallel `map` draw in thread order)."""
    return ds.enumerate().map(
        lambda i, element: (tf.stack([tf.constant(int(seed), tf.int64), i]), element))


def _sub_seed(seed, k):
    """The k-th independent stateless seed derived from an element's `seed` [2]."""
    return tf.random.experimental.stateless_fold_in(seed, k)


def hide_patches(images, probability, grid, seed):
    """Hide-and-seek (Singh & Lee, ICCV 2017): each cell of a grid x grid partition of
    every image [B, S, S, C] is replaced by 0 (mid-grey, the normalized mean) with
    `probability`, so the tag classifier cannot rely on the most discriminative part
    of the face alone and the response map covers more of it (Sec. 2.1's map is
    used for the face's extent). `seed`: a stateless RNG seed [2] (`element_seeds`)."""
    shape = tf.shape(images)
    keep = tf.cast(tf.random.stateless_uniform([shape[0], grid, grid, 1], seed) >= probability,
                   images.dtype)
    return images * tf.image.resize(keep, shape[1:3], method="nearest")


def _whole_image_examples(paths, labels, image_size, training, seed=0, augment=True,
                          hide=(0.0, 1)):
    ds = tf.data.Dataset.from_tensor_slices((list(map(str, paths)), np.asarray(labels, np.float32)))

    def load(path, label):
        image = preprocess.decode_image(tf.io.read_file(path))
        boxed, _ = preprocess.letterbox(preprocess.normalize(image), image_size)
        return boxed, label

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).cache()
    if training:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True).repeat()

        def augmented(rng, example):
            x, y = example
            if augment:
                x = tf.image.stateless_random_flip_left_right(x, _sub_seed(rng, 0))
            if hide[0] > 0:
                x = hide_patches(x[tf.newaxis], *hide, seed=_sub_seed(rng, 1))[0]
            return x, y

        if augment or hide[0] > 0:
            ds = element_seeds(ds, seed).map(augmented, num_parallel_calls=tf.data.AUTOTUNE,
                                             deterministic=True)
    return ds


def whole_image_dataset(paths, labels, image_size, batch_size, training, seed=0, augment=True):
    """(letterboxed float [B,S,S,3], labels float [B,A]); repeats when training.

    The letterboxed images are cached in memory after the first pass (flips
    are applied after the cache), so later epochs skip decoding and resizing.
    """
    return _batches(_whole_image_examples(paths, labels, image_size, training, seed, augment),
                    batch_size, training)


def _mix(faces, negatives, negative_fraction, seed):
    """Examples drawn from `faces` / `negatives` at 1 - f : f (both repeat)."""
    if negatives is None:
        return faces
    return tf.data.Dataset.sample_from_datasets(
        [faces, negatives], weights=[1.0 - negative_fraction, negative_fraction], seed=seed)


def _region_crop_examples(paths, regions, labels, image_size, training, seed=0, augment=True,
                          jitter=0.1):
    ds = tf.data.Dataset.from_tensor_slices((list(map(str, paths)), np.asarray(regions, np.float32),
                                             np.asarray(labels, np.float32)))
    # Decoded uint8 images are cached in memory after the first pass.
    ds = ds.map(lambda p, r, y: (preprocess.decode_image(tf.io.read_file(p)), r, y),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).cache()
    if training:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True).repeat()
    ds = element_seeds(ds, seed)  # unused when not training

    def load(rng, example):
        image, region, label = example
        image = preprocess.normalize(image)
        if training and augment and jitter > 0:
            region = jitter_regions(region[None], jitter, jitter, seed=_sub_seed(rng, 0))[0]
        crop = preprocess.crop_and_resize(
            image, localizer_lib.crop_boxes_for_sampling(region[None], image_size), image_size)[0]
        if training and augment:
            crop = tf.image.stateless_random_flip_left_right(crop, _sub_seed(rng, 1))
        return crop, label

    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def region_crop_dataset(paths, regions, labels, image_size, batch_size, training, seed=0,
                        augment=True, jitter=0.1):
    """Square regions (input px) cropped to S x S, with scale/shift jitter when training."""
    return _batches(_region_crop_examples(paths, regions, labels, image_size, training, seed,
                                          augment, jitter), batch_size, training)


def class_folder_files(root):
    """ImageNet-style folder -> (paths, int labels, class names); classes sorted by name."""
    root = Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise ValueError(f"{root}: need at least 2 class subfolders, found {classes}")
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise ValueError(f"{root / name}: no images ({', '.join(IMAGE_EXTENSIONS)})")
        paths += files
        labels += [label] * len(files)
    return paths, np.asarray(labels, np.int32), classes


def generate_object_folder(out_dir, images_per_class=60, size=96, seed=0):
    """Renders a small ImageNet-style folder of synthetic object categories.

    Classes: disc, square, triangle, star, ring, cross, stripes, checker. Each
    image: one object of random colour, size, position and rotation on a
    noisy random background. Returns the folder.
    """
    import cv2  # opencv is a project dependency; imported lazily

    out_dir = Path(out_dir)
    classes = ("disc", "square", "triangle", "star", "ring", "cross", "stripes", "checker")
    rng = np.random.default_rng(seed)
    for name in classes:
        (out_dir / name).mkdir(parents=True, exist_ok=True)
    for i in range(images_per_class):
        for c, name in enumerate(classes):
            bg = rng.integers(0, 256, 3)
            img = np.clip(bg + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            colour = tuple(int(v) for v in (bg + rng.integers(80, 176, 3)) % 256)
            cx, cy = rng.uniform(0.3, 0.7, 2) * size
            r = rng.uniform(0.15, 0.35) * size
            theta = rng.uniform(0, 2 * np.pi)

            def poly(n, radii):
                ang = theta + np.arange(n) * 2 * np.pi / n
                rr = np.resize(radii, n)
                return np.stack([cx + rr * np.cos(ang), cy + rr * np.sin(ang)], 1).astype(np.int32)

            if name == "disc":
                cv2.circle(img, (int(cx), int(cy)), int(r), colour, -1)
            elif name == "square":
                cv2.fillPoly(img, [poly(4, [r])], colour)
            elif name == "triangle":
                cv2.fillPoly(img, [poly(3, [r])], colour)
            elif name == "star":
                cv2.fillPoly(img, [poly(10, [r, r * 0.45])], colour)
            elif name == "ring":
                cv2.circle(img, (int(cx), int(cy)), int(r), colour, max(2, int(r * 0.3)))
            elif name == "cross":
                t = max(2, int(r * 0.35))
                cv2.line(img, (int(cx - r), int(cy)), (int(cx + r), int(cy)), colour, t)
                cv2.line(img, (int(cx), int(cy - r)), (int(cx), int(cy + r)), colour, t)
            elif name == "stripes":
                period = max(4, int(r * 0.4))
                yy = np.arange(size)[:, None] + 0 * np.arange(size)[None, :]
                mask = ((yy // (period // 2)) % 2 == 0) & (
                    (np.arange(size)[None, :] - cx) ** 2 + (yy - cy) ** 2 < r * r)
                img[mask] = colour
            else:  # checker
                cell = max(3, int(r * 0.4))
                yy, xx = np.mgrid[0:size, 0:size]
                mask = (((yy // cell) + (xx // cell)) % 2 == 0) & (abs(yy - cy) < r) & (abs(xx - cx) < r)
                img[mask] = colour
            cv2.imwrite(str(out_dir / name / f"{i:05d}.png"), img[:, :, ::-1])
    return out_dir


def class_folder_dataset(paths, labels, image_size, batch_size, training, seed=0, augment=True):
    ds = tf.data.Dataset.from_tensor_slices((list(map(str, paths)), labels))
    if training:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True).repeat()

    def load(rng, example):
        path, label = example
        image = preprocess.normalize(preprocess.decode_image(tf.io.read_file(path)))
        if training and augment:
            image = tf.image.stateless_random_flip_left_right(image, _sub_seed(rng, 0))
        return tf.image.resize(image, [image_size, image_size], antialias=True), label

    ds = element_seeds(ds, seed).map(load, num_parallel_calls=tf.data.AUTOTUNE,
                                     deterministic=True)
    return ds.batch(batch_size, drop_remainder=training).prefetch(tf.data.AUTOTUNE)


# ----------------------------------------------------------------- stages

def run_lnet_pretrain(ctx):
    """Object-category pre-training (softmax) of the LNet conv stack."""
    stage = "lnet_pretrain"
    options = lnet_options(ctx.config)
    folder = options.pretrain_dir
    if not folder:
        if options.synthetic_objects <= 0:
            ctx.log(f"[{stage}] skipped: no object-category folder (set lnet.pretrain_dir=DIR, "
                    f"an ImageNet-style folder of class subfolders, or lnet.synthetic_objects=N "
                    f"to render a synthetic one)")
            return False
        folder = ctx.stage_dir(stage) / "objects"
        if not (folder / "DONE").exists():
            ctx.log(f"[{stage}] rendering a synthetic object-category folder in {folder}")
            generate_object_folder(folder, options.synthetic_objects, options.pretrain_image_size,
                                   seed=ctx.seed)
            (folder / "DONE").write_text("")
    paths, labels, classes = class_folder_files(folder)
    hp = _stage_config(ctx, stage)
    batch = ctx.global_batch_size
    epochs, steps = _steps(hp, len(paths), batch)
    ctx.log(f"[{stage}] {len(paths)} images, {len(classes)} classes from {folder}")
    with ctx.scope():
        backbone = _build_backbone(ctx, "lnet_o")
        model = LNetClassifier(backbone, len(classes), name="lnet_pretrain_classifier")
        model.compile(optimizer=_optimizer(hp),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
    ds = class_folder_dataset(paths, labels, options.pretrain_image_size, batch, True, ctx.seed,
                              options.augment)
    history = ctx.fit(model, ds, stage, epochs, steps)
    out = ctx.stage_dir(stage)
    backbone.save_weights(str(out / "model.weights.h5"))
    summary = {"folder": str(folder), "classes": classes, "num_images": len(paths),
               "epochs": epochs, "steps_per_epoch": steps,
               "final": {k: float(v[-1]) for k, v in history.history.items()}}
    ctx.mark_done(stage, summary)
    return True


@keras.saving.register_keras_serializable(package="tfattr")
class MaskedBinaryCrossentropy(keras.losses.Loss):
    """Sigmoid cross-entropy from logits, averaged over the tags an example has.

    A label < 0 means "no tag" (the attribute tags of a face-free image):
    it adds nothing to the loss. Per-example output, so the distributed
    reduction over the global batch is Keras' usual one.
    """

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, y_pred.dtype)
        known = tf.cast(y_true >= 0, y_pred.dtype)
        loss = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.maximum(y_true, 0.0), logits=y_pred)
        return tf.reduce_sum(loss * known, axis=-1) / tf.maximum(tf.reduce_sum(known, axis=-1), 1.0)


def _negative_paths(ctx, options, stage):
    """Face-free training images for the "a face is present" tag ([] = off)."""
    if options.background_negatives <= 0:
        return []
    paths = calibration_backgrounds(ctx.data)
    if not paths:
        ctx.log(f"[{stage}] no face-free images (backgrounds/): attribute tags only")
    return paths


def _tagged(labels, with_face_tag):
    """Face images' labels, + the face tag column (1) when face-free images are mixed in."""
    labels = np.asarray(labels, np.float32)
    if not with_face_tag:
        return labels
    return np.concatenate([labels, np.ones((len(labels), 1), np.float32)], 1)


def _face_free_tags(count, num_attributes):
    """Face-free images' labels: attribute tags -1 (ignored), face tag 0."""
    tags = np.full((count, num_attributes + 1), -1.0, np.float32)
    tags[:, -1] = 0.0
    return tags


def _steps_with_negatives(hp, num_faces, batch, options, negatives):
    """Epochs/steps so that one epoch draws every face image once on average."""
    fraction = options.background_negatives if negatives else 0.0
    return _steps(hp, int(math.ceil(num_faces / (1.0 - fraction))), batch)


def _train_indices(ctx):
    data = ctx.data
    if data.wild_dir is None:
        raise ValueError("LNet needs in-the-wild images (img_celeba/); the dataset has none")
    return data.indices(0)


def run_lnet_o(ctx):
    """LNet_o: whole letterboxed images, sigmoid cross-entropy on the attribute tags
    (`lnet.o_candidates` > 1: that many seeds, the best by a box-free measure, `lnet.o_select`)."""
    stage = "lnet_o"
    options = lnet_options(ctx.config)
    cols = _attribute_columns(options)
    data = ctx.data
    idx = _train_indices(ctx)
    paths = [data.wild_path(i) for i in idx]
    labels = data.attributes[idx][:, cols].astype(np.float32)
    hp = _stage_config(ctx, stage)
    negatives = _negative_paths(ctx, options, stage)
    epochs, steps = _steps_with_negatives(hp, len(paths), ctx.global_batch_size, options,
                                          negatives)
    ctx.log(f"[{stage}] {len(paths)} whole images, {len(cols)} attribute(s), "
            f"{len(negatives)} face-free images ({options.background_negatives:.0%} of each "
            f"batch), {epochs} epoch(s) x {steps} steps")
    out = ctx.stage_dir(stage)
    summary = {"attributes": [ATTRIBUTE_NAMES[c] for c in cols], "num_images": len(paths),
               "num_face_free_images": len(negatives), "epochs": epochs, "steps_per_epoch": steps}
    if options.o_candidates == 1:
        summary["final"] = _train_lnet_o(ctx, options, paths, labels, negatives, hp, epochs,
                                         steps, stage, out, ctx.seed)
        ctx.mark_done(stage, summary)
        return True

    bg_paths = calibration_backgrounds(data)
    if not bg_paths:
        raise FileNotFoundError("lnet.o_candidates > 1 picks LNet_o by how well it separates "
                                "face photos from face-free ones: it needs backgrounds/")
    face_paths = _calibration_faces(ctx, options, paths)
    candidates = []
    for k in range(options.o_candidates):
        folder = out / f"candidate_{k}"
        record = folder / "selection.json"
        if record.exists():  # resumed run: this candidate is finished
            candidates.append(json.loads(record.read_text()))
            continue
        seed = ctx.seed + k
        keras.utils.set_random_seed(seed)
        ctx.log(f"[{stage}] candidate {k + 1}/{options.o_candidates} (seed {seed})")
        final = _train_lnet_o(ctx, options, paths, labels, negatives, hp, epochs, steps,
                              f"{stage}/candidate_{k}", folder, seed)
        localizer = _selection_localizer(ctx, options, folder)
        error = threshold_lib.calibrate(max_window_scores(localizer, face_paths),
                                        max_window_scores(localizer, bg_paths)).balanced_error
        ctx.log(f"[{stage}] candidate {k + 1}: face / face-free balanced error {error:.3f}")
        candidates.append({"candidate": k, "seed": seed, "balanced_error": float(error),
                           "final": final})
        record.write_text(json.dumps(candidates[-1], indent=2))
    if options.o_select == "consistency":
        for candidate in candidates:  # measured once, kept in the candidate's selection.json
            if "consistency" not in candidate:
                folder = out / f"candidate_{candidate['candidate']}"
                candidate["consistency"] = padding_consistency(
                    _selection_localizer(ctx, options, folder), face_paths)
                ctx.log(f"[{stage}] candidate {candidate['candidate'] + 1}: padding "
                        f"consistency {candidate['consistency']:.3f}")
                (folder / "selection.json").write_text(json.dumps(candidate, indent=2))
        best = max(candidates, key=lambda c: c["consistency"])
    else:
        best = min(candidates, key=lambda c: c["balanced_error"])
    chosen = out / f"candidate_{best['candidate']}"
    for name in ("model.weights.h5", FACE_HEAD_FILE):
        if (chosen / name).exists():
            (out / name).write_bytes((chosen / name).read_bytes())
    ctx.log(f"[{stage}] kept candidate {best['candidate'] + 1} (seed {best['seed']}, by "
            f"{options.o_select}: balanced error {best['balanced_error']:.3f}, padding "
            f"consistency {best.get('consistency', float('nan')):.3f})")
    summary.update(final=best["final"], candidates=candidates, chosen=best["candidate"])
    ctx.mark_done(stage, summary)
    return True


def _train_lnet_o(ctx, options, paths, labels, negatives, hp, epochs, steps, fit_name, out, seed):
    """One LNet_o fine-tuning run -> final metrics; writes out/model.weights.h5 (+ the
    face tag head)."""
    cols = labels.shape[1]
    backbone, model = _tag_classifier(ctx, "lnet_o", cols + bool(negatives), hp, options)
    size = options.lnet_o_input_size(ctx.preset)
    hide = (options.hide_probability, options.hide_grid)
    faces = _whole_image_examples(paths, _tagged(labels, bool(negatives)), size, True, seed,
                                  options.augment, hide)
    free = None
    if negatives:
        free = _whole_image_examples(negatives, _face_free_tags(len(negatives), cols),
                                     size, True, seed + 1, options.augment, hide)
    ds = _batches(_mix(faces, free, options.background_negatives, seed), ctx.global_batch_size,
                  True)
    history = ctx.fit(model, ds, fit_name, epochs, steps)
    out.mkdir(parents=True, exist_ok=True)
    backbone.save_weights(str(out / "model.weights.h5"))
    if negatives:  # the "face is present" tag's weights: its class activation map (o_map)
        kernel, bias = model.get_layer(f"{model.name}_logits").get_weights()
        save_arrays(out / FACE_HEAD_FILE, weights=kernel[:, -1], bias=bias[-1])
    return {k: float(v[-1]) for k, v in history.history.items()}


def _selection_localizer(ctx, options, folder):
    """The localizer an LNet_o candidate in `folder` gives, LNet_s = its conv stack."""
    lnet_o = _build_backbone(ctx, "lnet_o")
    lnet_o.load_weights(str(folder / "model.weights.h5"))
    weights = _face_tag_weights(folder) if options.o_map == "face_tag" else None
    return localizer_lib.FaceLocalizer(
        lnet_o, _copy_of_lnet_o(_build_backbone(ctx, "lnet_s"), lnet_o),
        options.lnet_o_input_size(ctx.preset), ctx.preset.lnet_s_input_size,
        **{**options.localizer_kwargs(), "o_map_weights": weights})


def _calibration_faces(ctx, options, paths):
    """The train face photos the threshold is calibrated on (`lnet.calibration_images`)."""
    rng = np.random.default_rng(ctx.seed)
    return [paths[i] for i in sorted(rng.permutation(len(paths))[:options.calibration_images])]


def _tag_classifier(ctx, name, num_outputs, hp, options):
    """(backbone, compiled LNetClassifier) for fine-tuning `name` with image-level tags
    (sigmoid cross-entropy, Sec. 2.1), initialised from the object pre-training."""
    with ctx.scope():
        backbone = _build_backbone(ctx, name)
        _init_from_pretrain(ctx, backbone)
        model = LNetClassifier(backbone, num_outputs, pooling=options.tag_pooling,
                               lse_sharpness=options.lse_sharpness, name=f"{name}_classifier")
        model.compile(optimizer=_optimizer(hp), loss=MaskedBinaryCrossentropy())
    return backbone, model


def _image_tensor(path):
    return preprocess.normalize(preprocess.decode_image(tf.io.read_file(str(path))))


def propose_regions(localizer, paths, log=print):
    """LNet_o's dominant head-shoulder window (input px, square) for each image."""
    fn = tf.function(lambda im: localizer.head_shoulder_windows(im)["regions"][0],
                     input_signature=[tf.TensorSpec([None, None, 3], tf.float32)])
    regions = np.zeros((len(paths), 4), np.float32)
    for n, path in enumerate(paths):
        regions[n] = fn(_image_tensor(path)).numpy()
        if (n + 1) % 500 == 0:
            log(f"  proposed {n + 1}/{len(paths)} head-shoulder windows")
    return regions


def padding_consistency(localizer, paths):
    """How well the top box follows the photo when the photo is moved and shrunk: the
    mean IoU between the top box of each photo and the top box of the same photo padded
    by a quarter of its height / width on the top / left (mid-grey), shifted back.

    A localizer that boxes the face, wherever the photo sits in its letterbox, scores
    high; one whose top box moves with the framing scores low. No box is read
    (`lnet.o_select=consistency`, docs/localization.md, eighth pass)."""
    fn = tf.function(lambda im: localizer.localize(im)["boxes"][0],
                     input_signature=[tf.TensorSpec([None, None, 3], tf.float32)])
    ious = []
    for path in paths:
        image = _image_tensor(path)
        pad_y, pad_x = int(image.shape[0]) // 4, int(image.shape[1]) // 4
        box = fn(image).numpy()
        moved = fn(tf.pad(image, [[pad_y, 0], [pad_x, 0], [0, 0]])).numpy()
        moved = moved - np.array([pad_y, pad_x, pad_y, pad_x], np.float32)
        ious.append(float(localizer_lib.box_iou(box[None], moved[None])[0, 0]))
    return float(np.mean(ious)) if ious else 0.0


def max_window_scores(localizer, paths):
    """The image score of Fig. 3b: the best (dominant) box score of each image."""
    fn = tf.function(lambda im: localizer.localize(im)["box_scores"][0],
                     input_signature=[tf.TensorSpec([None, None, 3], tf.float32)])
    return np.array([float(fn(_image_tensor(p))) for p in paths], np.float32)


def calibration_backgrounds(data):
    """The face-free images used for calibration: every other one of `backgrounds/`
    (even positions); the odd positions are left for evaluation."""
    paths = data.background_paths() if data.backgrounds_dir is not None else []
    return list(paths)[0::2]


def run_lnet_s(ctx):
    """LNet_s on LNet_o's head-shoulder crops; then threshold calibration."""
    stage = "lnet_s"
    options = lnet_options(ctx.config)
    cols = _attribute_columns(options)
    data = ctx.data
    preset = ctx.preset
    idx = _train_indices(ctx)
    paths = [data.wild_path(i) for i in idx]
    labels = data.attributes[idx][:, cols].astype(np.float32)
    out = ctx.stage_dir(stage)

    o_files = _lnet_o_files(ctx, options)
    # [kept candidate, the others (o_ensemble)]
    lnet_o = _load_lnet_o(ctx.preset, ctx.stage_dir("lnet_o"), o_files)
    window_kwargs = {**options.localizer_kwargs(),
                     "o_map_weights": _o_map_weights(ctx, options, o_files)}
    negatives = _negative_paths(ctx, options, stage)
    proposer = []  # built on first use: lnet_s.epochs=0 needs no proposals

    def proposals(name, image_paths, what):
        cached = out / name
        if cached.exists():
            regions = np.load(cached)
            if len(regions) == len(image_paths):
                return regions
        ctx.log(f"[{stage}] LNet_o proposes head-shoulder windows on {len(image_paths)} {what}")
        if not proposer:
            proposer.append(localizer_lib.FaceLocalizer(
                lnet_o, _build_backbone(ctx, "lnet_s"), options.lnet_o_input_size(preset),
                preset.lnet_s_input_size, **{**window_kwargs, "max_faces": 1}))
        regions = propose_regions(proposer[0], image_paths, ctx.log)
        save_arrays(cached, regions)
        return regions

    hp = _stage_config(ctx, stage)
    if hp["epochs"] == 0:
        # LNet_s = LNet_o's conv stack run on the zoomed head-shoulder crop, no fine-tuning
        # (docs/localization.md, fifth pass: fine-tuning on the crops' tags lost box precision).
        if options.s_init != "lnet_o":
            raise ValueError("lnet_s.epochs=0 needs lnet.s_init=lnet_o (an untrained LNet_s "
                             "would localize nothing)")
        backbone = _copy_of_lnet_o(_build_backbone(ctx, "lnet_s"), lnet_o[0])
        ctx.log(f"[{stage}] LNet_o's conv stack, not fine-tuned (lnet_s.epochs=0)")
        epochs, steps, final = 0, 0, {}
    else:
        backbone, epochs, steps, final = _fine_tune_lnet_s(ctx, options, cols, paths, labels,
                                                           negatives, lnet_o[0], hp, proposals)
    backbone.save_weights(str(out / "model.weights.h5"))

    # Threshold (Fig. 3b): face images vs face-free images, max window score each.
    localizer = localizer_lib.FaceLocalizer(lnet_o, backbone, options.lnet_o_input_size(preset),
                                            preset.lnet_s_input_size, **window_kwargs)
    face_paths = _calibration_faces(ctx, options, paths)
    bg_paths = calibration_backgrounds(data)
    summary = {"attributes": [ATTRIBUTE_NAMES[c] for c in cols], "num_images": len(paths),
               "num_face_free_images": len(negatives), "epochs": epochs, "steps_per_epoch": steps,
               "final": final}

    def calibrate_threshold():
        if not bg_paths:
            ctx.log(f"[{stage}] no face-free images (backgrounds/): threshold left at "
                    f"{localizer.threshold} (every proposal counts as a face)")
            return
        ctx.log(f"[{stage}] calibrating the threshold: {len(face_paths)} face images, "
                f"{len(bg_paths)} background images")
        face_scores = max_window_scores(localizer, face_paths)
        bg_scores = max_window_scores(localizer, bg_paths)
        calibration = threshold_lib.calibrate(face_scores, bg_scores)
        localizer.set_threshold(calibration.threshold)
        (out / "threshold.json").write_text(json.dumps(calibration.to_dict(), indent=2))
        save_arrays(out / "calibration_scores.npz", face=face_scores, background=bg_scores)
        summary["threshold"] = calibration.to_dict()
        ctx.log(f"[{stage}] threshold {calibration.threshold:.4f} (balanced error "
                f"{calibration.balanced_error:.3f})")

    calibrate_threshold()
    if options.s_box_head_epochs > 0:
        initial = localizer.lnet_s.get_weights()
        summary["box_head"] = []
        for round_index in range(options.s_box_head_rounds):
            # Each round relabels with the latest localizer and retrains from LNet_s' start.
            backbone, head, round_summary = _train_box_head(ctx, options, localizer, paths,
                                                            round_index, initial)
            summary["box_head"].append(round_summary)
            localizer = localizer_lib.FaceLocalizer(
                lnet_o, backbone, options.lnet_o_input_size(preset), preset.lnet_s_input_size,
                **window_kwargs, threshold=localizer.threshold, s_box_head=head,
                s_box_refine_code=(round_summary["code_mean"] if options.s_box_head_refine
                                   else None))
            if options.box_score == "cascade":
                # LNet_s was fine-tuned under the head: its window scores, and so the
                # cascade scores, moved; the next round and the model need a new threshold.
                calibrate_threshold()
        backbone.save_weights(str(out / "model.weights.h5"))
        head.save_weights(str(out / BOX_HEAD_FILE))
    config = localizer.window_config()
    config["attributes"] = summary["attributes"]
    config["lnet_o_weights"] = o_files
    (out / "localizer.json").write_text(json.dumps(config, indent=2))
    ctx.mark_done(stage, summary)
    return True


def _other_candidates(ctx):
    """The LNet_o candidates the lnet_o stage did not keep (indices, ascending)."""
    summary = json.loads((ctx.stage_dir("lnet_o") / "DONE").read_text())
    return [c["candidate"] for c in summary.get("candidates", [])
            if c["candidate"] != summary.get("chosen")]


def _lnet_o_files(ctx, options):
    """LNet_o's weight files in the localizer, relative to the lnet_o stage folder: the kept
    run, then with `lnet.o_ensemble` every other candidate (stored in localizer.json)."""
    files = ["model.weights.h5"]
    if options.o_ensemble:
        others = _other_candidates(ctx)
        if not others:
            raise ValueError("lnet.o_ensemble needs the LNet_o candidates (lnet.o_candidates "
                             ">= 2 when lnet_o was trained)")
        files += [f"candidate_{k}/model.weights.h5" for k in others]
    return files


def _load_lnet_o(preset, folder, files):
    """LNet_o backbones with the weight `files` (relative to the lnet_o stage `folder`)."""
    members = []
    for name in files:
        members.append(build_lnet(**preset.lnet_o))
        members[-1].load_weights(str(Path(folder) / name))
    return members


def _o_map_weights(ctx, options, files):
    """None (averaged C5 map) or the face tag's C5 weights saved by the lnet_o stage next to
    each of LNet_o's weight `files` (concatenated, one block per backbone)."""
    if options.o_map == "mean":
        return None
    weights = []
    for name in files:
        path = (ctx.stage_dir("lnet_o") / name).parent / FACE_HEAD_FILE
        if not path.is_file():
            raise FileNotFoundError(f"lnet.o_map=face_tag needs {path}: LNet_o was trained "
                                    "without face-free images (backgrounds/, "
                                    "lnet.background_negatives)")
        weights.append(_face_tag_weights(path.parent))
    return np.concatenate(weights)


def _face_tag_weights(folder):
    """The face tag's C5 weights an LNet_o run saved in `folder` (`FACE_HEAD_FILE`)."""
    with np.load(Path(folder) / FACE_HEAD_FILE) as head:
        return head["weights"].astype(np.float32)


def _copy_of_lnet_o(backbone, lnet_o):
    """`backbone` (LNet_s) with LNet_o's weights (`lnet.s_init=lnet_o`)."""
    if [w.shape for w in backbone.weights] != [w.shape for w in lnet_o.weights]:
        raise ValueError("lnet.s_init=lnet_o needs LNet_s and LNet_o of the same architecture")
    backbone.set_weights(lnet_o.get_weights())
    return backbone


def _fine_tune_lnet_s(ctx, options, cols, paths, labels, negatives, lnet_o, hp, proposals):
    """LNet_s fine-tuned with the tags on LNet_o's head-shoulder crops (Sec. 2.1);
    -> (backbone, epochs, steps per epoch, final metrics)."""
    stage = "lnet_s"
    regions = proposals("regions_train.npy", paths, "training images")
    batch = ctx.global_batch_size
    epochs, steps = _steps_with_negatives(hp, len(paths), batch, options, negatives)
    ctx.log(f"[{stage}] {len(paths)} head-shoulder crops, {len(cols)} attribute(s), "
            f"{len(negatives)} face-free crops, {epochs} epoch(s) x {steps} steps")
    backbone, model = _tag_classifier(ctx, "lnet_s", len(cols) + bool(negatives), hp, options)
    if options.s_init == "lnet_o":
        _copy_of_lnet_o(backbone, lnet_o)
        ctx.log(f"[{stage}] initialised from the fine-tuned LNet_o (lnet.s_init=lnet_o)")
    size = ctx.preset.lnet_s_input_size
    faces = _region_crop_examples(paths, regions, _tagged(labels, bool(negatives)), size, True,
                                  ctx.seed, options.augment)
    free = None
    if negatives:
        # LNet_o's best window on a face-free image: the hard negatives LNet_s must reject.
        free = _region_crop_examples(
            negatives, proposals("regions_negatives.npy", negatives, "face-free images"),
            _face_free_tags(len(negatives), len(cols)), size, True, ctx.seed + 1, options.augment)
    ds = _batches(_mix(faces, free, options.background_negatives, ctx.seed), batch, True)
    history = ctx.fit(model, ds, stage, epochs, steps)
    return backbone, epochs, steps, {k: float(v[-1]) for k, v in history.history.items()}


def pseudo_face_boxes(localizer, paths, log=print):
    """The localizer's dominant face on each photo, as box-head training targets:
    (regions [N, 4], boxes [N, 4], is_face [N] bool: a valid proposal scored at or
    above the threshold, shapes [N, 2] the photos' (height, width)). Input pixels; no
    labelled box is read."""
    fn = tf.function(lambda im: (lambda o: (o["regions"][0], o["boxes"][0], o["valid"][0],
                                            o["box_scores"][0]))(localizer.localize(im)),
                     input_signature=[tf.TensorSpec([None, None, 3], tf.float32)])
    regions = np.zeros((len(paths), 4), np.float32)
    boxes = np.zeros((len(paths), 4), np.float32)
    is_face = np.zeros(len(paths), bool)
    shapes = np.zeros((len(paths), 2), np.int32)
    for n, path in enumerate(paths):
        image = _image_tensor(path)
        region, box, valid, score = fn(image)
        regions[n], boxes[n] = region.numpy(), box.numpy()
        is_face[n] = bool(valid) and float(score) >= localizer.threshold
        shapes[n] = image.shape[:2]
        if (n + 1) % 500 == 0:
            log(f"  localized {n + 1}/{len(paths)} training photos")
    return regions, boxes, is_face, shapes


def consensus_boxes(boxes, votes, min_iou=CONSENSUS_MIN_IOU):
    """Per-photo median box of `boxes` [N, 4] and the `votes` [K, N, 4] of other localizers
    that overlap it by IoU >= `min_iou` (the others are another face or clutter: left out).
    The median is taken of the centre, log height and log width; a photo no vote overlaps
    keeps its box (`lnet.s_box_head_consensus`)."""
    boxes = np.asarray(boxes, np.float32)
    stack = np.concatenate([boxes[None], np.asarray(votes, np.float32).reshape(-1, *boxes.shape)])
    extent = stack[..., 2:] - stack[..., :2]
    inter = np.prod(np.clip(np.minimum(stack[..., 2:], boxes[..., 2:])
                            - np.maximum(stack[..., :2], boxes[..., :2]), 0, None), -1)
    areas = np.prod(extent, -1)
    iou = inter / np.maximum(areas + areas[0] - inter, 1e-9)  # each vote vs its photo's box
    iou[0] = 1.0  # the box always counts, even an empty one (a photo without a proposal)
    params = np.concatenate([(stack[..., :2] + stack[..., 2:]) / 2,
                             np.log(np.maximum(extent, 1e-6))], -1)
    params[~(iou >= min_iou)] = np.nan
    centre = np.nanmedian(params[..., :2], 0)
    half = np.exp(np.nanmedian(params[..., 2:], 0)) / 2
    return np.concatenate([centre - half, centre + half], -1).astype(np.float32)


def _candidate_votes(ctx, options, paths, out):
    """[K - 1, N, 4]: the top box of every LNet_o candidate other than the kept one
    (`_selection_localizer`) on each photo; cached in `out` for a resumed run."""
    cached = out / "candidate_boxes.npz"
    if cached.exists():
        with np.load(cached) as z:
            if z["boxes"].shape[1:] == (len(paths), 4):
                return z["boxes"]
    others = _other_candidates(ctx)
    if not others:
        raise ValueError("lnet.s_box_head_consensus needs the LNet_o candidates "
                         "(lnet.o_candidates >= 2 when lnet_o was trained)")
    votes = []
    for k in others:
        ctx.log(f"[lnet_s] box head consensus: LNet_o candidate {k + 1}'s boxes on "
                f"{len(paths)} training photos")
        localizer = _selection_localizer(ctx, options, ctx.stage_dir("lnet_o") / f"candidate_{k}")
        votes.append(pseudo_face_boxes(localizer, paths, ctx.log)[1])
    votes = np.stack(votes)
    save_arrays(cached, boxes=votes)
    return votes


def box_head_targets(is_face, boxes, shapes, min_face=0.0):
    """Indices of the photos whose own box trains the box head: called a face, and the box's
    height at least `min_face` of the photo's shorter side (`lnet.s_box_head_min_face`)."""
    boxes = np.asarray(boxes, np.float32)
    large = (boxes[:, 2] - boxes[:, 0]) >= min_face * np.asarray(shapes).min(1)
    return np.flatnonzero(np.asarray(is_face, bool) & large)


def jitter_regions(regions, scale_jitter, shift_jitter, seed):
    """Square regions [N, 4] scaled by exp(U(-a, a)) and moved by U(-b, b) sides (TF ops).
    `seed`: an int, or a stateless seed int64 [2] (`element_seeds`)."""
    regions = tf.convert_to_tensor(regions, tf.float32)
    n = tf.shape(regions)[0]
    side = regions[:, 2:3] - regions[:, 0:1]

    def uniform(shape, k):
        draw = [int(seed), k] if isinstance(seed, (int, np.integer)) else _sub_seed(seed, 100 + k)
        return tf.random.stateless_uniform(shape, draw, -1.0, 1.0)

    centre = (regions[:, :2] + regions[:, 2:]) / 2 + uniform([n, 2], 0) * shift_jitter * side
    half = side * tf.exp(uniform([n, 1], 1) * scale_jitter) / 2
    return tf.concat([centre - half, centre + half], -1)


def _box_regression_examples(paths, regions, boxes, size, seed, scale_jitter, shift_jitter,
                             augment):
    """(crop float [S, S, 3], box code [4]) of a freshly jittered head-shoulder crop."""
    ds = tf.data.Dataset.from_tensor_slices((list(map(str, paths)), np.asarray(regions, np.float32),
                                             np.asarray(boxes, np.float32)))
    ds = ds.map(lambda p, r, b: (preprocess.decode_image(tf.io.read_file(p)), r, b),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).cache()
    ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True).repeat()

    def load(rng, example):
        image, region, box = example
        region = jitter_regions(region[None], scale_jitter, shift_jitter, seed=_sub_seed(rng, 0))
        crop = preprocess.crop_and_resize(
            preprocess.normalize(image), localizer_lib.crop_boxes_for_sampling(region, size),
            size)[0]
        code = localizer_lib.encode_boxes(box[None], region)[0]
        if augment and tf.random.stateless_uniform([], _sub_seed(rng, 1)) < 0.5:
            crop = tf.image.flip_left_right(crop)  # mirror: centre x -> 1 - x
            code = tf.stack([code[0], 1.0 - code[1], code[2], code[3]])
        return crop, code

    return element_seeds(ds, seed).map(load, num_parallel_calls=tf.data.AUTOTUNE,
                                       deterministic=True)


def _train_box_head(ctx, options, localizer, paths, round_index, initial_weights):
    """LNet_s + box head trained on `localizer`'s own face boxes (self-training round
    `round_index`, LNet_s starting from `initial_weights`).

    -> (LNet_s backbone, head with the target normalisation folded into its last
    layer, summary). Results of a round are kept in `lnet_s/box_head_<round>/` (its
    pseudo labels, weights), so a rerun after a kill redoes no finished round.
    """
    stage = "lnet_s"
    out = ctx.stage_dir(f"{stage}/box_head_{round_index}")
    cached = out / "pseudo_labels.npz"
    labels = None
    if cached.exists():
        with np.load(cached) as z:
            if len(z["regions"]) == len(paths) and "shapes" in z:
                labels = z["regions"], z["boxes"], z["is_face"], z["shapes"]
    if labels is None:
        ctx.log(f"[{stage}] box head round {round_index + 1}: the localizer's own face boxes "
                f"on {len(paths)} training photos")
        labels = pseudo_face_boxes(localizer, paths, ctx.log)
        save_arrays(cached, regions=labels[0], boxes=labels[1], is_face=labels[2],
                    shapes=labels[3])
    regions, boxes, is_face, shapes = labels
    if options.s_box_head_consensus and round_index == 0:
        boxes = consensus_boxes(boxes, _candidate_votes(ctx, options, paths, out))
    keep = box_head_targets(is_face, boxes, shapes, options.s_box_head_min_face)
    if len(keep) == 0:
        raise ValueError(f"[{stage}] no box-head targets: the localizer calls {int(is_face.sum())} "
                         f"training photo(s) a face, none with a box of at least "
                         f"lnet.s_box_head_min_face={options.s_box_head_min_face} of the shorter "
                         "side (train LNet_o longer, lower the minimum, or "
                         "lnet.s_box_head_epochs=0)")
    sel_paths = [paths[i] for i in keep]
    # Target normalisation from the jittered codes themselves (numpy twin of the dataset).
    sample = np.repeat(regions[keep], 20, 0)
    codes = localizer_lib.encode_boxes(
        np.repeat(boxes[keep], 20, 0),
        jitter_regions(sample, options.s_box_head_scale_jitter, options.s_box_head_shift_jitter,
                       seed=int(ctx.seed))).numpy()
    mean, std = codes.mean(0), np.maximum(codes.std(0), 1e-3)
    size = ctx.preset.lnet_s_input_size
    batch = ctx.global_batch_size
    steps = max(1, math.ceil(len(keep) / batch))
    epochs = options.s_box_head_epochs
    ctx.log(f"[{stage}] box head: {len(keep)} of {len(paths)} photos called faces"
            + (f" with a box of at least {options.s_box_head_min_face} of the shorter side"
               if options.s_box_head_min_face else "")
            + f", {epochs} jittered pass(es) x {steps} steps")
    with ctx.scope():
        backbone = _build_backbone(ctx, "lnet_s")
        backbone.set_weights(initial_weights)
        head = build_box_head_for(backbone, size)
    summary = {"photos": int(len(keep)), "epochs": epochs, "steps_per_epoch": steps,
               "code_mean": [float(v) for v in mean]}
    if (out / ROUND_DONE_FILE).exists():
        backbone.load_weights(str(out / "model.weights.h5"))
        head.load_weights(str(out / BOX_HEAD_FILE))
        ctx.log(f"[{stage}] box head round {round_index + 1} already trained: loaded")
        return backbone, head, {**summary, **json.loads((out / ROUND_DONE_FILE).read_text())}
    with ctx.scope():
        inputs = keras.Input((size, size, 3))
        model = keras.Model(inputs, head(backbone(inputs)[FEATURES]), name="lnet_s_box_regressor")
        model.compile(optimizer=keras.optimizers.Adam(options.s_box_head_learning_rate),
                      loss=keras.losses.Huber(1.0))
    targets = (lambda crop, code: (crop, (code - mean) / std))
    ds = _batches(_box_regression_examples(
        sel_paths, regions[keep], boxes[keep], size, ctx.seed, options.s_box_head_scale_jitter,
        options.s_box_head_shift_jitter, options.augment).map(targets), batch, True)
    history = ctx.fit(model, ds, f"{stage}/box_head_{round_index}", epochs, steps)
    last = head.get_layer(f"{head.name}_box")
    kernel, bias = last.get_weights()
    last.set_weights([kernel * std[None, :], bias * std + mean])  # outputs box codes directly
    backbone.save_weights(str(out / "model.weights.h5"))
    head.save_weights(str(out / BOX_HEAD_FILE))
    result = {"final_loss": float(history.history["loss"][-1]) if history.history.get("loss")
              else None}
    (out / ROUND_DONE_FILE).write_text(json.dumps(result))
    return backbone, head, {**summary, **result}


def load_face_localizer(workdir, preset, **overrides):
    """The trained `FaceLocalizer` of a training workdir (lnet_o + lnet_s stages done).

    The window config, threshold and LNet_o input side are the ones stored in
    `lnet_s/localizer.json` (the threshold was calibrated at that side); LNet_s'
    input side is the preset's.
    """
    workdir = Path(workdir)
    config = json.loads((workdir / "lnet_s" / "localizer.json").read_text())
    config.pop("attributes", None)
    config.setdefault("lnet_o_input_size", preset.lnet_o_input_size)
    config.pop("lnet_s_input_size", None)
    # A workdir trained before the extent rule existed keeps the rule it was trained with.
    config.setdefault("o_extent_fraction", 0.0)
    config.update(overrides)
    o_size = int(config.pop("lnet_o_input_size"))
    # One backbone, or the LNet_o ensemble (lnet.o_ensemble).
    lnet_o = _load_lnet_o(preset, workdir / "lnet_o",
                          config.pop("lnet_o_weights", ["model.weights.h5"]))
    lnet_s = build_lnet(**preset.lnet_s)
    lnet_s.load_weights(str(workdir / "lnet_s" / "model.weights.h5"))
    if config.pop("s_box_head", False):
        head = build_box_head_for(lnet_s, preset.lnet_s_input_size)
        head.load_weights(str(workdir / "lnet_s" / BOX_HEAD_FILE))
        config["s_box_head"] = head
    return localizer_lib.FaceLocalizer(lnet_o, lnet_s, o_size, preset.lnet_s_input_size, **config)
