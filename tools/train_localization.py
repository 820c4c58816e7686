"""Trains the LNet stages only (lnet_pretrain, lnet_o, lnet_s) with the stage functions.

A thin driver for localization experiments until/besides `python -m tfattr.train`:
builds a `StageContext` and calls `tfattr.stages.lnet.run_*`.

    python tools/train_localization.py --data synthetic:DIR --workdir RUN \
        [--set lnet_o.epochs=8] [--set lnet.attributes=Male,Smiling,...] [--set lnet.synthetic_objects=60]
"""

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import keras

from tfattr import config as config_lib
from tfattr.data.celeba import parse_data_spec
from tfattr.presets import get_preset
from tfattr.stages import lnet as lnet_stages
from tfattr.stages.context import StageContext


class _Context(StageContext):
    """StageContext without TensorBoard when the tensorboard package is absent."""

    def tensorboard(self, stage):
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            return keras.callbacks.Callback()
        return super().tensorboard(stage)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--workdir", required=True, type=Path)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="key=value (lnet.* or lnet_o.* ...)")
    ap.add_argument("--stages", default="lnet_pretrain,lnet_o,lnet_s")
    args = ap.parse_args(argv)

    base = config_lib.ExperimentConfig(preset=args.preset, data=args.data)
    for item in args.set:
        key, _, value = item.partition("=")
        cfg = base = config_lib.override(base, key, value)
    cfg = base
    options = lnet_stages.lnet_options(cfg)  # validates the lnet.* keys
    keras.utils.set_random_seed(args.seed)
    args.workdir.mkdir(parents=True, exist_ok=True)
    (args.workdir / "lnet_options.json").write_text(json.dumps(dataclasses.asdict(options), indent=2))
    started = time.time()
    ctx = _Context(config=cfg, preset=get_preset(args.preset), data=parse_data_spec(args.data),
                       workdir=args.workdir, global_batch_size=args.batch_size, seed=args.seed,
                       verbose=2, log=lambda m: print(f"[{time.time() - started:6.0f}s] {m}", flush=True))
    runners = {"lnet_pretrain": lnet_stages.run_lnet_pretrain, "lnet_o": lnet_stages.run_lnet_o,
               "lnet_s": lnet_stages.run_lnet_s}
    for stage in args.stages.split(","):
        if ctx.is_done(stage):
            ctx.log(f"[{stage}] already done")
            continue
        keras.utils.set_random_seed(args.seed)  # as tfattr.train: each stage from the seed
        runners[stage](ctx)
    ctx.log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
