"""TFLite for phones: convert the exported SavedModel, run it with LiteRT.

    python -m tfattr.lite --model models/tfattr/<version> --out model.tflite \\
        [--quantize none|fp16|int8] [--calibration-data DIR] [--input-size S]

converts the SavedModel's fixed-shape endpoint (`serve_fixed` in
`tfattr/export.py`: one letterboxed, normalized float32 image [1, S, S, 3];
no decode, no `map_fn`, builtin-op ANet) into a TFLite file whose ONE
signature (`LITE_SIGNATURE`, "serving_default") takes the letterboxed photo as
uint8 pixels `images` [1, S, S, 3] and returns the SavedModel's outputs under
the same names: `boxes` [1, K, 4] (pixels of the S x S input), `box_scores`
[1, K], `num_faces` [1], `attribute_probabilities` [1, K, 40],
`attribute_scores` [1, K, 40].

- Builtin ops only: the converter runs with `TFLITE_BUILTINS` (int8:
  `TFLITE_BUILTINS_INT8` first, `TFLITE_BUILTINS` only for ops without int8
  kernels) and never `SELECT_TF_OPS`; the written file is checked for
  Flex/custom ops (`assert_builtin_only`).
- Attribute names: embedded in the file's metadata (`ATTRIBUTES_METADATA`,
  read back with `read_attribute_names`) and written beside it as
  `<out>.attributes.txt` (one name a line, output order).
- Quantization: `fp16` stores weights as float16 (computes in float32 on
  CPU); `int8` makes the LNet_o / LNet_s conv stacks full-integer int8
  (post-training, calibrated on letterboxed in-the-wild photos:
  `--calibration-data`, a dataset dir in the CelebA layout whose
  `img_celeba/` train images are used, or any folder of images), gives
  ANet's (and LNet_s' box head's) FC int8 weights and keeps the rest float32;
  `int8-weights` (no calibration) gives every conv, and the box head's FC,
  int8 weights with float32 activations.

App side (see docs/lite.md and tools/lite_app_example.py):
`letterbox_for_lite(photo_uint8, S) -> (input, scale)` makes the model input
the way training letterboxes images; `boxes_to_image(boxes, scale)` maps the
output boxes back to the photo. `LiteFaceAttributeModel` wraps both around
the LiteRT interpreter.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfattr import signatures
from tfattr.attributes import ATTRIBUTE_NAMES

LITE_SIGNATURE = "serving_default"  # the TFLite file's one signature
LITE_INPUT = "images"  # uint8 [1, S, S, 3] letterboxed photo
ATTRIBUTES_METADATA = "tfattr_attribute_names"  # metadata entry: names, one a line
ATTRIBUTES_SUFFIX = ".attributes.txt"
QUANTIZE_CHOICES = ("none", "fp16", "int8", "int8-weights")
# `--quantize int8` is selective and calibrated (docs/lite.md "Quantization"):
# - the LNet_o / LNet_s conv stacks (`INT8_LNET_OPS` whose outputs are under
#   `INT8_LNET_SCOPES`) are full-integer: int8 activations, int8 weights with
#   one scale per output channel; one QUANTIZE before C1, one DEQUANTIZE after C5;
# - ANet's and LNet_s' box head's FULLY_CONNECTED (`INT8_WEIGHT_ONLY_SCOPES`,
#   `INT8_WEIGHT_ONLY_OPS`) have int8 weights and float32 activations (hybrid);
# - everything else is float32: the response-map mean, windows / integral
#   image, peaks, crop coordinates and bilinear weights, NMS, the region framer,
#   ANet's convolutions, the SVM head and the Platt sigmoid.
INT8_LNET_SCOPES = ("lnet_o_", "lnet_s_")
INT8_LNET_OPS = frozenset({"CONV_2D", "MAX_POOL_2D"})
BOX_HEAD_SCOPE = ("box_head",)  # LNet_s' box regressor (models.lnet.build_box_head)
INT8_WEIGHT_ONLY_SCOPES = ("anet_", *BOX_HEAD_SCOPE)
INT8_WEIGHT_ONLY_OPS = frozenset({"FULLY_CONNECTED"})
# `--quantize int8-weights` (no calibration): int8 weights with float32
# activations for the convolutions of every network (LNets, the region framer, ANet)
# and for the box head's FULLY_CONNECTED (most of its weights); other FC layers,
# geometry float32.
INT8_WEIGHT_SCOPES = ("face_localizer", "region_framer", "anet_", "attribute_svm_head")
WEIGHT_ONLY_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D"})
LETTERBOX_PAD = 128  # uint8 padding value: 0.0039 once normalized (preprocess pads 0.0)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")

# The SavedModel's fixed-shape (TFLite) endpoint, named by tfattr/export.py.
SAVED_MODEL_LITE_SIGNATURE = getattr(signatures, "SIGNATURE_LITE", "serve_fixed")
SAVED_MODEL_LITE_INPUT = getattr(signatures, "INPUT_LITE", signatures.INPUT_IMAGES)


# ------------------------------------------------------------------ app side
def letterbox_for_lite(image, size):
    """Letterboxes a photo into the lite model's input, as training does.

    Same geometry and resampling as `tfattr.data.preprocess.letterbox`
    (longer side resized to `size` with antialiased bilinear, placed at the
    top-left, padded), returned as uint8 pixels.

    Args:
      image: uint8 [H, W, 3] RGB photo (numpy or tensor), any size.
      size: S, the lite model's input side.

    Returns:
      (input uint8 [1, S, S, 3], scale float): a point (y, x) of the input is
      (y / scale, x / scale) in the photo. Padding is `LETTERBOX_PAD` (128).
    """
    from tfattr.data import preprocess

    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
    boxed, scale = preprocess.letterbox(tf.convert_to_tensor(image), int(size))
    pixels = np.clip(np.round((boxed.numpy() + 1.0) * 127.5), 0, 255).astype(np.uint8)
    scale = float(scale)
    h = min(int(round(image.shape[0] * scale)), size)
    w = min(int(round(image.shape[1] * scale)), size)
    pixels[h:, :] = LETTERBOX_PAD
    pixels[:, w:] = LETTERBOX_PAD
    return pixels[np.newaxis], scale


def boxes_to_image(boxes, scale, image_shape=None):
    """Maps boxes (ymin, xmin, ymax, xmax) from the lite input back to the photo.

    Args:
      boxes: float [..., 4] in pixels of the letterboxed input.
      scale: what `letterbox_for_lite` returned.
      image_shape: optional (H, W, ...) of the photo to clip the boxes to.

    Returns:
      float32 [..., 4] in photo pixels.
    """
    boxes = np.asarray(boxes, np.float32) / np.float32(scale)
    if image_shape is not None:
        h, w = float(image_shape[0]), float(image_shape[1])
        boxes = np.clip(boxes, 0.0, np.array([h, w, h, w], np.float32))
    return boxes


class LiteFaceAttributeModel:
    """A converted tfattr TFLite file in the stock LiteRT interpreter.

    Args:
      model_path: the .tflite file.
      num_threads: CPU threads (XNNPACK, the default delegate, uses them).

    `predict(photo_uint8)` letterboxes, invokes the named signature and
    returns the outputs with boxes in photo pixels and only the valid faces.
    """

    def __init__(self, model_path, num_threads=2):
        from ai_edge_litert.interpreter import Interpreter

        self.model_path = str(model_path)
        content = Path(model_path).read_bytes()
        self.interpreter = Interpreter(model_content=content, num_threads=num_threads)
        self.runner = self.interpreter.get_signature_runner(LITE_SIGNATURE)
        shape = self.runner.get_input_details()[LITE_INPUT]["shape"]
        self.input_size = int(shape[1])
        self.attribute_names = read_attribute_names(model_path, content=content)

    def run(self, lite_input):
        """Raw signature call: uint8 [1, S, S, 3] -> dict of numpy outputs."""
        return self.runner(**{LITE_INPUT: lite_input})

    def predict(self, image):
        """Photo uint8 [H, W, 3] -> dict with `faces`: a list of per-face dicts."""
        lite_input, scale = letterbox_for_lite(image, self.input_size)
        out = self.run(lite_input)
        num = int(out[signatures.OUTPUT_NUM_FACES][0])
        boxes = boxes_to_image(out[signatures.OUTPUT_BOXES][0, :num], scale, np.shape(image))
        faces = []
        for k in range(num):
            faces.append({
                "box": boxes[k].tolist(),
                "score": float(out[signatures.OUTPUT_BOX_SCORES][0, k]),
                "attribute_probabilities": dict(zip(
                    self.attribute_names,
                    out[signatures.OUTPUT_ATTRIBUTE_PROBABILITIES][0, k].tolist())),
            })
        return {"scale": scale, "num_faces": num, "faces": faces, "raw": out}


# --------------------------------------------------------------- conversion
def tflite_op_names(model_content):
    """Sorted unique op names of a TFLite flatbuffer (as the interpreter reports them)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=bytes(model_content))
    return sorted({op["op_name"] for op in interpreter._get_ops_details()})


def assert_builtin_only(model_content):
    """Raises if the model needs Flex (Select TF ops) or custom ops."""
    from tensorflow.lite.python import schema_py_generated as schema_fb

    model = schema_fb.Model.GetRootAsModel(bytearray(model_content), 0)
    bad = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema_fb.BuiltinOperator.CUSTOM or code.CustomCode():
            bad.append((code.CustomCode() or b"?").decode())
    if bad:
        raise AssertionError(f"TFLite model uses non-builtin ops (Flex/custom): {sorted(set(bad))}")
    return True


def _converter_options(converter, quantize, representative_dataset):
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.allow_custom_ops = False
    if quantize == "none":
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8-weights":
        converter.optimizations = []  # float conversion; weights quantized afterwards
    elif quantize == "int8":
        if representative_dataset is None:
            raise ValueError("int8 quantization needs a representative dataset (--calibration-data)")
        converter.representative_dataset = representative_dataset
        # int8 kernels first; float builtins for every op kept float (see int8_denylist).
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                               tf.lite.OpsSet.TFLITE_BUILTINS]
    else:
        raise ValueError(f"quantize must be one of {QUANTIZE_CHOICES}, got {quantize!r}")


def _in_scope(tensor_name, scopes):
    """True if a (possibly fused, ';'-joined) TFLite tensor name lies under a scope (any
    path component: LNet_s' box head is `face_localizer_1/box_head_1/...`)."""
    return any(component.startswith(scopes)
               for part in tensor_name.split(";") for component in part.split("/"))


def _in_lnet(tensor_name):
    """True if a TFLite tensor name lies inside LNet_o / LNet_s (any path component)."""
    return any(component.startswith(INT8_LNET_SCOPES)
               for part in tensor_name.split(";") for component in part.split("/"))


def _op_outputs(model_content):
    """[(op name, [output tensor names])] of a TFLite flatbuffer, in execution order."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=bytes(model_content))
    names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    return [(op["op_name"], [names[i] for i in op["outputs"]])
            for op in interpreter._get_ops_details()  # pylint: disable=protected-access
            if op["op_name"] != "DELEGATE"]


def _is_int8_lnet_op(op_name, outputs):
    return op_name in INT8_LNET_OPS and all(_in_lnet(n) for n in outputs)


def int8_denylist(float_content):
    """(op types, node names) to keep float in the int8 model: all but the LNet conv stacks.

    Both lists are needed: the converter matches `denylisted_nodes` against
    its own op locations, which miss some multi-output / fused names (e.g.
    TOPK_V2), so every op type other than `INT8_LNET_OPS` is denylisted by
    type too, and the ANet / localizer ops of those types by name.
    """
    ops, nodes = set(), set()
    for op_name, outputs in _op_outputs(float_content):
        if op_name in ("QUANTIZE", "DEQUANTIZE"):
            continue
        if op_name not in INT8_LNET_OPS:
            ops.add(op_name)
        if not _is_int8_lnet_op(op_name, outputs):
            nodes.update(outputs)
    return sorted(ops), sorted(nodes)


def _quantize_int8_selectively(converter):
    """Calibrated int8 LNet conv stacks, int8 ANet FC weights, everything else float32.

    Selective quantization through the public
    `tf.lite.experimental.QuantizationDebugger(converter=...,
    debug_options=QuantizationDebugOptions(denylisted_ops=...,
    denylisted_nodes=...))` + `get_nondebug_quantized_model()`: the nodes
    named by `int8_denylist` stay float32. The quantizer still wraps a few
    denylisted localizer ops (box STRIDED_SLICEs, a REDUCE_MAX) in int8
    QUANTIZE / DEQUANTIZE round trips; `restore_float` takes those out. Then
    `quantize_weights_only` gives ANet's FULLY_CONNECTED int8 weights.
    """
    float_content = _float_copy(converter)
    denylisted_ops, denylisted_nodes = int8_denylist(float_content)
    representative = converter.representative_dataset

    def debug_dataset():
        return representative()

    options = tf.lite.experimental.QuantizationDebugOptions(
        denylisted_ops=denylisted_ops, denylisted_nodes=denylisted_nodes)
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=debug_dataset, debug_options=options)
    content = restore_float(debugger.get_nondebug_quantized_model())
    return quantize_weights_only(content, scopes=INT8_WEIGHT_ONLY_SCOPES,
                                 op_names=INT8_WEIGHT_ONLY_OPS)


def restore_float(model_content):
    """Removes int8 round trips the quantizer left outside the LNet conv stacks.

    Exact for the float graph (it only removes rounding):
    - a DEQUANTIZE whose int8 input was made from a float tensor F by
      QUANTIZE ops only: its readers read F;
    - an op outside the LNets (e.g. STRIDED_SLICE) that reads such an int8
      tensor and whose int8 output is read only by DEQUANTIZE ops: it reads F
      and writes the DEQUANTIZE output (slicing commutes with quantization);
    - QUANTIZE / DEQUANTIZE ops nobody reads any more are dropped.
    Returns the new flatbuffer bytes.
    """
    from tensorflow.lite.python import schema_py_generated as schema_fb
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(model_content))
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    quantize, dequantize = schema_fb.BuiltinOperator.QUANTIZE, schema_fb.BuiltinOperator.DEQUANTIZE
    for subgraph in model.subgraphs:
        tensors = subgraph.tensors

        def name(index, tensors=tensors):
            value = tensors[index].name
            return value.decode() if isinstance(value, bytes) else value

        def readers(subgraph=subgraph):
            found = {}
            for op in subgraph.operators:
                for index in op.inputs:
                    if index >= 0:
                        found.setdefault(index, []).append(op)
            return found

        def float_source(index, producers, tensors=tensors):
            while tensors[index].type != schema_fb.TensorType.FLOAT32:
                op = producers.get(index)
                if op is None or codes[op.opcodeIndex] != quantize:
                    return None
                index = op.inputs[0]
            return index

        def rewire(readers_of, old, new):
            for op in readers_of.get(old, []):
                op.inputs = [new if i == old else i for i in op.inputs]

        changed = True
        while changed:
            changed = False
            producers = {out: op for op in subgraph.operators for out in op.outputs}
            readers_of = readers()
            for op in subgraph.operators:
                code = codes[op.opcodeIndex]
                if code == dequantize:
                    source = float_source(op.inputs[0], producers)
                    if source is not None and op.outputs[0] not in subgraph.outputs:
                        rewire(readers_of, op.outputs[0], source)
                        subgraph.operators.remove(op)
                        changed = True
                        break
                elif (code != quantize and len(op.outputs) == 1 and op.inputs[0] >= 0
                      and tensors[op.outputs[0]].type == schema_fb.TensorType.INT8
                      and not _in_lnet(name(op.outputs[0]))):
                    source = float_source(op.inputs[0], producers)
                    users = readers_of.get(op.outputs[0], [])
                    others_float = all(tensors[i].type != schema_fb.TensorType.INT8
                                       for i in op.inputs[1:] if i >= 0)
                    if (source is None or not users or not others_float
                            or any(codes[u.opcodeIndex] != dequantize for u in users)):
                        continue
                    out = users[0].outputs[0]
                    for user in users[1:]:
                        rewire(readers_of, user.outputs[0], out)
                    op.inputs = [source] + list(op.inputs[1:])
                    op.outputs = [out]
                    for user in users:
                        subgraph.operators.remove(user)
                    changed = True
                    break
            readers_of = readers()
            for op in list(subgraph.operators):
                if (codes[op.opcodeIndex] in (quantize, dequantize)
                        and op.outputs[0] not in subgraph.outputs
                        and not readers_of.get(op.outputs[0])):
                    subgraph.operators.remove(op)
                    changed = True
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def quantize_int8_weights(model_content):
    """`--quantize int8-weights` of a float flatbuffer: int8 weights (float activations)
    for every network's convolutions and for the box head's FULLY_CONNECTED layers."""
    content = quantize_weights_only(model_content, scopes=INT8_WEIGHT_SCOPES)
    return quantize_weights_only(content, scopes=BOX_HEAD_SCOPE, op_names=INT8_WEIGHT_ONLY_OPS)


def quantize_weights_only(model_content, scopes=INT8_WEIGHT_SCOPES, op_names=WEIGHT_ONLY_OPS):
    """int8 weights, float activations ("dynamic range") for the float convolutions under `scopes`.

    Each such op's constant float32 filter becomes int8, symmetric, one scale
    per output channel (zero point 0), as the converter's dynamic-range
    quantization writes it (FULLY_CONNECTED: one scale per tensor); the stock CONV_2D / DEPTHWISE_CONV_2D kernels
    then run their hybrid (float in, int8 weights, float out) path. Biases
    stay float32. Returns the new flatbuffer bytes.
    """
    from tensorflow.lite.python import schema_py_generated as schema_fb
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(model_content))
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    wanted = {getattr(schema_fb.BuiltinOperator, name) for name in op_names}
    uses = {}
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            uses[tensor.buffer] = uses.get(tensor.buffer, 0) + 1
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            if codes[op.opcodeIndex] not in wanted:
                continue
            out_name = subgraph.tensors[op.outputs[0]].name
            out_name = out_name.decode() if isinstance(out_name, bytes) else out_name
            if not _in_scope(out_name, scopes):
                continue
            filt = subgraph.tensors[op.inputs[1]]
            data = model.buffers[filt.buffer].data
            if filt.type != schema_fb.TensorType.FLOAT32 or data is None or len(data) == 0:
                continue
            weights = np.frombuffer(np.asarray(data, np.uint8).tobytes(), np.float32)
            weights = weights.reshape(filt.shape)
            code = codes[op.opcodeIndex]
            axis = 3 if code == schema_fb.BuiltinOperator.DEPTHWISE_CONV_2D else 0
            moved = np.moveaxis(weights, axis, 0).reshape(weights.shape[axis], -1)
            scale = np.maximum(np.abs(moved).max(axis=1), 1e-12) / 127.0
            if code == schema_fb.BuiltinOperator.FULLY_CONNECTED:
                # The hybrid FULLY_CONNECTED kernel reads ONE filter scale
                # (per-channel scales gave wrong results): per-tensor.
                scale = np.full_like(scale, scale.max())[:1]
            shape = [1] * weights.ndim
            shape[axis] = -1
            quantized = np.clip(np.round(weights / scale.reshape(shape)), -127, 127).astype(np.int8)
            buffer = schema_fb.BufferT()
            buffer.data = np.frombuffer(quantized.tobytes(), np.uint8)
            if uses.get(filt.buffer, 0) == 1:
                model.buffers[filt.buffer] = buffer
            else:
                model.buffers.append(buffer)
                filt.buffer = len(model.buffers) - 1
            filt.type = schema_fb.TensorType.INT8
            params = schema_fb.QuantizationParametersT()
            params.scale = scale.astype(np.float32).tolist()
            params.zeroPoint = [0] * len(params.scale)
            params.quantizedDimension = axis
            filt.quantization = params
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _float_copy(converter):
    """The float32 conversion of the converter's model (to list its op types)."""
    saved = (converter.optimizations, converter.representative_dataset,
             list(converter.target_spec.supported_ops))
    converter.optimizations = []
    converter.representative_dataset = None
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    try:
        return converter.convert()
    finally:
        (converter.optimizations, converter.representative_dataset,
         converter.target_spec.supported_ops) = saved[0], saved[1], saved[2]


def convert_function(function, trackable=None, quantize="none", representative_dataset=None,
                     signature_key=LITE_SIGNATURE):
    """Converts a `tf.function` (with an input_signature) to TFLite, builtin ops only.

    The function is saved as a SavedModel signature first, so the TFLite file
    keeps the signature key and the input/output names. `trackable` holds the
    variables the function captures (e.g. a loaded SavedModel or a Keras
    model). Returns the flatbuffer bytes, checked by `assert_builtin_only`.
    """
    module = tf.Module()
    module.deps = trackable
    module.serve = function
    with tempfile.TemporaryDirectory(prefix="tfattr-lite-") as tmp:
        tf.saved_model.save(module, tmp, signatures={signature_key: function})
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=[signature_key])
        _converter_options(converter, quantize, representative_dataset)
        if quantize == "int8-weights":
            content = quantize_int8_weights(converter.convert())
        elif quantize == "int8":
            content = _quantize_int8_selectively(converter)
        else:
            content = converter.convert()
    assert_builtin_only(content)
    return content


def _fixed_endpoint(loaded):
    try:
        fn = loaded.signatures[SAVED_MODEL_LITE_SIGNATURE]
    except KeyError:
        raise ValueError(
            f"the SavedModel has no fixed-shape endpoint {SAVED_MODEL_LITE_SIGNATURE!r} "
            f"(signatures: {sorted(loaded.signatures)}); re-export it with tfattr.export") from None
    spec = fn.structured_input_signature[1]
    if len(spec) != 1:
        raise ValueError(f"{SAVED_MODEL_LITE_SIGNATURE!r} should take one input, got {spec}")
    (input_name, input_spec), = spec.items()
    shape = input_spec.shape.as_list()
    if len(shape) != 4 or shape[0] != 1 or shape[1] != shape[2] or shape[1] is None:
        raise ValueError(f"{SAVED_MODEL_LITE_SIGNATURE!r} input must be [1, S, S, 3], got {shape}")
    return fn, input_name, int(shape[1])


class _LiteModule(tf.Module):
    """uint8 letterboxed photo -> the fixed-shape endpoint of a loaded SavedModel."""

    def __init__(self, loaded, endpoint, input_name, size):
        super().__init__()
        self.loaded = loaded  # keeps the variables tracked
        self._endpoint = endpoint
        self._input_name = input_name

        @tf.function(input_signature=[tf.TensorSpec([1, size, size, 3], tf.uint8, name=LITE_INPUT)])
        def serve(images):
            normalized = tf.cast(images, tf.float32) / 127.5 - 1.0  # preprocess.normalize
            out = self._endpoint(**{self._input_name: normalized})
            return {key: out[key] for key in signatures.OUTPUT_KEYS}

        self.serve = serve


def saved_model_input_size(model_dir):
    """S of the SavedModel's fixed-shape endpoint."""
    return _fixed_endpoint(tf.saved_model.load(str(model_dir)))[2]


def convert_saved_model(model_dir, quantize="none", representative_images=None, input_size=None):
    """SavedModel dir -> TFLite bytes (builtin ops only, uint8 input, same output names).

    Args:
      model_dir: `<base>/<version>/` written by `tfattr.export`.
      quantize: "none" (float32), "fp16", "int8" (calibrated) or "int8-weights".
      representative_images: for int8, an iterable (re-iterable) of uint8
        [1, S, S, 3] letterboxed photos (see `representative_dataset_from_dir`).
      input_size: S; must equal the exported endpoint's (None = that one).
    """
    loaded = tf.saved_model.load(str(model_dir))
    endpoint, input_name, size = _fixed_endpoint(loaded)
    if input_size is not None and int(input_size) != size:
        raise ValueError(
            f"the SavedModel's fixed-shape endpoint takes {size}x{size} images, "
            f"--input-size is {input_size}: re-export with that lite input size "
            f"(tfattr.export) or omit --input-size")
    module = _LiteModule(loaded, endpoint, input_name, size)
    representative_dataset = None
    if quantize == "int8":
        if representative_images is None:
            raise ValueError("int8 quantization needs representative images (--calibration-data)")

        def representative_dataset():
            for image in representative_images:
                yield {LITE_INPUT: np.asarray(image, np.uint8)}

    content = convert_function(module.serve, trackable=module, quantize=quantize,
                               representative_dataset=representative_dataset)
    return add_attribute_metadata(content)


# ------------------------------------------------------------ calibration
def list_calibration_images(data_dir, limit=200, seed=0):
    """Photos for int8 calibration: the train split's in-the-wild images of a dataset dir.

    A dataset dir in the CelebA layout (`list_eval_partition.txt` +
    `img_celeba/`) gives its train-partition in-the-wild photos (what LNet
    is trained on); otherwise every image file under `data_dir`. A seeded
    sample of at most `limit`.
    """
    data_dir = Path(data_dir)
    paths = []
    if (data_dir / "list_eval_partition.txt").exists() and (data_dir / "img_celeba").is_dir():
        for line in (data_dir / "list_eval_partition.txt").read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == "0" and (data_dir / "img_celeba" / parts[0]).exists():
                paths.append(data_dir / "img_celeba" / parts[0])
    if not paths:
        paths = sorted(p for p in data_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise FileNotFoundError(f"no calibration images under {data_dir}")
    rng = np.random.default_rng(seed)
    if len(paths) > limit:
        paths = [paths[i] for i in sorted(rng.choice(len(paths), limit, replace=False))]
    return paths


def representative_images_from_dir(data_dir, size, limit=200, seed=0):
    """A list of letterboxed uint8 [1, S, S, 3] calibration inputs from `data_dir`."""
    from tfattr.data import preprocess

    images = []
    for path in list_calibration_images(data_dir, limit=limit, seed=seed):
        image = preprocess.decode_image(tf.io.read_file(str(path))).numpy()
        images.append(letterbox_for_lite(image, size)[0])
    return images


# ---------------------------------------------------------------- metadata
def add_attribute_metadata(model_content, names=ATTRIBUTE_NAMES):
    """Returns `model_content` with the attribute names in a metadata entry."""
    from tensorflow.lite.python import schema_py_generated as schema_fb
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(model_content))
    buffer = schema_fb.BufferT()
    buffer.data = np.frombuffer(("\n".join(names) + "\n").encode(), np.uint8)
    model.buffers.append(buffer)
    metadata = schema_fb.MetadataT()
    metadata.name = ATTRIBUTES_METADATA
    metadata.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != ATTRIBUTES_METADATA.encode()]
    model.metadata.append(metadata)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def read_attribute_names(model_path=None, content=None):
    """The attribute names embedded in a tfattr TFLite file (or its companion .txt)."""
    from tensorflow.lite.python import schema_py_generated as schema_fb

    if content is None:
        content = Path(model_path).read_bytes()
    model = schema_fb.Model.GetRootAsModel(bytearray(content), 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name().decode() == ATTRIBUTES_METADATA:
            data = model.Buffers(entry.Buffer()).DataAsNumpy()
            return tuple(bytes(data).decode().split())
    if model_path is not None:
        companion = Path(str(model_path) + ATTRIBUTES_SUFFIX)
        if companion.exists():
            return tuple(companion.read_text().split())
    raise ValueError("no attribute names in the TFLite file and no companion .attributes.txt")


def write_lite_model(content, out_path, names=ATTRIBUTE_NAMES):
    """Writes the .tflite and its `<out>.attributes.txt`; returns both paths."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(content)
    names_path = Path(str(out_path) + ATTRIBUTES_SUFFIX)
    names_path.write_text("\n".join(names) + "\n")
    return out_path, names_path


# --------------------------------------------------------------------- CLI
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tfattr.lite",
                                     description="Convert an exported tfattr SavedModel to TFLite.")
    parser.add_argument("--model", required=True, help="the SavedModel version dir (<base>/<version>)")
    parser.add_argument("--out", required=True, help="the .tflite file to write")
    parser.add_argument("--quantize", choices=QUANTIZE_CHOICES, default="none")
    parser.add_argument("--calibration-data", default=None,
                        help="int8: dataset dir (CelebA layout) or folder of photos")
    parser.add_argument("--calibration-images", type=int, default=200,
                        help="int8: how many calibration photos to use")
    parser.add_argument("--input-size", type=int, default=None,
                        help="S of the uint8 [1,S,S,3] input (default: the exported endpoint's)")
    args = parser.parse_args(argv)

    size = args.input_size or saved_model_input_size(args.model)
    representative = None
    if args.quantize == "int8":
        if not args.calibration_data:
            parser.error("--quantize int8 needs --calibration-data")
        representative = representative_images_from_dir(args.calibration_data, size,
                                                         limit=args.calibration_images)
    content = convert_saved_model(args.model, quantize=args.quantize,
                                  representative_images=representative, input_size=args.input_size)
    out, names = write_lite_model(content, args.out)
    ops = tflite_op_names(content)
    print(json.dumps({"tflite": str(out), "attributes": str(names), "bytes": len(content),
                      "quantize": args.quantize, "input": [1, size, size, 3],
                      "signature": LITE_SIGNATURE, "outputs": list(signatures.OUTPUT_KEYS),
                      "ops": ops}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
