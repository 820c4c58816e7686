"""Benchmark: ANet on all patches of a face region, three ways (paper Sec. 2.2).

  (a) patch by patch, as the paper compares: crop each patch and run ANet on
      it, one (tf.function) call per patch;
  (b) batched: all crops stacked as one batch through ANet in one call;
  (c) the interweaved pass (`InterweavedANet`, server implementation).

Same weights, same run, `paper` preset geometry (see docs/networks.md), all
three compiled with tf.function with the same `jit_compile` setting, warm-up
first, then rounds that interleave the three methods; medians reported.
The builtin (TFLite) implementation of (c) is timed too, for information.
The LAST line is exactly:
  interweave_speedup=<a/c> batched_speedup=<b/c> max_abs_diff=<d>
(`d` = max |c - a| and |c - b| over all patch features.)

Usage: python tools/bench_interweave.py [--preset paper] [--rounds 15]
       [--region SIZE] [--jit] [--batch 1]
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfattr.layers.interweave import InterweavedANet, extract_patch_crops, patch_grid  # noqa: E402
from tfattr.models.anet import anet_geometry, build_anet  # noqa: E402
from tfattr.presets import get_preset  # noqa: E402


def _time(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    if isinstance(out, (list, tuple)):
        out = out[-1]
    out.numpy()  # wait for the result
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--region", type=int, default=None,
                        help="face region side (default: the preset's face_region_size)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--per-round", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--jit", action="store_true", help="jit_compile=True for all paths")
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(0)
    preset = get_preset(args.preset)
    region_size = args.region or preset.face_region_size
    p, stride = preset.patch_size, preset.patch_stride
    n = patch_grid(region_size, p, stride)
    geo = anet_geometry(**preset.anet)
    anet = build_anet(**preset.anet)
    iw = InterweavedANet(anet, p, stride, implementation="extract_patches")
    iw_builtin = InterweavedANet(anet, p, stride, implementation="builtin")
    region = tf.constant(np.random.default_rng(0).uniform(
        -1, 1, (args.batch, region_size, region_size, 3)).astype(np.float32))
    offsets = [(y, x) for y in range(0, n * stride, stride) for x in range(0, n * stride, stride)]
    spec = tf.TensorSpec([args.batch, region_size, region_size, 3], tf.float32)
    jit = args.jit

    @tf.function(input_signature=[spec, tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.int32)],
                 jit_compile=jit)
    def one_patch(r, y, x):
        return anet(tf.slice(r, tf.stack([0, y, x, 0]), [-1, p, p, -1]), training=False)

    def patch_by_patch(r):
        return [one_patch(r, tf.constant(y), tf.constant(x)) for y, x in offsets]

    @tf.function(input_signature=[spec], jit_compile=jit)
    def batched(r):
        return anet(extract_patch_crops(r, p, stride), training=False)

    @tf.function(input_signature=[spec], jit_compile=jit)
    def interweaved(r):
        return iw(r)

    @tf.function(input_signature=[spec], jit_compile=jit)
    def interweaved_builtin(r):
        return iw_builtin(r)

    # Correctness on this run's weights.
    out_a = tf.stack(patch_by_patch(region), axis=1).numpy()  # [B, N, F]
    out_b = batched(region).numpy().reshape(out_a.shape)
    out_c = interweaved(region).numpy()
    out_d = interweaved_builtin(region).numpy()
    max_diff = float(max(np.abs(out_c - out_a).max(), np.abs(out_c - out_b).max()))
    builtin_diff = float(np.abs(out_d - out_a).max())

    methods = {"patch_by_patch": patch_by_patch, "batched": batched,
               "interweaved": interweaved, "interweaved_builtin": interweaved_builtin}
    for fn in methods.values():  # warm-up
        for _ in range(3):
            _time(fn, region)
    times = {k: [] for k in methods}
    for _ in range(args.rounds):
        for name, fn in methods.items():
            for _ in range(args.per_round):
                times[name].append(_time(fn, region))
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}

    print(f"preset={preset.name} patch={p} stride={stride} region={region_size} "
          f"patches={n}x{n}={n * n} batch={args.batch} jit_compile={jit} "
          f"anet={preset.anet['stagewise_filters']} grids={preset.anet['stagewise_grids']} "
          f"stride_unit={geo.stride_unit[0]}")
    print(f"threads: intra_op={tf.config.threading.get_intra_op_parallelism_threads()} "
          f"cpus={os.cpu_count()} loadavg={os.getloadavg()[0]:.2f}")
    n_timed = args.rounds * args.per_round
    for name in methods:
        q = np.percentile(np.array(times[name]) * 1e3, [25, 75])
        print(f"{name}_ms median={med[name]:.3f} iqr=[{q[0]:.3f},{q[1]:.3f}] n={n_timed}")
    print(f"builtin_speedup_vs_batched={med['batched'] / med['interweaved_builtin']:.2f} "
          f"builtin_max_abs_diff={builtin_diff:.3g}")
    print(f"interweave_speedup={med['patch_by_patch'] / med['interweaved']:.2f} "
          f"batched_speedup={med['batched'] / med['interweaved']:.2f} "
          f"max_abs_diff={max_diff:.3g}")


if __name__ == "__main__":
    main()
