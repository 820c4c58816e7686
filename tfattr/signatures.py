"""Names of the exported SavedModel's signatures, inputs and outputs.

The ONE place for these strings (STYLE.md sections 3 and 7): the exporter
(`tfattr/export.py`) builds its endpoints with them, and the server, client,
`tfattr.predict` and the tests read them from here. Changing one breaks every
client deployed against an older model, so don't.

Contract (DESIGN.md "Contracts"): a SavedModel at `<base>/<version>/` with

- `serving_default` (SIGNATURE_BYTES): input `image_bytes` tf.string [batch]
  (encoded JPEG/PNG/GIF/BMP/WebP, any size, decoded inside the graph);
- `serve_images` (SIGNATURE_IMAGES): input `images` uint8 [batch, H, W, 3]
  (already decoded, one size per batch);

both returning OUTPUT_KEYS:

- `boxes` float32 [batch, K, 4] (ymin, xmin, ymax, xmax) in pixels of the input,
- `box_scores` float32 [batch, K],
- `num_faces` int32 [batch] (faces >= num_faces are padding),
- `attribute_probabilities` float32 [batch, K, 40] (order tfattr.attributes),
- `attribute_scores` float32 [batch, K, 40] (SVM decision values);

face 0 is the dominant face. `assets/attributes.txt` holds the 40 names one a
line; `assets.extra/tf_serving_warmup_requests` holds PredictionLog records
(`write_warmup_requests` below writes them).
"""

MODEL_NAME = "tfattr"

SIGNATURE_BYTES = "serving_default"
SIGNATURE_IMAGES = "serve_images"

INPUT_IMAGE_BYTES = "image_bytes"
INPUT_IMAGES = "images"

OUTPUT_BOXES = "boxes"
OUTPUT_BOX_SCORES = "box_scores"
OUTPUT_NUM_FACES = "num_faces"
OUTPUT_ATTRIBUTE_PROBABILITIES = "attribute_probabilities"
OUTPUT_ATTRIBUTE_SCORES = "attribute_scores"
OUTPUT_KEYS = (OUTPUT_BOXES, OUTPUT_BOX_SCORES, OUTPUT_NUM_FACES,
               OUTPUT_ATTRIBUTE_PROBABILITIES, OUTPUT_ATTRIBUTE_SCORES)

ATTRIBUTES_ASSET = "attributes.txt"           # under <version>/assets/
WARMUP_FILE = "tf_serving_warmup_requests"    # under <version>/assets.extra/


def write_warmup_requests(path, images, model_name=MODEL_NAME):
    """Writes TF Serving warmup records (TFRecord of PredictionLog) to `path`.

    One Predict request per encoded image in `images` (bytes), against
    `serving_default`. TF Serving (and tfattr.serve) replays them before a
    version becomes AVAILABLE, so the first real request is not slow.
    """
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    with tf.io.TFRecordWriter(str(path)) as writer:
        for data in images:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = SIGNATURE_BYTES
            request.inputs[INPUT_IMAGE_BYTES].CopyFrom(
                tf.make_tensor_proto([bytes(data)], dtype=tf.string))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
