"""tfattr.serve over loopback gRPC with the toy model: outputs, metadata, status, bad input, batching."""

import json
import threading

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

import serving_helpers as h
import toy_model
from tfattr import signatures as sig
from tfattr.attributes import ATTRIBUTE_NAMES
from tfattr.client import AttributeClient
from tfattr.serve import BatchConfig, ServingProcess

MAX_MESSAGE = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def model_base(tmp_path_factory):
    base = tmp_path_factory.mktemp("models") / "tfattr"
    toy_model.export_toy_model(base, version=1)
    return base


@pytest.fixture(scope="module")
def server(model_base):
    process = ServingProcess(model_base, port=0, max_message_size=MAX_MESSAGE,
                             batch_config=BatchConfig.from_file(h.REPO / "serving" /
                                                                "batching_parameters.txt"),
                             poll_seconds=3600).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client(server):
    with AttributeClient(server.target, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def stubs(server):
    channel = grpc.insecure_channel(server.target, options=[
        ("grpc.max_send_message_length", 16 * MAX_MESSAGE)])
    yield (prediction_service_pb2_grpc.PredictionServiceStub(channel),
           model_service_pb2_grpc.ModelServiceStub(channel))
    channel.close()


@pytest.fixture(scope="module")
def in_process(model_base):
    return tf.saved_model.load(str(model_base / "1")).signatures


def _request(images=None, model=sig.MODEL_NAME, signature=sig.SIGNATURE_BYTES, version=None,
             tensor=None, name=sig.INPUT_IMAGE_BYTES):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if tensor is None and images is not None:
        tensor = tf.make_tensor_proto(images, dtype=tf.string)
    if tensor is not None:
        request.inputs[name].CopyFrom(tensor)
    return request


def test_predict_equals_in_process_outputs(client, in_process):
    images = [h.jpeg(32, 40, seed=0), h.jpeg(64, 20, seed=1)] + \
        [data for data, _ in h.valid_unusual_images().values()]
    client.max_images_per_request = len(images)
    try:
        outputs, version = client.predict_raw(images)
    finally:
        client.max_images_per_request = 8
    expected = in_process[sig.SIGNATURE_BYTES](image_bytes=tf.constant(images))
    assert version == 1
    assert set(outputs) == set(sig.OUTPUT_KEYS) == set(expected)
    for key in sig.OUTPUT_KEYS:
        assert outputs[key].dtype == expected[key].numpy().dtype, key
        np.testing.assert_array_equal(outputs[key], expected[key].numpy(), err_msg=key)


def test_predict_dicts_name_every_attribute(client):
    [result, empty] = client.predict([h.jpeg(30, 50), h.valid_unusual_images()
                                      ["uniform_no_face_jpeg"][0]])
    assert result["num_faces"] == 1 and result["model_version"] == 1
    face = result["faces"][0]
    assert face["box"] == [0.0, 0.0, 30.0, 50.0]
    assert list(face["attributes"]) == list(ATTRIBUTE_NAMES)
    assert all(0.0 <= p <= 1.0 for p in face["attributes"].values())
    assert set(face["scores"]) == set(ATTRIBUTE_NAMES)
    assert empty == {"num_faces": 0, "model_version": 1, "faces": []}


def test_uint8_signature_and_output_filter(stubs, in_process):
    predict, _ = stubs
    images = np.stack([h.noise(16, 16, seed=s) for s in range(3)])
    request = _request(signature=sig.SIGNATURE_IMAGES, name=sig.INPUT_IMAGES,
                       tensor=tf.make_tensor_proto(images))
    request.output_filter.extend([sig.OUTPUT_NUM_FACES, sig.OUTPUT_ATTRIBUTE_PROBABILITIES])
    response = predict.Predict(request, timeout=30)
    assert set(response.outputs) == {sig.OUTPUT_NUM_FACES, sig.OUTPUT_ATTRIBUTE_PROBABILITIES}
    expected = in_process[sig.SIGNATURE_IMAGES](images=tf.constant(images))
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs[sig.OUTPUT_NUM_FACES]),
                                  expected[sig.OUTPUT_NUM_FACES].numpy())
    assert response.model_spec.signature_name == sig.SIGNATURE_IMAGES
    assert response.model_spec.version.value == 1


def test_metadata_is_signature_def_map(client, stubs):
    meta = client.metadata()
    assert meta["name"] == sig.MODEL_NAME and meta["version"] == 1
    default = meta["signatures"][sig.SIGNATURE_BYTES]
    assert default["inputs"] == {sig.INPUT_IMAGE_BYTES: {"dtype": "DT_STRING", "shape": [-1]}}
    assert set(default["outputs"]) == set(sig.OUTPUT_KEYS)
    assert default["outputs"][sig.OUTPUT_NUM_FACES]["dtype"] == "DT_INT32"
    assert default["outputs"][sig.OUTPUT_BOXES]["shape"] == [-1, 2, 4]
    images = meta["signatures"][sig.SIGNATURE_IMAGES]["inputs"][sig.INPUT_IMAGES]
    assert images == {"dtype": "DT_UINT8", "shape": [-1, -1, -1, 3]}
    # Raw proto: Any-packed SignatureDefMap under "signature_def", as TF Serving.
    predict, _ = stubs
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = sig.MODEL_NAME
    response = predict.GetModelMetadata(request, timeout=30)
    assert response.metadata["signature_def"].Is(get_model_metadata_pb2.SignatureDefMap.DESCRIPTOR)


def test_status_reports_available_version(client, stubs):
    assert client.status() == [{"version": 1, "state": "AVAILABLE", "error_code": 0,
                                "error_message": ""}]
    _, models = stubs
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = sig.MODEL_NAME
    request.model_spec.version.value = 1
    [status] = models.GetModelStatus(request, timeout=30).model_version_status
    assert status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE


def _bad_cases():
    jpg = h.jpeg(40, 40, seed=3)
    inv, nf = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
    shape_lie = tf.make_tensor_proto([jpg], dtype=tf.string)
    shape_lie.tensor_shape.dim[0].size = 3
    return {
        "truncated_jpeg": (lambda: _request([jpg[: len(jpg) // 2]]), inv),
        "zero_bytes": (lambda: _request([b""]), inv),
        "random_bytes": (lambda: _request([np.random.RandomState(0).bytes(500)]), inv),
        "png_claims_20000x20000": (lambda: _request([h.png_claiming(20000, 20000)]), inv),
        "jpeg_claims_60000x60000": (lambda: _request([h.jpeg_claiming(60000, 60000)]), inv),
        "gif_claims_65535x65535": (lambda: _request([h.gif_claiming(65535, 65535)]), inv),
        "png_signature_only": (lambda: _request([b"\x89PNG\r\n\x1a\n"]), inv),
        "one_bad_image_in_batch": (lambda: _request([jpg, b"not an image", jpg]), inv),
        "wrong_dtype_int32": (lambda: _request(tensor=tf.make_tensor_proto([1, 2], tf.int32)), inv),
        "wrong_rank_2d": (lambda: _request(tensor=tf.make_tensor_proto([[jpg]], tf.string)), inv),
        "scalar_input": (lambda: _request(tensor=tf.make_tensor_proto(jpg, tf.string)), inv),
        "empty_batch": (lambda: _request(tensor=tf.make_tensor_proto(
            np.array([], dtype=object), tf.string, shape=[0])), inv),
        "shape_says_3_values_1": (lambda: _request(tensor=shape_lie), inv),
        "unknown_input_name": (lambda: _request([jpg], name="images_typo"), inv),
        "missing_input": (lambda: _request(), inv),
        "extra_input": (lambda: _with_extra_input(_request([jpg])), inv),
        "uint8_four_channels": (lambda: _request(
            signature=sig.SIGNATURE_IMAGES, name=sig.INPUT_IMAGES,
            tensor=tf.make_tensor_proto(np.zeros((1, 8, 8, 4), np.uint8))), inv),
        "uint8_signature_given_float": (lambda: _request(
            signature=sig.SIGNATURE_IMAGES, name=sig.INPUT_IMAGES,
            tensor=tf.make_tensor_proto(np.zeros((1, 8, 8, 3), np.float32))), inv),
        "unknown_output_filter": (lambda: _with_filter(_request([jpg]), "logits"), inv),
        "unknown_version_label": (lambda: _with_label(_request([jpg]), "canary"), inv),
        "unknown_model": (lambda: _request([jpg], model="resnet"), nf),
        "unknown_version": (lambda: _request([jpg], version=7), nf),
        # TF Serving answers an unknown signature key with FAILED_PRECONDITION
        # ('Serving signature key "x" not found.', predict_util.cc); we match it.
        "unknown_signature": (lambda: _request([jpg], signature="serve_bogus"),
                              grpc.StatusCode.FAILED_PRECONDITION),
        "oversized_message": (lambda: _request([b"\xff\xd8\xff" + b"\0" * (MAX_MESSAGE + 1000)]),
                              grpc.StatusCode.RESOURCE_EXHAUSTED),
    }


def _with_extra_input(request):
    request.inputs["extra"].CopyFrom(tf.make_tensor_proto([1.0]))
    return request


def _with_filter(request, alias):
    request.output_filter.append(alias)
    return request


def _with_label(request, label):
    request.model_spec.version_label = label
    return request


BAD_CASES = _bad_cases()


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_request_gets_status_then_server_still_serves(case, stubs):
    predict, _ = stubs
    make_request, code = BAD_CASES[case]
    with pytest.raises(grpc.RpcError) as info:
        predict.Predict(make_request(), timeout=30)
    assert info.value.code() == code, info.value.details()
    assert info.value.details()
    good = predict.Predict(_request([h.jpeg(20, 20, seed=9)]), timeout=30)
    assert tf.make_ndarray(good.outputs[sig.OUTPUT_NUM_FACES]).tolist() == [1]


def test_bad_metadata_and_status_requests(stubs):
    predict, models = stubs
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["graph"])
    request.model_spec.name = sig.MODEL_NAME
    with pytest.raises(grpc.RpcError) as info:
        predict.GetModelMetadata(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError) as info:
        predict.GetModelMetadata(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    for name, version in [("nope", None), (sig.MODEL_NAME, 9)]:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        if version:
            request.model_spec.version.value = version
        with pytest.raises(grpc.RpcError) as info:
            models.GetModelStatus(request, timeout=30)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("name", sorted(h.valid_unusual_images()))
def test_unusual_valid_images_are_answered(name, client):
    data, faces = h.valid_unusual_images()[name]
    [result] = client.predict([data])
    assert result["num_faces"] == faces


def test_batching_merges_concurrent_requests(model_base, in_process):
    process = ServingProcess(model_base, port=0, poll_seconds=3600, batch_config=BatchConfig(
        max_batch_size=8, batch_timeout_micros=300_000, num_batch_threads=1)).start()
    try:
        images = [h.jpeg(24, 24, seed=s) for s in range(16)]
        servable = process.manager.current()
        calls_before = servable.model_calls
        results = [None] * len(images)
        barrier = threading.Barrier(len(images))

        def worker(i):
            with AttributeClient(process.target, timeout=30) as c:
                barrier.wait()
                results[i] = c.predict_raw([images[i]])[0]

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(images))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        calls = servable.model_calls - calls_before
        [(num_batches, sizes)] = servable.batch_stats().values()
    finally:
        process.stop()
    assert calls <= 4, f"16 concurrent requests took {calls} model calls, batch sizes {sizes}"
    assert max(sizes) > 1 and sum(k * v for k, v in sizes.items()) == 16
    expected = in_process[sig.SIGNATURE_BYTES](image_bytes=tf.constant(images))
    for i, outputs in enumerate(results):
        for key in sig.OUTPUT_KEYS:
            np.testing.assert_allclose(outputs[key][0], expected[key].numpy()[i], rtol=1e-5,
                                       atol=1e-6, err_msg=key)


def test_predict_cli_against_server_and_in_process(server, model_base, tmp_path):
    from tfattr import predict as predict_cli

    good = tmp_path / "face.jpg"
    good.write_bytes(h.jpeg(60, 80))
    gray = tmp_path / "gray.png"
    gray.write_bytes(h.png(h.noise(30, 30, channels=1)))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    missing = tmp_path / "missing.jpg"
    files = [str(good), str(broken), str(missing), str(gray)]
    for flag, where in [("--server", server.target), ("--model", str(model_base))]:
        out = tmp_path / flag.strip("-")
        code = predict_cli.main([*files, flag, where, "--out", str(out), "--top-k", "3"])
        assert code == 1   # two files failed, the others were processed
        record = json.loads((out / "face.json").read_text())
        assert record["num_faces"] == 1 and len(record["faces"][0]["attributes"]) == 40
        assert len(record["faces"][0]["top"]) == 3
        assert (out / "face.png").stat().st_size > 0 and (out / "gray.png").exists()
        assert "error" in json.loads((out / "broken.json").read_text())
        assert "error" in json.loads((out / "missing.json").read_text())
