"""Benchmark: ANet on all patches of a face region, three ways (paper Sec. 2.2).

  (a) patch by patch, as the paper compares: crop each patch and run ANet on
      it, one (tf.function) call per patch;
  (b) batched: all crops stacked as one batch through ANet in one call;
  (c) the interweaved pass (`InterweavedANet`, server implementation).

Same weights, same run, `paper` preset geometry (see docs/networks.md), all
compiled with tf.function with the same `jit_compile` setting, warm-up first,
then rounds that interleave the methods; medians reported. (a) and (b) are
timed with both LocallySharedConv2D implementations of the same ANet and the
FASTER one is used as the baseline; (c) is the server path
(implementation="extract_patches"); the builtin (TFLite) path is timed too.
The LAST line is exactly:
  interweave_speedup=<a/c> batched_speedup=<b/c> max_abs_diff=<d>
(`d` = max abs difference of every path's patch features from (a).)

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
from tfattr.models.anet import anet_geometry, build_anet, rebuild_anet  # noqa: E402
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
    anet = build_anet(**preset.anet)  # implementation="extract_patches" (server)
    # The same weights with the other LocallySharedConv2D implementation: the
    # baselines use whichever ANet is faster here (fair to the baselines).
    anet_builtin = rebuild_anet(anet, "builtin", **preset.anet)
    iw = InterweavedANet(anet, p, stride, implementation="extract_patches")
    iw_builtin = InterweavedANet(anet, p, stride, implementation="builtin")
    region = tf.constant(np.random.default_rng(0).uniform(
        -1, 1, (args.batch, region_size, region_size, 3)).astype(np.float32))
    offsets = [(y, x) for y in range(0, n * stride, stride) for x in range(0, n * stride, stride)]
    spec = tf.TensorSpec([args.batch, region_size, region_size, 3], tf.float32)
    scalar = tf.TensorSpec([], tf.int32)
    jit = args.jit

    def per_patch_fn(net):
        @tf.function(input_signature=[spec, scalar, scalar], jit_compile=jit)
        def one_patch(r, y, x):
            return net(tf.slice(r, tf.stack([0, y, x, 0]), [-1, p, p, -1]), training=False)

        def patch_by_patch(r):
            return [one_patch(r, tf.constant(y), tf.constant(x)) for y, x in offsets]
        return patch_by_patch

    def batched_fn(net):
        @tf.function(input_signature=[spec], jit_compile=jit)
        def batched(r):
            return net(extract_patch_crops(r, p, stride), training=False)
        return batched

    def interweaved_fn(layer):
        @tf.function(input_signature=[spec], jit_compile=jit)
        def interweaved(r):
            return layer(r)
        return interweaved

    methods = {
        "patch_by_patch[anet=extract_patches]": per_patch_fn(anet),
        "patch_by_patch[anet=builtin]": per_patch_fn(anet_builtin),
        "batched[anet=extract_patches]": batched_fn(anet),
        "batched[anet=builtin]": batched_fn(anet_builtin),
        "interweaved[extract_patches]": interweaved_fn(iw),
        "interweaved[builtin]": interweaved_fn(iw_builtin),
    }

    # Correctness on this run's weights: every path against (a) with the server ANet.
    outs = {}
    for name, fn in methods.items():
        out = fn(region)
        out = tf.stack(out, axis=1) if isinstance(out, list) else out
        outs[name] = out.numpy().reshape(args.batch, n * n, -1)
    ref = outs["patch_by_patch[anet=extract_patches]"]
    diffs = {k: float(np.abs(v - ref).max()) for k, v in outs.items()}
    max_diff = max(diffs.values())

    for fn in methods.values():  # warm-up
        for _ in range(3):
            _time(fn, region)
    times = {k: [] for k in methods}
    for _ in range(args.rounds):  # interleaved rounds: load changes hit every method
        for name, fn in methods.items():
            for _ in range(args.per_round):
                times[name].append(_time(fn, region))
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}

    print(f"preset={preset.name} patch={p} stride={stride} region={region_size} "
          f"patches={n}x{n}={n * n} batch={args.batch} jit_compile={jit} "
          f"anet_filters={preset.anet['stagewise_filters']} "
          f"grids={preset.anet['stagewise_grids']} stride_unit={geo.stride_unit[0]}")
    print(f"cpus={os.cpu_count()} loadavg_1min={os.getloadavg()[0]:.2f} "
          f"samples_per_method={args.rounds * args.per_round}")
    for name in methods:
        q = np.percentile(np.array(times[name]) * 1e3, [25, 75])
        print(f"{name} median_ms={med[name]:.3f} iqr_ms=[{q[0]:.3f},{q[1]:.3f}] "
              f"max_abs_diff_vs_a={diffs[name]:.3g}")
    a_name = min((k for k in methods if k.startswith("patch_by_patch")), key=med.get)
    b_name = min((k for k in methods if k.startswith("batched")), key=med.get)
    c_name = "interweaved[extract_patches]"
    print(f"a={a_name} b={b_name} c={c_name} (a, b: the faster ANet implementation)")
    print(f"builtin_interweave_speedup={med[a_name] / med['interweaved[builtin]']:.2f} "
          f"builtin_batched_speedup={med[b_name] / med['interweaved[builtin]']:.2f}")
    print(f"interweave_speedup={med[a_name] / med[c_name]:.2f} "
          f"batched_speedup={med[b_name] / med[c_name]:.2f} "
          f"max_abs_diff={max_diff:.3g}")


if __name__ == "__main__":
    main()
