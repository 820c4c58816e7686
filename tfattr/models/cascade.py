"""`FaceAttributeModel`: the whole inference cascade of DESIGN.md as stock TF ops.

    uint8 image [H, W, 3] (any size)
      -> normalize -> FaceLocalizer (LNet_o -> LNet_s -> windows -> density peaks)
      -> up to `max_faces` boxes: enlarge by `face_enlarge`, square,
         [re-frame by the RegionFramer, if the run trained one,]
         crop_and_resize to `face_region_size`
      -> ANet interweaved pass over all patches of every face (ONE batched pass)
      -> AttributeSVMHead (folded LinearSVCs + Platt) -> scores / probabilities

Three entry points, one per exported signature (see tfattr/export.py):

- `call(images)`: a same-sized uint8 batch [B, H, W, 3]; localization runs per
  image with `tf.map_fn`, ANet runs once over the crops of every valid face.
- `predict_image_bytes(image_bytes)`: tf.string [B], each image decoded inside
  the graph with `tfattr.data.preprocess.decode_image` (any size per element).
- `predict_fixed(images)`: ONE letterboxed, normalized float32 image
  [1, S, S, 3] for TFLite: no `map_fn`, no decode ops, fixed shapes, and the
  "builtin" implementation of the interweaved ANet (no `tf.image.extract_patches`).

Every entry point returns the dict of `tfattr.signatures` output names:
`boxes` [B, K, 4] float32 (ymin, xmin, ymax, xmax in pixels of the input
image), `box_scores` [B, K], `num_faces` [B] int32, `attribute_scores`
[B, K, 40] and `attribute_probabilities` [B, K, 40]; K = `max_faces`, face 0
is the dominant one, and every slot at or beyond `num_faces` is all zeros.

The "aligned" variant (`localizer=None`) is for runs trained on aligned crops
only: the whole image is the face (one box covering it, score 1, num_faces 1,
no enlargement) and K = 1.
"""

import keras
import tensorflow as tf

from tfattr import signatures
from tfattr.attributes import NUM_ATTRIBUTES
from tfattr.data import preprocess
from tfattr.layers import resample


class FaceAttributeModel(keras.Model):
    """LNets + ANet + SVM head, from image pixels to per-face attributes.

    Args:
      localizer: a `tfattr.localize.FaceLocalizer` (normalized float image
        [H, W, 3] -> boxes [K, 4], box_scores [K], num_faces []), or None for
        the aligned variant.
      interweaved_anet: `InterweavedANet` with implementation
        "extract_patches": face region [B, R, R, 3] -> FC [B, N, F].
      head: `AttributeSVMHead`: FC [B, N, F] -> attribute scores/probabilities.
      face_region_size: R, the side the enlarged square face box is resized to.
      face_enlarge: factor the face box is enlarged by about its centre.
      lite_interweaved_anet: the same ANet weights with implementation
        "builtin" (TFLite builtin ops only), used by `predict_fixed`; None
        falls back to `interweaved_anet`.
      lite_input_size: S, the side of the letterboxed image `predict_fixed`
        takes.
      num_attributes: 40 (the order of `tfattr.attributes.ATTRIBUTE_NAMES`).
      framer: a `tfattr.layers.RegionFramer` that re-frames each enlarged square
        face box before it is cut (runs trained with `anet.framer`), or None.

    Call arguments:
      images: uint8 [B, H, W, 3], one size for the whole batch.

    Returns:
      dict of the five output tensors named in the module docstring.
    """

    def __init__(self, localizer, interweaved_anet, head, face_region_size, face_enlarge,
                 lite_interweaved_anet=None, lite_input_size=320,
                 num_attributes=NUM_ATTRIBUTES, framer=None, name="face_attribute_model",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        if int(face_region_size) <= 0:
            raise ValueError(f"face_region_size must be positive, got {face_region_size!r}")
        if float(face_enlarge) <= 0:
            raise ValueError(f"face_enlarge must be positive, got {face_enlarge!r}")
        if int(lite_input_size) <= 0:
            raise ValueError(f"lite_input_size must be positive, got {lite_input_size!r}")
        self.localizer = localizer
        self.interweaved_anet = interweaved_anet
        self.lite_interweaved_anet = lite_interweaved_anet or interweaved_anet
        self.head = head
        self.face_region_size = int(face_region_size)
        self.face_enlarge = float(face_enlarge)
        self.lite_input_size = int(lite_input_size)
        self.num_attributes = int(num_attributes)
        self.aligned = localizer is None
        if framer is not None and self.aligned:
            raise ValueError("a framer re-frames the localizer's boxes; the aligned variant has none")
        self.framer = framer
        self.max_faces = 1 if self.aligned else int(localizer.max_faces)

    # ------------------------------------------------------------------ faces
    def localize(self, image, lite=False):
        """One image (uint8 or normalized float [H, W, 3]) -> boxes, box_scores, num_faces, crops.

        boxes [K, 4] float32 in input pixels (zeros beyond num_faces),
        box_scores [K] float32, num_faces [] int32, crops float32
        [K, R, R, 3]: the enlarged square face regions (a slot beyond
        num_faces holds whatever its zero box crops; it is masked later).
        `lite=True` crops with TFLite builtin ops (`tfattr.layers.resample`)
        and runs the localizer in its static-shape form (LNet_s on every
        proposal); otherwise LNet_s runs only on the valid proposals whose
        LNet_o score reaches the threshold (`faces_only`: the slots beyond
        num_faces, the only ones that differ, are zeroed here anyway).
        """
        image = tf.convert_to_tensor(image)
        if image.dtype == tf.uint8:
            image = preprocess.normalize(image)
        if self.aligned:
            shape = tf.cast(tf.shape(image)[:2], tf.float32)
            # The whole image: reported as (0, 0, H, W); cropped between the
            # first and last pixel centres (preprocess.crop_and_resize's convention).
            whole = tf.reshape(tf.stack([0.0, 0.0, shape[0], shape[1]]), [1, 4])
            crops = self.crop_regions(image, whole - [[0.0, 0.0, 1.0, 1.0]], lite)
            return whole, tf.ones([1], tf.float32), tf.ones([], tf.int32), crops
        boxes, box_scores, num_faces = self.localizer(image, lite=lite,
                                                      faces_only=not lite)
        boxes = tf.cast(boxes, tf.float32)
        box_scores = tf.cast(box_scores, tf.float32)
        num_faces = tf.cast(num_faces, tf.int32)
        valid = tf.sequence_mask(num_faces, self.max_faces)
        boxes = tf.where(valid[:, tf.newaxis], boxes, 0.0)
        box_scores = tf.where(valid, box_scores, 0.0)
        regions = preprocess.square_box(preprocess.enlarge_box(boxes, self.face_enlarge))
        if self.framer is not None:
            regions = self.framer.frame(
                image, regions, crop=resample.crop_and_resize if lite else preprocess.crop_and_resize)
        crops = self.crop_regions(image, regions, lite)
        return boxes, box_scores, num_faces, crops

    def crop_regions(self, image, regions, lite=False):
        """Face regions (pixel boxes [K, 4], may cross the border) -> float [K, R, R, 3]:
        `preprocess.crop_framed` (with the builtin-op crop for `lite`), as the ANet stage
        cut its training regions."""
        crop = resample.crop_and_resize if lite else preprocess.crop_and_resize
        return preprocess.crop_framed(image, regions, self.face_region_size, crop=crop)

    def describe_faces(self, crops, num_faces, lite=False):
        """Face regions [B, K, R, R, 3] -> (attribute_scores, attribute_probabilities) [B, K, 40].

        By default ANet runs once over the regions of the valid faces only
        (slots < num_faces, gathered across the batch) and the results are
        scattered back; `lite=True` runs every slot with the builtin-op ANet
        (static shapes for TFLite). Slots >= num_faces are zero either way.
        """
        batch = tf.shape(crops)[0]
        k = self.max_faces
        size = self.face_region_size
        valid = tf.sequence_mask(num_faces, k)
        flat_crops = tf.reshape(crops, [-1, size, size, 3])
        if lite:
            scores, probabilities = self._head(self.lite_interweaved_anet(flat_crops))
            mask = tf.cast(tf.reshape(valid, [-1, 1]), tf.float32)
            scores, probabilities = scores * mask, probabilities * mask
        else:
            index = tf.cast(tf.where(tf.reshape(valid, [-1])), tf.int32)  # [M, 1] into the B*K slots
            scores, probabilities = self._head(
                self.interweaved_anet(tf.gather_nd(flat_crops, index)))
            shape = tf.stack([batch * k, self.num_attributes])
            scores = tf.scatter_nd(index, scores, shape)
            probabilities = tf.scatter_nd(index, probabilities, shape)
        out_shape = tf.stack([batch, k, self.num_attributes])
        return tf.reshape(scores, out_shape), tf.reshape(probabilities, out_shape)

    def _head(self, features):
        outputs = self.head(features)
        return (tf.cast(outputs[signatures.OUTPUT_ATTRIBUTE_SCORES], tf.float32),
                tf.cast(outputs[signatures.OUTPUT_ATTRIBUTE_PROBABILITIES], tf.float32))

    def _outputs(self, boxes, box_scores, num_faces, crops, lite=False):
        scores, probabilities = self.describe_faces(crops, num_faces, lite=lite)
        return {
            signatures.OUTPUT_BOXES: boxes,
            signatures.OUTPUT_BOX_SCORES: box_scores,
            signatures.OUTPUT_NUM_FACES: num_faces,
            signatures.OUTPUT_ATTRIBUTE_PROBABILITIES: probabilities,
            signatures.OUTPUT_ATTRIBUTE_SCORES: scores,
        }

    def _localize_each(self, images, decode=False):
        k, size = self.max_faces, self.face_region_size

        def one(image):
            if decode:
                image = preprocess.decode_image(image)
            return self.localize(image)

        spec = (tf.TensorSpec([k, 4], tf.float32), tf.TensorSpec([k], tf.float32),
                tf.TensorSpec([], tf.int32), tf.TensorSpec([k, size, size, 3], tf.float32))
        return tf.map_fn(one, images, fn_output_signature=spec)

    # ---------------------------------------------------------- entry points
    def call(self, images):
        """uint8 [B, H, W, 3] (one size per batch) -> the output dict."""
        images = tf.convert_to_tensor(images)
        if images.dtype != tf.uint8:
            raise TypeError(f"FaceAttributeModel takes uint8 images, got {images.dtype}")
        return self._outputs(*self._localize_each(images))

    def predict_image_bytes(self, image_bytes):
        """tf.string [B] of encoded JPEG/PNG/BMP/GIF (any sizes) -> the output dict."""
        return self._outputs(*self._localize_each(tf.convert_to_tensor(image_bytes), decode=True))

    def predict_fixed(self, images):
        """ONE letterboxed normalized float32 image [1, S, S, 3] -> the output dict (TFLite).

        Boxes are in pixels of the S x S input; a client maps them back with
        the scale `tfattr.data.preprocess.letterbox` returned (input point =
        letterbox point / scale).
        """
        images = tf.ensure_shape(tf.convert_to_tensor(images, tf.float32),
                                 [1, self.lite_input_size, self.lite_input_size, 3])
        boxes, box_scores, num_faces, crops = self.localize(images[0], lite=True)
        return self._outputs(boxes[tf.newaxis], box_scores[tf.newaxis], num_faces[tf.newaxis],
                             crops[tf.newaxis], lite=True)

    def build(self, input_shape=None):
        """Builds every sublayer by running one small image through the cascade."""
        if not self.built:
            self.built = True
            self.predict_image_bytes(tf.constant([_tiny_png()]))
            self.predict_fixed(tf.zeros([1, self.lite_input_size, self.lite_input_size, 3]))


def _tiny_png(size=64):
    return tf.io.encode_png(tf.fill([size, size, 3], tf.constant(128, tf.uint8))).numpy()
