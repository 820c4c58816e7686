"""ANet stage pieces: similarity loss, same-identity pair batches, deterministic step batches."""

from pathlib import Path

import numpy as np
import tensorflow as tf

from tfattr.config import ANetConfig, ExperimentConfig
from tfattr.stages.anet import (PairSimilarityLoss, _random_patches, heldout_identity_mask,
                                learning_rate_schedule)
from tfattr.stages.context import StageContext


def _ctx(tmp_path, seed=3):
    return StageContext(config=ExperimentConfig(), preset=None, data=None, workdir=Path(tmp_path),
                        seed=seed)


def test_pair_similarity_loss_is_the_mean_pair_distance_and_splits_exactly():
    rng = np.random.default_rng(0)
    fc = rng.normal(size=(8, 5)).astype(np.float32)
    pairs = fc.reshape(4, 2, 5)
    expected = np.mean(np.sum((pairs[:, 0] - pairs[:, 1]) ** 2, -1))
    loss = PairSimilarityLoss()
    got = float(loss(np.zeros(8), fc))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # Two replicas with 4 examples each (2 pairs each): the mean of the halves is the whole.
    halves = [float(loss(np.zeros(4), fc[:4])), float(loss(np.zeros(4), fc[4:]))]
    np.testing.assert_allclose(np.mean(halves), expected, rtol=1e-5)


def test_step_indices_are_a_function_of_the_step(tmp_path):
    ctx = _ctx(tmp_path)
    full = [b.numpy() for b in ctx.step_indices(23, 4, 0, 12)]
    resumed = [b.numpy() for b in ctx.step_indices(23, 4, 7, 12)]
    for a, b in zip(full[7:], resumed):
        np.testing.assert_array_equal(a, b)
    # Within an epoch (5 steps of 4 of 23 examples) no example repeats; epochs differ.
    epoch0 = np.concatenate(full[:5])
    assert len(set(epoch0.tolist())) == 20 and epoch0.max() < 23
    assert not np.array_equal(np.concatenate(full[5:10]), epoch0)
    other_seed = [b.numpy() for b in _ctx(tmp_path, seed=4).step_indices(23, 4, 0, 2)]
    assert not np.array_equal(other_seed[0], full[0])


def test_random_patches_come_from_the_patch_grid():
    regions = np.arange(2 * 10 * 10 * 3, dtype=np.int64).reshape(2, 10, 10, 3) % 256
    regions = regions.astype(np.uint8)
    offsets = tf.constant([[0, 0], [0, 4], [4, 0], [4, 4]], tf.int32)
    patches = _random_patches(tf.constant(regions), offsets, 6, tf.constant([1, 2], tf.int64)).numpy()
    assert patches.shape == (2, 6, 6, 3)
    for b in range(2):
        candidates = [regions[b, y:y + 6, x:x + 6] / 127.5 - 1 for y, x in offsets.numpy()]
        assert any(np.allclose(patches[b], c, atol=1e-6) for c in candidates)
    again = _random_patches(tf.constant(regions), offsets, 6, tf.constant([1, 2], tf.int64)).numpy()
    np.testing.assert_array_equal(patches, again)


def test_heldout_identities_are_disjoint_from_the_rest(synthetic_root):
    from tfattr.data.celeba import load_celeba

    data = load_celeba(synthetic_root)
    mask = heldout_identity_mask(data)
    assert mask.any()
    held = set(data.identities[mask].tolist())
    rest = set(data.identities[(data.partition == 0) & ~mask].tolist())
    assert held and not (held & rest)


def test_learning_rate_schedule_constant_or_cosine_to_zero():
    assert learning_rate_schedule(ANetConfig(learning_rate=3e-3), 100) == 3e-3
    cosine = learning_rate_schedule(ANetConfig(learning_rate=2e-3, schedule="cosine"), 100)
    np.testing.assert_allclose([float(cosine(0)), float(cosine(50)), float(cosine(100))],
                               [2e-3, 1e-3, 0.0], atol=1e-9)


def test_all_patches_model_is_the_patch_model_on_every_grid_patch():
    """anet.patches=all: one interweaved pass gives each grid patch the logits (and so the
    loss) the one-patch model gives that patch, with the same weights; training steps
    update ANet's batch-norm statistics through the interweaved pass."""
    import keras

    from tfattr.data import preprocess
    from tfattr.presets import get_preset
    from tfattr.stages.anet import _attribute_model, _region_attribute_model, build_anet_backbone

    preset = get_preset("tiny")
    keras.utils.set_random_seed(0)
    anet = build_anet_backbone(preset)
    region_model = _region_attribute_model(anet, preset)
    patch_model = _attribute_model(anet)
    patch_model.get_layer("attribute_logits").set_weights(
        region_model.get_layer("attribute_logits").get_weights())
    rng = np.random.default_rng(1)
    size, p = preset.face_region_size, preset.patch_size
    regions = preprocess.normalize(rng.integers(0, 256, (3, size, size, 3)).astype(np.uint8)).numpy()
    labels = (rng.uniform(size=(3, 40)) < 0.3).astype(np.float32)
    got = region_model(regions, training=False).numpy()
    assert got.shape == (3, preset.num_patches, 40)
    crops = np.stack([regions[:, y:y + p, x:x + p] for y, x in preset.patch_offsets()], 1)
    want = patch_model(crops.reshape(-1, p, p, 3), training=False).numpy().reshape(got.shape)
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)
    bce = keras.losses.BinaryCrossentropy(from_logits=True)
    tiled = np.repeat(labels[:, None], preset.num_patches, 1)
    per_patch = np.mean([float(bce(labels, want[:, k])) for k in range(preset.num_patches)])
    np.testing.assert_allclose(float(bce(tiled, got)), per_patch, rtol=1e-5)
    bn = next(layer for layer in anet.layers if layer.name.endswith("_bn"))
    before = bn.moving_mean.numpy().copy()
    region_model.compile(optimizer="adam", loss=bce)
    region_model.train_on_batch(regions, tiled)
    assert not np.allclose(bn.moving_mean.numpy(), before)


def test_framed_training_model_is_the_region_model_on_the_reframed_region():
    """anet.framer: the joint model's logits on a context crop are the plain region model's on
    the region the framer cuts from it (same ANet and Dense weights)."""
    import keras

    from tfattr.layers.region_framer import crop_from_context
    from tfattr.presets import get_preset
    from tfattr.stages.anet import (_framed_attribute_model, _region_attribute_model,
                                    build_anet_backbone, build_framer)

    preset = get_preset("tiny")
    keras.utils.set_random_seed(0)
    anet = build_anet_backbone(preset)
    framer = build_framer(preset, 1.75)
    kernel, bias = framer.out.get_weights()
    framer.out.set_weights([kernel + 0.01, bias + np.array([0.5, -0.5, 1.0], np.float32)])
    joint = _framed_attribute_model(anet, framer, preset)
    plain = _region_attribute_model(anet, preset)
    plain.get_layer("attribute_logits").set_weights(joint.get_layer("attribute_logits").get_weights())
    contexts = tf.random.uniform([2, framer.context_size, framer.context_size, 3], -1, 1, seed=4)
    offsets = framer(contexts, training=False)
    assert np.abs(offsets.numpy()).min() > 1e-3
    regions = crop_from_context(contexts, offsets, 1.75, preset.face_region_size)
    np.testing.assert_allclose(joint(contexts, training=False).numpy(),
                               plain(regions, training=False).numpy(), atol=1e-5)


def test_jittered_contexts_stay_inside_the_cached_crops():
    """anet.framer_jitter: the cached crops (`jittered_context`) hold every jittered context
    window, and zero moves give back the plain context crop's window."""
    from tfattr.layers.region_framer import crop_from_context, region_in_context
    from tfattr.stages.anet import jittered_context

    for context, jitter in ((1.75, 0.1), (1.5, 0.3), (2.0, 0.05)):
        outer = jittered_context(context, jitter)
        corners = np.array([[dy, dx, s] for dy in (-jitter, jitter) for dx in (-jitter, jitter)
                            for s in (-jitter, jitter)], np.float32)
        boxes = region_in_context(corners, outer, side=context).numpy()
        assert boxes.min() >= 0.0 and boxes.max() <= 1.0, (context, jitter)
    crops = tf.random.uniform([2, 64, 64, 3], -1, 1, seed=2)
    still = crop_from_context(crops, tf.zeros([2, 3]), 1.0, 64, side=1.0).numpy()
    np.testing.assert_allclose(still, crops.numpy(), atol=1e-5)


def test_workdir_regions_are_the_export_graphs_reframed_regions(tiny_run, tmp_path):
    """The regions the SVM stage and the evaluators cut with a framer (`face_regions(framer=)`)
    are the ones `FaceAttributeModel.localize` cuts in the exported graph (uint8 rounding
    apart), and a framer that moves them is not ignored (they differ from the plain ones)."""
    import shutil

    from tfattr.data.celeba import load_celeba
    from tfattr.export import build_model_from_workdir
    from tfattr.stages.anet import face_regions, load_framer, run_face_enlarge

    preset = __import__("tfattr.presets", fromlist=["get_preset"]).get_preset("tiny")
    workdir = tmp_path / "run"
    shutil.copytree(tiny_run["workdir"], workdir)
    shutil.rmtree(workdir / "faces")
    framer = load_framer(workdir, preset)
    kernel, bias = framer.out.get_weights()
    framer.out.set_weights([kernel, bias + np.array([2.0, -1.5, -2.0], np.float32)])  # moves
    data = load_celeba(tiny_run["data"], name="synthetic")
    idx = data.indices(2)[:8]
    enlarge = run_face_enlarge(workdir, preset)
    framed, _ = face_regions(workdir, preset, data, idx, "check", "lnet", log=lambda _: None,
                             enlarge=enlarge, framer=framer)
    plain, _ = face_regions(workdir, preset, data, idx, "check", "lnet", log=lambda _: None,
                            enlarge=enlarge)
    model = build_model_from_workdir(workdir)
    assert framer.passes == model.framer.passes == 2  # anet.framer_passes, recorded by the stage
    model.framer.out.set_weights(framer.out.get_weights())
    compared = 0
    for k, i in enumerate(idx):
        image = tf.io.decode_image(tf.io.read_file(str(data.wild_path(i))), channels=3)
        _, _, num_faces, crops = model.localize(image)
        if int(num_faces) == 0:  # the export zeroes the box; the workdir keeps the top proposal
            continue
        graph = np.clip(np.round((crops[0].numpy() + 1.0) * 127.5), 0, 255)
        assert np.abs(graph - framed[k].astype(np.float64)).max() <= 1.0
        assert np.abs(framed[k].astype(np.float64) - plain[k]).mean() > 5.0
        compared += 1
    assert compared


def test_lnet_boxes_are_cached_per_photo_and_renewed_with_the_localizer(tiny_run, tmp_path,
                                                                        monkeypatch):
    """LNet runs once per photo for every enlargement / context / framer; a retrained
    localizer (another lnet_s/DONE) invalidates the cache."""
    import shutil

    import pytest

    from tfattr.data.celeba import load_celeba
    from tfattr.presets import get_preset
    from tfattr.stages import lnet as lnet_stage
    from tfattr.stages.anet import face_regions

    preset = get_preset("tiny")
    workdir = tmp_path / "run"
    shutil.copytree(tiny_run["workdir"], workdir)
    shutil.rmtree(workdir / "faces")
    data = load_celeba(tiny_run["data"], name="synthetic")
    idx = data.indices(2)[:5]
    _, boxes = face_regions(workdir, preset, data, idx, "a", "lnet", log=lambda _: None)

    def no_localizer(*args, **kwargs):
        raise AssertionError("the localizer ran again")

    monkeypatch.setattr(lnet_stage, "load_face_localizer", no_localizer)
    wider, boxes_again = face_regions(workdir, preset, data, idx[::-1], "b", "lnet",
                                      log=lambda _: None, enlarge=1.6)
    np.testing.assert_array_equal(boxes_again, boxes[::-1])
    assert wider.shape == (5, preset.face_region_size, preset.face_region_size, 3)
    for source in ("lnet", "aligned"):  # no images: empty arrays, nothing localized
        none, no_boxes = face_regions(workdir, preset, data, [], "empty", source, log=lambda _: None)
        assert none.shape == (0, preset.face_region_size, preset.face_region_size, 3)
        assert no_boxes.shape == (0, 4)
    done = workdir / "lnet_s" / "DONE"
    done.write_text(done.read_text() + " ")  # another localizer
    with pytest.raises(AssertionError, match="ran again"):
        face_regions(workdir, preset, data, idx, "c", "lnet", log=lambda _: None)


def test_identity_pretraining_reads_the_configured_face_source(tiny_run, tmp_path):
    """anet_pretrain.face_source=aligned pre-trains on the aligned crops although LNet is
    trained (the anet stage still fine-tunes on LNet's regions); "auto" follows the anet
    stage's source (LNet's regions here)."""
    import json
    import shutil

    from tfattr import train

    for requested, expected in (("aligned", "aligned"), ("auto", "lnet")):
        workdir = tmp_path / requested
        shutil.copytree(tiny_run["workdir"], workdir)
        assert train.main(["--data", f"synthetic:{tiny_run['data']}", "--preset", "tiny",
                           "--workdir", str(workdir), "--stages", "anet_pretrain",
                           "--set", "train.batch_size=8", "--set", "train.verbose=0",
                           "--set", "anet_pretrain.max_steps=2",
                           "--set", f"anet_pretrain.face_source={requested}"]) == 0
        done = json.loads((workdir / "anet_pretrain" / "DONE").read_text())
        assert done["face_source"] == expected and done["steps"] == 2


def _fresh_anet_workdir(tiny_run, workdir):
    """A copy of the tiny run without its anet and svm stages (LNet kept)."""
    import shutil

    shutil.copytree(tiny_run["workdir"], workdir)
    for stage in ("anet", "svm"):
        shutil.rmtree(workdir / stage)
    for stale in (workdir / "faces").glob("*_framed.npy"):
        stale.unlink()
    return workdir


def _train_anet(tiny_run, workdir, *flags):
    from tfattr import train

    return train.main(["--data", f"synthetic:{tiny_run['data']}", "--preset", "tiny",
                       "--workdir", str(workdir), "--stages", "anet",
                       "--set", "train.batch_size=8", "--set", "train.verbose=0",
                       "--set", "train.checkpoint_every=2", "--set", "anet.max_steps=8",
                       "--set", "anet.init=scratch", "--set", "anet.face_enlarge=1.5",
                       "--set", "anet.patches=all", "--set", "anet.framer=true",
                       "--set", "anet.framer_jitter=0.1", "--set", "anet.framer_filters=8,16,16",
                       "--set", "anet.framer_input_pool=4", *flags])


def _stopped_and_resumed(tiny_run, workdir, monkeypatch, phase, *flags):
    """Trains the anet stage, stopped right after the first checkpoint of `phase` (a
    checkpoint folder under the workdir), then the same command again."""
    import pytest

    from tfattr.stages import context

    class Stop(Exception):
        pass

    save = context._StepCheckpoint.on_epoch_end

    def stop_after_first_checkpoint(self, epoch, logs=None):
        save(self, epoch, logs)
        if self.stage == phase:
            raise Stop()

    _fresh_anet_workdir(tiny_run, workdir)
    with monkeypatch.context() as patched:
        patched.setattr(context._StepCheckpoint, "on_epoch_end", stop_after_first_checkpoint)
        with pytest.raises(Stop):
            _train_anet(tiny_run, workdir, *flags)
    assert (workdir / phase / "checkpoints" / "ckpt-2.weights.h5").exists()
    assert not (workdir / "anet" / "DONE").exists()
    assert _train_anet(tiny_run, workdir, *flags) == 0


def _assert_same_h5(a_path, b_path, atol=1e-5):
    import h5py

    with h5py.File(a_path) as a, h5py.File(b_path) as b:
        arrays = []
        a.visititems(lambda k, v: arrays.append(k) if isinstance(v, h5py.Dataset) else None)
        assert arrays
        for k in arrays:
            np.testing.assert_allclose(a[k][()], b[k][()], atol=atol, err_msg=f"{a_path.name}:{k}")


def test_frozen_framer_phase_continues_the_optimizer_and_resumes_exactly(tiny_run, tmp_path,
                                                                        monkeypatch):
    """anet.framer_fraction < 1: the framer trains with ANet for its share of the steps, then
    ANet trains alone on the frozen framer's regions with the same optimizer (its step counter
    reaches the stage's total); those regions are the ones the SVM stage cuts with the saved
    framer; a run stopped after the first frozen-framer checkpoint and started again ends
    with the uninterrupted run's weights."""
    import json

    import h5py

    from tfattr.data.celeba import load_celeba
    from tfattr.presets import get_preset
    from tfattr.stages.anet import FROZEN_FRAMER_DIR, face_regions, load_framer

    preset = get_preset("tiny")
    flags = ("--set", "anet.framer_fraction=0.25")
    full = _fresh_anet_workdir(tiny_run, tmp_path / "full")
    assert _train_anet(tiny_run, full, *flags) == 0
    done = json.loads((full / "anet" / "DONE").read_text())
    assert done["steps"] == 8 and done["framer_steps"] == 2 and done["framer_fraction"] == 0.25
    assert not (full / "anet" / FROZEN_FRAMER_DIR).exists()
    assert not (full / "anet" / "checkpoints").exists()
    with h5py.File(full / "anet" / "classifier.weights.h5") as f:
        assert int(f["optimizer"]["vars"]["0"][()]) == 8  # the same optimizer's step counter

    data = load_celeba(tiny_run["data"], name="synthetic")
    cached = np.load(full / "faces" / "regions_train_lnet_x1.5_framed.npy")
    indices = np.load(full / "faces" / "indices_train_lnet_x1.5_framed.npy")
    again, _ = face_regions(full, preset, data, indices, "recut", "lnet", log=lambda _: None,
                            enlarge=1.5, framer=load_framer(full, preset))
    np.testing.assert_array_equal(cached, again)

    stopped = tmp_path / "stopped"
    _stopped_and_resumed(tiny_run, stopped, monkeypatch, f"anet/{FROZEN_FRAMER_DIR}", *flags)
    for name in ("model.weights.h5", "framer.weights.h5"):
        _assert_same_h5(full / "anet" / name, stopped / "anet" / name)


def test_mixed_bfloat16_models_compute_in_bfloat16_and_match_float32():
    """train.precision=mixed_bfloat16: the anet stage's joint model computes ANet and the
    framer in bfloat16 on float32 variables, its crop and logits in float32, and gives the
    float32 model's logits (same weights) to bfloat16 rounding; the global policy is float32
    again after the scope."""
    import keras

    from tfattr.config import ExperimentConfig, TrainConfig
    from tfattr.presets import get_preset
    from tfattr.stages.anet import _framed_attribute_model, build_anet_backbone, build_framer
    from tfattr.stages.context import StageContext

    preset = get_preset("tiny")
    config = ExperimentConfig(train=TrainConfig(precision="mixed_bfloat16"))
    ctx = StageContext(config=config, preset=preset, data=None, workdir=None)

    def joint_model():
        keras.utils.set_random_seed(0)
        framer = build_framer(preset, 1.75, filters=(8, 16, 16), input_pool=4)
        return _framed_attribute_model(build_anet_backbone(preset), framer, preset)

    with ctx.precision_scope():
        mixed = joint_model()
    assert keras.config.dtype_policy().name == "float32"
    plain = joint_model()
    assert mixed.get_layer("interweaved_anet").compute_dtype == "bfloat16"
    assert mixed.get_layer("framed_region").framer.compute_dtype == "bfloat16"
    assert mixed.get_layer("framed_region").compute_dtype == "float32"
    assert all(v.dtype == "float32" for v in mixed.weights)
    for layer in ("interweaved_anet", "attribute_logits"):
        mixed.get_layer(layer).set_weights(plain.get_layer(layer).get_weights())
    framer = mixed.get_layer("framed_region").framer
    kernel, bias = framer.out.get_weights()
    framer.out.set_weights([kernel + 0.01, bias + np.array([0.5, -0.5, 1.0], np.float32)])
    plain.get_layer("framed_region").framer.set_weights(framer.get_weights())
    contexts = tf.random.uniform([4, framer.context_size, framer.context_size, 3], -1, 1, seed=5)
    got, want = mixed(contexts, training=False), plain(contexts, training=False)
    assert got.dtype == tf.float32
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=0.03 * scale)
    assert not np.allclose(got.numpy(), want.numpy(), atol=1e-6)  # bfloat16 arithmetic indeed


def test_mixed_bfloat16_anet_stage_leaves_float32_weights(tiny_run, tmp_path, monkeypatch):
    """The anet stage under train.precision=mixed_bfloat16, both framer phases: recorded in
    DONE, float32 weights that the float32 SVM stage / export code loads. The same run has
    `anet.attribute_loss_weights`: both phases compile the weighted loss, DONE records it."""
    import json

    import h5py

    from tfattr.presets import get_preset
    from tfattr.stages import anet as anet_stage
    from tfattr.stages.anet import load_anet, load_framer

    compiled = []
    real = anet_stage._compile_for_attributes

    def spy(model, optimizer, weights=None):
        compiled.append(None if weights is None else np.asarray(weights))
        return real(model, optimizer, weights)

    monkeypatch.setattr(anet_stage, "_compile_for_attributes", spy)
    workdir = _fresh_anet_workdir(tiny_run, tmp_path / "mixed")
    assert _train_anet(tiny_run, workdir, "--set", "anet.framer_fraction=0.5",
                       "--set", "train.precision=mixed_bfloat16",
                       "--set", "anet.attribute_loss_weights.Straight_Hair=4") == 0
    done = json.loads((workdir / "anet" / "DONE").read_text())
    assert done["precision"] == "mixed_bfloat16"
    assert done["attribute_loss_weights"] == {"Straight_Hair": 4.0}
    assert len(compiled) == 2  # the joint model, then the region model on the frozen framer
    for weights in compiled:
        np.testing.assert_allclose(weights, anet_stage.attribute_loss_weights({"Straight_Hair": 4}))
    with h5py.File(workdir / "anet" / "model.weights.h5") as f:
        dtypes = set()
        f.visititems(lambda k, v: dtypes.add(str(v.dtype)) if isinstance(v, h5py.Dataset) else None)
    assert dtypes == {"float32"}
    preset = get_preset("tiny")
    anet, framer = load_anet(workdir, preset), load_framer(workdir, preset)
    assert anet.compute_dtype == "float32" and framer.compute_dtype == "float32"


def test_attribute_loss_weights_are_scaled_to_mean_one_and_checked():
    import pytest

    from tfattr.attributes import ATTRIBUTE_NAMES
    from tfattr.stages.anet import attribute_loss_weights

    w = attribute_loss_weights({"Straight_Hair": 4, "Wavy_Hair": 2.5})
    assert w.shape == (40,) and w.dtype == np.float32
    np.testing.assert_allclose(w.mean(), 1.0, rtol=1e-6)
    i, j = ATTRIBUTE_NAMES.index("Straight_Hair"), ATTRIBUTE_NAMES.index("Wavy_Hair")
    np.testing.assert_allclose([w[i] / w[0], w[j] / w[0]], [4.0, 2.5], rtol=1e-6)
    with pytest.raises(ValueError, match="unknown attribute 'Straight_hair'"):
        attribute_loss_weights({"Straight_hair": 4})
    with pytest.raises(ValueError, match="must weigh > 0"):
        attribute_loss_weights({"Smiling": 0})


def test_weighted_attribute_loss_is_the_weighted_mean_and_splits_exactly():
    """Weights 1: Keras' BinaryCrossentropy(from_logits=True); otherwise the per-tag terms
    times their weights, averaged over tags, patches and examples; per example, so two
    replicas' halves average to the global-batch loss."""
    import keras

    from tfattr.stages.anet import WeightedAttributeCrossEntropy, attribute_loss_weights

    rng = np.random.default_rng(0)
    y = (rng.uniform(size=(6, 9, 40)) < 0.3).astype(np.float32)
    z = rng.normal(size=(6, 9, 40)).astype(np.float32) * 3
    ones = WeightedAttributeCrossEntropy(np.ones(40, np.float32))
    np.testing.assert_allclose(float(ones(y, z)),
                               float(keras.losses.BinaryCrossentropy(from_logits=True)(y, z)),
                               rtol=1e-5)
    w = attribute_loss_weights({"Straight_Hair": 4, "Bald": 0.5})
    terms = np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
    expected = np.mean(terms * w)
    loss = WeightedAttributeCrossEntropy(w)
    np.testing.assert_allclose(float(loss(y, z)), expected, rtol=1e-5)
    assert abs(float(loss(y, z)) - float(ones(y, z))) > 1e-3  # the weights do something
    halves = [float(loss(y[:3], z[:3])), float(loss(y[3:], z[3:]))]
    np.testing.assert_allclose(np.mean(halves), expected, rtol=1e-5)
    np.testing.assert_allclose(WeightedAttributeCrossEntropy.from_config(loss.get_config())
                               .attribute_weights, w)


def test_attribute_loss_weights_from_the_command_line():
    from tfattr.config import apply_overrides, asdict, from_dict

    base = ExperimentConfig()
    assert base.anet.attribute_loss_weights == {}
    one = apply_overrides(base, ["anet.attribute_loss_weights.Straight_Hair=4"])
    whole = apply_overrides(base, ["anet.attribute_loss_weights={'Straight_Hair': 4}"])
    assert one.anet.attribute_loss_weights == whole.anet.attribute_loss_weights == {
        "Straight_Hair": 4}
    assert from_dict(asdict(one)).anet.attribute_loss_weights == {"Straight_Hair": 4}
    assert base.anet.attribute_loss_weights == {}  # the default is not shared
