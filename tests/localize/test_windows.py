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


@pytest.mark.parametrize("fraction", [0.3, 0.5])
def test_extent_scores_equal_brute_force_and_recover_a_planted_blob(fraction):
    rng = np.random.default_rng(1)
    maps = rng.random((2, 9, 11)).astype(np.float32) * 0.2
    maps[0, 2:6, 3:6] += 3.0  # a 4 x 3 blob
    maps[1, 5:8, 1:8] += 2.0  # a 3 x 7 blob
    sizes = windows.window_sizes_from_scales((9, 11), np.linspace(0.1, 1.0, 19), [0.4, 0.75, 1.0, 1.33])
    sums, boxes, areas = windows.window_sums(maps, sizes)
    peak = maps.max(axis=(1, 2))
    level = windows.cut_level(maps, peak, fraction)
    np.testing.assert_allclose(level.numpy(), maps.min(axis=(1, 2)) + fraction * (peak - maps.min(axis=(1, 2))),
                               rtol=1e-6)
    scores = windows.extent_scores(sums, areas, level).numpy()
    for b in range(2):
        ref_sums, ref_boxes = brute_force(maps[b], sizes, 0.0)  # exponent 0: plain sums
        np.testing.assert_allclose(sums[b].numpy(), ref_sums, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(boxes.numpy(), ref_boxes)
        ref_areas = (ref_boxes[:, 2] - ref_boxes[:, 0]) * (ref_boxes[:, 3] - ref_boxes[:, 1])
        np.testing.assert_allclose(scores[b], ref_sums - float(level[b]) * ref_areas, rtol=1e-5, atol=1e-4)
    # The best window is the blob's box, where the plain mean picks a smaller window.
    best = boxes.numpy()[scores.argmax(1)]
    np.testing.assert_array_equal(best, [[2, 3, 6, 6], [5, 1, 8, 8]])
    mean_best = boxes.numpy()[(sums / areas).numpy().argmax(1)]
    assert ((mean_best[:, 2:] - mean_best[:, :2]).prod(1) < [12, 21]).all()
