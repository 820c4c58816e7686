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
    """The ExportArchive with the three named endpoints of `model`.

    Each endpoint's graph is traced ONCE here (a concrete function with an
    explicit, named input signature); the endpoint handed to ExportArchive is
    a thin `tf.function` that calls it. ExportArchive / `tf.saved_model.save`
    retrace endpoints inside the save context, and retracing the whole
    cascade there doubled the export time; retracing the thin wrapper costs
    one call op.
    """
    archive = keras.export.ExportArchive()
    archive.track(model)
    size = model.lite_input_size
    endpoints = [
        (signatures.SIGNATURE_BYTES, model.predict_image_bytes,
         tf.TensorSpec([None], tf.string, name=signatures.INPUT_IMAGE_BYTES)),
        (signatures.SIGNATURE_IMAGES, model.call,
         tf.TensorSpec([None, None, None, 3], tf.uint8, name=signatures.INPUT_IMAGES)),
        (SIGNATURE_LITE, model.predict_fixed,
         tf.TensorSpec([1, size, size, 3], tf.float32, name=INPUT_LITE)),
    ]
    for name, method, spec in endpoints:
        graph = tf.function(method, input_signature=[spec], autograph=False).get_concrete_function()
        archive.add_endpoint(name, graph.__call__, input_signature=[spec])
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


# ---------------------------------------------------------------- builders
def build_networks(preset):
    """Fresh (randomly initialised) networks of `preset`: dict lnet_o, lnet_s, anet, head."""
    from tfattr.layers.svm_head import AttributeSVMHead
    from tfattr.models.anet import build_anet
    from tfattr.models.lnet import build_lnet

    anet = build_anet(**preset.anet)
    head = AttributeSVMHead(name="svm_head")
    head.build((None, None, int(anet.output.shape[-1])))
    return {"lnet_o": build_lnet(**preset.lnet_o), "lnet_s": build_lnet(**preset.lnet_s),
            "anet": anet, "head": head}


def assemble_model(preset, networks, *, aligned=False, max_faces=None, threshold=None,
                   localizer_config=None, lite_input_size=None):
    """`FaceAttributeModel` from (trained) networks; call after their weights are loaded.

    Args:
      preset: `tfattr.presets.Preset`.
      networks: dict from `build_networks` (lnet_o/lnet_s unused when aligned).
      aligned: the aligned variant (whole image = the face, K = 1).
      max_faces, threshold: override `localizer_config`'s (the calibrated one).
      localizer_config: `FaceLocalizer` window config (e.g. `window_config()`
        saved by the lnet_s stage); None = FaceLocalizer's defaults.
      lite_input_size: S of `serve_fixed` (default: the preset's LNet_o input size).
    """
    from tfattr.layers.interweave import InterweavedANet
    from tfattr.localize.localizer import FaceLocalizer
    from tfattr.models.cascade import FaceAttributeModel

    localizer = None
    if not aligned:
        config = dict(localizer_config or {})
        for key in ("lnet_o_input_size", "lnet_s_input_size"):
            config.pop(key, None)
        if max_faces is not None:
            config["max_faces"] = int(max_faces)
        if threshold is not None:
            config["threshold"] = float(threshold)
        localizer = FaceLocalizer(networks["lnet_o"], networks["lnet_s"],
                                  preset.lnet_o_input_size, preset.lnet_s_input_size,
                                  name="face_localizer", **config)
    anet = networks["anet"]
    # Two views of the SAME ANet variables: im2col for the server, builtin ops for TFLite.
    model = FaceAttributeModel(
        localizer,
        InterweavedANet(anet, preset.patch_size, preset.patch_stride,
                        implementation="extract_patches", name="anet_interweaved"),
        networks["head"],
        face_region_size=preset.face_region_size,
        face_enlarge=preset.face_enlarge,
        lite_interweaved_anet=InterweavedANet(anet, preset.patch_size, preset.patch_stride,
                                              implementation="builtin",
                                              name="anet_interweaved_builtin"),
        lite_input_size=lite_input_size or preset.lnet_o_input_size,
    )
    model.build()
    return model


def build_model(preset, *, aligned=False, max_faces=None, threshold=0.0, seed=0,
                lite_input_size=None):
    """A `FaceAttributeModel` with RANDOM weights (tests, latency benchmarks).

    Networks use their initialisers (seed them with keras.utils.set_random_seed);
    the SVM head gets random weights from `seed` so its outputs are not constant.
    """
    from tfattr.presets import get_preset

    preset = get_preset(preset) if isinstance(preset, str) else preset
    networks = build_networks(preset)
    head = networks["head"]
    rng = np.random.default_rng(seed)
    features = int(head.kernel.shape[0])
    head.set_svm(rng.normal(0, 1 / np.sqrt(features), (head.num_attributes, features)),
                 rng.normal(0, 0.5, head.num_attributes),
                 platt_scale=rng.uniform(0.5, 2.0, head.num_attributes),
                 platt_offset=rng.normal(0, 0.2, head.num_attributes))
    return assemble_model(preset, networks, aligned=aligned, max_faces=max_faces,
                          threshold=threshold, lite_input_size=lite_input_size)


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
