"""A small stand-in SavedModel that obeys the tfattr serving contract exactly.

Used by the serving tests and `tools/bench_serving.py` until (and besides)
the real exported model: same signatures, input/output names, dtypes, ranks,
assets and warmup file as DESIGN.md "Contracts" / `tfattr/signatures.py`,
built from stock TF ops with `tf.Module` + `tf.saved_model.save`.

Its logic (deterministic, cheap):
- decode the bytes inside the graph (`tfattr.data.preprocess.decode_image`);
- a uniform image (every channel constant, e.g. 1x1) has no face: num_faces 0, everything 0;
- otherwise one face: box 0 is the whole image, score = sigmoid(10 * std);
- 24 features: RGB mean, RGB std, log aspect ratio, a constant, and the mean
  of a fixed 16-filter 3x3 conv over the image resized to 48x48;
  attribute_scores = features @ W + b + variant, probabilities = sigmoid(scores).
`variant` shifts every score, so two versions exported with different
variants give different outputs (version-swap tests).
"""

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfattr import signatures as sig
from tfattr.attributes import ATTRIBUTE_NAMES, NUM_ATTRIBUTES
from tfattr.data.preprocess import decode_image

NUM_FEATURES = 24
RESIZE = 48


class ToyFaceAttributeModule(tf.Module):
    """Stand-in for the exported cascade: bytes or uint8 images -> contract outputs."""

    def __init__(self, variant=0.0, max_faces=2, seed=1234):
        super().__init__(name="toy_face_attributes")
        rng = np.random.RandomState(seed)
        self.max_faces = int(max_faces)
        self.conv_kernel = tf.Variable(rng.normal(0, 0.5, (3, 3, 3, 16)).astype(np.float32),
                                       trainable=False, name="conv_kernel")
        self.head_kernel = tf.Variable(rng.normal(0, 1.0, (NUM_FEATURES, NUM_ATTRIBUTES))
                                       .astype(np.float32), trainable=False, name="head_kernel")
        self.head_bias = tf.Variable((rng.normal(0, 0.5, NUM_ATTRIBUTES) + float(variant))
                                     .astype(np.float32), trainable=False, name="head_bias")

    def _features(self, image):
        """uint8 [H, W, 3] -> (features [F], (h, w) float [2], has_face bool [])."""
        x = tf.cast(image, tf.float32) / 255.0
        hw = tf.cast(tf.shape(image)[:2], tf.float32)
        mean = tf.reduce_mean(x, axis=[0, 1])
        std = tf.math.reduce_std(x, axis=[0, 1])
        aspect = tf.math.log(hw[1] / hw[0])
        small = tf.image.resize(x[tf.newaxis], [RESIZE, RESIZE], method="bilinear")
        conv = tf.nn.relu(tf.nn.conv2d(small * 2.0 - 1.0, self.conv_kernel, 1, "SAME"))
        conv_mean = tf.reduce_mean(conv, axis=[0, 1, 2])
        features = tf.concat([mean, std, aspect[tf.newaxis], [1.0], conv_mean], axis=0)
        pixels = tf.cast(image, tf.float32)
        spread = tf.reduce_max(tf.reduce_max(pixels, axis=[0, 1]) - tf.reduce_min(pixels, axis=[0, 1]))
        return features, hw, spread >= 1.0

    def _outputs(self, features, hw, has_face):
        """Batched per-image features -> the contract's output dict."""
        batch = tf.shape(features)[0]
        k = self.max_faces
        num_faces = tf.cast(has_face, tf.int32)
        face_mask = tf.cast(tf.range(k)[tf.newaxis, :] < num_faces[:, tf.newaxis], tf.float32)
        whole = tf.stack([tf.zeros([batch]), tf.zeros([batch]), hw[:, 0], hw[:, 1]], axis=1)
        boxes = whole[:, tf.newaxis, :] * face_mask[:, :, tf.newaxis]
        std = tf.reduce_mean(features[:, 3:6], axis=1)
        box_scores = tf.sigmoid(10.0 * std)[:, tf.newaxis] * face_mask
        scores = tf.matmul(features, self.head_kernel) + self.head_bias
        scores = scores[:, tf.newaxis, :] * face_mask[:, :, tf.newaxis]
        probabilities = tf.sigmoid(scores) * face_mask[:, :, tf.newaxis]
        return {
            sig.OUTPUT_BOXES: boxes,
            sig.OUTPUT_BOX_SCORES: box_scores,
            sig.OUTPUT_NUM_FACES: num_faces,
            sig.OUTPUT_ATTRIBUTE_PROBABILITIES: probabilities,
            sig.OUTPUT_ATTRIBUTE_SCORES: scores,
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=sig.INPUT_IMAGE_BYTES)])
    def serve_bytes(self, image_bytes):
        def one(data):
            return self._features(decode_image(data))

        features, hw, has_face = tf.map_fn(
            one, image_bytes,
            fn_output_signature=(tf.TensorSpec([NUM_FEATURES], tf.float32),
                                 tf.TensorSpec([2], tf.float32),
                                 tf.TensorSpec([], tf.bool)))
        return self._outputs(features, hw, has_face)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8,
                                                name=sig.INPUT_IMAGES)])
    def serve_images(self, images):
        features, hw, has_face = tf.map_fn(
            self._features, images,
            fn_output_signature=(tf.TensorSpec([NUM_FEATURES], tf.float32),
                                 tf.TensorSpec([2], tf.float32),
                                 tf.TensorSpec([], tf.bool)))
        return self._outputs(features, hw, has_face)


def sample_jpeg(height=32, width=40, seed=0):
    """A small noisy JPEG (bytes) for warmup and tests."""
    import cv2

    rng = np.random.RandomState(seed)
    image = rng.randint(0, 256, (height, width, 3), dtype=np.uint8)
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    return data.tobytes()


def export_toy_model(base_path, version=1, variant=0.0, max_faces=2, model_name=sig.MODEL_NAME):
    """Exports the toy SavedModel to `<base_path>/<version>/`; returns that path.

    The version is written to a temporary folder under `base_path` (named
    `.tmp-...`, which a server ignores) and renamed into place, as a real
    deployment should do, so a polling server never sees a half-written
    version. An existing `<base_path>/<version>` is an error.
    """
    base_path = Path(base_path)
    base_path.mkdir(parents=True, exist_ok=True)
    final = base_path / str(int(version))
    if final.exists():
        raise FileExistsError(f"{final} already exists")
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=base_path))
    try:
        asset_src = Path(tempfile.mkdtemp(prefix=".assets-", dir=base_path))
        (asset_src / sig.ATTRIBUTES_ASSET).write_text("\n".join(ATTRIBUTE_NAMES) + "\n")
        module = ToyFaceAttributeModule(variant=variant, max_faces=max_faces)
        module.attributes_file = tf.saved_model.Asset(str(asset_src / sig.ATTRIBUTES_ASSET))
        tf.saved_model.save(module, str(staging), signatures={
            sig.SIGNATURE_BYTES: module.serve_bytes.get_concrete_function(),
            sig.SIGNATURE_IMAGES: module.serve_images.get_concrete_function(),
        })
        shutil.rmtree(asset_src, ignore_errors=True)
        extra = staging / "assets.extra"
        extra.mkdir(exist_ok=True)
        sig.write_warmup_requests(extra / sig.WARMUP_FILE, [sample_jpeg()], model_name=model_name)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Export the toy stand-in SavedModel.")
    parser.add_argument("base_path")
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--variant", type=float, default=0.0)
    args = parser.parse_args()
    print(export_toy_model(args.base_path, args.version, args.variant))
