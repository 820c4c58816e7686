"""Builtin-only resampling (tfattr/layers/resample.py) against the TF ops it replaces."""

import numpy as np
import pytest
import tensorflow as tf

from tfattr.data import preprocess
from tfattr.layers import resample

ATOL = 1e-5


def _boxes(rng, n):
    """Normalized boxes: inside, overlapping the border, flipped, degenerate."""
    y1 = rng.uniform(-0.3, 0.8, n)
    x1 = rng.uniform(-0.3, 0.8, n)
    y2 = y1 + rng.uniform(-0.2, 0.9, n)
    x2 = x1 + rng.uniform(-0.2, 0.9, n)
    boxes = np.stack([y1, x1, y2, x2], 1).astype(np.float32)
    boxes[0] = [0, 0, 1, 1]
    boxes[1] = [0.25, 0.25, 0.25, 0.25]
    return boxes


@pytest.mark.parametrize("image_hw,crop", [((17, 23), (7, 9)), ((31, 31), (31, 31)),
                                           ((9, 40), (1, 5)), ((24, 18), (12, 1))])
@pytest.mark.parametrize("extrapolation", [0.0, -0.5])
def test_bilinear_crop_and_resize_matches_tf(image_hw, crop, extrapolation):
    rng = np.random.default_rng(sum(image_hw) + crop[0])
    images = rng.uniform(-1, 1, (2, *image_hw, 3)).astype(np.float32)
    boxes = _boxes(rng, 12)
    box_indices = rng.integers(0, 2, 12).astype(np.int32)
    expected = tf.image.crop_and_resize(images, boxes, box_indices, crop,
                                        extrapolation_value=extrapolation)
    got = resample.bilinear_crop_and_resize(images, boxes, box_indices, crop,
                                            extrapolation_value=extrapolation)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=ATOL, rtol=0)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_crop_and_resize_matches_preprocess(dtype):
    rng = np.random.default_rng(1)
    if dtype == np.uint8:
        image = rng.integers(0, 256, (45, 60, 3)).astype(np.uint8)
    else:
        image = rng.uniform(-1, 1, (45, 60, 3)).astype(np.float32)
    boxes = np.array([[5, 7, 30, 40], [-10, -10, 50, 70], [20.5, 33.25, 44.9, 59.1],
                      [40, 50, 80, 90]], np.float32)
    expected = preprocess.crop_and_resize(image, boxes, 19)
    got = resample.crop_and_resize(image, boxes, 19)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=ATOL, rtol=0)

    # Inside tf.function grappler may rewrite the box normalization (x / d ->
    # x * (1 / d)), moving sample points by an ulp: compare graph with graph.
    graph_expected = tf.function(preprocess.crop_and_resize)(image, boxes, 19)
    graph_got = tf.function(resample.crop_and_resize)(image, boxes, 19)
    np.testing.assert_allclose(graph_got.numpy(), graph_expected.numpy(), atol=ATOL, rtol=0)


@pytest.mark.parametrize("in_hw,out_hw", [((40, 30), (13, 17)), ((12, 20), (37, 41)),
                                          ((64, 64), (27, 27)), ((7, 9), (7, 9))])
@pytest.mark.parametrize("antialias", [True, False])
def test_resize_static_matches_tf(in_hw, out_hw, antialias):
    rng = np.random.default_rng(2)
    images = rng.uniform(-1, 1, (2, *in_hw, 3)).astype(np.float32)
    expected = tf.image.resize(images, out_hw, method="bilinear", antialias=antialias)
    got = resample.resize_static(images, out_hw, antialias=antialias)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=ATOL, rtol=0)
    np.testing.assert_allclose(resample.resize_static(images[0], out_hw, antialias).numpy(),
                               expected.numpy()[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("in_hw", [(120, 90), (50, 160), (160, 160), (333, 250), (7, 300)])
def test_letterbox_static_matches_preprocess(in_hw):
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (*in_hw, 3)).astype(np.uint8)
    expected, expected_scale = preprocess.letterbox(image, 160)
    got, scale = resample.letterbox_static(image, 160)
    assert scale == pytest.approx(float(expected_scale), rel=1e-7)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=ATOL, rtol=0)


def test_functions_convert_to_builtin_only_tflite():
    """The replacements convert with TFLITE_BUILTINS only and run in stock LiteRT."""
    from ai_edge_litert.interpreter import Interpreter

    from tfattr import lite

    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (1, 96, 72, 3)).astype(np.uint8)
    boxes = np.array([[10, 5, 60, 50], [-8, 30, 40, 90]], np.float32)

    @tf.function(input_signature=[tf.TensorSpec([1, 96, 72, 3], tf.uint8),
                                  tf.TensorSpec([2, 4], tf.float32)])
    def graph(image, boxes):
        boxed, _ = resample.letterbox_static(image, 64)
        crops = resample.crop_and_resize(image[0], boxes, 24)
        return {"letterboxed": boxed, "crops": crops}

    content = lite.convert_function(graph)
    ops = lite.tflite_op_names(content)
    lite.assert_builtin_only(content)
    assert "GATHER" in ops and "FLEX" not in " ".join(ops).upper()
    interpreter = Interpreter(model_content=content, num_threads=2)
    runner = interpreter.get_signature_runner(lite.LITE_SIGNATURE)
    out = runner(image=image, boxes=boxes)
    np.testing.assert_allclose(out["letterboxed"], preprocess.letterbox(image[0], 64)[0][tf.newaxis],
                               atol=1e-4)
    np.testing.assert_allclose(out["crops"], preprocess.crop_and_resize(image[0], boxes, 24),
                               atol=1e-4)
