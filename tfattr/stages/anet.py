"""ANet stages (paper Sec. 2.2): anet_pretrain (identities) and anet (attributes).

Face regions (`face_regions`): the face box of every image is found by the
trained LNet cascade (`FaceLocalizer`, stages lnet_o + lnet_s) on the
in-the-wild image, enlarged by `anet.face_enlarge` (default: the preset's
`face_enlarge`), squared and resized to `preset.face_region_size` (exactly what
`FaceAttributeModel.localize` does at serving time). The factor used is
recorded in the anet stage summary (`run_face_enlarge`), which the SVM stage,
the evaluators and the export read. Ground-truth boxes are never used. The
regions and boxes are cached in `workdir/faces/` (`regions_<split>.npy` uint8,
`boxes_<split>.npy`; LNet's top box per photo in `lnet_boxes.npz`).
With `anet.framer` the anet stage trains a `RegionFramer` jointly with ANet on
context crops around the regions; from then on `run_face_regions` (SVM stage,
evaluators) and the export cut each region where the framer puts it. With
`anet.framer_fraction` < 1 the framer is frozen after that share of the steps and ANet
finishes on the frozen framer's regions (`_train_on_frozen_framer`).
Without LNet (aligned-only data, or `anet.face_source=aligned`) the whole
aligned crop is the face region.

- `run_anet_pretrain(ctx)`: ANet + Dense(num identities) trained with softmax
  over the train identities plus the similarity loss
  L_sim = sum_{y_i = y_j} ||FC_i - FC_j||^2 (weighted by
  `anet_pretrain.similarity_weight`). Every batch is B/2 same-identity pairs at
  positions (2k, 2k+1), so L_sim is a per-example term (each member carries its
  pair's distance) and Keras' per-replica mean / num_replicas reduction gives
  the global-batch value under any split with an even per-replica batch.
- `run_anet(ctx)`: ANet (initialised from anet_pretrain unless
  `anet.init=scratch`, the paper's "w/o" ablation) + Dense(40) fine-tuned with
  sigmoid cross-entropy on patches of the face regions: each example is one
  patch of the grid the interweaved pass uses at test time (multi-view
  training), picked by a stateless random function of (seed, step).

Both feed `ctx.fit` a `make_dataset(start_step)` built on `ctx.step_indices`,
so a resumed stage sees the same batches (exact resume). Results:
`workdir/<stage>/model.weights.h5` (the ANet backbone), `DONE` (summary JSON).
"""

import json
import math
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tfattr.attributes import ATTRIBUTE_NAMES, NUM_ATTRIBUTES
from tfattr.data import preprocess
from tfattr.layers.interweave import InterweavedANet
from tfattr.layers.region_framer import (DEFAULT_FILTERS, DEFAULT_INPUT_POOL, RegionFramer,
                                         crop_from_context)
from tfattr.models.anet import build_anet
from tfattr.stages.context import save_arrays

FACES_DIR = "faces"
FRAMED_SUFFIX = "_framed"
FRAMER_WEIGHTS = "framer.weights.h5"
FROZEN_FRAMER_DIR = "frozen_framer"  # anet/frozen_framer/checkpoints (anet.framer_fraction < 1)
BOX_CACHE = "lnet_boxes.npz"
SPLITS = {"train": 0, "val": 1, "test": 2}
HELDOUT_MODULUS = 10  # svm.split=train_heldout: train identities with rank % 10 == 9


# ------------------------------------------------------------------ face regions

def face_source(workdir, data, requested="auto"):
    """"lnet" or "aligned": where the face regions come from (see module docstring)."""
    lnet_ready = (Path(workdir) / "lnet_s" / "DONE").exists() and \
        (Path(workdir) / "lnet_s" / "localizer.json").exists()
    if requested == "lnet":
        if not lnet_ready:
            raise ValueError("anet.face_source=lnet but the lnet_o/lnet_s stages are not DONE")
        if data.wild_dir is None:
            raise ValueError("anet.face_source=lnet but the dataset has no in-the-wild images")
        return "lnet"
    if requested == "aligned":
        if data.aligned_dir is None:
            raise ValueError("anet.face_source=aligned but the dataset has no img_align_celeba/")
        return "aligned"
    if lnet_ready and data.wild_dir is not None:
        return "lnet"
    if data.aligned_dir is not None:
        return "aligned"
    raise ValueError("no face regions: LNet is not trained (lnet_o, lnet_s) and the dataset has "
                     "no aligned crops (img_align_celeba/)")


def configured_face_enlarge(config, preset):
    """The face-region enlargement a run is configured with (`anet.face_enlarge`, 0 = preset's)."""
    return float(config.anet.face_enlarge or preset.face_enlarge)


def run_face_enlarge(workdir, preset):
    """The enlargement the workdir's ANet was trained with (its stage summary; older runs: the
    preset's)."""
    return float(run_summary(workdir, "anet").get("face_enlarge") or preset.face_enlarge)


def _read_image(path):
    return preprocess.decode_image(tf.io.read_file(str(path)))


def _to_uint8(float_images):
    return np.clip(np.round((np.asarray(float_images) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def face_regions(workdir, preset, data, indices, name, source, log=print, batch=64, enlarge=None,
                 context=None, framer=None):
    """uint8 [len(indices), R, R, 3] face regions (cached in workdir/faces/), and boxes [N, 4]
    (input-image pixels; for "aligned" the whole crop). `enlarge`: the LNet box's enlargement
    (default: the preset's; ignored for "aligned"). LNet regions only: `context` > 1 cuts
    each region's context crop instead (`context` x its side, round(R * context) px: what
    the anet stage trains the framer on); `framer` (a `RegionFramer`) re-frames each region
    before it is cut (the regions of a run trained with `anet.framer`)."""
    enlarge = float(enlarge or preset.face_enlarge)
    if source != "lnet" and (context or framer is not None):
        raise ValueError("face_regions: context crops and the framer need LNet regions")
    folder = Path(workdir) / FACES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    key = f"{name}_{source}"
    if source == "lnet" and enlarge != preset.face_enlarge:
        key += f"_x{enlarge:g}"
    if context:
        key += f"_context{float(context):g}"
    if framer is not None:
        key += FRAMED_SUFFIX
    regions_path = folder / f"regions_{key}.npy"
    boxes_path = folder / f"boxes_{key}.npy"
    index_path = folder / f"indices_{key}.npy"
    indices = np.asarray(indices, np.int64)
    if regions_path.exists() and boxes_path.exists() and index_path.exists() \
            and np.array_equal(np.load(index_path), indices):
        return np.load(regions_path, mmap_mode="r"), np.load(boxes_path)
    size = context_size(preset, context) if context else preset.face_region_size
    regions = np.zeros((len(indices), size, size, 3), np.uint8)
    boxes = np.zeros((len(indices), 4), np.float32)
    what = (f"LNet localizer on in-the-wild images, box x{enlarge:g}"
            + (f", context crops x{float(context):g}" if context else "")
            + (", re-framed by the anet stage's framer" if framer is not None else "")
            if source == "lnet" else "whole aligned crops")
    log(f"[faces] {len(indices)} {name} face regions from {source} ({what})")
    if source == "aligned":
        @tf.function(input_signature=[tf.TensorSpec([], tf.string)], reduce_retracing=True)
        def one(path):
            image = preprocess.decode_image(tf.io.read_file(path))
            shape = tf.cast(tf.shape(image)[:2], tf.float32)
            whole = tf.reshape(tf.stack([0.0, 0.0, shape[0], shape[1]]), [1, 4])
            crop = preprocess.crop_and_resize(image, whole - [[0.0, 0.0, 1.0, 1.0]], size)[0]
            return crop, whole[0]

        paths = tf.constant([str(data.aligned_path(i)) for i in indices], tf.string)
        ds = tf.data.Dataset.from_tensor_slices(paths).map(
            one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        @tf.function(input_signature=[tf.TensorSpec([], tf.string), tf.TensorSpec([4], tf.float32)],
                     reduce_retracing=True)
        def cut(path, box):
            image = preprocess.normalize(preprocess.decode_image(tf.io.read_file(path)))
            region = preprocess.square_box(preprocess.enlarge_box(box[tf.newaxis], enlarge))
            if context:
                region = preprocess.enlarge_box(region, float(context))
            if framer is not None:
                region = framer.frame(image, region)
            return preprocess.crop_framed(image, region, size)[0], box

        found = lnet_boxes(workdir, preset, data, indices, log, batch)
        paths = tf.constant([str(data.wild_path(i)) for i in indices], tf.string)
        ds = tf.data.Dataset.from_tensor_slices((paths, found)).map(
            cut, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    k = 0
    for crops, bxs in ds.batch(batch).prefetch(2):
        n = len(crops)
        regions[k:k + n] = _to_uint8(crops.numpy())
        boxes[k:k + n] = bxs.numpy()
        k += n
    for path, array in ((regions_path, regions), (boxes_path, boxes), (index_path, indices)):
        save_arrays(path, array)
    return regions, boxes


def _localizer_stamp(workdir):
    """Identifies the trained localizer (lnet_s' DONE and localizer.json): box caches made
    with another one are stale."""
    import hashlib

    digest = hashlib.sha256()
    for name in ("DONE", "localizer.json"):
        path = Path(workdir) / "lnet_s" / name
        digest.update(path.read_bytes() if path.exists() else b"-")
    return digest.hexdigest()


def lnet_boxes(workdir, preset, data, indices, log=print, batch=64):
    """float32 [len(indices), 4]: the trained localizer's top box on each in-the-wild photo (the
    whole photo when it has no proposal at all). Cached per dataset image in
    `workdir/faces/lnet_boxes.npz` (stamped with the localizer), so the regions of every
    enlargement, context and framer are cut without running LNet again."""
    from tfattr.stages.lnet import load_face_localizer

    path = Path(workdir) / FACES_DIR / BOX_CACHE
    stamp = _localizer_stamp(workdir)
    boxes, known = np.zeros((len(data), 4), np.float32), np.zeros(len(data), bool)
    if path.exists():
        with np.load(path) as cache:
            if str(cache["stamp"]) == stamp and len(cache["known"]) == len(data):
                boxes, known = cache["boxes"].copy(), cache["known"].copy()
    indices = np.asarray(indices, np.int64)
    missing = np.unique(indices[~known[indices]])
    if len(missing):
        log(f"[faces] LNet localizer on {len(missing)} in-the-wild photos")
        localizer = load_face_localizer(workdir, preset)

        @tf.function(input_signature=[tf.TensorSpec([], tf.string)], reduce_retracing=True)
        def locate(path):
            image = preprocess.normalize(preprocess.decode_image(tf.io.read_file(path)))
            shape = tf.cast(tf.shape(image)[:2], tf.float32)
            found, _, _ = localizer(image)
            box = tf.cast(found[0], tf.float32)
            # No proposal at all (zero box): the whole image.
            whole = tf.stack([0.0, 0.0, shape[0], shape[1]])
            return tf.where(tf.reduce_all(tf.equal(box, 0.0)), whole, box)

        paths = [str(data.wild_path(i)) for i in missing]
        ds = tf.data.Dataset.from_tensor_slices(paths).map(
            locate, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        k = 0
        for found in ds.batch(batch).prefetch(2):
            boxes[missing[k:k + len(found)]] = found.numpy()
            k += len(found)
        known[missing] = True
        save_arrays(path, boxes=boxes, known=known, stamp=np.array(stamp))
    return boxes[indices]


def context_size(preset, context):
    """Pixels of a context crop's side: the face region's, times `context`."""
    return int(round(preset.face_region_size * float(context)))


def run_face_regions(workdir, preset, data, indices, name, source, log=print):
    """`face_regions` from `source` as a trained run cuts them (SVM stage, evaluators,
    analysis): its anet stage's enlargement and, when it trained one, framer."""
    return face_regions(workdir, preset, data, indices, name, source, log,
                        enlarge=run_face_enlarge(workdir, preset),
                        framer=load_framer(workdir, preset))


def heldout_identity_mask(data):
    """bool [N]: train images whose identity rank (sorted ids) % 10 == 9 (svm.split=train_heldout)."""
    mask = np.zeros(len(data), bool)
    if data.identities is None:
        return mask
    train = data.partition == 0
    ids = np.unique(data.identities[train])
    held = set(ids[np.arange(len(ids)) % HELDOUT_MODULUS == HELDOUT_MODULUS - 1].tolist())
    return train & np.isin(data.identities, list(held))


def training_indices(ctx):
    """Train-partition images ANet trains on (minus the SVM's held-out identities)."""
    idx = ctx.data.indices(0)
    if ctx.config.svm.split == "train_heldout":
        idx = idx[~heldout_identity_mask(ctx.data)[idx]]
    return idx


# ----------------------------------------------------------------------- models

def build_anet_backbone(preset):
    return build_anet(**preset.anet)


def patch_offsets(preset):
    return tf.constant(preset.patch_offsets(), tf.int32)  # [N, 2]


def _random_patches(regions_u8, offsets, patch_size, seed):
    """regions uint8 [B, R, R, 3] -> one grid patch each (stateless random), float [B, P, P, 3]."""
    b = tf.shape(regions_u8)[0]
    pick = tf.random.stateless_uniform([b], seed=seed, maxval=tf.shape(offsets)[0], dtype=tf.int32)
    corners = tf.gather(offsets, pick)

    def crop(args):
        region, corner = args
        return tf.slice(region, [corner[0], corner[1], 0], [patch_size, patch_size, 3])

    patches = tf.map_fn(crop, (regions_u8, corners),
                        fn_output_signature=tf.TensorSpec([patch_size, patch_size, 3], tf.uint8))
    return preprocess.normalize(patches)


@keras.saving.register_keras_serializable(package="tfattr")
class PairSimilarityLoss(keras.losses.Loss):
    """Similarity loss of same-identity pairs at batch positions (2k, 2k+1) (paper Sec. 2.2).

    y_true is ignored (the pairing is by position); y_pred: FC [B, F], B even.
    Per example: ||FC_2k - FC_2k+1||^2 of its pair, so the batch mean is the mean
    over the pairs of the squared distance, and Keras' distributed reduction
    (per-replica mean / num_replicas, summed) equals the global-batch mean.
    """

    def call(self, y_true, y_pred):
        y_pred = tf.cast(y_pred, tf.float32)
        pairs = tf.reshape(y_pred, [-1, 2, tf.shape(y_pred)[-1]])
        dist = tf.reduce_sum(tf.square(pairs[:, 0] - pairs[:, 1]), axis=-1)  # [B/2]
        return tf.repeat(dist, 2)


def _identity_model(anet, num_identities):
    inputs = keras.Input(anet.input_shape[1:], name="anet_pretrain_patch")
    features = anet(inputs)
    logits = keras.layers.Dense(num_identities, name="identity", dtype="float32")(features)
    features = keras.layers.Identity(name="features")(features)
    return keras.Model(inputs, {"identity": logits, "features": features},
                       name="anet_identity_classifier")


def _attribute_model(anet):
    inputs = keras.Input(anet.input_shape[1:], name="anet_finetune_patch")
    logits = _attribute_logits_layer()(anet(inputs))
    return keras.Model(inputs, logits, name="anet_attribute_classifier")


def _attribute_logits_layer():
    """The Dense(40) attribute head; float32 under any `train.precision` (the loss reads it)."""
    return keras.layers.Dense(NUM_ATTRIBUTES, name="attribute_logits", dtype="float32")


def _region_attribute_model(anet, preset, head=None):
    """Region [B, R, R, 3] -> attribute logits of every grid patch [B, N, 40]: the same
    Dense(40) on ANet's FC of each patch, all patches in one interweaved pass (Fig. 5).
    `head`: that Dense(40) when another model already holds it (the framer's, whose training
    this model continues: `anet.framer_fraction`)."""
    size = preset.face_region_size
    inputs = keras.Input((size, size, 3), name="anet_finetune_region")
    features = InterweavedANet(anet, preset.patch_size, preset.patch_stride,
                               name="interweaved_anet")(inputs)
    logits = (head or _attribute_logits_layer())(features)
    return keras.Model(inputs, logits, name="anet_region_attribute_classifier")


class _FramedRegionCrop(keras.layers.Layer):
    """Context crops [B, C, C, 3] -> the framer's re-framed regions [B, R, R, 3] (differentiable
    in the framer's offsets: the attribute loss trains the framer)."""

    def __init__(self, framer, region_size, **kwargs):
        super().__init__(**kwargs)
        self.framer = framer
        self.region_size = int(region_size)

    def build(self, input_shape):
        if not self.framer.built:
            self.framer.build(input_shape)
        super().build(input_shape)

    def call(self, context_crops, training=None):
        offsets = self.framer(context_crops, training=training)
        return crop_from_context(context_crops, offsets, self.framer.context, self.region_size)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.region_size, self.region_size, input_shape[-1])


def build_framer(preset, context, passes=1, filters=DEFAULT_FILTERS, input_pool=DEFAULT_INPUT_POOL):
    """A `RegionFramer` for the preset's face regions (context crops round(R * context) px),
    applied `passes` times by its `frame`."""
    framer = RegionFramer(context=context, context_size=context_size(preset, context),
                          passes=passes, filters=filters, input_pool=input_pool,
                          name="region_framer")
    framer.build((None, framer.context_size, framer.context_size, 3))
    return framer


def _framer_model(framer):
    """The framer wrapped in a Model (weights files)."""
    inputs = keras.Input((framer.context_size, framer.context_size, 3), name="framer_context_crop")
    return keras.Model(inputs, framer(inputs), name="region_framer_model")


def load_framer(workdir, preset):
    """The `RegionFramer` a run's anet stage trained (`anet.framer`), or None."""
    summary = run_summary(workdir, "anet")
    if not summary.get("framer"):
        return None
    # Workdirs from before `anet.framer_passes` framed their regions once; those from before
    # `anet.framer_filters` / `anet.framer_input_pool` trained the default framer.
    framer = build_framer(preset, summary["framer_context"], summary.get("framer_passes", 1),
                          summary.get("framer_filters", DEFAULT_FILTERS),
                          summary.get("framer_input_pool", DEFAULT_INPUT_POOL))
    _framer_model(framer).load_weights(str(Path(workdir) / "anet" / FRAMER_WEIGHTS))
    return framer


def jittered_context(context, jitter):
    """The context (in region sides) of the crops cached for `anet.framer_jitter`: every
    context crop of a region moved by up to `jitter` sides and scaled by up to exp(+-jitter)
    lies inside them (rounded up to 0.01)."""
    return math.ceil((float(context) * math.exp(jitter) + 2 * jitter) * 100) / 100


def _framed_attribute_model(anet, framer, preset, head=None):
    """Context crop -> framer -> re-framed region -> every patch's attribute logits [B, N, 40]."""
    inputs = keras.Input((framer.context_size, framer.context_size, 3), name="anet_context_crop")
    # float32 under any `train.precision`: the differentiable crop of the framer's offsets
    region = _FramedRegionCrop(framer, preset.face_region_size, name="framed_region",
                               dtype="float32")(inputs)
    features = InterweavedANet(anet, preset.patch_size, preset.patch_stride,
                               name="interweaved_anet")(region)
    logits = (head or _attribute_logits_layer())(features)
    return keras.Model(inputs, logits, name="anet_framed_attribute_classifier")


def framer_steps(hp, total_steps):
    """Steps of the anet stage's first model: with `anet.framer`, those in which the framer
    trains with ANet (`anet.framer_fraction` of them, at least one; the rest train ANet alone
    on the frozen framer's regions); without, all of them."""
    if not hp.framer:
        return int(total_steps)
    return max(1, min(int(total_steps), int(round(float(hp.framer_fraction) * total_steps))))


def _step_batches(ctx, num_examples, batch_size, begin, total, salt, assemble):
    """Steps `begin`..`total` of a stage as a tf.data pipeline: `assemble(step, members)` on
    each step's example indices (`ctx.step_indices`, a pure function of the step)."""
    steps = tf.data.Dataset.range(begin, total)
    chosen = ctx.step_indices(num_examples, batch_size, begin, total, salt=salt)
    return tf.data.Dataset.zip(steps, chosen).map(assemble, num_parallel_calls=2,
                                                  deterministic=True).prefetch(2)


def attribute_loss_weights(weights):
    """`anet.attribute_loss_weights` ({name: weight}) -> float32 [40] of mean 1 (the others
    weigh 1 before the scaling); ValueError for an unknown name or a weight <= 0."""
    vector = np.ones(NUM_ATTRIBUTES, np.float32)
    for name, weight in dict(weights or {}).items():
        if name not in ATTRIBUTE_NAMES:
            raise ValueError(f"anet.attribute_loss_weights: unknown attribute {name!r}; "
                             f"known: {', '.join(ATTRIBUTE_NAMES)}")
        weight = float(weight)
        if not weight > 0:
            raise ValueError(f"anet.attribute_loss_weights: {name} must weigh > 0, got {weight}")
        vector[ATTRIBUTE_NAMES.index(name)] = weight
    return vector / vector.mean()


class WeightedAttributeCrossEntropy(keras.losses.Loss):
    """Sigmoid cross-entropy of the 40 tags, each tag's term times its weight, averaged over
    the tags (per example, so Keras' distributed reduction over the global batch holds);
    all weights 1 is `keras.losses.BinaryCrossentropy(from_logits=True)`. Paper Sec. 2.2's
    attribute loss, with per-tag weights (`anet.attribute_loss_weights`)."""

    def __init__(self, weights, name="weighted_attribute_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.attribute_weights = np.asarray(weights, np.float32)

    def call(self, y_true, y_pred):
        y_pred = tf.cast(y_pred, tf.float32)
        y_true = tf.cast(y_true, tf.float32)
        terms = tf.nn.sigmoid_cross_entropy_with_logits(labels=y_true, logits=y_pred)
        return tf.reduce_mean(terms * tf.constant(self.attribute_weights), axis=-1)

    def get_config(self):
        return {**super().get_config(), "weights": self.attribute_weights.tolist()}


def _compile_for_attributes(model, optimizer, weights=None):
    """Sigmoid cross-entropy on the 40 tags (weighted by `weights` [40] when given),
    accuracy at logit 0."""
    loss = (keras.losses.BinaryCrossentropy(from_logits=True) if weights is None
            else WeightedAttributeCrossEntropy(weights))
    model.compile(optimizer=optimizer, loss=loss,
                  metrics=[keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy")])


def _total_steps(hp, num_examples, batch_size):
    per_epoch = max(1, num_examples // batch_size)
    total = max(1, hp.epochs) * per_epoch
    if hp.max_steps > 0:
        total = min(total, hp.max_steps)
    return total, per_epoch


def learning_rate_schedule(hp, total_steps):
    """hp.learning_rate, constant or cosine-decayed to 0 over `total_steps` (hp.schedule)."""
    if getattr(hp, "schedule", "constant") == "cosine":
        return keras.optimizers.schedules.CosineDecay(hp.learning_rate, max(1, int(total_steps)))
    return hp.learning_rate


def _save_backbone(ctx, anet, stage):
    ctx.save_weights(anet, ctx.stage_dir(stage) / "model.weights.h5")


def _cleanup_checkpoints(ctx, stage):
    """Removes `<stage>/checkpoints`, and `<stage>` itself when that leaves it empty (a
    phase's folder such as anet/frozen_framer; a stage's keeps its DONE)."""
    folder = Path(ctx.workdir) / stage / "checkpoints"
    if folder.is_dir():
        for p in folder.iterdir():
            p.unlink(missing_ok=True)
        folder.rmdir()
    if folder.parent.is_dir() and not any(folder.parent.iterdir()):
        folder.parent.rmdir()


# ----------------------------------------------------------------------- stages

def run_anet_pretrain(ctx):
    """ANet pre-training on the train identities (softmax + similarity loss)."""
    stage = "anet_pretrain"
    hp = ctx.config.anet_pretrain
    data = ctx.data
    batch = ctx.global_batch_size
    if batch % 2 or ctx.per_replica_batch_size % 2:
        raise ValueError(f"{stage}: the global batch ({batch}) and the per-replica batch "
                         f"({ctx.per_replica_batch_size}) must be even (same-identity pairs)")
    idx = training_indices(ctx)
    ids = data.identities[idx]
    uniq, counts = np.unique(ids, return_counts=True)
    keep = np.isin(ids, uniq[counts >= 2])
    idx, ids = idx[keep], ids[keep]
    order = np.lexsort((idx, ids))  # grouped by identity
    idx, ids = idx[order], ids[order]
    classes, labels = np.unique(ids, return_inverse=True)
    group_start = np.searchsorted(ids, ids, side="left")
    group_count = np.searchsorted(ids, ids, side="right") - group_start
    rank = np.arange(len(ids)) - group_start
    requested = hp.face_source if hp.face_source != "auto" else ctx.config.anet.face_source
    source = face_source(ctx.workdir, data, requested)
    enlarge = configured_face_enlarge(ctx.config, ctx.preset)
    regions, _ = face_regions(ctx.workdir, ctx.preset, data, idx, "train_identities", source, ctx.log,
                              enlarge=enlarge)
    regions = tf.constant(np.asarray(regions))
    labels_t = tf.constant(labels.astype(np.int32))
    g_start, g_count, g_rank = (tf.constant(a.astype(np.int64)) for a in (group_start, group_count, rank))
    offsets = patch_offsets(ctx.preset)
    patch_size = ctx.preset.patch_size
    half = batch // 2
    total, per_epoch = _total_steps(hp, len(idx), half)
    seed = ctx.seed
    ctx.log(f"[{stage}] {len(idx)} images of {len(classes)} identities (face regions: {source}), "
            f"{half} pairs per batch, {total} steps, similarity weight {hp.similarity_weight}")

    def make_dataset(start):
        def assemble(step, anchor):
            u = tf.random.stateless_uniform([half], seed=tf.stack([tf.constant(seed + 7, tf.int64), step]))
            count = tf.gather(g_count, anchor)
            shift = 1 + tf.cast(tf.floor(u * tf.cast(count - 1, tf.float32)), tf.int64)
            shift = tf.minimum(shift, count - 1)
            partner = tf.gather(g_start, anchor) + (tf.gather(g_rank, anchor) + shift) % count
            members = tf.reshape(tf.stack([anchor, partner], axis=1), [-1])  # a0 p0 a1 p1 ...
            x = _random_patches(tf.gather(regions, members), offsets, patch_size,
                                tf.stack([tf.constant(seed + 11, tf.int64), step]))
            y = tf.gather(labels_t, members)
            return x, {"identity": y, "features": y}

        return _step_batches(ctx, len(idx), half, start, total, 1, assemble)

    with ctx.scope(), ctx.precision_scope():
        anet = build_anet_backbone(ctx.preset)
        model = _identity_model(anet, len(classes))
        model.compile(optimizer=keras.optimizers.Adam(hp.learning_rate),
                      loss={"identity": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                            "features": PairSimilarityLoss()},
                      loss_weights={"identity": 1.0, "features": float(hp.similarity_weight)},
                      metrics={"identity": ["accuracy"]})
    history = ctx.fit_steps(model, make_dataset, stage, total, chunk=ctx.checkpoint_every or per_epoch)
    _save_backbone(ctx, anet, stage)
    ctx.mark_done(stage, {"images": len(idx), "identities": len(classes), "steps": total,
                          "face_source": source, "face_enlarge": enlarge,
                          "precision": ctx.config.train.precision,
                          "final": {k: float(v[-1]) for k, v in history.history.items() if v}})
    _cleanup_checkpoints(ctx, stage)
    return True


def run_anet(ctx):
    """ANet attribute fine-tuning on patches of the face regions (multi-view)."""
    stage = "anet"
    hp = ctx.config.anet
    data = ctx.data
    batch = ctx.global_batch_size
    idx = training_indices(ctx)
    source = face_source(ctx.workdir, data, hp.face_source)
    enlarge = configured_face_enlarge(ctx.config, ctx.preset)
    framer_context = float(hp.framer_context) if hp.framer else None
    jitter = float(hp.framer_jitter) if hp.framer else 0.0
    cached_context = jittered_context(framer_context, jitter) if jitter else framer_context
    loss_weights = (attribute_loss_weights(hp.attribute_loss_weights)
                    if hp.attribute_loss_weights else None)
    if hp.framer and (source != "lnet" or hp.patches != "all"):
        raise ValueError("anet.framer re-frames LNet's regions through whole-region training: it "
                         f"needs LNet regions (got {source}) and anet.patches=all (got {hp.patches})")
    regions, _ = face_regions(ctx.workdir, ctx.preset, data, idx, "train", source, ctx.log,
                              enlarge=enlarge, context=cached_context)
    regions = tf.constant(np.asarray(regions))
    labels = tf.constant(data.attributes[idx].astype(np.float32))
    offsets = patch_offsets(ctx.preset)
    patch_size = ctx.preset.patch_size
    total, per_epoch = _total_steps(hp, len(idx), batch)
    seed = ctx.seed
    pretrained = Path(ctx.workdir) / "anet_pretrain" / "model.weights.h5"
    use_pretrain = hp.init == "pretrain" and (Path(ctx.workdir) / "anet_pretrain" / "DONE").exists()
    all_patches = hp.patches == "all"
    num_patches = ctx.preset.num_patches
    ctx.log(f"[{stage}] {len(idx)} train images (face regions: {source}), {total} steps, "
            f"learning rate {hp.learning_rate} {hp.schedule}, "
            + (f"all {num_patches} patches of each region per step (interweaved), "
               if all_patches else "one random patch of each region per step, ")
            + "init " + (f"from {pretrained}" if use_pretrain else "random (no identity pre-training)")
            + (f", framer on context crops x{framer_context:g}" if hp.framer else "")
            + (f", regions jittered by up to {jitter:g}" if jitter else ""))

    def make_dataset(start):
        def assemble(step, members):
            y = tf.gather(labels, members)
            if all_patches:
                x = preprocess.normalize(tf.gather(regions, members))
                if jitter:
                    moves = tf.random.stateless_uniform(
                        [tf.shape(members)[0], 3], tf.stack([tf.constant(seed + 19, tf.int64), step]),
                        minval=-jitter, maxval=jitter)
                    # each moved region's context crop, a window of the larger cached one
                    x = crop_from_context(x, moves, cached_context,
                                          context_size(ctx.preset, framer_context),
                                          side=framer_context)
                return x, tf.tile(y[:, tf.newaxis, :], [1, num_patches, 1])
            x = _random_patches(tf.gather(regions, members), offsets, patch_size,
                                tf.stack([tf.constant(seed + 13, tf.int64), step]))
            return x, y

        return _step_batches(ctx, len(idx), batch, start, total, 2, assemble)

    with ctx.scope(), ctx.precision_scope():
        anet = build_anet_backbone(ctx.preset)
        if use_pretrain:
            anet.load_weights(str(pretrained))
        framer = (build_framer(ctx.preset, framer_context, filters=hp.framer_filters,
                               input_pool=hp.framer_input_pool) if hp.framer else None)
        head = _attribute_logits_layer()
        if framer is not None:
            model = _framed_attribute_model(anet, framer, ctx.preset, head)
        elif all_patches:
            model = _region_attribute_model(anet, ctx.preset, head)
        else:
            model = _attribute_model(anet)
        _compile_for_attributes(model, keras.optimizers.Adam(learning_rate_schedule(hp, total)),
                                loss_weights)
    chunk = ctx.checkpoint_every or per_epoch
    joint = framer_steps(hp, total)
    history = ctx.fit_steps(model, make_dataset, stage, joint, chunk=chunk)
    framing = {}
    if framer is not None:
        ctx.save_weights(_framer_model(framer), ctx.stage_dir(stage) / FRAMER_WEIGHTS)
        framing = {"framer": True, "framer_context": framer_context,
                   "framer_passes": int(hp.framer_passes), "framer_jitter": jitter,
                   "framer_filters": [int(f) for f in hp.framer_filters],
                   "framer_input_pool": int(hp.framer_input_pool),
                   "framer_fraction": float(hp.framer_fraction), "framer_steps": joint}
    if joint < total:
        model, history = _train_on_frozen_framer(ctx, stage, model, anet, head, framer, idx,
                                                 source, enlarge, joint, total, chunk,
                                                 loss_weights)
    else:
        _drop_framed_regions(ctx.workdir)
    _save_backbone(ctx, anet, stage)
    ctx.save_weights(model, ctx.stage_dir(stage) / "classifier.weights.h5")
    ctx.mark_done(stage, {"images": len(idx), "steps": total, "face_source": source,
                          "face_enlarge": enlarge, "patches": hp.patches, **framing,
                          "attribute_loss_weights": {k: float(v) for k, v
                                                     in hp.attribute_loss_weights.items()},
                          "init": "anet_pretrain" if use_pretrain else "scratch",
                          "precision": ctx.config.train.precision,
                          "final": {k: float(v[-1]) for k, v in history.history.items() if v}})
    _cleanup_checkpoints(ctx, stage)
    _cleanup_checkpoints(ctx, f"{stage}/{FROZEN_FRAMER_DIR}")
    return True


def _drop_framed_regions(workdir):
    """Regions re-framed by an earlier framer of this workdir are stale once a framer is final."""
    for stale in (Path(workdir) / FACES_DIR).glob(f"*{FRAMED_SUFFIX}.npy"):
        stale.unlink(missing_ok=True)


def _train_on_frozen_framer(ctx, stage, model, anet, head, framer, idx, source, enlarge, first,
                            total, chunk, loss_weights=None):
    """Steps `first`..`total` of the anet stage with `anet.framer_fraction` < 1: the framer,
    trained jointly so far, is frozen; every training region is re-framed once as at
    inference (`framer_passes`, cut from the photo; the cache the SVM stage reads too) and
    ANet + the same Dense(40) go on training on those regions alone, every patch in one
    interweaved pass, with the same optimizer (state and learning-rate schedule continue).
    A step skips the framer's forward and backward pass and the context crop. Checkpoints:
    `<stage>/frozen_framer/checkpoints`. `loss_weights`: the joint phase's per-tag loss
    weights ([40], `attribute_loss_weights`; None: unweighted). Returns (the region model,
    its History)."""
    checkpoints = f"{stage}/{FROZEN_FRAMER_DIR}"
    if ctx.latest_checkpoint(checkpoints)[1] is None:
        _drop_framed_regions(ctx.workdir)
    inference = build_framer(ctx.preset, framer.context, ctx.config.anet.framer_passes,
                             framer.filters, framer.input_pool)
    inference.set_weights(framer.get_weights())
    regions, _ = face_regions(ctx.workdir, ctx.preset, ctx.data, idx, "train", source, ctx.log,
                              enlarge=enlarge, framer=inference)
    regions = tf.constant(np.asarray(regions))
    labels = tf.constant(ctx.data.attributes[idx].astype(np.float32))
    num_patches = ctx.preset.num_patches
    ctx.log(f"[{stage}] framer frozen after {first} of {total} steps; steps {first}-{total}: "
            f"ANet alone on the {len(idx)} re-framed regions ({inference.passes} framer passes)")

    def assemble(step, members):
        y = tf.gather(labels, members)
        return (preprocess.normalize(tf.gather(regions, members)),
                tf.tile(y[:, tf.newaxis, :], [1, num_patches, 1]))

    def make_dataset(start):  # the stage's step stream, continued
        return _step_batches(ctx, len(idx), ctx.global_batch_size, first + start, total, 2,
                             assemble)

    with ctx.scope(), ctx.precision_scope():
        region_model = _region_attribute_model(anet, ctx.preset, head)
        _compile_for_attributes(region_model, model.optimizer, loss_weights)
    history = ctx.fit_steps(region_model, make_dataset, checkpoints, total - first, chunk=chunk)
    return region_model, history


def load_anet(workdir, preset, stage="anet"):
    """The trained ANet backbone of a workdir."""
    anet = build_anet_backbone(preset)
    anet.load_weights(str(Path(workdir) / stage / "model.weights.h5"))
    return anet


def run_summary(workdir, stage):
    path = Path(workdir) / stage / "DONE"
    return json.loads(path.read_text()) if path.exists() else {}
