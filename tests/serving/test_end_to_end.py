"""train (tiny) -> export -> serve over gRPC on loopback -> Predict: the same outputs as
in process, then the predict CLI writes its JSON + annotated PNG (DESIGN.md contracts)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import serving_helpers as h
from tfattr import signatures as sig
from tfattr.attributes import ATTRIBUTE_NAMES
from tfattr.client import AttributeClient
from tfattr.data.celeba import load_celeba

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    proc = h.ServerProcess(tiny_run["model_base"], tmp_path_factory.mktemp("e2e") / "server.log")
    yield proc
    assert proc.stop() == 0, proc.log()


def _test_images(data_root, count=4):
    data = load_celeba(data_root)
    multi = [i for i in range(len(data.filenames)) if data.all_face_boxes is not None
             and len(data.all_face_boxes.get(data.filenames[i], ())) > 1]
    chosen = list(dict.fromkeys(multi[:1] + list(data.indices(2))))[:count]
    return [data.wild_path(i) for i in chosen]


def test_grpc_outputs_equal_in_process(tiny_run, server):
    paths = _test_images(tiny_run["data"])
    images = [p.read_bytes() for p in paths]
    loaded = tf.saved_model.load(str(tiny_run["version_dir"]))
    expected = loaded.signatures[sig.SIGNATURE_BYTES](
        **{sig.INPUT_IMAGE_BYTES: tf.constant(images)})
    got, version = AttributeClient(server.target, timeout=120).predict_raw(images)
    assert version == 1
    assert set(got) == set(sig.OUTPUT_KEYS)
    for key in sig.OUTPUT_KEYS:
        np.testing.assert_allclose(got[key], expected[key].numpy(), rtol=1e-5, atol=1e-5,
                                   err_msg=key)
    assert got["attribute_probabilities"].shape[-1] == len(ATTRIBUTE_NAMES)


def test_predict_cli_over_grpc(tiny_run, server, tmp_path):
    paths = _test_images(tiny_run["data"], count=2)
    out = tmp_path / "pred"
    proc = subprocess.run([sys.executable, "-m", "tfattr.predict", *map(str, paths), "--server",
                           server.target, "--out", str(out)], cwd=h.REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for path in paths:
        result = json.loads((out / f"{path.stem}.json").read_text())
        for face in result["faces"]:
            assert set(face["attributes"]) == set(ATTRIBUTE_NAMES)
            assert all(0.0 <= p <= 1.0 for p in face["attributes"].values())
        assert (out / f"{path.stem}.png").stat().st_size > 0
