"""gRPC client for the tfattr model behind TF Serving (or `python -m tfattr.serve`).

Uses only the TensorFlow Serving API protos (`tensorflow-serving-api`), so it
works unchanged against the official `tensorflow_model_server`:

    from tfattr.client import AttributeClient
    with AttributeClient("127.0.0.1:8500") as client:
        [result] = client.predict([open("photo.jpg", "rb").read()])
        for face in result["faces"]:
            print(face["box"], face["score"], face["attributes"]["Smiling"])

RPC failures raise `grpc.RpcError` (`.code()`, `.details()`) unchanged.
"""

import grpc
import numpy as np

from tfattr import signatures as sig
from tfattr.attributes import ATTRIBUTE_NAMES

DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024


def outputs_to_predictions(outputs, attribute_names=ATTRIBUTE_NAMES, model_version=None):
    """Signature outputs (numpy, batched) -> one dict per image.

    Each dict: `num_faces`, `model_version` and `faces`, a list (dominant face
    first) of `{"box": [ymin, xmin, ymax, xmax] (input pixels), "score": float,
    "attributes": {name: probability}, "scores": {name: SVM score}}`.
    """
    boxes = np.asarray(outputs[sig.OUTPUT_BOXES])
    box_scores = np.asarray(outputs[sig.OUTPUT_BOX_SCORES])
    num_faces = np.asarray(outputs[sig.OUTPUT_NUM_FACES]).reshape(-1)
    probabilities = np.asarray(outputs[sig.OUTPUT_ATTRIBUTE_PROBABILITIES])
    scores = np.asarray(outputs[sig.OUTPUT_ATTRIBUTE_SCORES])
    if probabilities.shape[-1] != len(attribute_names):
        raise ValueError(f"model returns {probabilities.shape[-1]} attributes, "
                         f"expected {len(attribute_names)}")
    results = []
    for i in range(boxes.shape[0]):
        count = int(min(max(num_faces[i], 0), boxes.shape[1]))
        faces = []
        for k in range(count):
            faces.append({
                "box": [float(v) for v in boxes[i, k]],
                "score": float(box_scores[i, k]),
                "attributes": {n: float(p) for n, p in zip(attribute_names, probabilities[i, k])},
                "scores": {n: float(s) for n, s in zip(attribute_names, scores[i, k])},
            })
        results.append({"num_faces": count, "model_version": model_version, "faces": faces})
    return results


class AttributeClient:
    """Predict / GetModelMetadata / GetModelStatus against a TF Serving endpoint.

    Args:
        target: "host:port" of the gRPC endpoint.
        model_name: the served model name.
        signature_name: signature taking `image_bytes` (default `serving_default`).
        timeout: seconds per RPC.
        version: pin a model version (None: the latest the server serves).
        max_images_per_request: `predict` splits longer lists into several
            requests (stay at or under the server's batching max_batch_size).
        max_message_size: gRPC send/receive limit of this channel.
    """

    def __init__(self, target, model_name=sig.MODEL_NAME, signature_name=sig.SIGNATURE_BYTES,
                 timeout=30.0, version=None, max_images_per_request=8,
                 max_message_size=DEFAULT_MAX_MESSAGE_SIZE):
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self.target = target
        self.model_name = model_name
        self.signature_name = signature_name
        self.timeout = timeout
        self.version = version
        self.max_images_per_request = max(1, int(max_images_per_request))
        self._channel = grpc.insecure_channel(
            target, options=[("grpc.max_send_message_length", int(max_message_size)),
                             ("grpc.max_receive_message_length", int(max_message_size))])
        self._prediction = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    # -- plumbing -------------------------------------------------------------
    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _model_spec(self, spec, signature=True):
        spec.name = self.model_name
        if signature:
            spec.signature_name = self.signature_name
        if self.version is not None:
            spec.version.value = int(self.version)

    def predict_request(self, images):
        """The PredictRequest for a list of encoded images (bytes)."""
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        self._model_spec(request.model_spec)
        request.inputs[sig.INPUT_IMAGE_BYTES].CopyFrom(
            tf.make_tensor_proto([bytes(b) for b in images], dtype=tf.string))
        return request

    def predict_raw(self, images):
        """Encoded images -> ({output name: numpy array}, model version) in one request."""
        import tensorflow as tf

        response = self._prediction.Predict(self.predict_request(images), timeout=self.timeout)
        outputs = {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}
        version = response.model_spec.version.value if response.model_spec.HasField("version") \
            else None
        return outputs, version

    # -- public API -----------------------------------------------------------
    def predict(self, images):
        """Encoded images (list of bytes) -> list of per-image dicts (see outputs_to_predictions)."""
        images = list(images)
        results = []
        for start in range(0, len(images), self.max_images_per_request):
            outputs, version = self.predict_raw(images[start:start + self.max_images_per_request])
            results.extend(outputs_to_predictions(outputs, model_version=version))
        return results

    def metadata(self):
        """{"name", "version", "signatures": {name: {"method_name", "inputs", "outputs"}}}.

        inputs/outputs map a tensor name to {"dtype": "DT_STRING", "shape": [-1, ...]}
        (None for an unknown rank); the raw SignatureDefs are under "signature_defs".
        """
        from tensorflow.core.framework import types_pb2
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._model_spec(request.model_spec, signature=False)
        response = self._prediction.GetModelMetadata(request, timeout=self.timeout)
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sig_map)

        def describe(infos):
            return {name: {"dtype": types_pb2.DataType.Name(info.dtype),
                           "shape": None if info.tensor_shape.unknown_rank
                           else [d.size for d in info.tensor_shape.dim]}
                    for name, info in infos.items()}

        return {
            "name": response.model_spec.name,
            "version": response.model_spec.version.value,
            "signatures": {name: {"method_name": s.method_name, "inputs": describe(s.inputs),
                                  "outputs": describe(s.outputs)}
                           for name, s in sig_map.signature_def.items()},
            "signature_defs": dict(sig_map.signature_def),
        }

    def status(self):
        """[{"version", "state" ("AVAILABLE", ...), "error_code", "error_message"}], newest first."""
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._model_spec(request.model_spec, signature=False)
        response = self._models.GetModelStatus(request, timeout=self.timeout)
        states = get_model_status_pb2.ModelVersionStatus.State
        entries = [{"version": s.version, "state": states.Name(s.state),
                    "error_code": s.status.error_code, "error_message": s.status.error_message}
                   for s in response.model_version_status]
        return sorted(entries, key=lambda e: -e["version"])
