"""python -m tfattr.train: --help, config resolution, bad input (exit 2, one line), aligned-only plans."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from tfattr import config as config_lib
from tfattr import train

REPO = Path(__file__).resolve().parents[1]


def _run(argv, capsys):
    code = train.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as e:
        train.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--data", "--preset", "--stages", "--workdir", "--set", "--config",
                 "--cpu-devices", "--deterministic"):
        assert flag in text
    for stage in config_lib.STAGE_NAMES:
        assert stage in text


def test_config_round_trip_and_overrides():
    config = config_lib.ExperimentConfig()
    assert config_lib.from_dict(json.loads(json.dumps(config_lib.asdict(config)))) == config
    config = config_lib.apply_overrides(config, [
        "train.batch_size=64", "train.deterministic=true", "anet.learning_rate=3e-4",
        "svm.c_grid=0.01,0.1", "stages=anet,svm", "lnet.synthetic_objects=20"])
    assert config.train.batch_size == 64 and config.train.deterministic is True
    assert config.anet.learning_rate == 3e-4 and config.svm.c_grid == (0.01, 0.1)
    assert config.stages == ("anet", "svm") and config.lnet == {"synthetic_objects": 20}
    assert config_lib.from_dict(json.loads(json.dumps(config_lib.asdict(config)))) == config
    with pytest.raises(config_lib.ConfigError, match="unknown config key 'train.batchsize'"):
        config_lib.apply_overrides(config, ["train.batchsize=3"])
    with pytest.raises(config_lib.ConfigError, match="expected an integer"):
        config_lib.apply_overrides(config, ["train.batch_size=big"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.train.batch_size = 1


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "training").glob("*.py")))
def test_run_configs_load(name, tmp_path, monkeypatch, synthetic_root):
    monkeypatch.chdir(tmp_path)  # run configs load from any working directory
    config = config_lib.load_config_file(REPO / "training" / f"{name}.py")
    assert isinstance(config, config_lib.ExperimentConfig)
    # every check `tfattr.train` runs before any training (values, preset, LNet options); the
    # stages are set so that lfwa.py's svm-only run needs no trained workdir
    args = train.build_parser().parse_args([
        "--config", str(REPO / "training" / f"{name}.py"), "--data", f"synthetic:{synthetic_root}",
        "--workdir", str(tmp_path / "run"), "--stages", "anet,svm"])
    assert train.resolve(args).config.lnet == config.lnet


def _bad(capsys, argv):
    code, out, err = _run(argv, capsys)
    assert code == 2, (out, err)
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("tfattr.train: error:"), err
    return lines[0]


def test_bad_input_exits_2_with_one_line(tmp_path, capsys, synthetic_root):
    work = str(tmp_path / "run")
    assert "not found" in _bad(capsys, ["--data", f"synthetic:{tmp_path}/nope", "--workdir", work])
    assert "unknown dataset kind" in _bad(capsys, ["--data", f"imagenet:{synthetic_root}", "--workdir", work])
    assert "unknown stage" in _bad(capsys, ["--data", f"synthetic:{synthetic_root}", "--workdir", work,
                                            "--stages", "anet,fly"])
    assert "Unknown preset" in _bad(capsys, ["--data", f"synthetic:{synthetic_root}", "--workdir", work,
                                             "--preset", "huge"])
    assert "unknown config key" in _bad(capsys, ["--data", f"synthetic:{synthetic_root}",
                                                 "--workdir", work, "--set", "train.nope=1"])
    assert "--data is required" in _bad(capsys, ["--workdir", work])
    assert "lnet.s_init=lnet_o" in _bad(capsys, ["--data", f"synthetic:{synthetic_root}",
                                                 "--workdir", work, "--set", "lnet_s.epochs=0"])
    assert "--config" in _bad(capsys, ["--data", f"synthetic:{synthetic_root}", "--workdir", work,
                                       "--config", str(tmp_path / "missing.py")])
    # Malformed dataset: a bad attribute value.
    broken = tmp_path / "broken"
    shutil.copytree(synthetic_root, broken, ignore=shutil.ignore_patterns("img_*", "backgrounds"))
    (broken / "img_align_celeba").mkdir()
    attr = broken / "list_attr_celeba.txt"
    lines = attr.read_text().splitlines()
    lines[2] = lines[2].replace(" 1", " 7", 1) if " 1" in lines[2] else lines[2].replace("-1", "7", 1)
    attr.write_text("\n".join(lines) + "\n")
    msg = _bad(capsys, ["--data", f"synthetic:{broken}", "--workdir", work])
    assert "list_attr_celeba.txt:3" in msg
    # A workdir made with another preset / architecture.
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_text(json.dumps({"preset": "paper"}))
    assert "preset 'paper'" in _bad(capsys, ["--data", f"synthetic:{synthetic_root}",
                                             "--workdir", str(old), "--preset", "tiny"])
    (old / "config.json").write_text(json.dumps({"preset": "tiny", "architecture": {"anet": {}}}))
    assert "different 'tiny' architecture" in _bad(capsys, ["--data", f"synthetic:{synthetic_root}",
                                                            "--workdir", str(old)])
    assert "svm needs the anet stage" in _bad(capsys, ["--data", f"synthetic:{synthetic_root}",
                                                       "--workdir", work, "--stages", "svm"])
    assert "svm.split must be" in _bad(capsys, ["--data", f"synthetic:{synthetic_root}",
                                                "--workdir", work, "--set", "svm.split=test"])
    assert "svm.threshold must be" in _bad(capsys, ["--data", f"synthetic:{synthetic_root}",
                                                    "--workdir", work, "--set", "svm.threshold=x"])
    assert "anet.schedule must be" in _bad(capsys, ["--data", f"synthetic:{synthetic_root}",
                                                    "--workdir", work, "--set", "anet.schedule=x"])
    assert "anet.face_enlarge must be" in _bad(capsys, ["--data", f"synthetic:{synthetic_root}",
                                                        "--workdir", work,
                                                        "--set", "anet.face_enlarge=-1"])
    assert "anet.patches must be" in _bad(capsys, ["--data", f"synthetic:{synthetic_root}",
                                                   "--workdir", work, "--set", "anet.patches=some"])
    assert "needs --set anet.patches=all" in _bad(capsys, ["--data", f"synthetic:{synthetic_root}",
                                                           "--workdir", work,
                                                           "--set", "anet.framer=true"])
    assert "aligned crops" in _bad(capsys, ["--data", f"synthetic:{synthetic_root}",
                                            "--workdir", work, "--set", "anet.framer=true",
                                            "--set", "anet.patches=all",
                                            "--set", "anet.face_source=aligned"])
    for message, flag in (("anet.framer_context must be", "anet.framer_context=0.9"),
                          ("anet.framer_passes must be", "anet.framer_passes=0"),
                          ("anet.framer_fraction must be", "anet.framer_fraction=0"),
                          ("needs --set anet.framer=true", "anet.framer_fraction=0.5"),
                          ("anet.framer_jitter must be", "anet.framer_jitter=0.5"),
                          ("train.precision must be one of float32, mixed_bfloat16",
                           "train.precision=float16")):
        assert message in _bad(capsys, ["--data", f"synthetic:{synthetic_root}",
                                        "--workdir", work, "--set", flag])
    for bad in ("16,32", "16,0,32", "a,b,c"):
        assert "anet.framer_filters must be" in _bad(
            capsys, ["--data", f"synthetic:{synthetic_root}", "--workdir", work,
                     "--set", f"anet.framer_filters={bad}"])
    assert "anet_pretrain.face_source must be" in _bad(
        capsys, ["--data", f"synthetic:{synthetic_root}", "--workdir", work,
                 "--set", "anet_pretrain.face_source=wild"])
    assert "anet.framer_input_pool must be" in _bad(capsys, ["--data", f"synthetic:{synthetic_root}",
                                                             "--workdir", work,
                                                             "--set", "anet.framer_input_pool=0"])
    assert not (tmp_path / "run").exists()  # nothing was started


def test_aligned_only_data_skips_what_is_missing(tmp_path, synthetic_root):
    aligned = tmp_path / "aligned"
    shutil.copytree(synthetic_root, aligned, ignore=shutil.ignore_patterns("img_celeba", "backgrounds"))
    args = train.build_parser().parse_args(["--data", f"synthetic:{aligned}", "--workdir",
                                            str(tmp_path / "run")])
    plan = train.resolve(args)
    assert plan.stages == ("anet_pretrain", "anet", "svm")
    assert set(plan.skipped) == {"lnet_pretrain", "lnet_o", "lnet_s"}
    assert "no in-the-wild images" in plan.skipped["lnet_o"]
    (aligned / "identity_CelebA.txt").unlink()
    plan = train.resolve(args)
    assert plan.stages == ("anet", "svm")
    assert "no identity file" in plan.skipped["anet_pretrain"]


def test_aligned_identity_pretraining_needs_the_aligned_crops(tmp_path, synthetic_root, capsys):
    wild_only = tmp_path / "wild_only"
    shutil.copytree(synthetic_root, wild_only, ignore=shutil.ignore_patterns("img_align_celeba"))
    argv = ["--data", f"synthetic:{wild_only}", "--workdir", str(tmp_path / "run"),
            "--set", "anet_pretrain.face_source=aligned"]
    assert "has no aligned crops" in _bad(capsys, argv)
    # without the pre-training stage the option asks for nothing
    plan = train.resolve(train.build_parser().parse_args(argv + ["--stages", "anet,svm"]))
    assert plan.stages == ("anet", "svm")
    assert not (tmp_path / "run").exists()


def test_svm_split_train_plus_val_and_holdout_threshold_resolve(tmp_path, synthetic_root):
    args = train.build_parser().parse_args([
        "--data", f"synthetic:{synthetic_root}", "--workdir", str(tmp_path / "run"),
        "--set", "svm.split=train+val", "--set", "svm.threshold=holdout",
        "--set", "anet.schedule=cosine"])
    plan = train.resolve(args)
    assert plan.config.svm.split == "train+val" and plan.config.svm.threshold == "holdout"
    assert plan.config.anet.schedule == "cosine"


def test_svm_train_plus_val_fits_with_every_val_identity_held_out(tmp_path, synthetic_root, capsys):
    """svm.split=train+val: the val fit part may be empty (the SVMs still fit on ANet's
    training images); C, threshold and Platt use all the val identities."""
    from tfattr.data.celeba import load_celeba

    work = tmp_path / "run"
    code, _, err = _run(["--data", f"synthetic:{synthetic_root}", "--preset", "tiny",
                         "--workdir", str(work), "--stages", "anet,svm",
                         "--set", "anet.face_source=aligned", "--set", "anet.init=scratch",
                         "--set", "anet.max_steps=2", "--set", "train.batch_size=8",
                         "--set", "train.verbose=0", "--set", "svm.split=train+val",
                         "--set", "svm.holdout_fraction=0.99", "--set", "svm.c_grid=0.1"], capsys)
    assert code == 0, err
    data = load_celeba(synthetic_root, check_images=False)
    done = json.loads((work / "svm" / "DONE").read_text())
    assert done["fit_images"] == len(data.indices(0))
    assert done["holdout_images"] == len(data.indices(1))



def test_every_stage_starts_from_the_run_seed(tmp_path, synthetic_root, monkeypatch):
    """A stage draws the same random numbers whether it runs after other stages in the
    process or first (a run resumed at a stage boundary), so LNet_s' box head or ANet after
    its pre-training start from the same initial weights either way."""
    import numpy as np

    from tfattr import stages

    draws = {}

    class Recording:
        def __init__(self, stage):
            self.name, self.description, self.needs = stage.name, stage.description, stage.needs

        def run(self, ctx):
            draws.setdefault(self.name, []).append(np.random.rand(4))
            np.random.rand(100)  # what one stage draws must not reach the next
            return True

    for name in ("anet_pretrain", "anet"):
        monkeypatch.setitem(stages.STAGES, name, Recording(stages.STAGES[name]))
    base = ["--data", f"synthetic:{synthetic_root}", "--preset", "tiny", "--set", "train.seed=3"]
    assert train.main(base + ["--workdir", str(tmp_path / "a"), "--stages",
                              "anet_pretrain,anet"]) == 0
    assert train.main(base + ["--workdir", str(tmp_path / "b"), "--stages", "anet"]) == 0
    assert len(draws["anet"]) == 2
    np.testing.assert_array_equal(draws["anet"][0], draws["anet"][1])
    np.testing.assert_array_equal(draws["anet"][0], draws["anet_pretrain"][0])


def test_synthetic_wild_is_the_measured_in_the_wild_command():
    """training/synthetic_wild.py = training/synthetic.py with the --set flags of the
    tenth look's R1 run plus the fourteenth look's hair weights (docs/training.md), whose
    figures it quotes."""
    base = config_lib.load_config_file(REPO / "training" / "synthetic.py")
    flags = [
        "lnet_o.epochs=4", "lnet.calibration_images=300", "lnet.o_input_size=192",
        "lnet.o_map=face_tag", "lnet.head_shoulder_enlarge=2.5", "lnet.o_candidates=1",
        "lnet.s_box_scale=1.15", "lnet.s_box_aspect=1.15", "lnet.s_box_head_epochs=12",
        "lnet.s_box_head_rounds=1", "lnet.o_select=consistency", "lnet.s_box_head_scale_jitter=0.8",
        "lnet.s_box_head_min_face=0.3", "lnet.s_box_head_refine=true",
        "lnet.s_box_head_consensus=false", "lnet.box_score=cascade", "lnet.o_ensemble=false",
        "anet.patches=all", "anet.framer=true", "anet.epochs=80", "anet.framer_jitter=0.1",
        "anet.face_enlarge=1.6", "anet_pretrain.face_source=aligned",
        "anet.framer_filters=16,32,32", "anet.framer_input_pool=4", "train.precision=mixed_bfloat16",
        "anet.attribute_loss_weights.Straight_Hair=2.5", "anet.attribute_loss_weights.Wavy_Hair=2.5"]
    from tfattr.stages.lnet import lnet_options

    expected = dataclasses.replace(config_lib.apply_overrides(base, flags), name="synthetic_wild_tiny")
    config = config_lib.load_config_file(REPO / "training" / "synthetic_wild.py")
    assert lnet_options(config) == lnet_options(expected)  # --set gives LNet options as text
    assert dataclasses.replace(config, lnet={}) == dataclasses.replace(expected, lnet={})
