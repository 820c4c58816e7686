"""Shared pytest fixtures."""

import pytest


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A small synthetic CelebA-layout dataset (24 identities x 6 images, seed 0), made once
    per test session; returns its Path (load it with tfattr.data.celeba.load_celeba)."""
    from tfattr.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("synthetic") / "data"
    generate_dataset(root, num_identities=24, images_per_identity=6, seed=0, num_backgrounds=6,
                     progress=False)
    return root


REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, synthetic_root):
    """A real `python -m tfattr.train` workdir (tiny preset, every inference stage,
    a couple of steps each: the numbers are untrained, the code path is real)
    exported with `python -m tfattr.export`. Returns a dict with `data`, `workdir`,
    `model_base` (the base path a server watches), `version_dir` and `score_atol`."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("tiny_run")
    workdir = root / "run"
    model_base = root / "models" / "tfattr"
    train = [sys.executable, "-m", "tfattr.train", "--data", f"synthetic:{synthetic_root}",
             "--preset", "tiny", "--workdir", str(workdir), "--stages", "lnet_o,lnet_s,anet,svm",
             "--set", "train.batch_size=8", "--set", "train.verbose=0",
             "--set", "lnet_o.max_steps=2", "--set", "lnet_s.max_steps=2",
             "--set", "lnet.s_box_head_epochs=1", "--set", "lnet.s_box_head_refine=true",
             "--set", "anet.max_steps=2", "--set", "anet.init=scratch", "--set", "svm.c_grid=0.1",
             # not the preset's 1.2: the export and the evaluators must read the run's value
             "--set", "anet.face_enlarge=1.5",
             # every patch of each region per step, through the interweaved pass
             "--set", "anet.patches=all",
             # the attribute-trained framer re-frames LNet's regions: the SVM stage, the
             # evaluators and the export must cut the re-framed regions
             "--set", "anet.framer=true",
             # its training contexts jittered (cut from the larger cached crops)
             "--set", "anet.framer_jitter=0.1",
             # a lighter framer than the default: the SVM stage, the evaluators and the export
             # must rebuild it from the anet stage's record to load its weights
             "--set", "anet.framer_filters=8,16,16", "--set", "anet.framer_input_pool=4",
             # boxes scored by LNet_o x LNet_s (the benchmark's recipe): the export, the
             # server and the evaluators below run that graph
             "--set", "lnet.box_score=cascade"]
    export = [sys.executable, "-m", "tfattr.export", "--workdir", str(workdir),
              "--out", str(model_base), "--version", "1"]
    for cmd in (train, export):
        proc = subprocess.run(cmd, cwd=str(REPO), capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}"
    import numpy as np

    # The untrained SVM folds large weights onto a few features (a row's L1 norm up to ~230):
    # float32 rounding of the features (~1e-6: graph vs eager, batch 3 vs 1) moves a score by
    # up to L1 x 1e-6 (2.5e-4 measured). Tests comparing two computations of the scores
    # allow `score_atol` = 1e-5 per unit of L1 (x the Platt scale, for the probabilities).
    with np.load(workdir / "svm" / "svm_head.npz") as svm:
        l1 = float(np.abs(svm["coef"]).sum(1).max() * max(1.0, np.abs(svm["platt_scale"]).max()))
    return {"data": synthetic_root, "workdir": workdir, "model_base": model_base,
            "version_dir": model_base / "1", "score_atol": 1e-5 * l1}
