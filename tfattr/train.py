"""python -m tfattr.train: train the LNet/ANet/SVM stages of a run (docs/training.md).

  python -m tfattr.train --data synthetic:DATA --preset tiny --workdir RUN \\
      [--stages lnet_pretrain,lnet_o,lnet_s,anet_pretrain,anet,svm] \\
      [--config training/synthetic.py] [--set train.batch_size=64 ...] \\
      [--cpu-devices N] [--deterministic]

The only module that creates a tf.distribute strategy: MultiWorkerMirroredStrategy
when TF_CONFIG is set, MirroredStrategy over N logical CPU devices with
--cpu-devices N (N > 1), MirroredStrategy over the GPUs when there are several,
the default strategy otherwise. Every stage batches with the GLOBAL batch
(train.batch_size); Keras splits it over the replicas and reduces the losses
to the global-batch mean.

Re-running the same command resumes: stages with a DONE marker are skipped, an
interrupted stage continues from its last checkpoint. Bad input (a missing or
malformed dataset, an unknown stage/preset/config key, a workdir made with an
other architecture) exits with code 2 and one line on stderr before training.
"""

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from tfattr import config as config_lib
from tfattr.config import PRECISIONS, STAGE_NAMES, ConfigError

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints usage + message otherwise)
        raise UsageError(message)


def build_parser():
    p = _Parser(prog="python -m tfattr.train", description=__doc__.split("\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="Stages, in order: " + ", ".join(STAGE_NAMES) + ". See docs/training.md.")
    p.add_argument("--data", required=False, default=None,
                   help="dataset as KIND:DIR with KIND celeba, lfwa or synthetic (official CelebA "
                        "file layout; img_celeba/ and/or img_align_celeba/). Required unless the "
                        "--config file sets `data`.")
    p.add_argument("--preset", default=None,
                   help="architecture preset from tfattr/presets.py: paper or tiny "
                        "(default: the config's, 'tiny')")
    p.add_argument("--stages", default=None,
                   help="comma-separated stages to run (run in the canonical order); default: "
                        "every stage whose data is there. Stages already DONE in --workdir are "
                        "skipped.")
    p.add_argument("--workdir", required=True,
                   help="run directory: config.json, <stage>/ results and checkpoints, "
                        "tensorboard/, train.log. Re-running with the same workdir resumes.")
    p.add_argument("--config", default=None,
                   help="a run config file (plain Python defining get_config() -> "
                        "tfattr.config.ExperimentConfig), e.g. training/synthetic.py")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value by dotted path, repeatable, applied last, "
                        "e.g. --set train.batch_size=64 --set anet.epochs=3 "
                        "--set svm.c_grid=0.01,0.1 --set lnet.synthetic_objects=40")
    p.add_argument("--cpu-devices", type=int, default=0, metavar="N",
                   help="split the CPU into N logical devices and train with MirroredStrategy "
                        "over them (tests/debugging of multi-replica code without GPUs)")
    p.add_argument("--deterministic", action="store_true",
                   help="seeded, op-deterministic run whose data order is a function of "
                        "(seed, epoch, step): a resumed run ends with the same weights "
                        "(same as --set train.deterministic=true)")
    return p


# ------------------------------------------------------------------- resolve

@dataclasses.dataclass
class Plan:
    config: object
    preset: object
    data: object
    workdir: Path
    stages: tuple           # to run, in order
    skipped: dict           # stage -> reason


def resolve(args):
    """Everything that can be checked before TF starts: config, preset, data, workdir."""
    from tfattr.data.celeba import DatasetError, parse_data_spec
    from tfattr.presets import get_preset
    from tfattr.stages import STAGES, parse_stages

    config = config_lib.load_config_file(args.config) if args.config else config_lib.ExperimentConfig()
    if args.preset:
        config = dataclasses.replace(config, preset=args.preset)
    if args.data:
        config = dataclasses.replace(config, data=args.data)
    if args.stages:
        try:
            config = dataclasses.replace(config, stages=parse_stages(args.stages))
        except ValueError as e:
            raise UsageError(f"--stages: {e}") from None
    if args.deterministic:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, deterministic=True))
    config = config_lib.apply_overrides(config, args.set)
    _validate_values(config)

    try:
        preset = get_preset(config.preset)
    except ValueError as e:
        raise UsageError(f"--preset: {e}") from None
    if config.stages:
        try:
            parse_stages(",".join(config.stages))
        except ValueError as e:
            raise UsageError(f"stages: {e}") from None
    if not config.data:
        raise UsageError("--data is required (KIND:DIR, KIND = celeba, lfwa or synthetic)")
    try:
        data = parse_data_spec(config.data)
    except (DatasetError, ValueError) as e:
        raise UsageError(f"--data {config.data}: {e}") from None
    if config.lnet:
        from tfattr.stages.lnet import lnet_options

        try:
            lnet_options(config)
        except (ValueError, TypeError) as e:
            raise UsageError(f"lnet options: {e}") from None

    workdir = Path(args.workdir)
    _check_workdir(workdir, config, preset)

    requested = config.stages or STAGE_NAMES
    to_run, skipped = [], {}
    for name in requested:
        reason = STAGES[name].needs(data, config)
        if reason:
            skipped[name] = reason
        else:
            to_run.append(name)
    done = {s for s in STAGE_NAMES if (workdir / s / "DONE").exists()}
    if ("anet_pretrain" in to_run and config.anet_pretrain.face_source == "aligned"
            and data.aligned_dir is None):
        raise UsageError("anet_pretrain.face_source=aligned but the dataset has no aligned crops "
                         "(img_align_celeba/)")
    if "svm" in to_run and "anet" not in to_run and "anet" not in done:
        raise UsageError("stage svm needs the anet stage: add anet to --stages (or run it first)")
    if "lnet_s" in to_run and "lnet_o" not in to_run and "lnet_o" not in done:
        raise UsageError("stage lnet_s needs the lnet_o stage: add lnet_o to --stages")
    return Plan(config=config, preset=preset, data=data, workdir=workdir, stages=tuple(to_run),
                skipped=skipped)


def _validate_values(config):
    t = config.train
    if t.batch_size <= 0:
        raise UsageError(f"train.batch_size must be positive, got {t.batch_size}")
    if t.checkpoint_every < 0:
        raise UsageError(f"train.checkpoint_every must be >= 0, got {t.checkpoint_every}")
    if t.precision not in PRECISIONS:
        raise UsageError(f"train.precision must be one of {', '.join(PRECISIONS)}, "
                         f"got {t.precision!r}")
    if config.anet.face_source not in ("auto", "lnet", "aligned"):
        raise UsageError(f"anet.face_source must be auto, lnet or aligned, got {config.anet.face_source!r}")
    if config.anet_pretrain.face_source not in ("auto", "lnet", "aligned"):
        raise UsageError(f"anet_pretrain.face_source must be auto, lnet or aligned, "
                         f"got {config.anet_pretrain.face_source!r}")
    if config.anet.schedule not in ("constant", "cosine"):
        raise UsageError(f"anet.schedule must be constant or cosine, got {config.anet.schedule!r}")
    if config.anet.patches not in ("random", "all"):
        raise UsageError(f"anet.patches must be random or all, got {config.anet.patches!r}")
    if config.anet.framer and config.anet.patches != "all":
        raise UsageError("anet.framer=true trains the framer through whole regions: it needs "
                         "--set anet.patches=all")
    if config.anet.framer and config.anet.face_source == "aligned":
        raise UsageError("anet.framer=true re-frames LNet's regions; the aligned crops "
                         "(anet.face_source=aligned) have none")
    if config.anet.framer_context <= 1:
        raise UsageError(f"anet.framer_context must be > 1, got {config.anet.framer_context}")
    if config.anet.framer_passes < 1:
        raise UsageError(f"anet.framer_passes must be >= 1, got {config.anet.framer_passes}")
    if not 0 < config.anet.framer_fraction <= 1:
        raise UsageError(f"anet.framer_fraction must be in (0, 1], got {config.anet.framer_fraction}")
    if config.anet.framer_fraction < 1 and not config.anet.framer:
        raise UsageError("anet.framer_fraction < 1 freezes the framer part-way: it needs "
                         "--set anet.framer=true")
    if not 0 <= config.anet.framer_jitter <= 0.3:
        raise UsageError(f"anet.framer_jitter must be in [0, 0.3], got {config.anet.framer_jitter}")
    filters, pool = config.anet.framer_filters, config.anet.framer_input_pool
    if (not isinstance(filters, (tuple, list)) or len(filters) != 3
            or any(not isinstance(f, int) or f < 1 for f in filters)):
        raise UsageError(f"anet.framer_filters must be three positive integers, got {filters!r}")
    if not isinstance(pool, int) or not 1 <= pool <= 8:
        raise UsageError(f"anet.framer_input_pool must be an integer in [1, 8], got {pool!r}")
    if config.anet.face_enlarge < 0:
        raise UsageError(f"anet.face_enlarge must be >= 0 (0: the preset's), got {config.anet.face_enlarge}")
    if config.anet.init not in ("pretrain", "scratch"):
        raise UsageError(f"anet.init must be pretrain or scratch, got {config.anet.init!r}")
    if config.svm.split not in ("val", "train_heldout", "train+val"):
        raise UsageError(f"svm.split must be val, train_heldout or train+val, "
                         f"got {config.svm.split!r}")
    if config.svm.threshold not in ("zero", "holdout"):
        raise UsageError(f"svm.threshold must be zero or holdout, got {config.svm.threshold!r}")
    if not config.svm.c_grid or any(float(c) <= 0 for c in config.svm.c_grid):
        raise UsageError(f"svm.c_grid must be positive numbers, got {config.svm.c_grid!r}")
    if not 0 < config.svm.holdout_fraction < 1:
        raise UsageError(f"svm.holdout_fraction must be in (0, 1), got {config.svm.holdout_fraction}")
    if config.lnet_s.epochs == 0 and dict(config.lnet or {}).get("s_init") != "lnet_o":
        raise UsageError("lnet_s.epochs=0 (LNet_s = LNet_o's conv stack, not fine-tuned) needs "
                         "--set lnet.s_init=lnet_o")


def architecture_record(preset):
    return json.loads(json.dumps(dataclasses.asdict(preset)))


def _check_workdir(workdir, config, preset):
    if workdir.exists() and not workdir.is_dir():
        raise UsageError(f"--workdir {workdir} exists and is not a directory")
    saved_path = workdir / "config.json"
    if not saved_path.exists():
        return
    try:
        saved = json.loads(saved_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"--workdir {workdir}: unreadable config.json ({e})") from None
    if saved.get("preset") != config.preset:
        raise UsageError(f"--workdir {workdir} was made with preset {saved.get('preset')!r}, not "
                         f"{config.preset!r}: use another workdir or the same preset")
    if saved.get("architecture") not in (None, architecture_record(preset)):
        raise UsageError(f"--workdir {workdir} was made with a different {config.preset!r} "
                         "architecture (config.json 'architecture' differs from tfattr/presets.py)")


# ------------------------------------------------------------------ strategy

def configure_cpu_devices(n):
    """Splits the first physical CPU into n logical devices; must run before TF initialises."""
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def make_strategy(cpu_devices=0):
    """(strategy or None for the default one, description, is_chief, worker_index)."""
    import tensorflow as tf

    tf_config = os.environ.get("TF_CONFIG")
    if tf_config:
        try:
            cluster = json.loads(tf_config)
            task = cluster.get("task", {})
            kind, index = task.get("type", "worker"), int(task.get("index", 0))
            workers = cluster["cluster"].get("worker", [])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise UsageError(f"TF_CONFIG is not valid cluster JSON ({e})") from None
        if cpu_devices > 1:
            raise UsageError("--cpu-devices cannot be combined with TF_CONFIG (one CPU replica "
                             "per worker)")
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        is_chief = (kind == "chief") or (kind == "worker" and index == 0
                                         and "chief" not in cluster["cluster"])
        return (strategy, f"MultiWorkerMirroredStrategy ({len(workers)} workers, this is "
                f"{kind} {index}, {strategy.num_replicas_in_sync} replicas)", is_chief, index)
    if cpu_devices and cpu_devices > 1:
        devices = configure_cpu_devices(cpu_devices)
        strategy = tf.distribute.MirroredStrategy(devices)
        return strategy, f"MirroredStrategy over {len(devices)} logical CPU devices", True, 0
    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        strategy = tf.distribute.MirroredStrategy()
        return strategy, f"MirroredStrategy over {len(gpus)} GPUs", True, 0
    return None, "default strategy (one device)", True, 0


# ---------------------------------------------------------------------- main

def _logger(workdir):
    started = time.time()
    log_path = workdir / "train.log"

    def log(msg):
        line = f"[tfattr.train {time.time() - started:7.1f}s] {msg}"
        print(line, flush=True)
        with open(log_path, "a") as f:
            f.write(line + "\n")

    return log


def main(argv=None):
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.cpu_devices < 0:
            raise UsageError(f"--cpu-devices must be >= 0, got {args.cpu_devices}")
        plan = resolve(args)
    except (UsageError, ConfigError) as e:
        print(f"tfattr.train: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        strategy, description, is_chief, worker_index = make_strategy(args.cpu_devices)
    except UsageError as e:
        print(f"tfattr.train: error: {e}", file=sys.stderr)
        return EXIT_USAGE

    import keras

    from tfattr.stages import STAGES
    from tfattr.stages.context import StageContext, set_determinism

    config = plan.config
    replicas = 1 if strategy is None else strategy.num_replicas_in_sync
    if config.train.batch_size % replicas:
        print(f"tfattr.train: error: train.batch_size {config.train.batch_size} is not divisible "
              f"by the {replicas} replicas", file=sys.stderr)
        return EXIT_USAGE
    # Non-chief workers write to their own folder (checkpoints, TensorBoard, results).
    workdir = plan.workdir if is_chief else plan.workdir / "workers" / str(worker_index)
    workdir.mkdir(parents=True, exist_ok=True)
    log = _logger(workdir)
    set_determinism(config.train.seed, config.train.deterministic)
    config_lib.save(config, workdir / "config.json",
                    extra={"architecture": architecture_record(plan.preset)})
    log(f"data {config.data}: {len(plan.data)} images "
        f"(train {int((plan.data.partition == 0).sum())}, val {int((plan.data.partition == 1).sum())}, "
        f"test {int((plan.data.partition == 2).sum())}); preset {config.preset}; {description}; "
        f"global batch {config.train.batch_size}"
        + ("; deterministic" if config.train.deterministic else ""))
    for name, reason in plan.skipped.items():
        log(f"[{name}] skipped: {reason}")

    ctx = StageContext(config=config, preset=plan.preset, data=plan.data, workdir=workdir,
                       strategy=strategy, global_batch_size=config.train.batch_size,
                       deterministic=config.train.deterministic, seed=config.train.seed,
                       checkpoint_every=config.train.checkpoint_every,
                       verbose=config.train.verbose, log=log, is_chief=is_chief,
                       skipped=dict(plan.skipped))
    started = time.time()
    for name in plan.stages:
        if ctx.is_done(name):
            log(f"[{name}] DONE already (skipping; delete {workdir / name} to redo it)")
            continue
        t0 = time.time()
        log(f"[{name}] {STAGES[name].description}")
        # Every stage starts from the run's seed: a run resumed at a stage boundary (or given
        # fewer --stages) trains the stage exactly like an uninterrupted run.
        keras.utils.set_random_seed(int(config.train.seed))
        result = STAGES[name].run(ctx)
        if result is False:
            ctx.skipped[name] = "skipped by the stage"
            log(f"[{name}] skipped ({time.time() - t0:.1f}s)")
        else:
            log(f"[{name}] done in {time.time() - t0:.1f}s")
    log(f"finished in {time.time() - started:.1f}s; results in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
