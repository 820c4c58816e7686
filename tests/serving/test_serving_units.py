"""Unit tests of tfattr.serve pieces that need no model: image headers, tensor conversion, Batcher."""

import threading
import time

import grpc
import numpy as np
import pytest

import serving_helpers as h
from tfattr.serve import (BatchConfig, Batcher, ServingError, check_image_bytes,
                          image_header_size, ndarray_to_tensor_proto, tensor_proto_to_ndarray)


@pytest.mark.parametrize("name", sorted(h.valid_unusual_images()))
def test_header_size_matches_decoded_size(name):
    import cv2

    data, _ = h.valid_unusual_images()[name]
    fmt, width, height = image_header_size(data)
    if fmt == "GIF":
        from PIL import Image
        import io
        expected = Image.open(io.BytesIO(data)).size
    else:
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        expected = (decoded.shape[1], decoded.shape[0])
    assert (width, height) == expected


@pytest.mark.parametrize("data,needle", [
    (b"", "empty"),
    (b"\x00\x01garbage", "unknown image format"),
    (b"\x89PNG\r\n\x1a\n", "truncated PNG"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", "truncated JPEG"),
    (b"GIF89a\x01", "truncated GIF"),
    (b"BM\x00\x00", "truncated BMP"),
])
def test_header_garbage_is_refused(data, needle):
    with pytest.raises(ValueError, match=needle):
        image_header_size(data)


@pytest.mark.parametrize("data", [h.png_claiming(20000, 20000), h.jpeg_claiming(60000, 60000),
                                  h.gif_claiming(65535, 65535)])
def test_pixel_bomb_refused_before_decoding(data):
    with pytest.raises(ServingError) as info:
        check_image_bytes(data, 40_000_000)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "pixels" in info.value.message


def test_tensor_roundtrip_and_inconsistent_protos():
    import tensorflow as tf

    for array in [np.arange(12, dtype=np.float32).reshape(3, 4), np.arange(5, dtype=np.int32),
                  np.zeros((2, 3, 3, 3), np.uint8), np.array([b"a", b"bc"], dtype=object)]:
        back = tf.make_ndarray(ndarray_to_tensor_proto(array))
        np.testing.assert_array_equal(back, array)
        again = tensor_proto_to_ndarray(tf.make_tensor_proto(array), 1 << 20)
        np.testing.assert_array_equal(again, array)
    proto = tf.make_tensor_proto([b"x"], dtype=tf.string)
    proto.tensor_shape.dim[0].size = 3
    with pytest.raises(ServingError):
        tensor_proto_to_ndarray(proto, 1 << 20)
    huge = tf.make_tensor_proto(np.zeros(4, np.float32))
    huge.tensor_shape.dim[0].size = 10 ** 12
    with pytest.raises(ServingError):
        tensor_proto_to_ndarray(huge, 1 << 20)


def _echo_batcher(config, calls, delay=0.0, fail_on=None):
    def run(inputs):
        calls.append(len(inputs["x"]))
        time.sleep(delay)
        if fail_on is not None and fail_on in inputs["x"]:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "bad example")
        return {"y": inputs["x"] * 2}
    return Batcher(run, config)


def _concurrently(fn, args):
    results = [None] * len(args)
    barrier = threading.Barrier(len(args))

    def worker(i):
        barrier.wait()
        try:
            results[i] = fn(args[i])
        except Exception as exc:  # noqa: BLE001
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(args))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_batcher_merges_and_splits_back():
    calls = []
    batcher = _echo_batcher(BatchConfig(max_batch_size=8, batch_timeout_micros=200_000,
                                        num_batch_threads=1), calls)
    try:
        results = _concurrently(lambda i: batcher.submit({"x": np.array([i, i + 100])}, 2),
                                list(range(12)))
    finally:
        batcher.close()
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["y"], [2 * i, 2 * i + 200])
    assert sum(calls) == 24 and max(calls) <= 8
    assert len(calls) <= 6, calls   # 12 requests of 2 merged into batches of up to 8


def test_batcher_queue_full_is_unavailable_and_oversize_is_invalid():
    calls = []
    batcher = _echo_batcher(BatchConfig(max_batch_size=2, batch_timeout_micros=0,
                                        num_batch_threads=1, max_enqueued_batches=1),
                            calls, delay=0.3)
    try:
        with pytest.raises(ServingError) as info:
            batcher.submit({"x": np.arange(3)}, 3)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        results = _concurrently(lambda i: batcher.submit({"x": np.array([i])}, 1), list(range(8)))
    finally:
        batcher.close()
    codes = [r.code for r in results if isinstance(r, ServingError)]
    assert codes and set(codes) == {grpc.StatusCode.UNAVAILABLE}
    assert any(isinstance(r, dict) for r in results)


def test_batcher_isolates_a_bad_request_in_a_merged_batch():
    calls = []
    batcher = _echo_batcher(BatchConfig(max_batch_size=8, batch_timeout_micros=200_000,
                                        num_batch_threads=1), calls)
    try:
        results = _concurrently(lambda i: batcher.submit({"x": np.array([i])}, 1), list(range(6)))
        bad = _concurrently(lambda i: batcher.submit({"x": np.array([i])}, 1), [1, 2, 3, 99, 5])
        batcher_fail = _echo_batcher(BatchConfig(max_batch_size=8, batch_timeout_micros=200_000,
                                                 num_batch_threads=1), [], fail_on=99)
        mixed = _concurrently(lambda i: batcher_fail.submit({"x": np.array([i])}, 1),
                              [1, 2, 99, 4])
        batcher_fail.close()
    finally:
        batcher.close()
    assert all(isinstance(r, dict) for r in results + bad)
    assert isinstance(mixed[2], ServingError)
    assert [int(r["y"][0]) for i, r in enumerate(mixed) if i != 2] == [2, 4, 8]
