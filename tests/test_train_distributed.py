"""tf.distribute: 2 logical CPUs (MirroredStrategy) == 1 device, and a 2-worker
MultiWorkerMirroredStrategy run on 127.0.0.1 whose workers agree.

Each run is a `python -m tfattr.train` subprocess (logical devices and the
multi-worker runtime must be configured before TF starts); the four runs are
started together. The stage is anet_pretrain (softmax + the similarity loss,
whose reduction over replicas this checks) on the aligned crops.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

TIMEOUT = 600


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cmd(root, workdir, *extra):
    return [sys.executable, "-m", "tfattr.train", "--data", f"synthetic:{root}", "--preset", "tiny",
            "--workdir", str(workdir), "--stages", "anet_pretrain", "--deterministic",
            "--set", "train.batch_size=8", "--set", "train.checkpoint_every=2",
            "--set", "anet_pretrain.max_steps=4", "--set", "train.verbose=0",
            "--set", "anet.face_source=aligned", *extra]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", **extra)
    return env


def weights(path):
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return out


def assert_same_weights(a, b, atol):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and wa
    for key in wa:
        np.testing.assert_allclose(wa[key], wb[key], atol=atol, rtol=1e-4, err_msg=key)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, synthetic_root):
    base = tmp_path_factory.mktemp("distributed")
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = {
        "one": subprocess.Popen(_cmd(synthetic_root, base / "one"), env=_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
        "two": subprocess.Popen(_cmd(synthetic_root, base / "two", "--cpu-devices", "2"), env=_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
    }
    for i in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        procs[f"worker{i}"] = subprocess.Popen(
            _cmd(synthetic_root, base / "multi"), env=_env(TF_CONFIG=tf_config),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    logs = {}
    try:
        for name, proc in procs.items():
            logs[name] = proc.communicate(timeout=TIMEOUT)[0]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    for name, proc in procs.items():
        assert proc.returncode == 0, f"{name} failed:\n{logs[name][-4000:]}"
    return base, logs


def test_two_logical_cpus_equal_one_device(runs):
    base, logs = runs
    assert "MirroredStrategy over 2 logical CPU devices" in logs["two"]
    assert "default strategy" in logs["one"]
    assert_same_weights(base / "one" / "anet_pretrain" / "model.weights.h5",
                        base / "two" / "anet_pretrain" / "model.weights.h5", atol=1e-5)


def test_multi_worker_runs_and_workers_agree(runs):
    base, logs = runs
    assert "MultiWorkerMirroredStrategy (2 workers" in logs["worker0"]
    chief = base / "multi" / "anet_pretrain" / "model.weights.h5"
    other = base / "multi" / "workers" / "1" / "anet_pretrain" / "model.weights.h5"
    assert (base / "multi" / "anet_pretrain" / "DONE").exists()
    assert_same_weights(chief, other, atol=1e-6)
    # Same global batches as the single-device run: same result up to float reordering.
    assert_same_weights(chief, base / "one" / "anet_pretrain" / "model.weights.h5", atol=1e-4)
