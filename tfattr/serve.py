"""A TensorFlow-Serving-compatible gRPC server for the exported SavedModel.

    python -m tfattr.serve --model_base_path models/tfattr --model_name tfattr \
        --port 8500 [--host 127.0.0.1] [--enable_batching] \
        [--batching_parameters_file serving/batching_parameters.txt] \
        [--file_system_poll_wait_seconds 1] [--max_message_size_bytes N] \
        [--max_image_pixels N]

Production runs the official `tensorflow_model_server` (see serving/); this
server speaks the same gRPC API from the `tensorflow-serving-api` protos so
that our client, tests, demo and benchmarks run where that binary is not
available, and the two are interchangeable for `tfattr.client`:

- `PredictionService.Predict`, `PredictionService.GetModelMetadata`
  (`signature_def` as an Any-packed SignatureDefMap), `ModelService.GetModelStatus`;
- serves the highest numeric version under the base path (names that are not
  all digits, e.g. `.tmp-3-x` or `tmp3`, are ignored, and so is a folder without
  `saved_model.pb`), polls for new versions, loads and warms a new version up
  (`assets.extra/tf_serving_warmup_requests`) in the background and swaps it in
  atomically: requests in flight finish on the version they started on, the
  old version is unloaded once they are done;
- server-side batching with TF Serving's `BatchingParameters` text proto;
- status codes as TF Serving gives them: NOT_FOUND for an unknown model or
  version, FAILED_PRECONDITION for an unknown signature name (TF Serving's
  `Serving signature key "x" not found.`), INVALID_ARGUMENT for bad inputs,
  UNAVAILABLE when the batch queue is full, RESOURCE_EXHAUSTED for a message
  over --max_message_size_bytes (grpc).

Beyond TF Serving (defence in depth, the model graph is not trusted to do it):
every string input is checked to be a JPEG/PNG/GIF/BMP/WebP whose header
parses and whose width*height is at most --max_image_pixels, BEFORE any
decoding; uint8 image batches are checked likewise. JPEG XL (which
tf.io.decode_image also accepts) is refused: its header is not cheap to parse.

Logs go to stderr; one line per version load/unload. Once listening it logs
`serving model <name> on <host>:<port>` (the real port when --port 0).
"""

import argparse
import collections
import concurrent.futures
import gc
import logging
import os
import re
import signal
import struct
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from tfattr import signatures as sig

LOG = logging.getLogger("tfattr.serve")

DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000   # == tfattr.data.preprocess.MAX_IMAGE_PIXELS
MAX_WARMUP_RECORDS = 1000               # TF Serving's limit
VERSION_DIR = re.compile(r"^[0-9]+$")


# --------------------------------------------------------------------------
# TF Serving config protos that the tensorflow-serving-api wheel does not ship
# --------------------------------------------------------------------------

def _declare_messages(file_name, package, messages, dependencies=()):
    """Builds message classes from a field list, in a private descriptor pool.

    `messages` maps a message name to [(field name, number, type, label,
    type_name)]. Used for the TF Serving config protos missing from the pip
    wheel (see `batching_parameters_class`).
    """
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    pool = descriptor_pool.DescriptorPool()
    for dep in dependencies:
        dep_proto = descriptor_pb2.FileDescriptorProto()
        dep.CopyToProto(dep_proto)
        pool.Add(dep_proto)
    file_proto = descriptor_pb2.FileDescriptorProto(
        name=file_name, package=package, syntax="proto3",
        dependency=[d.name for d in dependencies])
    for name, fields in messages.items():
        msg = file_proto.message_type.add(name=name)
        for field_name, number, ftype, label, type_name in fields:
            field = msg.field.add(name=field_name, number=number, type=ftype, label=label)
            if type_name:
                field.type_name = type_name
    pool.Add(file_proto)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.{name}"))
            for name in messages}


def batching_parameters_class():
    """`tensorflow.serving.BatchingParameters` (session_bundle_config.proto).

    The real generated module is used when installed; the tensorflow-serving-api
    2.21 wheel ships only apis/ and parts of config/, so otherwise the message is
    declared here with the upstream field names, numbers and types (fields 1-7),
    which is all the text format needs.
    """
    try:
        from tensorflow_serving.servables.tensorflow import session_bundle_config_pb2
        return session_bundle_config_pb2.BatchingParameters
    except ImportError:
        pass
    from google.protobuf import descriptor_pb2, wrappers_pb2

    fdp = descriptor_pb2.FieldDescriptorProto
    opt, rep = fdp.LABEL_OPTIONAL, fdp.LABEL_REPEATED
    i64 = (fdp.TYPE_MESSAGE, ".google.protobuf.Int64Value")
    return _declare_messages(
        "tfattr/session_bundle_config_subset.proto", "tensorflow.serving",
        {"BatchingParameters": [
            ("max_batch_size", 1, i64[0], opt, i64[1]),
            ("batch_timeout_micros", 2, i64[0], opt, i64[1]),
            ("max_enqueued_batches", 3, i64[0], opt, i64[1]),
            ("num_batch_threads", 4, i64[0], opt, i64[1]),
            ("thread_pool_name", 5, fdp.TYPE_MESSAGE, opt, ".google.protobuf.StringValue"),
            ("allowed_batch_sizes", 6, fdp.TYPE_INT64, rep, None),
            ("pad_variable_length_inputs", 7, fdp.TYPE_BOOL, opt, None),
        ]},
        dependencies=(wrappers_pb2.DESCRIPTOR,))["BatchingParameters"]


def monitoring_config_class():
    """`tensorflow.serving.MonitoringConfig` (config/monitoring_config.proto).

    Real module if installed, else declared here field for field (not in the wheel).
    """
    try:
        from tensorflow_serving.config import monitoring_config_pb2
        return monitoring_config_pb2.MonitoringConfig
    except ImportError:
        pass
    from google.protobuf import descriptor_pb2

    fdp = descriptor_pb2.FieldDescriptorProto
    opt = fdp.LABEL_OPTIONAL
    return _declare_messages(
        "tfattr/monitoring_config.proto", "tensorflow.serving",
        {"PrometheusConfig": [("enable", 1, fdp.TYPE_BOOL, opt, None),
                              ("path", 2, fdp.TYPE_STRING, opt, None)],
         "MonitoringConfig": [("prometheus_config", 1, fdp.TYPE_MESSAGE, opt,
                               ".tensorflow.serving.PrometheusConfig")]},
    )["MonitoringConfig"]


def parse_text_proto(path, message_class):
    """Parses a text-format proto file (as tensorflow_model_server reads its config files)."""
    from google.protobuf import text_format

    return text_format.Parse(Path(path).read_text(), message_class())


class BatchConfig:
    """Effective batching options; absent fields take TF Serving's scheduler defaults."""

    def __init__(self, max_batch_size=1000, batch_timeout_micros=0, num_batch_threads=None,
                 max_enqueued_batches=10):
        self.max_batch_size = int(max_batch_size)
        self.batch_timeout_micros = int(batch_timeout_micros)
        self.num_batch_threads = int(num_batch_threads or os.cpu_count() or 1)
        self.max_enqueued_batches = int(max_enqueued_batches)
        for name in ("max_batch_size", "num_batch_threads", "max_enqueued_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_timeout_micros < 0:
            raise ValueError(f"batch_timeout_micros must be >= 0, got {self.batch_timeout_micros}")

    @classmethod
    def from_proto(cls, params):
        kwargs = {}
        for name in ("max_batch_size", "batch_timeout_micros", "num_batch_threads",
                     "max_enqueued_batches"):
            if params.HasField(name):
                kwargs[name] = getattr(params, name).value
        return cls(**kwargs)

    @classmethod
    def from_file(cls, path):
        return cls.from_proto(parse_text_proto(path, batching_parameters_class()))

    def __repr__(self):
        return (f"BatchConfig(max_batch_size={self.max_batch_size}, "
                f"batch_timeout_micros={self.batch_timeout_micros}, "
                f"num_batch_threads={self.num_batch_threads}, "
                f"max_enqueued_batches={self.max_enqueued_batches})")


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------

class ServingError(Exception):
    """An error answered to the client with a gRPC status code."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def _status_of(exc):
    """Maps any exception to (grpc.StatusCode, message); never raises."""
    if isinstance(exc, ServingError):
        return exc.code, exc.message
    try:
        import tensorflow as tf

        if isinstance(exc, tf.errors.OpError):
            by_value = {c.value[0]: c for c in grpc.StatusCode}
            code = by_value.get(int(exc.error_code), grpc.StatusCode.INTERNAL)
            return code, clean_tf_message(exc.message)
    except Exception:  # pragma: no cover - tensorflow import failure
        pass
    return grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"


def clean_tf_message(message):
    """The informative part of a TF runtime error (drops graph/stack-trace boilerplate)."""
    keep = []
    for line in str(message).splitlines():
        text = line.strip()
        if not text or text.startswith("[[") or text == "Graph execution error:" \
                or text.startswith("Detected at node") or text == "<stack traces unavailable>":
            continue
        keep.append(re.sub(r"\s*\[Op:[^\]]*\]$", "", text))
    return " ".join(keep) or str(message).strip()


def _invalid(message):
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


# --------------------------------------------------------------------------
# Image header checks (before any decoding)
# --------------------------------------------------------------------------

_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data):
    i, n = 2, len(data)
    while i < n:
        if data[i] != 0xFF:
            raise ValueError(f"corrupt JPEG header (expected a marker at byte {i})")
        while i < n and data[i] == 0xFF:   # fill bytes
            i += 1
        if i >= n:
            break
        marker = data[i]
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:    # standalone markers
            i += 1
            continue
        if marker in (0xD9, 0xDA):
            raise ValueError("JPEG has no frame header before its scan data")
        if i + 3 > n:
            break
        (length,) = struct.unpack(">H", data[i + 1:i + 3])
        if length < 2:
            raise ValueError("corrupt JPEG segment length")
        if marker in _JPEG_SOF:
            if i + 8 > n:
                break
            height, width = struct.unpack(">HH", data[i + 4:i + 8])
            return width, height
        i += 1 + length
    raise ValueError("truncated JPEG header (no frame header found)")


def _webp_size(data):
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30:
        if data[23:26] != b"\x9d\x01\x2a":
            raise ValueError("corrupt WebP (VP8) header")
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25:
        if data[20] != 0x2F:
            raise ValueError("corrupt WebP (VP8L) header")
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        return (int.from_bytes(data[24:27], "little") + 1,
                int.from_bytes(data[27:30], "little") + 1)
    raise ValueError("truncated or unsupported WebP header")


def image_header_size(data):
    """(format, width, height) from an encoded image's header, without decoding.

    Accepts what tf.io.decode_image decodes except JPEG XL: JPEG, PNG, GIF, BMP,
    WebP. Raises ValueError with a readable reason for anything else.
    """
    if len(data) == 0:
        raise ValueError("empty image (0 bytes)")
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ValueError("truncated PNG header (no IHDR chunk)")
        width, height = struct.unpack(">II", data[16:24])
        fmt = "PNG"
    elif data[:3] == b"\xff\xd8\xff":
        width, height = _jpeg_size(data)
        fmt = "JPEG"
    elif data[:6] in (b"GIF87a", b"GIF89a"):
        if len(data) < 10:
            raise ValueError("truncated GIF header")
        width, height = struct.unpack("<HH", data[6:10])
        fmt = "GIF"
    elif data[:2] == b"BM":
        if len(data) < 26:
            raise ValueError("truncated BMP header")
        (dib_size,) = struct.unpack("<I", data[14:18])
        if dib_size == 12:
            width, height = struct.unpack("<HH", data[18:22])
        else:
            width, height = struct.unpack("<ii", data[18:26])
        width, height = abs(width), abs(height)
        fmt = "BMP"
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        width, height = _webp_size(data)
        fmt = "WebP"
    else:
        raise ValueError(f"unknown image format (first bytes {bytes(data[:8])!r}); "
                         "JPEG, PNG, GIF, BMP or WebP required")
    if width <= 0 or height <= 0:
        raise ValueError(f"{fmt} header claims an empty image ({width}x{height})")
    return fmt, width, height


def check_image_bytes(data, max_pixels, index=0):
    """Raises ServingError(INVALID_ARGUMENT) unless `data` is a decodable-looking, small-enough image."""
    try:
        fmt, width, height = image_header_size(data)
    except ValueError as exc:
        raise _invalid(f"image {index}: {exc}") from None
    if width * height > max_pixels:
        raise _invalid(f"image {index}: {fmt} header claims {width}x{height} = {width * height} "
                       f"pixels, more than the limit of {max_pixels} (--max_image_pixels)")


# --------------------------------------------------------------------------
# TensorProto <-> numpy (fast paths; tf.make_ndarray / make_tensor_proto otherwise)
# --------------------------------------------------------------------------

_NUMERIC = {  # DataType enum -> (numpy dtype, TensorProto value field)
    1: (np.float32, "float_val"), 2: (np.float64, "double_val"), 3: (np.int32, "int_val"),
    4: (np.uint8, "int_val"), 5: (np.int16, "int_val"), 6: (np.int8, "int_val"),
    9: (np.int64, "int64_val"), 10: (np.bool_, "bool_val"), 17: (np.uint16, "int_val"),
    22: (np.uint32, "uint32_val"), 23: (np.uint64, "uint64_val"),
}
DT_STRING = 7
_DTYPE_NAMES = {1: "float", 2: "double", 3: "int32", 4: "uint8", 5: "int16", 6: "int8",
                7: "string", 9: "int64", 10: "bool", 17: "uint16", 19: "half", 22: "uint32",
                23: "uint64"}


def _dtype_name(enum):
    return _DTYPE_NAMES.get(enum, f"DataType({enum})")


def tensor_proto_to_ndarray(proto, max_bytes):
    """A request TensorProto -> numpy, refusing inconsistent or oversized declarations."""
    if proto.tensor_shape.unknown_rank:
        raise _invalid("input tensor has unknown rank")
    shape = tuple(int(d.size) for d in proto.tensor_shape.dim)
    if any(s < 0 for s in shape):
        raise _invalid(f"input tensor has a negative dimension {list(shape)}")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if proto.dtype == DT_STRING:
        values = proto.string_val
        if len(values) != count:
            raise _invalid(f"string tensor of shape {list(shape)} holds {len(values)} values")
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    if proto.dtype in _NUMERIC:
        np_dtype, field = _NUMERIC[proto.dtype]
        itemsize = np.dtype(np_dtype).itemsize
        if count * itemsize > max_bytes:
            raise _invalid(f"input tensor of shape {list(shape)} is larger than {max_bytes} bytes")
        if proto.tensor_content:
            if len(proto.tensor_content) != count * itemsize:
                raise _invalid(f"tensor_content has {len(proto.tensor_content)} bytes, "
                               f"shape {list(shape)} needs {count * itemsize}")
            return np.frombuffer(proto.tensor_content, dtype=np.dtype(np_dtype).newbyteorder("<")
                                 ).astype(np_dtype, copy=False).reshape(shape)
        values = getattr(proto, field)
        if len(values) == count:
            return np.asarray(values, dtype=np_dtype).reshape(shape)
        if len(values) == 1:   # TF's fill semantics: one value for the whole tensor
            return np.full(shape, values[0], dtype=np_dtype)
        raise _invalid(f"tensor of shape {list(shape)} holds {len(values)} values")
    # Rare dtypes: let TF parse after the size check above could not run.
    import tensorflow as tf

    if count > max_bytes:
        raise _invalid(f"input tensor of shape {list(shape)} is too large")
    try:
        return tf.make_ndarray(proto)
    except Exception as exc:
        raise _invalid(f"cannot parse input tensor: {exc}") from None


def ndarray_to_tensor_proto(array):
    """numpy -> TensorProto (tensor_content for numbers, string_val for bytes)."""
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2

    array = np.asarray(array)
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(s)) for s in array.shape])
    if array.dtype == object or array.dtype.kind in ("S", "U"):
        proto = tensor_pb2.TensorProto(dtype=DT_STRING, tensor_shape=shape)
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode()
                                for v in array.ravel().tolist())
        return proto
    for enum, (np_dtype, _) in _NUMERIC.items():
        if array.dtype == np_dtype:
            content = np.ascontiguousarray(array, dtype=np.dtype(np_dtype).newbyteorder("<"))
            return tensor_pb2.TensorProto(dtype=enum, tensor_shape=shape,
                                          tensor_content=content.tobytes())
    import tensorflow as tf

    return tf.make_tensor_proto(array)


# --------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------

class _Task:
    __slots__ = ("inputs", "size", "key", "enqueued", "done", "result", "error")

    def __init__(self, inputs, size, key):
        self.inputs, self.size, self.key = inputs, size, key
        self.enqueued = time.monotonic()
        self.done = threading.Event()
        self.result = None
        self.error = None


class Batcher:
    """Merges concurrent requests into one model call (TF Serving's BasicBatchScheduler semantics).

    A batch is formed when `max_batch_size` examples are queued or the oldest
    queued task has waited `batch_timeout_micros`, whichever comes first, on
    one of `num_batch_threads` threads. Only tasks whose inputs have the same
    dtypes and non-batch shapes are merged. A full queue (more than
    `max_enqueued_batches * max_batch_size` examples waiting) answers
    UNAVAILABLE; a single request larger than `max_batch_size` answers
    INVALID_ARGUMENT (both as TF Serving). If a merged batch fails with
    INVALID_ARGUMENT (e.g. one undecodable image), its tasks are re-run one by
    one so only the offending request gets the error.
    """

    def __init__(self, run_fn, config, name="batcher"):
        self.run_fn = run_fn
        self.config = config
        self.name = name
        self._cond = threading.Condition()
        self._queue = collections.deque()
        self._queued = 0
        self._capacity = config.max_enqueued_batches * config.max_batch_size
        self._closed = False
        self.num_batches = 0
        self.batch_sizes = collections.Counter()
        self._threads = [threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True)
                         for i in range(config.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, inputs, size):
        if size > self.config.max_batch_size:
            raise _invalid(f"Task size {size} is larger than maximum input batch size "
                           f"{self.config.max_batch_size}")
        key = tuple(sorted((k, v.dtype.str, v.shape[1:]) for k, v in inputs.items()))
        task = _Task(inputs, size, key)
        with self._cond:
            if self._closed:
                raise ServingError(grpc.StatusCode.UNAVAILABLE, "model version is being unloaded")
            if self._queued + size > self._capacity:
                raise ServingError(grpc.StatusCode.UNAVAILABLE,
                                   "The batch scheduling queue to which this task was submitted "
                                   "is full")
            self._queue.append(task)
            self._queued += size
            self._cond.notify()
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.result

    def close(self):
        """Stops the batch threads once the queue is drained."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)

    def _select(self, first):
        chosen, total = [], 0
        for task in self._queue:
            if task.key == first.key and total + task.size <= self.config.max_batch_size:
                chosen.append(task)
                total += task.size
                if total == self.config.max_batch_size:
                    break
        return chosen, total

    def _next_batch(self):
        timeout = self.config.batch_timeout_micros / 1e6
        with self._cond:
            while True:
                if not self._queue:
                    if self._closed:
                        return None
                    self._cond.wait()
                    continue
                first = self._queue[0]
                chosen, total = self._select(first)
                remaining = first.enqueued + timeout - time.monotonic()
                if total >= self.config.max_batch_size or remaining <= 0 or self._closed:
                    ids = {id(t) for t in chosen}
                    self._queue = collections.deque(t for t in self._queue if id(t) not in ids)
                    self._queued -= total
                    if self._queue:
                        self._cond.notify()
                    return chosen
                self._cond.wait(remaining)

    def _loop(self):
        while True:
            tasks = self._next_batch()
            if tasks is None:
                return
            self._run(tasks)

    def _run(self, tasks):
        self.num_batches += 1
        self.batch_sizes[sum(t.size for t in tasks)] += 1
        try:
            if len(tasks) == 1:
                merged = tasks[0].inputs
            else:
                merged = {k: np.concatenate([t.inputs[k] for t in tasks]) for k in tasks[0].inputs}
            outputs = self.run_fn(merged)
            total = sum(t.size for t in tasks)
            for key, value in outputs.items():
                if value.ndim == 0 or value.shape[0] != total:
                    raise ServingError(grpc.StatusCode.INTERNAL,
                                       f"output {key!r} has shape {value.shape}, "
                                       f"expected batch size {total} first")
            start = 0
            for task in tasks:
                task.result = {k: v[start:start + task.size] for k, v in outputs.items()}
                start += task.size
        except Exception as exc:  # noqa: BLE001 - every error goes back to its request
            code, _ = _status_of(exc)
            if len(tasks) > 1 and code == grpc.StatusCode.INVALID_ARGUMENT:
                for task in tasks:
                    self._run([task])
                return
            for task in tasks:
                task.error = exc
        finally:
            for task in tasks:
                if task.result is None and task.error is None:
                    task.error = ServingError(grpc.StatusCode.INTERNAL, "batch was not run")
                task.done.set()


# --------------------------------------------------------------------------
# A loaded version
# --------------------------------------------------------------------------

def read_signature_defs(version_dir):
    """{name: SignatureDef} of the `serve` MetaGraph of a SavedModel (the proto TF Serving reports)."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((Path(version_dir) / "saved_model.pb").read_bytes())
    meta_graphs = list(saved_model.meta_graphs)
    if not meta_graphs:
        raise ValueError(f"{version_dir}/saved_model.pb has no MetaGraph")
    chosen = next((m for m in meta_graphs if "serve" in m.meta_info_def.tags), meta_graphs[0])
    return dict(chosen.signature_def)


class Servable:
    """One loaded model version: the SavedModel, its signature defs, its batchers."""

    def __init__(self, model_name, version, path, batch_config=None,
                 max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS,
                 max_tensor_bytes=DEFAULT_MAX_MESSAGE_SIZE):
        import tensorflow as tf

        self.model_name = model_name
        self.version = int(version)
        self.path = Path(path)
        self.batch_config = batch_config
        self.max_image_pixels = int(max_image_pixels)
        self.max_tensor_bytes = int(max_tensor_bytes)
        self.signature_defs = read_signature_defs(self.path)
        self._loaded = tf.saved_model.load(str(self.path))
        self._functions = dict(self._loaded.signatures)
        self._batchers = {}
        self._lock = threading.Lock()
        self._refs = 0
        self._refs_cond = threading.Condition()
        self.model_calls = 0

    # -- reference counting so an unload waits for requests in flight --------
    def acquire(self):
        with self._refs_cond:
            self._refs += 1

    def release(self):
        with self._refs_cond:
            self._refs -= 1
            self._refs_cond.notify_all()

    def unload(self):
        with self._refs_cond:
            while self._refs > 0:
                self._refs_cond.wait()
        with self._lock:
            batchers, self._batchers = list(self._batchers.values()), {}
        for batcher in batchers:
            batcher.close()
        self._functions = {}
        self._loaded = None

    # -- running --------------------------------------------------------------
    def _run(self, signature_name, inputs):
        import tensorflow as tf

        fn = self._functions[signature_name]
        with self._lock:
            self.model_calls += 1
        outputs = fn(**{k: tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in outputs.items()}

    def _batcher(self, signature_name):
        with self._lock:
            batcher = self._batchers.get(signature_name)
            if batcher is None:
                batcher = Batcher(lambda inputs: self._run(signature_name, inputs),
                                  self.batch_config,
                                  name=f"batch-{self.model_name}-{self.version}-{signature_name}")
                self._batchers[signature_name] = batcher
            return batcher

    def batch_stats(self):
        """{signature: (number of model calls, Counter of batch sizes)} of the batchers."""
        with self._lock:
            return {k: (b.num_batches, collections.Counter(b.batch_sizes))
                    for k, b in self._batchers.items()}

    def predict(self, request, use_batching=True):
        """PredictRequest -> PredictResponse; raises ServingError/TF errors."""
        from tensorflow_serving.apis import predict_pb2

        signature_name = request.model_spec.signature_name or sig.SIGNATURE_BYTES
        signature = self.signature_defs.get(signature_name)
        if signature is None or signature_name not in self._functions:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                               f'Serving signature key "{signature_name}" not found.')
        inputs, batch = self._validate_inputs(signature_name, signature, request)
        aliases = list(request.output_filter)
        for alias in aliases:
            if alias not in signature.outputs:
                raise _invalid(f"output tensor alias not found in signature: {alias} Outputs "
                               f"expected to be in the set {{{','.join(sorted(signature.outputs))}}}.")
        if len(set(aliases)) != len(aliases):
            raise _invalid(f"duplicate output tensor alias in {aliases}")
        if use_batching and self.batch_config is not None:
            outputs = self._batcher(signature_name).submit(inputs, batch)
        else:
            outputs = self._run(signature_name, inputs)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = self.model_name
        response.model_spec.version.value = self.version
        response.model_spec.signature_name = signature_name
        for alias in aliases or sorted(outputs):
            response.outputs[alias].CopyFrom(ndarray_to_tensor_proto(outputs[alias]))
        return response

    def _validate_inputs(self, signature_name, signature, request):
        expected, sent = set(signature.inputs), set(request.inputs)
        if expected != sent:
            raise _invalid(
                f"input size does not match signature: {len(sent)}!={len(expected)} "
                f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
                f"Sent extra: {{{','.join(sorted(sent - expected))}}}. "
                f"Missing but required: {{{','.join(sorted(expected - sent))}}}.")
        inputs, batch = {}, None
        for name in sorted(expected):
            info, proto = signature.inputs[name], request.inputs[name]
            if proto.dtype != info.dtype:
                raise _invalid(f"Expects arg[{name}] to be {_dtype_name(info.dtype)} but "
                               f"{_dtype_name(proto.dtype)} is provided")
            array = tensor_proto_to_ndarray(proto, self.max_tensor_bytes)
            if not info.tensor_shape.unknown_rank:
                want = [d.size for d in info.tensor_shape.dim]
                if array.ndim != len(want):
                    raise _invalid(f"input {name!r} of signature {signature_name!r} must have rank "
                                   f"{len(want)} (shape {want}, -1 = any), got shape "
                                   f"{list(array.shape)}")
                for axis, (got, need) in enumerate(zip(array.shape, want)):
                    if need >= 0 and got != need:
                        raise _invalid(f"input {name!r} dimension {axis} must be {need}, "
                                       f"got shape {list(array.shape)}")
            if array.ndim == 0:
                raise _invalid(f"input {name!r} must have a batch dimension, got a scalar")
            if array.shape[0] == 0:
                raise _invalid(f"input {name!r} is an empty batch (shape {list(array.shape)})")
            if batch is not None and array.shape[0] != batch:
                raise _invalid(f"inputs have different batch sizes ({batch} and {array.shape[0]})")
            batch = array.shape[0]
            if proto.dtype == DT_STRING:
                for i, data in enumerate(array.ravel()):
                    check_image_bytes(data, self.max_image_pixels, index=i)
            elif array.ndim == 4 and array.shape[1] * array.shape[2] > self.max_image_pixels:
                raise _invalid(f"input {name!r}: {array.shape[1]}x{array.shape[2]} images are "
                               f"more than the limit of {self.max_image_pixels} pixels")
            inputs[name] = array
        return inputs, batch

    def warmup(self):
        """Replays assets.extra/tf_serving_warmup_requests (as TF Serving); returns the count."""
        path = self.path / "assets.extra" / sig.WARMUP_FILE
        if not path.exists():
            return 0
        import tensorflow as tf
        from tensorflow_serving.apis import prediction_log_pb2

        count = 0
        for record in tf.data.TFRecordDataset(str(path)).take(MAX_WARMUP_RECORDS):
            log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            if log.HasField("predict_log"):
                self.predict(log.predict_log.request, use_batching=False)
                count += 1
        return count


# --------------------------------------------------------------------------
# Version management
# --------------------------------------------------------------------------

def list_versions(base_path):
    """Numeric version folders that hold a saved_model.pb, {version: path}."""
    found = {}
    try:
        entries = list(os.scandir(base_path))
    except FileNotFoundError:
        return found
    for entry in entries:
        if VERSION_DIR.match(entry.name) and entry.is_dir() and \
                (Path(entry.path) / "saved_model.pb").exists():
            found[int(entry.name)] = Path(entry.path)
    return found


class ModelManager:
    """Serves the highest version under `base_path`; polls and swaps atomically."""

    def __init__(self, model_name, base_path, batch_config=None, poll_seconds=1.0,
                 max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS,
                 max_tensor_bytes=DEFAULT_MAX_MESSAGE_SIZE):
        self.model_name = model_name
        self.base_path = Path(base_path)
        self.batch_config = batch_config
        self.poll_seconds = float(poll_seconds)
        self.max_image_pixels = max_image_pixels
        self.max_tensor_bytes = max_tensor_bytes
        self._lock = threading.Lock()
        self._current = None
        self._states = {}        # version -> (state name, error message)
        self._failed = {}        # version -> mtime of the folder that failed to load
        self._stop = threading.Event()
        self._thread = None
        self._warned_empty = False

    # -- lookups --------------------------------------------------------------
    def acquire(self, version=None):
        """The servable for `version` (None: latest), reference held; NOT_FOUND otherwise."""
        with self._lock:
            servable = self._current
            if servable is None or (version is not None and servable.version != version):
                what = "Latest" if version is None else "Specific"
                args = self.model_name if version is None else f"{self.model_name}, {version}"
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Servable not found for request: {what}({args})")
            servable.acquire()
            return servable

    def current(self):
        with self._lock:
            return self._current

    def states(self):
        with self._lock:
            return dict(self._states)

    # -- loading --------------------------------------------------------------
    def poll_once(self):
        """Loads the highest version if it is not the one served; returns True if it swapped."""
        versions = list_versions(self.base_path)
        if not versions:
            if not self._warned_empty:
                LOG.warning("no versions of model %s found under %s", self.model_name,
                            self.base_path)
                self._warned_empty = True
            return False
        self._warned_empty = False
        version = max(versions)
        current = self.current()
        if current is not None and current.version == version:
            return False
        path = versions[version]
        mtime = path.stat().st_mtime
        if self._failed.get(version) == mtime:
            return False
        with self._lock:
            self._states[version] = ("LOADING", "")
        started = time.monotonic()
        try:
            servable = Servable(self.model_name, version, path, self.batch_config,
                                self.max_image_pixels, self.max_tensor_bytes)
            warmed = servable.warmup()
        except Exception as exc:  # noqa: BLE001 - a bad version must not stop serving
            code, message = _status_of(exc)
            self._failed[version] = mtime
            with self._lock:
                self._states[version] = ("END", f"{code.name}: {message}")
            LOG.error("failed to load model %s version %d from %s: %s", self.model_name, version,
                      path, message)
            return False
        with self._lock:
            old, self._current = self._current, servable
            self._states[version] = ("AVAILABLE", "")
            if old is not None:
                self._states[old.version] = ("UNLOADING", "")
        LOG.info("loaded model %s version %d from %s in %.2fs (signatures: %s; %d warmup requests)",
                 self.model_name, version, path, time.monotonic() - started,
                 ", ".join(sorted(k for k in servable.signature_defs if not k.startswith("__"))),
                 warmed)
        if old is not None:
            threading.Thread(target=self._unload, args=(old,), daemon=True,
                             name=f"unload-{old.version}").start()
        return True

    def _unload(self, servable):
        servable.unload()
        gc.collect()
        with self._lock:
            if self._states.get(servable.version, ("",))[0] == "UNLOADING":
                self._states[servable.version] = ("END", "")
        LOG.info("unloaded model %s version %d", self.model_name, servable.version)

    def start(self):
        """Initial load (synchronous), then background polling."""
        self.poll_once()
        self._thread = threading.Thread(target=self._poll_loop, daemon=True, name="version-poll")
        self._thread.start()

    def _poll_loop(self):
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll_once()
            except Exception:  # noqa: BLE001 - keep polling whatever happens
                LOG.exception("version poll failed")

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)


# --------------------------------------------------------------------------
# gRPC services
# --------------------------------------------------------------------------

def _version_of(model_spec):
    if model_spec.HasField("version"):
        return int(model_spec.version.value)
    if model_spec.version_label:
        raise _invalid(f"Unrecognized servable version label: {model_spec.version_label}")
    return None


class TFAttrServer:
    """The three TF Serving RPCs over one ModelManager (one model name)."""

    def __init__(self, manager):
        self.manager = manager

    def _servable(self, model_spec):
        if model_spec.name != self.manager.model_name:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: Latest({model_spec.name})")
        return self.manager.acquire(_version_of(model_spec))

    @staticmethod
    def _abort(context, exc):
        code, message = _status_of(exc)
        if code == grpc.StatusCode.INTERNAL:
            LOG.error("internal error: %s", message)
        context.abort(code, message)

    # PredictionService.Predict
    def Predict(self, request, context):  # noqa: N802 - gRPC method name
        failure = None
        try:
            servable = self._servable(request.model_spec)
            try:
                return servable.predict(request)
            finally:
                servable.release()
        except Exception as exc:  # noqa: BLE001 - never crash on a request
            failure = exc
        self._abort(context, failure)

    # PredictionService.GetModelMetadata
    def GetModelMetadata(self, request, context):  # noqa: N802
        from google.protobuf import any_pb2
        from tensorflow_serving.apis import get_model_metadata_pb2

        failure = None
        try:
            if not request.metadata_field:
                raise _invalid("GetModelMetadataRequest must specify at least one metadata_field")
            for field in request.metadata_field:
                if field != "signature_def":
                    raise _invalid(f"Metadata field {field} is not supported")
            servable = self._servable(request.model_spec)
            try:
                response = get_model_metadata_pb2.GetModelMetadataResponse()
                response.model_spec.name = servable.model_name
                response.model_spec.version.value = servable.version
                sig_map = get_model_metadata_pb2.SignatureDefMap()
                for name, signature in servable.signature_defs.items():
                    sig_map.signature_def[name].CopyFrom(signature)
                packed = any_pb2.Any()
                packed.Pack(sig_map)
                response.metadata["signature_def"].CopyFrom(packed)
                return response
            finally:
                servable.release()
        except Exception as exc:  # noqa: BLE001
            failure = exc
        self._abort(context, failure)

    # ModelService.GetModelStatus
    def GetModelStatus(self, request, context):  # noqa: N802
        from tensorflow_serving.apis import get_model_status_pb2

        failure = None
        try:
            name = request.model_spec.name
            if name != self.manager.model_name:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find any versions of model {name}")
            version = _version_of(request.model_spec)
            states = self.manager.states()
            if version is not None:
                if version not in states:
                    raise ServingError(grpc.StatusCode.NOT_FOUND,
                                       f"Could not find version {version} of model {name}")
                states = {version: states[version]}
            if not states:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find any versions of model {name}")
            response = get_model_status_pb2.GetModelStatusResponse()
            for v in sorted(states, reverse=True):
                state, error = states[v]
                entry = response.model_version_status.add()
                entry.version = v
                entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(state)
                if error:
                    entry.status.error_code = 13   # tensorflow.error.INTERNAL
                    entry.status.error_message = error
            return response
        except Exception as exc:  # noqa: BLE001
            failure = exc
        self._abort(context, failure)


def build_grpc_server(manager, host="127.0.0.1", port=8500,
                      max_message_size=DEFAULT_MAX_MESSAGE_SIZE, max_threads=64):
    """A started-ready grpc.server (not yet started) and the bound port."""
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    handler = TFAttrServer(manager)
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=max_threads,
                                              thread_name_prefix="grpc"),
        options=[("grpc.max_receive_message_length", int(max_message_size)),
                 ("grpc.max_send_message_length", int(max_message_size)),
                 ("grpc.so_reuseport", 0)])

    class _Prediction(prediction_service_pb2_grpc.PredictionServiceServicer):
        Predict = staticmethod(handler.Predict)
        GetModelMetadata = staticmethod(handler.GetModelMetadata)

    class _Model(model_service_pb2_grpc.ModelServiceServicer):
        GetModelStatus = staticmethod(handler.GetModelStatus)

    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_Prediction(), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(_Model(), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind {host}:{port}")
    return server, bound


class ServingProcess:
    """Manager + gRPC server in this process (what `main` runs; tests use it directly)."""

    def __init__(self, model_base_path, model_name=sig.MODEL_NAME, host="127.0.0.1", port=0,
                 batch_config=None, poll_seconds=1.0, max_message_size=DEFAULT_MAX_MESSAGE_SIZE,
                 max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS, max_threads=64):
        self.manager = ModelManager(model_name, model_base_path, batch_config, poll_seconds,
                                    max_image_pixels, max_message_size)
        self.host = host
        self.server, self.port = build_grpc_server(self.manager, host, port, max_message_size,
                                                   max_threads)

    @property
    def target(self):
        return f"{self.host}:{self.port}"

    def start(self):
        self.manager.start()
        self.server.start()
        LOG.info("serving model %s on %s:%d", self.manager.model_name, self.host, self.port)
        return self

    def stop(self, grace=2.0):
        self.server.stop(grace).wait()
        self.manager.stop()
        current = self.manager.current()
        if current is not None:
            current.unload()


def _parse_bool(text):
    return str(text).lower() in ("1", "true", "yes", "on")


def _model_from_config(path):
    from tensorflow_serving.config import model_server_config_pb2

    config = parse_text_proto(path, model_server_config_pb2.ModelServerConfig)
    models = list(config.model_config_list.config)
    if len(models) != 1:
        raise SystemExit(f"{path}: tfattr.serve serves exactly one model, found {len(models)}")
    return models[0].name, models[0].base_path


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="TF-Serving-compatible gRPC server for the tfattr SavedModel "
                    "(flags named as tensorflow_model_server's).")
    parser.add_argument("--model_base_path", help="folder holding <version>/ SavedModels")
    parser.add_argument("--model_name", default=sig.MODEL_NAME)
    parser.add_argument("--model_config_file",
                        help="ModelServerConfig text proto with ONE model (instead of "
                             "--model_name/--model_base_path)")
    parser.add_argument("--port", type=int, default=8500, help="gRPC port (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--enable_batching", nargs="?", const="true", default="false",
                        help="merge concurrent requests into one model call")
    parser.add_argument("--batching_parameters_file",
                        help="BatchingParameters text proto (implies --enable_batching)")
    parser.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0)
    parser.add_argument("--max_message_size_bytes", type=int, default=DEFAULT_MAX_MESSAGE_SIZE,
                        help="largest gRPC message accepted or sent")
    parser.add_argument("--max_image_pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS,
                        help="refuse images whose header claims more pixels than this")
    parser.add_argument("--grpc_max_threads", type=int, default=64)
    args = parser.parse_args(argv)

    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    name, base_path = args.model_name, args.model_base_path
    if args.model_config_file:
        name, base_path = _model_from_config(args.model_config_file)
    if not base_path:
        parser.error("--model_base_path or --model_config_file is required")
    batch_config = None
    if args.batching_parameters_file:
        batch_config = BatchConfig.from_file(args.batching_parameters_file)
    elif _parse_bool(args.enable_batching):
        batch_config = BatchConfig()
    if batch_config is not None:
        LOG.info("batching enabled: %s", batch_config)

    process = ServingProcess(base_path, name, args.host, args.port, batch_config,
                             args.file_system_poll_wait_seconds, args.max_message_size_bytes,
                             args.max_image_pixels, args.grpc_max_threads)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    process.start()
    while not stop.wait(0.5):
        pass
    LOG.info("shutting down")
    process.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
