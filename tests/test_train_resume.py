"""Fault tolerance: SIGKILL in the middle of a stage, same command again -> same final weights.

Runs (subprocesses, started together): an uninterrupted deterministic run, and
the same command killed with SIGKILL once a checkpoint for step >= 4 exists,
then started again. Also checks that the aligned-only dataset trains ANet and
the SVMs on the whole aligned crops and that `tfattr.evaluate attributes` reads
the result.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_train_distributed import _env, assert_same_weights

TIMEOUT = 600
KILL_AT = 4


def _cmd(root, workdir):
    return [sys.executable, "-m", "tfattr.train", "--data", f"synthetic:{root}", "--preset", "tiny",
            "--workdir", str(workdir), "--stages", "anet,svm", "--deterministic",
            "--set", "train.batch_size=8", "--set", "train.checkpoint_every=2",
            "--set", "anet.max_steps=12", "--set", "anet.init=scratch", "--set", "train.verbose=0",
            "--set", "svm.c_grid=0.1"]


def _checkpoint_steps(workdir):
    folder = Path(workdir) / "anet" / "checkpoints"
    if not folder.is_dir():
        return []
    return [int(p.name.split("-")[1].split(".")[0]) for p in folder.glob("ckpt-*.weights.h5")]


def test_sigkill_resume_gives_the_uninterrupted_weights(tmp_path, synthetic_root):
    full = subprocess.Popen(_cmd(synthetic_root, tmp_path / "full"), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = subprocess.Popen(_cmd(synthetic_root, tmp_path / "killed"), env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + TIMEOUT
        while max(_checkpoint_steps(tmp_path / "killed"), default=0) < KILL_AT:
            assert killed.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline, "no checkpoint in time"
            time.sleep(0.2)
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(timeout=60)
        assert killed.returncode == -signal.SIGKILL
        assert not (tmp_path / "killed" / "anet" / "DONE").exists()
        stopped_at = max(_checkpoint_steps(tmp_path / "killed"))
        assert stopped_at < 12

        again = subprocess.run(_cmd(synthetic_root, tmp_path / "killed"), env=_env(),
                               capture_output=True, text=True, timeout=TIMEOUT)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert "resumed from ckpt-" in again.stdout
        full_out = full.communicate(timeout=TIMEOUT)[0]
        assert full.returncode == 0, full_out[-3000:]
    finally:
        for p in (full, killed):
            if p.poll() is None:
                p.kill()
    assert_same_weights(tmp_path / "full" / "anet" / "model.weights.h5",
                        tmp_path / "killed" / "anet" / "model.weights.h5", atol=1e-6)

    # A finished run started again skips its DONE stages.
    rerun = subprocess.run(_cmd(synthetic_root, tmp_path / "full"), env=_env(),
                           capture_output=True, text=True, timeout=TIMEOUT)
    assert rerun.returncode == 0 and "[anet] DONE already" in rerun.stdout

    # The workdir as a model for `tfattr.evaluate attributes` (aligned crops: no LNet here).
    out = tmp_path / "eval"
    ev = subprocess.run([sys.executable, "-m", "tfattr.evaluate", "attributes", "--data",
                         f"synthetic:{synthetic_root}", "--model", str(tmp_path / "full"),
                         "--out", str(out)], env=_env(), capture_output=True, text=True,
                        timeout=TIMEOUT)
    assert ev.returncode == 0, ev.stdout[-3000:] + ev.stderr[-3000:]
    assert "mean (rendered" in ev.stdout and "majority" in ev.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["partition"] == "test" and 0 <= metrics["mean_accuracy"] <= 1
    assert (out / "attributes.csv").exists()
    summary = json.loads((tmp_path / "full" / "anet" / "DONE").read_text())
    assert summary["face_source"] == "aligned" and summary["init"] == "scratch"
