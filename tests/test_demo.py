"""`make demo`'s code path end to end at a smaller size: generate -> train every stage ->
export -> serve over gRPC -> predict -> reports -> summary; the server is stopped after."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_demo_end_to_end_small(tmp_path):
    out = tmp_path / "demo_out"
    steps = ["lnet_pretrain.max_steps=1", "lnet_o.max_steps=2", "lnet_s.max_steps=2",
             "anet_pretrain.max_steps=2", "anet.max_steps=2", "svm.c_grid=0.1",
             "lnet.synthetic_objects=4", "lnet.calibration_images=20", "train.batch_size=8"]
    cmd = [sys.executable, "-m", "tfattr.demo", "--out", str(out), "--identities", "20",
           "--images-per-identity", "3", "--num-predict", "3"]
    for item in steps:
        cmd += ["--set", item]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "server stopped" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_images"] > 0
    assert 0.0 <= summary["mean_accuracy_all_40"] <= 1.0
    assert isinstance(summary["accuracy_by_localization"], dict)
    predictions = sorted((out / "predictions").glob("*.json"))
    assert len(predictions) == 3
    assert len(list((out / "predictions").glob("*.png"))) == 3
    for name in ("table1.md", "table1.csv", "table1.png"):
        assert (out / "report" / "attributes" / name).stat().st_size > 0
    assert (out / "report" / "localization" / "roc_fppi.png").exists()
    assert list((out / "report" / "analyses").glob("*.png"))
