"""The exported SavedModel: loads without tfattr, stock ops only, same outputs, atomic writes."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfattr import export, signatures
from tfattr.attributes import ATTRIBUTE_NAMES
from tfattr.data import preprocess

MAX_FACES = 2
SIGNATURE_LITE = export.SIGNATURE_LITE
INPUT_LITE = export.INPUT_LITE
OUTPUT_KEYS = signatures.OUTPUT_KEYS
REPO = Path(__file__).resolve().parents[1]

# Runs in a FRESH interpreter that never imports tfattr: plain tf.saved_model.load.
_CHILD = textwrap.dedent(r"""
    import json, sys
    from pathlib import Path
    import numpy as np
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow.python.framework import op_def_registry

    work = Path(sys.argv[1])
    request = json.loads((work / "request.json").read_text())
    report = {}
    for name, path in request["models"].items():
        proto = saved_model_pb2.SavedModel()
        proto.ParseFromString((Path(path) / "saved_model.pb").read_bytes())
        ops, functions = set(), 0
        for meta_graph in proto.meta_graphs:
            ops.update(node.op for node in meta_graph.graph_def.node)
            for function in meta_graph.graph_def.library.function:  # incl. while/cond bodies
                functions += 1
                ops.update(node.op for node in function.node_def)
        loaded = tf.saved_model.load(path)
        sigs = loaded.signatures
        outputs = {}
        for case, files in request["bytes_cases"].items():
            data = tf.constant([(work / f).read_bytes() for f in files])
            for key, value in sigs[request["sig_bytes"]](**{request["input_bytes"]: data}).items():
                outputs[f"bytes/{case}/{key}"] = value.numpy()
        arrays = np.load(work / "arrays.npz")
        images = tf.constant(arrays["images"])
        for key, value in sigs[request["sig_images"]](**{request["input_images"]: images}).items():
            outputs[f"images/{key}"] = value.numpy()
        fixed = tf.constant(arrays[f"fixed_{name}"])
        for key, value in sigs[request["sig_lite"]](**{request["input_lite"]: fixed}).items():
            outputs[f"fixed/{key}"] = value.numpy()
        np.savez(work / f"outputs_{name}.npz", **outputs)
        report[name] = {
            "ops": sorted(ops),
            "num_functions": functions,
            "unregistered_ops": sorted(op for op in ops if op_def_registry.get(op) is None),
            "signatures": {
                key: {
                    "inputs": {k: [v.dtype.name, v.shape.as_list()]
                               for k, v in fn.structured_input_signature[1].items()},
                    "outputs": {k: [v.dtype.name, v.shape.as_list()]
                                for k, v in fn.structured_outputs.items()},
                } for key, fn in sigs.items()},
        }
    report["tfattr_imported"] = any(m == "tfattr" or m.startswith("tfattr.") for m in sys.modules)
    (work / "report.json").write_text(json.dumps(report))
""")


def _image(height, width, seed):
    """A smooth random RGB uint8 image (JPEG-friendly)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(height // 8, 2), max(width // 8, 2), 3))
    image = tf.image.resize(small[np.newaxis].astype(np.float32), [height, width])[0]
    return tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8).numpy()


def _fixed_input(model, seed):
    letterboxed, _ = preprocess.letterbox(_image(90, 130, seed), model.lite_input_size)
    return letterboxed.numpy()[np.newaxis]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Random-weight tiny in-the-wild + aligned models, exported once, run once in a fresh process."""
    keras.utils.set_random_seed(7)
    models = {
        # LNet_o: an ensemble of two backbones (lnet.o_ensemble, the localization recipe);
        # the regions re-framed by a RegionFramer (anet.framer), twice (anet.framer_passes).
        "wild": export.build_model("tiny", max_faces=MAX_FACES, lnet_o_members=2,
                                   framer_context=1.75, framer_passes=2),
        "aligned": export.build_model("tiny", aligned=True),
    }
    out = tmp_path_factory.mktemp("export")
    paths = {name: export_saved_model_checked(model, out / name) for name, model in models.items()}

    work = tmp_path_factory.mktemp("fresh")
    images = {"jpeg_a.jpg": tf.io.encode_jpeg(_image(96, 128, 1)).numpy(),
              "png_b.png": tf.io.encode_png(_image(150, 100, 2)).numpy(),
              "jpeg_c.jpg": tf.io.encode_jpeg(_image(61, 67, 3)).numpy(),
              "png_d.png": tf.io.encode_png(_image(200, 180, 4)).numpy()}
    for name, data in images.items():
        (work / name).write_bytes(data)
    bytes_cases = {"mixed": ["jpeg_a.jpg", "png_b.png", "jpeg_c.jpg"], "single_png": ["png_d.png"]}
    arrays = {"images": np.stack([_image(80, 120, 5), _image(80, 120, 6)])}
    arrays.update({f"fixed_{name}": _fixed_input(model, 8) for name, model in models.items()})
    np.savez(work / "arrays.npz", **arrays)
    (work / "request.json").write_text(json.dumps({
        "models": {name: str(path) for name, path in paths.items()},
        "bytes_cases": bytes_cases,
        "sig_bytes": signatures.SIGNATURE_BYTES, "input_bytes": signatures.INPUT_IMAGE_BYTES,
        "sig_images": signatures.SIGNATURE_IMAGES, "input_images": signatures.INPUT_IMAGES,
        "sig_lite": SIGNATURE_LITE, "input_lite": INPUT_LITE,
    }))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    script = work / "child.py"
    script.write_text(_CHILD)
    # cwd outside the repo, so `import tfattr` could not even resolve by accident.
    proc = subprocess.run([sys.executable, str(script), str(work)], cwd=str(work), env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {
        "models": models, "paths": paths, "work": work, "images": images,
        "bytes_cases": bytes_cases, "arrays": arrays,
        "report": json.loads((work / "report.json").read_text()),
        "outputs": {name: dict(np.load(work / f"outputs_{name}.npz")) for name in models},
    }


def export_saved_model_checked(model, out_dir):
    path = export.export_saved_model(model, out_dir, config={"preset": "tiny", "test": True})
    assert path == Path(out_dir) / "1"
    return path


def _in_process(fixture, name):
    """The same requests through the in-process FaceAttributeModel."""
    model = fixture["models"][name]
    expected = {}
    for case, files in fixture["bytes_cases"].items():
        data = tf.constant([fixture["images"][f] for f in files])
        for key, value in model.predict_image_bytes(data).items():
            expected[f"bytes/{case}/{key}"] = value.numpy()
    for key, value in model(tf.constant(fixture["arrays"]["images"])).items():
        expected[f"images/{key}"] = value.numpy()
    for key, value in model.predict_fixed(tf.constant(fixture["arrays"][f"fixed_{name}"])).items():
        expected[f"fixed/{key}"] = value.numpy()
    return expected


def test_loads_without_tfattr_in_a_fresh_process(exported):
    assert exported["report"]["tfattr_imported"] is False


@pytest.mark.parametrize("name", ["wild", "aligned"])
def test_signatures_are_named_explicitly(exported, name):
    sigs = exported["report"][name]["signatures"]
    k = exported["models"][name].max_faces
    size = exported["models"][name].lite_input_size
    assert set(sigs) == {signatures.SIGNATURE_BYTES, signatures.SIGNATURE_IMAGES, SIGNATURE_LITE}
    assert sigs[signatures.SIGNATURE_BYTES]["inputs"] == {
        signatures.INPUT_IMAGE_BYTES: ["string", [None]]}
    assert sigs[signatures.SIGNATURE_IMAGES]["inputs"] == {
        signatures.INPUT_IMAGES: ["uint8", [None, None, None, 3]]}
    assert sigs[SIGNATURE_LITE]["inputs"] == {INPUT_LITE: ["float32", [1, size, size, 3]]}
    for sig, batch in [(signatures.SIGNATURE_BYTES, None), (signatures.SIGNATURE_IMAGES, None),
                       (SIGNATURE_LITE, 1)]:
        assert sigs[sig]["outputs"] == {
            signatures.OUTPUT_BOXES: ["float32", [batch, k, 4]],
            signatures.OUTPUT_BOX_SCORES: ["float32", [batch, k]],
            signatures.OUTPUT_NUM_FACES: ["int32", [batch]],
            signatures.OUTPUT_ATTRIBUTE_PROBABILITIES: ["float32", [batch, k, 40]],
            signatures.OUTPUT_ATTRIBUTE_SCORES: ["float32", [batch, k, 40]],
        }, sig


@pytest.mark.parametrize("name", ["wild", "aligned"])
def test_graph_holds_only_stock_ops(exported, name):
    report = exported["report"][name]
    assert report["num_functions"] > 0
    assert report["unregistered_ops"] == []
    assert not {"PyFunc", "EagerPyFunc", "PyFuncStateless"} & set(report["ops"])
    assert "DecodeImage" in report["ops"]  # serving_default decodes inside the graph


@pytest.mark.parametrize("name", ["wild", "aligned"])
def test_outputs_equal_in_process_model(exported, name):
    got = exported["outputs"][name]
    expected = _in_process(exported, name)
    assert set(got) == set(expected)
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-4, atol=1e-4, err_msg=key)
    # the mixed batch really holds images of different sizes, decoded in the graph
    boxes = got["bytes/mixed/boxes"]
    assert boxes.shape == (3, exported["models"][name].max_faces, 4)


def test_aligned_export_is_one_whole_image_face(exported):
    got = exported["outputs"]["aligned"]
    np.testing.assert_array_equal(got["bytes/mixed/num_faces"], [1, 1, 1])
    np.testing.assert_allclose(got["bytes/mixed/boxes"][:, 0],
                               [[0, 0, 96, 128], [0, 0, 150, 100], [0, 0, 61, 67]])
    np.testing.assert_allclose(got["bytes/mixed/box_scores"], np.ones([3, 1]))
    probabilities = got["bytes/mixed/attribute_probabilities"]
    assert probabilities.shape == (3, 1, 40)
    assert np.all((probabilities >= 0) & (probabilities <= 1)) and np.any(probabilities > 0)


def test_faces_beyond_num_faces_are_zero(exported):
    got = exported["outputs"]["wild"]
    for case in exported["bytes_cases"]:
        num_faces = got[f"bytes/{case}/num_faces"]
        assert np.all((num_faces >= 0) & (num_faces <= MAX_FACES))
        for key in (signatures.OUTPUT_BOXES, signatures.OUTPUT_BOX_SCORES,
                    signatures.OUTPUT_ATTRIBUTE_PROBABILITIES, signatures.OUTPUT_ATTRIBUTE_SCORES):
            value = got[f"bytes/{case}/{key}"]
            for b, n in enumerate(num_faces):
                assert np.all(value[b, n:] == 0), (case, key, b)


def test_assets_and_warmup(exported):
    from tensorflow_serving.apis import prediction_log_pb2

    path = exported["paths"]["wild"]
    names = (path / "assets" / signatures.ATTRIBUTES_ASSET).read_text().splitlines()
    assert tuple(names) == ATTRIBUTE_NAMES
    assert json.loads((path / "assets" / "config.json").read_text()) == {"preset": "tiny", "test": True}
    records = list(tf.data.TFRecordDataset(
        str(path / "assets.extra" / signatures.WARMUP_FILE)).as_numpy_iterator())
    assert 1 <= len(records) <= 1000
    for record in records:
        log = prediction_log_pb2.PredictionLog.FromString(record)
        request = log.predict_log.request
        assert request.model_spec.signature_name == signatures.SIGNATURE_BYTES
        tensor = tf.make_ndarray(request.inputs[signatures.INPUT_IMAGE_BYTES])
        assert tensor.shape == (1,)
        assert preprocess.decode_image(tensor[0]).shape[-1] == 3


def test_versions_default_to_next_and_refuse_overwrite(exported, tmp_path):
    model = exported["models"]["aligned"]
    (tmp_path / "3").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / ".tmp-9-1").mkdir()  # a crashed export is not a version
    assert export.existing_versions(tmp_path) == [3]
    path = export.export_saved_model(model, tmp_path)
    assert path == tmp_path / "4"
    with pytest.raises(FileExistsError):
        export.export_saved_model(model, tmp_path, version=4)
    marker = path / "assets" / "marker"
    marker.write_text("old")
    assert export.export_saved_model(model, tmp_path, version=4, overwrite=True) == path
    assert not marker.exists() and (path / "saved_model.pb").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-9-1", "3", "4", "notes"]


def test_failure_mid_write_leaves_no_version(exported, tmp_path, monkeypatch):
    def fail(*args, **kwargs):  # the SavedModel is already written when the warmup file fails
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(signatures, "write_warmup_requests", fail)
    with pytest.raises(OSError, match="simulated"):
        export.export_saved_model(exported["models"]["aligned"], tmp_path, version=5)
    assert list(tmp_path.iterdir()) == []


def test_crash_mid_write_leaves_no_numeric_version(tmp_path):
    """A hard crash (os._exit, no cleanup) after the SavedModel is written: only a hidden temp dir."""
    script = textwrap.dedent(f"""
        import os, keras
        from tfattr import export, signatures
        keras.utils.set_random_seed(0)
        model = export.build_model("tiny", aligned=True)
        def crash(*args, **kwargs):
            os._exit(17)
        signatures.write_warmup_requests = crash
        export.export_saved_model(model, {str(tmp_path)!r}, version=1)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=str(REPO), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 17, proc.stderr[-3000:]
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".tmp-1-"), left
    assert (tmp_path / left[0] / "saved_model.pb").exists()  # the crash really was mid-write
    assert export.existing_versions(tmp_path) == []


# ------------------------------------------------------------ a real tiny run
@pytest.fixture(scope="module")
def trained_workdir(tiny_run):
    """A real `tfattr.train` workdir (tiny preset, every inference stage, a couple of steps
    each), shared with the other end-to-end tests (tests/conftest.py)."""
    return tiny_run["workdir"]


@pytest.mark.slow
def test_export_from_a_real_tiny_workdir(trained_workdir, tiny_run, synthetic_root, tmp_path,
                                         capsys):
    out = tmp_path / "models" / "tfattr"
    assert export.main(["--workdir", str(trained_workdir), "--out", str(out)]) == 0
    assert "exported" in capsys.readouterr().out
    path = out / "1"
    run_config = json.loads((trained_workdir / "config.json").read_text())
    assert json.loads((path / "assets" / "config.json").read_text()) == run_config

    model = export.build_model_from_workdir(trained_workdir)
    assert not model.aligned  # ANet was trained on LNet-localized faces
    assert model.face_enlarge == 1.5  # the run's anet.face_enlarge (tests/conftest.py), not 1.2
    # ANet was fine-tuned on every patch of each region per step (anet.patches=all)
    assert json.loads((trained_workdir / "anet" / "DONE").read_text())["patches"] == "all"
    localizer = json.loads((trained_workdir / "lnet_s" / "localizer.json").read_text())
    assert model.localizer.threshold == pytest.approx(localizer["threshold"])
    wild = sorted((Path(synthetic_root) / "img_celeba").iterdir())[:3]
    data = tf.constant([p.read_bytes() for p in wild])
    expected = model.predict_image_bytes(data)
    got = tf.saved_model.load(str(path)).signatures[signatures.SIGNATURE_BYTES](
        **{signatures.INPUT_IMAGE_BYTES: data})
    for key in OUTPUT_KEYS:  # graph vs eager: float32 rounding x the SVM (tests/conftest.py)
        atol = 1e-4 + (tiny_run["score_atol"] if key.startswith("attribute_") else 0.0)
        np.testing.assert_allclose(got[key].numpy(), expected[key].numpy(), rtol=1e-4, atol=atol,
                                   err_msg=key)

    # Same run, the aligned variant; and the CLI refuses to replace version 1.
    assert export.build_model_from_workdir(trained_workdir, variant="aligned").max_faces == 1
    assert export.main(["--workdir", str(trained_workdir), "--out", str(out), "--version", "1"]) == 2
    assert "exists" in capsys.readouterr().err


def test_cli_reports_a_missing_workdir(tmp_path, capsys):
    assert export.main(["--workdir", str(tmp_path / "nope"), "--out", str(tmp_path / "m")]) == 2
    assert "config.json" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
