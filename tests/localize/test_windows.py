import numpy as np
import pytest
import tensorflow as tf

from tfattr.localize import windows


def brute_force(response_map, window_sizes, size_exponent):
    h, w = response_map.shape
    scores, boxes = [], []
    for wh, ww in window_sizes:
        for y in range(h - wh + 1):
            for x in range(w - ww + 1):
                scores.append(response_map[y:y + wh, x:x + ww].sum() / (wh * ww) ** size_exponent)
                boxes.append((y, x, y + wh, x + ww))
    return np.array(scores), np.array(boxes, np.float32)


@pytest.mark.parametrize("shape", [(7, 9), (13, 13), (5, 3)])
@pytest.mark.parametrize("size_exponent", [1.0, 0.6])
def test_window_scores_equal_brute_force(shape, size_exponent):
    rng = np.random.default_rng(sum(shape))
    response_map = rng.random(shape).astype(np.float32)
    sizes = windows.window_sizes_from_scales(shape, [0.3, 0.6, 1.0], [1.0, 1.4, 0.7])
    scores, boxes = windows.window_scores(response_map, sizes, size_exponent)
    ref_scores, ref_boxes = brute_force(response_map, sizes, size_exponent)
    np.testing.assert_allclose(scores.numpy(), ref_scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(boxes.numpy(), ref_boxes)


def test_batched_scores_and_best_window():
    rng = np.random.default_rng(0)
    maps = rng.random((3, 8, 10)).astype(np.float32) * 0.1
    maps[1, 2:5, 3:7] += 5.0  # a planted 3 x 4 blob
    sizes = [(2, 2), (3, 4), (5, 5)]
    scores, _ = windows.window_scores(maps, sizes)
    for b in range(3):
        ref, _ = brute_force(maps[b], sizes, 1.0)
        np.testing.assert_allclose(scores[b].numpy(), ref, rtol=1e-5, atol=1e-5)
    box, score = windows.best_window(maps, [(3, 4), (5, 5)])
    np.testing.assert_array_equal(box[1].numpy(), [2, 3, 5, 7])


def test_window_scores_in_tf_function_and_pixels():
    sizes = [(2, 3)]
    fn = tf.function(lambda m: windows.window_scores(m, sizes)[0],
                     input_signature=[tf.TensorSpec([None, 6, 6], tf.float32)])
    out = fn(tf.ones([2, 6, 6]))
    np.testing.assert_allclose(out.numpy(), 1.0)
    # 'same' padding, stride 16: cell i centred on pixel index 16 i + 7.5.
    px = windows.map_boxes_to_pixels([[1, 2, 3, 4]], 16, 7.5)
    np.testing.assert_allclose(px.numpy(), [[16, 32, 48, 64]])
    # offset 9, stride 8 (tiny LNet): cell 0 spans pixel edges [5.5, 13.5).
    px = windows.map_boxes_to_pixels([[0, 0, 1, 2]], 8, 9.0)
    np.testing.assert_allclose(px.numpy(), [[5.5, 5.5, 13.5, 21.5]])
