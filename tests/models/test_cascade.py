"""FaceAttributeModel: the cascade's batching, padding, cropping and its three entry points."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfattr import signatures
from tfattr.data import preprocess
from tfattr.layers.interweave import InterweavedANet
from tfattr.layers.svm_head import AttributeSVMHead
from tfattr.models.anet import build_anet
from tfattr.models.cascade import FaceAttributeModel
from tfattr.presets import get_preset

K = 3
LITE_SIZE = 96
FACE_BOXES = np.array([[10, 8, 40, 36], [30, 50, 70, 86], [5, 60, 45, 95]], np.float32)


class CodedLocalizer(keras.layers.Layer):
    """Test double for FaceLocalizer: num_faces is written in the image's first pixel.

    num_faces = red value of pixel (0, 0) (uint8 units) modulo K + 1; the boxes
    are FACE_BOXES (scores 0.9, 0.8, 0.7), slots >= num_faces zero.
    """

    max_faces = K

    def call(self, image, lite=False, faces_only=False):
        code = tf.cast(tf.round((image[0, 0, 0] + 1.0) * 127.5), tf.int32)
        num_faces = code % (K + 1)
        valid = tf.sequence_mask(num_faces, K)
        boxes = tf.where(valid[:, None], tf.constant(FACE_BOXES), 0.0)
        scores = tf.where(valid, tf.constant([0.9, 0.8, 0.7]), 0.0)
        return boxes, scores, num_faces


def _image(height, width, num_faces, seed):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    image[0, 0, 0] = num_faces
    return image


@pytest.fixture(scope="module")
def preset():
    return get_preset("tiny")


def _model(preset, localizer):
    keras.utils.set_random_seed(3)
    anet = build_anet(**preset.anet)
    rng = np.random.default_rng(0)
    head = AttributeSVMHead()
    features = int(anet.output.shape[-1])
    head.set_svm(rng.normal(0, 0.2, (40, features)), rng.normal(0, 0.5, 40))
    model = FaceAttributeModel(
        localizer,
        InterweavedANet(anet, preset.patch_size, preset.patch_stride),
        head, face_region_size=preset.face_region_size, face_enlarge=preset.face_enlarge,
        lite_interweaved_anet=InterweavedANet(anet, preset.patch_size,
                                              preset.patch_stride, implementation="builtin"),
        lite_input_size=LITE_SIZE)
    model.build()
    return model


@pytest.fixture(scope="module")
def model(preset):
    return _model(preset, CodedLocalizer())


@pytest.fixture(scope="module")
def aligned(preset):
    return _model(preset, None)


def _single(model, image):
    return {k: v.numpy()[0] for k, v in model(tf.constant(image[np.newaxis])).items()}


def test_batched_call_equals_one_image_at_a_time(model):
    images = np.stack([_image(100, 120, n, seed) for seed, n in enumerate([2, 0, 3, 1])])
    batched = {k: v.numpy() for k, v in model(tf.constant(images)).items()}
    np.testing.assert_array_equal(batched[signatures.OUTPUT_NUM_FACES], [2, 0, 3, 1])
    for b, image in enumerate(images):
        single = _single(model, image)
        for key in signatures.OUTPUT_KEYS:
            np.testing.assert_allclose(batched[key][b], single[key], rtol=1e-5, atol=1e-5,
                                       err_msg=f"{key} image {b}")


def test_shapes_dtypes_and_zero_padding(model):
    images = np.stack([_image(64, 80, n, n) for n in [1, 3, 0]])
    out = model(tf.constant(images))
    assert set(out) == set(signatures.OUTPUT_KEYS)
    expected = {signatures.OUTPUT_BOXES: ((3, K, 4), tf.float32),
                signatures.OUTPUT_BOX_SCORES: ((3, K), tf.float32),
                signatures.OUTPUT_NUM_FACES: ((3,), tf.int32),
                signatures.OUTPUT_ATTRIBUTE_PROBABILITIES: ((3, K, 40), tf.float32),
                signatures.OUTPUT_ATTRIBUTE_SCORES: ((3, K, 40), tf.float32)}
    for key, (shape, dtype) in expected.items():
        assert tuple(out[key].shape) == shape and out[key].dtype == dtype, key
    num_faces = out[signatures.OUTPUT_NUM_FACES].numpy()
    for key in (signatures.OUTPUT_BOXES, signatures.OUTPUT_BOX_SCORES,
                signatures.OUTPUT_ATTRIBUTE_PROBABILITIES, signatures.OUTPUT_ATTRIBUTE_SCORES):
        value = out[key].numpy()
        for b, n in enumerate(num_faces):
            assert np.all(value[b, n:] == 0), (key, b)
            nonzero = value[b, :n] != 0
            assert np.all(nonzero.any(axis=-1) if nonzero.ndim > 1 else nonzero), (key, b)
    np.testing.assert_allclose(out[signatures.OUTPUT_BOXES].numpy()[1], FACE_BOXES)


def test_no_face_anywhere_in_the_batch(model):
    out = model(tf.constant(np.stack([_image(50, 50, 0, 1), _image(50, 50, 0, 2)])))
    np.testing.assert_array_equal(out[signatures.OUTPUT_NUM_FACES], [0, 0])
    assert not np.any(out[signatures.OUTPUT_ATTRIBUTE_SCORES].numpy())


def test_face_region_is_the_enlarged_square_box(model, preset):
    image = _image(100, 120, 1, 5)
    crops = model.localize(tf.constant(image))[3].numpy()
    region = preprocess.square_box(preprocess.enlarge_box(FACE_BOXES[:1], preset.face_enlarge))
    expected = preprocess.crop_and_resize(image, region, preset.face_region_size).numpy()
    # The first face's enlarged box lies inside the image: identical to the shared crop.
    assert np.all(region.numpy()[0, :2] >= 0) and region.numpy()[0, 2] <= 99
    np.testing.assert_allclose(crops[0], expected[0], atol=1e-5)
    assert crops.shape == (K, preset.face_region_size, preset.face_region_size, 3)


def test_crop_is_continuous_at_the_border(model):
    """A box edge on the image border: a 1e-4 px shift must not change the crop by a pixel value."""
    image = tf.constant(_image(64, 64, 0, 9))
    box = np.array([[0.0, 10.0, 40.0, 50.0]], np.float32)
    a = model.crop_regions(preprocess.normalize(image), box).numpy()
    b = model.crop_regions(preprocess.normalize(image), box - [[1e-4, 0, 0, 0]]).numpy()
    assert np.abs(a - b).max() < 1e-3


def test_bytes_entry_point_equals_decoded_images(model):
    images = [_image(70, 90, 2, 1), _image(120, 60, 1, 2)]
    out = model.predict_image_bytes(tf.constant([tf.io.encode_png(i).numpy() for i in images]))
    for b, image in enumerate(images):
        single = _single(model, image)
        for key in signatures.OUTPUT_KEYS:
            np.testing.assert_allclose(out[key].numpy()[b], single[key], rtol=1e-5, atol=1e-5,
                                       err_msg=key)


def test_lite_path_equals_server_path(model):
    image = _image(LITE_SIZE, LITE_SIZE, 3, 4)
    letterboxed = preprocess.normalize(tf.constant(image))[tf.newaxis]
    lite = model.predict_fixed(letterboxed)
    server = _single(model, image)
    for key in signatures.OUTPUT_KEYS:
        np.testing.assert_allclose(lite[key].numpy()[0], server[key], rtol=1e-4, atol=1e-4,
                                   err_msg=key)


def test_lite_entry_point_takes_only_the_fixed_shape(model):
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError)):
        model.predict_fixed(tf.zeros([1, LITE_SIZE + 1, LITE_SIZE, 3]))


def test_aligned_variant_takes_the_whole_image(aligned, preset):
    assert aligned.max_faces == 1 and aligned.aligned
    image = _image(72, 60, 0, 3)
    out = _single(aligned, image)
    np.testing.assert_allclose(out[signatures.OUTPUT_BOXES], [[0, 0, 72, 60]])
    np.testing.assert_array_equal(out[signatures.OUTPUT_NUM_FACES], 1)
    np.testing.assert_allclose(out[signatures.OUTPUT_BOX_SCORES], [1.0])
    crops = aligned.localize(tf.constant(image))[3].numpy()
    expected = tf.image.crop_and_resize(preprocess.normalize(image)[tf.newaxis], [[0, 0, 1, 1]],
                                        [0], [preset.face_region_size] * 2).numpy()
    np.testing.assert_allclose(crops, expected, atol=1e-4)


def test_rejects_float_images_and_bad_sizes(model, preset):
    with pytest.raises(TypeError, match="uint8"):
        model(tf.zeros([1, 32, 32, 3]))
    with pytest.raises(ValueError, match="face_region_size"):
        FaceAttributeModel(None, model.interweaved_anet, model.head, face_region_size=0,
                           face_enlarge=1.2)


# ---------------------------------------------------------------- the real localizer
@pytest.fixture(scope="module")
def wild(preset):
    """The cascade with a real tiny FaceLocalizer (random weights, threshold 0), K = 4.

    nms_iou=1: no box counts as a duplicate, so at threshold 0 every valid proposal is a
    face (multi-face images whatever the random weights; tests/localize cover the NMS)."""
    from tfattr.localize.localizer import FaceLocalizer
    from tfattr.models.lnet import build_lnet

    keras.utils.set_random_seed(5)
    localizer = FaceLocalizer(build_lnet(**preset.lnet_o), build_lnet(**preset.lnet_s),
                              preset.lnet_o_input_size, preset.lnet_s_input_size,
                              threshold=0.0, max_faces=4, nms_iou=1.0)
    return _model(preset, localizer)


def _all_proposals_outputs(model, image_bytes):
    """The plain computation: LNet_s on EVERY proposal (the localizer's static TFLite form:
    builtin-op crops, all K crops), the rest of the server graph unchanged."""
    localizer = model.localizer
    fast_call = localizer.call
    localizer.call = lambda image, lite=False, faces_only=False: fast_call(image, lite=True)
    try:
        return {k: v.numpy() for k, v in model.predict_image_bytes(image_bytes).items()}
    finally:
        localizer.call = fast_call


def test_valid_only_lnet_s_equals_every_proposal(wild):
    """The fast server graph (LNet_s only on the valid proposals that reach the threshold,
    stock CropAndResize) gives the outputs of LNet_s on all K proposals: several faces
    (threshold 0), one face (a threshold between image 0's two best scores: the lower
    proposals skip LNet_s) and no face (a threshold above every score: no LNet_s at all)."""
    rng = np.random.default_rng(7)
    smooth = tf.image.resize(rng.integers(0, 256, (1, 9, 12, 3)).astype(np.float32),
                             [90, 120]).numpy()[0].astype(np.uint8)
    images = [rng.integers(0, 256, (110, 80, 3), dtype=np.uint8), smooth,
              np.full((64, 96, 3), 128, np.uint8)]
    data = tf.constant([tf.io.encode_png(i).numpy() for i in images])
    fn = tf.function(wild.predict_image_bytes,
                     input_signature=[tf.TensorSpec([None], tf.string)])
    scores = _all_proposals_outputs(wild, data[:1])[signatures.OUTPUT_BOX_SCORES][0]
    middle = float(scores[:2].mean())  # image 0: its best proposal is a face, the next is not
    counts = []
    for threshold in (0.0, 1e9, middle):
        wild.localizer.set_threshold(threshold)
        try:
            fast = {k: v.numpy() for k, v in fn(data).items()}
            plain = _all_proposals_outputs(wild, data)
        finally:
            wild.localizer.set_threshold(0.0)
        np.testing.assert_array_equal(fast[signatures.OUTPUT_NUM_FACES],
                                      plain[signatures.OUTPUT_NUM_FACES])
        for key in signatures.OUTPUT_KEYS:
            np.testing.assert_allclose(fast[key], plain[key], rtol=1e-4, atol=1e-3, err_msg=key)
        counts.append(fast[signatures.OUTPUT_NUM_FACES].tolist())
    assert max(counts[0]) >= 2, counts                            # multi-face
    assert counts[1] == [0, 0, 0]                                 # no face
    assert counts[2][0] == 1, counts                              # a face and a skipped one
