"""Benchmark: the anet stage's joint framer + ANet training step (tiny preset, batch 32).

  python tools/bench_training_step.py [--steps 60] [--batch 32]

Times `model.fit` steps of the stage's own joint model (`_framed_attribute_model`: context
crop -> framer -> re-framed region -> every patch in one interweaved pass -> Dense(40)) on
random context crops, the data pipeline as in the stage (the jittered window of a larger
cached crop, made in tf.data). Variants, in the same run: the default framer in float32 (the
baseline), the (16, 32, 32) / pooling-4 framer in float32, and both under
`train.precision=mixed_bfloat16`, and the last of them also with the Keras batch-norm
layers in place of the interweaved pass' fused batch norm (docs/training.md, twelfth
look). Prints CPU ms and wall ms per step and each variant's CPU time as a ratio of the
baseline's (CPU time: the wall time of short runs on a shared VM sits on plateaus,
docs/training.md, eighth look).
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = (  # (label, framer filters, framer input pooling, precision, fused batch norm)
    ("default framer, float32 (baseline)", (24, 48, 64), 2, "float32", True),
    ("(16, 32, 32)/4 framer, float32", (16, 32, 32), 4, "float32", True),
    ("default framer, mixed_bfloat16", (24, 48, 64), 2, "mixed_bfloat16", True),
    ("(16, 32, 32)/4, mixed_bfloat16, Keras BN", (16, 32, 32), 4, "mixed_bfloat16", False),
    ("(16, 32, 32)/4 framer, mixed_bfloat16", (16, 32, 32), 4, "mixed_bfloat16", True),
)


def time_variant(filters, pool, precision, steps, batch, warmup=10, fused_batch_norm=True):
    from unittest import mock

    from tfattr.layers import interweave

    if fused_batch_norm:
        return _time_variant(filters, pool, precision, steps, batch, warmup)
    with mock.patch.object(interweave, "_can_fuse_batch_norm", lambda bn, x: False):
        return _time_variant(filters, pool, precision, steps, batch, warmup)


def _time_variant(filters, pool, precision, steps, batch, warmup):
    import keras
    import numpy as np
    import tensorflow as tf

    from tfattr.config import ExperimentConfig, TrainConfig
    from tfattr.layers.region_framer import crop_from_context
    from tfattr.presets import get_preset
    from tfattr.stages import anet as stage
    from tfattr.stages.context import StageContext

    preset = get_preset("tiny")
    context, jitter = 1.75, 0.1
    cached = stage.jittered_context(context, jitter)
    ctx = StageContext(config=ExperimentConfig(train=TrainConfig(precision=precision)),
                       preset=preset, data=None, workdir=None)
    keras.utils.set_random_seed(0)
    with ctx.precision_scope():
        framer = stage.build_framer(preset, context, filters=filters, input_pool=pool)
        model = stage._framed_attribute_model(stage.build_anet_backbone(preset), framer, preset)
        stage._compile_for_attributes(model, keras.optimizers.Adam(1e-3))
    rng = np.random.default_rng(0)
    size = stage.context_size(preset, cached)
    crops = tf.constant(rng.integers(0, 256, (256, size, size, 3), np.uint8))
    labels = tf.constant(rng.integers(0, 2, (256, 40)).astype(np.float32))

    def assemble(step):
        members = tf.random.stateless_uniform([batch], tf.stack([tf.constant(1, tf.int64), step]),
                                              maxval=256, dtype=tf.int64)
        moves = tf.random.stateless_uniform([batch, 3], tf.stack([tf.constant(2, tf.int64), step]),
                                            minval=-jitter, maxval=jitter)
        x = crop_from_context(tf.cast(tf.gather(crops, members), tf.float32) / 127.5 - 1.0, moves,
                              cached, stage.context_size(preset, context), side=context)
        y = tf.gather(labels, members)
        return x, tf.tile(y[:, tf.newaxis, :], [1, preset.num_patches, 1])

    data = tf.data.Dataset.range(10 ** 9).map(assemble, num_parallel_calls=2).prefetch(2)
    model.fit(data.take(warmup), steps_per_epoch=warmup, epochs=1, verbose=0)
    wall, cpu = time.perf_counter(), time.process_time()
    model.fit(data.take(steps), steps_per_epoch=steps, epochs=1, verbose=0)
    return (time.process_time() - cpu) * 1000 / steps, (time.perf_counter() - wall) * 1000 / steps


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=60, help="timed steps per variant")
    p.add_argument("--batch", type=int, default=32, help="global batch")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (tracing)")
    args = p.parse_args(argv)
    base = None
    print(f"anet stage joint step, tiny preset, batch {args.batch}, {args.steps} timed steps")
    for label, filters, pool, precision, fused in VARIANTS:
        cpu, wall = time_variant(filters, pool, precision, args.steps, args.batch, args.warmup,
                                 fused_batch_norm=fused)
        base = base or cpu
        print(f"  {label:40s} {cpu:6.1f} CPU-ms/step  {wall:6.1f} wall-ms/step  "
              f"CPU x{cpu / base:.2f} of the baseline", flush=True)


if __name__ == "__main__":
    main()
