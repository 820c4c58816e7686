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


MODEL_INFO_ASSET = "model.json"  # under <version>/assets/


def _write_version(model, path, config, warmup_images, model_name):
    """Writes the complete SavedModel + assets into `path` (the temporary folder)."""
    _build_archive(model).write_out(str(path), verbose=False)
    assets = path / "assets"
    assets.mkdir(exist_ok=True)
    (assets / signatures.ATTRIBUTES_ASSET).write_text("\n".join(ATTRIBUTE_NAMES) + "\n")
    (assets / "config.json").write_text(json.dumps(config or {}, indent=2, sort_keys=True,
                                                   default=str) + "\n")
    # What a client needs to feed the model right (e.g. the evaluator: whole photos or crops).
    (assets / MODEL_INFO_ASSET).write_text(json.dumps(
        {"variant": "aligned" if model.aligned else "wild", "max_faces": int(model.max_faces)},
        indent=2) + "\n")
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
VARIANTS = ("auto", "wild", "aligned")


def assemble_model(preset, anet, head, localizer=None, lite_input_size=None, face_enlarge=None,
                   framer=None):
    """`FaceAttributeModel` from finished networks (weights already loaded).

    Args:
      preset: `tfattr.presets.Preset` (face region geometry, patches).
      anet: the ANet backbone (`build_anet`); wrapped twice, sharing its
        variables: "extract_patches" for the server signatures, "builtin"
        (TFLite ops only) for `serve_fixed`.
      head: `AttributeSVMHead` (folded SVMs + Platt).
      localizer: `FaceLocalizer`, or None for the aligned variant.
      lite_input_size: S of `serve_fixed` (default: the localizer's LNet_o input
        side, or the preset's for the aligned variant).
      face_enlarge: the face box's enlargement (default: the preset's; a workdir's
        is its anet stage's, `tfattr.stages.anet.run_face_enlarge`).
      framer: the run's `RegionFramer` (`anet.framer`), or None.
    """
    from tfattr.layers.interweave import InterweavedANet
    from tfattr.models.cascade import FaceAttributeModel

    model = FaceAttributeModel(
        localizer,
        InterweavedANet(anet, preset.patch_size, preset.patch_stride,
                        implementation="extract_patches", name="anet_interweaved"),
        head,
        face_region_size=preset.face_region_size,
        face_enlarge=face_enlarge or preset.face_enlarge,
        lite_interweaved_anet=InterweavedANet(anet, preset.patch_size, preset.patch_stride,
                                              implementation="builtin",
                                              name="anet_interweaved_builtin"),
        lite_input_size=lite_input_size or (localizer.lnet_o_input_size if localizer is not None
                                            else preset.lnet_o_input_size),
        framer=framer,
    )
    model.build()
    return model


def build_model(preset, *, aligned=False, max_faces=None, threshold=0.0, seed=0,
                lite_input_size=None, face_tag_map=False, box_head=False, box_refine=False,
                box_score="lnet_o", lnet_o_members=1, framer_context=None, framer_passes=1):
    """A `FaceAttributeModel` with RANDOM weights (tests, latency benchmarks).

    Networks use their initialisers (seed them with keras.utils.set_random_seed);
    the SVM head gets random weights from `seed` so its outputs are not constant.
    `threshold` is the fixed face/background threshold of the localizer.
    `face_tag_map`: LNet_o's map is a class activation map (`o_map_weights`,
    random from `seed`) instead of the averaged C5 map. The weights are positive
    (0.5-1.5 / C): random signed weights leave zero plateaus after the ReLU, where
    equal window sums make the chosen window depend on float summation order.
    `box_head`: LNet_s regresses the face boxes (`build_box_head`, random weights, its
    last layer scaled so the boxes stay inside the crop). `box_refine` (with `box_head`):
    each box is regressed again on a crop re-made around it (`s_box_refine_code`).
    `box_score`: the localizer's box score (`lnet_o`, or `cascade`: LNet_s then runs on
    every valid proposal). `lnet_o_members` > 1: LNet_o is an ensemble of that many
    backbones, their maps averaged (`lnet.o_ensemble`). `framer_context` > 1: the regions
    are re-framed by a `RegionFramer` on context crops that much larger (`anet.framer`),
    its last layer random (not zero) so that it moves them, `framer_passes` times.
    """
    from tfattr.layers.svm_head import AttributeSVMHead
    from tfattr.localize.localizer import DEFAULT_CONFIG, FaceLocalizer
    from tfattr.models.anet import build_anet
    from tfattr.models.lnet import build_lnet
    from tfattr.presets import get_preset

    preset = get_preset(preset) if isinstance(preset, str) else preset
    rng = np.random.default_rng(seed)
    localizer = None
    if not aligned:
        lnet_o = [build_lnet(**preset.lnet_o) for _ in range(lnet_o_members)]
        o_map_weights = None
        if face_tag_map:
            channels = int(lnet_o[0].output["features"].shape[-1]) * lnet_o_members
            o_map_weights = rng.uniform(0.5, 1.5, channels) / channels * lnet_o_members
        lnet_s = build_lnet(**preset.lnet_s)
        s_box_head = None
        if box_head:
            from tfattr.models.lnet import build_box_head_for

            s_box_head = build_box_head_for(lnet_s, preset.lnet_s_input_size)
            last = s_box_head.layers[-1]
            kernel, _ = last.get_weights()
            last.set_weights([kernel * 0.01, np.array([0.5, 0.5, np.log(0.4), np.log(0.3)],
                                                      np.float32)])
        localizer = FaceLocalizer(
            lnet_o, lnet_s,
            preset.lnet_o_input_size, preset.lnet_s_input_size, threshold=threshold,
            max_faces=DEFAULT_CONFIG["max_faces"] if max_faces is None else max_faces,
            o_map_weights=o_map_weights, s_box_head=s_box_head,
            s_box_refine_code=((0.45, 0.5, np.log(0.5), np.log(0.4)) if box_head and box_refine
                               else None),
            box_score=box_score, name="face_localizer")
    framer = None
    if framer_context and not aligned:
        from tfattr.stages.anet import build_framer

        framer = build_framer(preset, framer_context, framer_passes)
        kernel, bias = framer.out.get_weights()
        framer.out.set_weights([rng.normal(0, 0.05, kernel.shape).astype(np.float32),
                                rng.normal(0, 0.5, bias.shape).astype(np.float32)])
    anet = build_anet(**preset.anet)
    head = AttributeSVMHead(name="attribute_svm_head")
    num_features = int(anet.output.shape[-1])
    head.set_svm(rng.normal(0, 1 / np.sqrt(num_features), (head.num_attributes, num_features)),
                 rng.normal(0, 0.5, head.num_attributes),
                 platt_scale=rng.uniform(0.5, 2.0, head.num_attributes),
                 platt_offset=rng.normal(0, 0.2, head.num_attributes))
    return assemble_model(preset, anet, head, localizer, lite_input_size, framer=framer)


def load_run_config(workdir):
    """The resolved run config a training workdir was made with (`workdir/config.json`)."""
    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {workdir} a tfattr.train workdir?")
    return json.loads(path.read_text())


def build_model_from_workdir(workdir, max_faces=None, variant="auto", lite_input_size=None):
    """Rebuilds the trained `FaceAttributeModel` of a `tfattr.train` workdir.

    Reads `workdir/config.json` and its preset, then the stage results:
    ANet (`anet/model.weights.h5`), the SVM head (`svm/svm_head.npz`) and,
    for the in-the-wild variant, LNet_o/LNet_s weights with the calibrated
    threshold and window config (`lnet_s/localizer.json`).

    Args:
      workdir: the run directory.
      max_faces: K faces per image (default: the run's localizer config).
      variant: "wild" (LNet localizer), "aligned" (whole image = the face) or
        "auto": the face regions ANet was trained on (its stage summary:
        "aligned" when it used the aligned crops).
      lite_input_size: S of `serve_fixed` (default: the run's LNet_o input side).
    """
    from tfattr.presets import get_preset
    from tfattr.stages import anet as anet_stage
    from tfattr.stages.lnet import load_face_localizer
    from tfattr.stages.svm import load_svm_head
    from tfattr.train import architecture_record

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    workdir = Path(workdir)
    config = load_run_config(workdir)
    preset = get_preset(config["preset"])
    if config.get("architecture") not in (None, architecture_record(preset)):
        raise ValueError(f"{workdir} was trained with a different {preset.name!r} architecture "
                         "than tfattr/presets.py now describes; export it with the code it was "
                         "trained with")
    for stage in ("anet", "svm"):
        if not (workdir / stage / "DONE").exists():
            raise FileNotFoundError(f"{workdir}: stage {stage!r} is not DONE; train it first "
                                    f"(python -m tfattr.train --workdir {workdir})")
    if variant == "auto":
        source = anet_stage.run_summary(workdir, "anet").get("face_source", "lnet")
        variant = "aligned" if source == "aligned" else "wild"
    localizer = None
    if variant == "wild":
        if not (workdir / "lnet_s" / "DONE").exists():
            raise FileNotFoundError(f"{workdir}: the in-the-wild model needs the lnet_o and "
                                    "lnet_s stages; export the aligned variant instead")
        overrides = {} if max_faces is None else {"max_faces": int(max_faces)}
        localizer = load_face_localizer(workdir, preset, name="face_localizer", **overrides)
    anet = anet_stage.load_anet(workdir, preset)
    head = load_svm_head(workdir)
    framer = anet_stage.load_framer(workdir, preset) if localizer is not None else None
    return assemble_model(preset, anet, head, localizer, lite_input_size,
                          face_enlarge=anet_stage.run_face_enlarge(workdir, preset), framer=framer)


# --------------------------------------------------------------------- CLI
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tfattr.export", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="training run directory (config.json + stage weights)")
    parser.add_argument("--out", required=True, help="model base folder; the version goes to <out>/<version>/")
    parser.add_argument("--version", type=int, default=None, help="version number (default: highest + 1)")
    parser.add_argument("--max-faces", type=int, default=None, help="faces returned per image (default: the run's)")
    parser.add_argument("--variant", choices=VARIANTS, default="auto",
                        help="wild: LNet localizer; aligned: the whole image is the face; "
                             "auto: what ANet was trained on")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing version")
    args = parser.parse_args(argv)

    try:
        model = build_model_from_workdir(args.workdir, max_faces=args.max_faces,
                                         variant=args.variant)
        path = export_saved_model(model, args.out, version=args.version,
                                  overwrite=args.overwrite, config=load_run_config(args.workdir))
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"tfattr.export: error: {e}", file=sys.stderr)
        return 2
    variant = "aligned" if model.aligned else f"in the wild, up to {model.max_faces} faces"
    print(f"exported {path} ({variant})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
