"""Export ONE SavedModel for the whole cascade (`python -m tfattr.export`).

    python -m tfattr.export --workdir RUN --out models/tfattr [--version N] [--max-faces K]

writes `<out>/<version>/` (TF Serving's layout) with three signatures (names
in `tfattr.signatures`):

- `serving_default`: `image_bytes` tf.string [B] (JPEG/PNG/BMP/GIF, any size,
  decoded in the graph);
- `serve_images`: `images` uint8 [B, H, W, 3] (one size per batch);
- `serve_fixed`: `images` float32 [1, S, S, 3] letterboxed and normalized
  (`tfattr.data.preprocess.letterbox`), for TFLite: no map_fn, no decode, builtin ops;

all returning `boxes`, `box_scores`, `num_faces`, `attribute_probabilities`,
`attribute_scores` (see `tfattr.models.cascade`). Beside the graph:
`assets/attributes.txt`, `assets/config.json` (the resolved run config) and
`assets.extra/tf_serving_warmup_requests`.

The version folder appears atomically: everything is written to a hidden
sibling `.tmp-<version>-<pid>` (TF Serving only loads all-digit names),
fsync'ed, then renamed. A crash leaves no partial numeric version.
"""

import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tfattr import signatures
from tfattr.attributes import ATTRIBUTE_NAMES

# The TFLite endpoint's name lives in tfattr.signatures once the serving side adds it.
SIGNATURE_LITE = getattr(signatures, "SIGNATURE_LITE", "serve_fixed")
INPUT_LITE = getattr(signatures, "INPUT_LITE", signatures.INPUT_IMAGES)
WARMUP_IMAGE_SIZES = ((48, 64), (120, 90), (200, 200))  # (height, width) of warmup images
_VERSION_RE = re.compile(r"^[0-9]+$")


# ----------------------------------------------------------------- versions
def existing_versions(out_dir):
    """The numeric version folders under `out_dir` (what TF Serving would load), sorted."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    return sorted(int(p.name) for p in out_dir.iterdir() if p.is_dir() and _VERSION_RE.match(p.name))


def next_version(out_dir):
    """Highest existing version + 1, or 1."""
    versions = existing_versions(out_dir)
    return versions[-1] + 1 if versions else 1


def _fsync_tree(root):
    """fsync every file and folder under `root` (and `root`) so a rename publishes durable data."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for dirpath, _, _ in os.walk(root, topdown=False):
        _fsync_dir(dirpath)


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------ pieces
def sample_images(sizes=WARMUP_IMAGE_SIZES, seed=0):
    """Small deterministic RGB uint8 images, one per (height, width) in `sizes`."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in sizes]


def encode_images(images):
    """uint8 images -> encoded bytes, alternating JPEG and PNG."""
    encoded = []
    for i, image in enumerate(images):
        encode = tf.io.encode_jpeg if i % 2 == 0 else tf.io.encode_png
        encoded.append(encode(tf.convert_to_tensor(image, tf.uint8)).numpy())
    return encoded


def _build_archive(model):
    """The ExportArchive with the three named endpoints of `model`."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    size = model.lite_input_size

    def serve_bytes(image_bytes):
        return model.predict_image_bytes(image_bytes)

    def serve_images(images):
        return model(images)

    def serve_fixed(images):
        return model.predict_fixed(images)

    archive.add_endpoint(
        signatures.SIGNATURE_BYTES, serve_bytes,
        [tf.TensorSpec([None], tf.string, name=signatures.INPUT_IMAGE_BYTES)])
    archive.add_endpoint(
        signatures.SIGNATURE_IMAGES, serve_images,
        [tf.TensorSpec([None, None, None, 3], tf.uint8, name=signatures.INPUT_IMAGES)])
    archive.add_endpoint(
        SIGNATURE_LITE, serve_fixed,
        [tf.TensorSpec([1, size, size, 3], tf.float32, name=INPUT_LITE)])
    return archive


def _write_version(model, path, config, warmup_images, model_name):
    """Writes the complete SavedModel + assets into `path` (the temporary folder)."""
    _build_archive(model).write_out(str(path), verbose=False)
    assets = path / "assets"
    assets.mkdir(exist_ok=True)
    (assets / signatures.ATTRIBUTES_ASSET).write_text("\n".join(ATTRIBUTE_NAMES) + "\n")
    (assets / "config.json").write_text(json.dumps(config or {}, indent=2, sort_keys=True,
                                                   default=str) + "\n")
    (path / "assets.extra").mkdir(exist_ok=True)
    signatures.write_warmup_requests(path / "assets.extra" / signatures.WARMUP_FILE, warmup_images,
                                     model_name)


def export_saved_model(model, out_dir, version=None, *, overwrite=False, config=None,
                       warmup_images=None, model_name=None):
    """Exports `model` (a built `FaceAttributeModel`) to `<out_dir>/<version>/` atomically.

    Args:
      model: `tfattr.models.cascade.FaceAttributeModel`.
      out_dir: the model base folder TF Serving watches (`--model_base_path`).
      version: integer version; None = highest existing + 1 (1 if none).
      overwrite: replace an existing `<version>` (otherwise FileExistsError).
      config: JSON-serializable resolved run config, written to assets/config.json.
      warmup_images: encoded images for the warmup requests (default: a few
        small JPEG/PNG images of different sizes).
      model_name: `model_spec.name` in the warmup requests (default
        `tfattr.signatures.MODEL_NAME`).

    Returns:
      the Path of the written version folder.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    version = next_version(out_dir) if version is None else int(version)
    if version < 0:
        raise ValueError(f"version must be a non-negative integer, got {version}")
    final = out_dir / str(version)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists; pass overwrite=True (--overwrite) to replace it")
    if warmup_images is None:
        warmup_images = encode_images(sample_images())
    model.build()

    tmp = out_dir / f".tmp-{version}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        _write_version(model, tmp, config, warmup_images, model_name or signatures.MODEL_NAME)
        _fsync_tree(tmp)
        old = None
        if final.exists():  # overwrite: move the old version aside, then swap in the new one
            old = out_dir / f".old-{version}-{os.getpid()}"
            os.rename(final, old)
        os.rename(tmp, final)
        _fsync_dir(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


# ------------------------------------------------------------------ loader
def build_model_from_workdir(workdir, max_faces=None, lite_input_size=None):
    """Rebuilds the `FaceAttributeModel` of a training workdir and loads its stage weights.

    Reads `workdir/config.json` (the resolved run config) and the preset it
    names, builds LNet_o/LNet_s/ANet/SVM head, and loads
    `workdir/<stage>/model.weights.h5`. A run trained on aligned crops only
    (no `lnet_s` stage result) gives the aligned variant.
    """
    raise NotImplementedError("waiting for tfattr.train / tfattr.stages")


def load_run_config(workdir):
    return json.loads((Path(workdir) / "config.json").read_text())


# --------------------------------------------------------------------- CLI
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tfattr.export", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="training run directory (config.json + stage weights)")
    parser.add_argument("--out", required=True, help="model base folder; the version goes to <out>/<version>/")
    parser.add_argument("--version", type=int, default=None, help="version number (default: highest + 1)")
    parser.add_argument("--max-faces", type=int, default=None, help="faces returned per image (default: the run's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing version")
    args = parser.parse_args(argv)

    model = build_model_from_workdir(args.workdir, max_faces=args.max_faces)
    path = export_saved_model(model, args.out, version=args.version, overwrite=args.overwrite,
                              config=load_run_config(args.workdir))
    print(f"exported {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
