"""TFLite latency and size: fp32 / fp16 / int8 in LiteRT (XNNPACK, 2 threads) vs the SavedModel.

    python tools/bench_lite.py [--preset paper] [--runs 30] [--input-size S] [--model DIR]
        [--calibration-data DIR] [--calibration-images 32] [--profile] [--lnet-only]

Builds a `paper`-preset cascade with random weights (latency does not depend
on the weights; `--model` benchmarks an exported SavedModel instead), exports
it with `tfattr.export`, converts it with `tfattr.lite` four ways: `none`
(fp32), `fp16`, `int8` (calibrated: full-integer LNet conv stacks, see
docs/lite.md) and `int8-weights` (int8 weights, float activations). int8 is
calibrated on letterboxed in-the-wild photos of the training pipeline: the
train split of `--calibration-data` (CelebA layout) or, by default, of a small
synthetic CelebA-layout dataset made with `tfattr.data.synthetic`. Then, in
the same process and on the same letterboxed input, it times:

- each TFLite file in the stock `ai_edge_litert` Interpreter (XNNPACK is its
  default delegate), `num_threads=2`, through the named signature runner;
- the SavedModel's fixed-shape endpoint (`serve_fixed`) with TF limited to 2
  intra-op threads.

Warm-up runs first, then >= 30 timed rounds, each round calling every model
once back to back (the CPU is shared: load from other processes then hits
all models alike); medians reported (and minima: the least disturbed run,
and median process CPU time).

`--profile` also times every file's (but fp16's) op-list prefixes (ops are stored in
execution order; a prefix is a valid model) ending at the segment
boundaries in `SEGMENTS`, and prints each segment's share (difference of
prefix minima): where the time goes, per network and per geometry block.
`--lnet-only` times one LNet conv stack alone (`bench_lnet_only`): fp32 vs
full-integer int8 vs int8-weights, with and without the XNNPACK delegate.

The last line is

    lite_fp32_ms=<a> lite_int8_ms=<b> savedmodel_ms=<c> int8_size_ratio=<r>

with r = int8 file size / fp32 file size. Targets (issue "TFLite for phones"):
a <= c, b <= a / 2, r <= 1 / 3.5.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def synthetic_photo(height, width, seed):
    """A smooth random 'photo' (blobs + noise), uint8 [H, W, 3]."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(height // 16, 2), max(width // 16, 2), 3)).astype(np.float32)
    image = tf.image.resize(small[None], [height, width], method="bicubic")[0].numpy()
    image += rng.normal(0, 10, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


# (segment, marker): a segment ends before the first op whose output name
# contains a "<" marker (and the QUANTIZE feeding it), or after the last op
# containing a ">" marker.
SEGMENTS = (
    ("input + letterbox", "<lnet_o_conv1"),
    ("LNet_o convs + map", ">lnet_o_response_map"),
    ("LNet_o windows/peaks + LNet_s crops", "<lnet_s_conv1"),
    ("LNet_s convs + maps (K crops)", ">lnet_s_response_map"),
    ("LNet_s windows + boxes + ANet crops", "<anet_conv1"),
    ("ANet (convs, locally shared, FC)", ">anet_fc"),
    ("SVM head + Platt + outputs", None),
)


def prefix_model(content, num_ops):
    """The model made of the first `num_ops` ops, its outputs those of the last one."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    subgraph = model.subgraphs[0]
    subgraph.operators = subgraph.operators[:num_ops]
    subgraph.outputs = list(subgraph.operators[-1].outputs)
    model.signatureDefs = []
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def segment_cuts(content):
    """Op counts of the prefixes that end at each `SEGMENTS` boundary."""
    from tensorflow.lite.tools import flatbuffer_utils

    subgraph = flatbuffer_utils.convert_bytearray_to_object(bytearray(content)).subgraphs[0]
    names = []
    for op in subgraph.operators:
        name = subgraph.tensors[op.outputs[0]].name
        names.append(name.decode() if isinstance(name, bytes) else name)
    cuts = []
    for _, marker in SEGMENTS:
        if marker is None:
            cuts.append(len(names))
            continue
        hits = [i for i, name in enumerate(names) if marker[1:] in name]
        if not hits:
            raise ValueError(f"no op output matches {marker!r}")
        if marker[0] == "<":
            cut = hits[0]
            op = subgraph.operators[cut]
            producers = {o: i for i, q in enumerate(subgraph.operators[:cut]) for o in q.outputs}
            feeder = producers.get(op.inputs[0])
            if feeder is not None and feeder == cut - 1 and "quantize" in names[feeder].lower():
                cut -= 1  # the QUANTIZE feeding an int8 C1 belongs to the network
            cuts.append(cut)
        else:
            cuts.append(hits[-1] + 1)
    return cuts


def _invoker(content, inputs, threads, resolver=None):
    """A no-argument function that runs the TFLite model `content` once on `inputs`."""
    from ai_edge_litert.interpreter import Interpreter

    kwargs = {} if resolver is None else {"experimental_op_resolver_type": resolver}
    interpreter = Interpreter(model_content=content, num_threads=threads, **kwargs)
    interpreter.allocate_tensors()
    index = interpreter.get_input_details()[0]["index"]

    def call():
        interpreter.set_tensor(index, inputs)
        interpreter.invoke()

    return call


def profile_segments(files, lite_input, threads, rounds):
    """{quantize: [(segment, wall ms, CPU ms)]} from interleaved prefix timings.

    Per segment: the difference of the prefixes' minimum wall times and of
    their median process CPU times (both threads; CPU time is what the other
    jobs on a shared machine disturb least).
    """
    calls = {}
    for quantize, path in files.items():
        content = Path(path).read_bytes()
        for k, cut in enumerate(segment_cuts(content)):
            calls[(quantize, k)] = _invoker(prefix_model(content, cut), lite_input, threads)
    for fn in calls.values():
        fn()
        fn()
    wall = {key: [] for key in calls}
    cpu = {key: [] for key in calls}
    for _ in range(rounds):
        for key, fn in calls.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            cpu[key].append((time.process_time() - start_cpu) * 1000.0)
            wall[key].append((time.perf_counter() - start) * 1000.0)
    result = {}
    for quantize in files:
        rows, prev_min, prev_cpu = [], 0.0, 0.0
        for k, (segment, _) in enumerate(SEGMENTS):
            t_min, t_cpu = min(wall[(quantize, k)]), statistics.median(cpu[(quantize, k)])
            rows.append((segment, t_min - prev_min, t_cpu - prev_cpu))
            prev_min, prev_cpu = t_min, t_cpu
        result[quantize] = rows
    return result


def bench_lnet_only(preset, batch, threads, runs, calibration):
    """One LNet conv stack alone: fp32 vs full-integer int8 vs int8-weights, XNNPACK on / off.

    The stack the cascade runs on [1, S, S, 3] (LNet_o) and [K, S, S, 3]
    (LNet_s), converted three ways (int8: calibrated on `calibration`, int8
    in / out around C1..C5, per-channel weights), each timed in LiteRT with
    its default XNNPACK delegate and with `BUILTIN_WITHOUT_DEFAULT_DELEGATES`
    (the reference / ruy kernels): shows whether XNNPACK runs the int8 graph
    and what int8 buys on this CPU. Returns {variant: median ms}.
    """
    import keras
    import tensorflow as tf
    from ai_edge_litert.interpreter import OpResolverType
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from tfattr import presets
    from tfattr.models import lnet

    config = presets.get_preset(preset)
    size = config.lnet_o_input_size
    keras.utils.set_random_seed(0)
    net = lnet.build_lnet(**config.lnet_o)

    @tf.function(input_signature=[tf.TensorSpec([batch, size, size, 3], tf.float32)])
    def features(x):
        return net(x)["features"]

    frozen = convert_variables_to_constants_v2(features.get_concrete_function())
    images = [np.asarray(image, np.float32) / 127.5 - 1.0 for image in calibration]

    def representative():
        for i in range(0, len(images) - batch + 1, batch):
            yield [np.concatenate(images[i:i + batch])]

    contents = {}
    for variant in ("fp32", "int8", "int8-weights"):
        converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
        if variant != "fp32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if variant == "int8":
            converter.representative_dataset = representative
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        contents[variant] = converter.convert()
    x = np.concatenate(images[:batch])
    calls = {}
    for variant, content in contents.items():
        for delegate, resolver in (("xnnpack", OpResolverType.AUTO),
                                   ("no-xnnpack", OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)):
            calls[f"{variant} {delegate}"] = _invoker(content, x, threads, resolver)
    for fn in calls.values():
        fn()
        fn()
    times = {name: [] for name in calls}
    for _ in range(runs):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--model", default=None, help="an exported SavedModel version dir")
    parser.add_argument("--input-size", type=int, default=None,
                        help="lite input side (default: the preset's LNet_o input size)")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calibration-data", default=None,
                        help="int8 calibration photos: a CelebA-layout dir (train split) or a folder; "
                             "default: a small synthetic CelebA-layout dataset made here")
    parser.add_argument("--calibration-images", type=int, default=32)
    parser.add_argument("--profile", action="store_true",
                        help="also time the segments of every file (op-list prefixes)")
    parser.add_argument("--profile-runs", type=int, default=15)
    parser.add_argument("--lnet-only", action="store_true",
                        help="also time one LNet conv stack alone (batch 1 and max_faces): "
                             "fp32 / int8 / int8-weights, with and without XNNPACK")
    parser.add_argument("--out", default=None, help="keep the .tflite files here")
    args = parser.parse_args(argv)
    if args.runs < 30:
        parser.error("--runs must be >= 30")

    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from ai_edge_litert.interpreter import Interpreter

    from tfattr import export, lite

    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_lite-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.model:
        model_dir = Path(args.model)
    else:
        keras.utils.set_random_seed(0)
        started = time.time()
        model = export.build_model(args.preset, lite_input_size=args.input_size)
        model_dir = export.export_saved_model(model, work / "saved_model", version=1, overwrite=True)
        print(f"exported {args.preset} SavedModel to {model_dir} ({time.time() - started:.0f}s)",
              flush=True)
        del model
    size = lite.saved_model_input_size(model_dir)

    calibration_dir = args.calibration_data
    if calibration_dir is None:
        from tfattr.data.synthetic import generate_dataset

        calibration_dir = work / "calibration_data"
        if not (calibration_dir / "list_eval_partition.txt").exists():
            generate_dataset(calibration_dir, num_identities=max(4, args.calibration_images // 4),
                             images_per_identity=6, seed=1, num_backgrounds=2, progress=False)
    representative = lite.representative_images_from_dir(calibration_dir, size,
                                                         limit=args.calibration_images)
    print(f"calibration: {len(representative)} letterboxed train photos of {calibration_dir}",
          flush=True)
    files, sizes = {}, {}
    for quantize in ("none", "fp16", "int8", "int8-weights"):
        started = time.time()
        content = lite.convert_saved_model(
            model_dir, quantize=quantize,
            representative_images=representative if quantize == "int8" else None)
        path = work / f"model_{quantize}.tflite"
        lite.write_lite_model(content, path)
        files[quantize], sizes[quantize] = path, len(content)
        print(f"converted {quantize}: {len(content) / 1e6:.2f} MB ({time.time() - started:.0f}s)",
              flush=True)

    lite_input, _ = lite.letterbox_for_lite(synthetic_photo(size * 3 // 4, size, seed=999), size)
    calls = {}
    for quantize, path in files.items():
        interpreter = Interpreter(model_path=str(path), num_threads=args.threads)
        runner = interpreter.get_signature_runner(lite.LITE_SIGNATURE)
        calls[quantize] = (lambda r: lambda: r(**{lite.LITE_INPUT: lite_input}))(runner)
    loaded = tf.saved_model.load(str(model_dir))
    endpoint = loaded.signatures[lite.SAVED_MODEL_LITE_SIGNATURE]
    normalized = tf.constant(lite_input.astype(np.float32) / 127.5 - 1.0)
    calls["savedmodel"] = lambda: endpoint(**{lite.SAVED_MODEL_LITE_INPUT: normalized})
    # Interleaved: run i of every model back to back, so load from other
    # processes on the (shared) CPU hits all of them alike.
    for fn in calls.values():
        for _ in range(args.warmup):
            fn()
    times = {name: [] for name in calls}
    cpu_times = {name: [] for name in calls}
    for _ in range(args.runs):
        for name, fn in calls.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            cpu_times[name].append((time.process_time() - start_cpu) * 1000.0)
            times[name].append((time.perf_counter() - start) * 1000.0)
    medians = {name: statistics.median(t) for name, t in times.items()}
    minima = {name: min(t) for name, t in times.items()}
    cpu_medians = {name: statistics.median(t) for name, t in cpu_times.items()}
    results = {q: medians[q] for q in files}
    saved_median = medians["savedmodel"]
    for quantize in files:
        print(f"lite {quantize:12s}: median {results[quantize]:8.2f} ms  min {minima[quantize]:8.2f} ms"
              f"  CPU {cpu_medians[quantize]:8.2f} ms  size {sizes[quantize] / 1e6:7.2f} MB", flush=True)
    print(f"savedmodel {lite.SAVED_MODEL_LITE_SIGNATURE}: median {saved_median:8.2f} ms  "
          f"min {minima['savedmodel']:8.2f} ms  CPU {cpu_medians['savedmodel']:8.2f} ms  "
          f"load average {os.getloadavg()}", flush=True)
    profile = None
    if args.profile:
        # fp16 is left out: its weight DEQUANTIZE ops come first in the op list.
        profiled = {q: path for q, path in files.items() if q != "fp16"}
        profile = profile_segments(profiled, lite_input, args.threads, max(args.profile_runs, 10))
        print(f"segments (ms: wall min / CPU median of {max(args.profile_runs, 10)} interleaved "
              f"runs of each prefix; load average {os.getloadavg()}):", flush=True)
        print(f"  {'segment':40s}" + "".join(f"{q:>20s}" for q in profiled))
        for k, (segment, _) in enumerate(SEGMENTS):
            print(f"  {segment:40s}" + "".join(
                f"{profile[q][k][1]:11.1f} /{profile[q][k][2]:7.1f}" for q in profiled))

    lnet_only = {}
    if args.lnet_only:
        for batch in (1, 3):
            lnet_only[batch] = bench_lnet_only(args.preset, batch, args.threads, 15, representative)
            print(f"LNet conv stack alone, batch {batch} (median ms of 15 interleaved runs; load "
                  f"average {os.getloadavg()}): " + ", ".join(
                      f"{name} {t:.1f}" for name, t in lnet_only[batch].items()), flush=True)

    ratio = sizes["int8"] / sizes["none"]
    summary = {
        "preset": args.preset, "input_size": size, "threads": args.threads, "runs": args.runs,
        "lite_ms": {k: round(v, 2) for k, v in results.items()},
        "lite_min_ms": {k: round(minima[k], 2) for k in files},
        "cpu_ms": {k: round(v, 2) for k, v in cpu_medians.items()},
        "savedmodel_ms": round(saved_median, 2),
        "calibration_images": len(representative),
        "bytes": sizes,
        "load_average": os.getloadavg(),
        "targets": {
            "fp32_not_slower_than_savedmodel": results["none"] <= saved_median,
            "int8_2x_faster_than_fp32": results["int8"] * 2 <= results["none"],
            "int8_size_at_most_1_over_3.5": ratio <= 1 / 3.5,
        },
    }
    if lnet_only:
        summary["lnet_only_ms"] = {f"batch{b}": {k: round(v, 1) for k, v in r.items()}
                                   for b, r in lnet_only.items()}
    if profile is not None:
        summary["segments_cpu_ms"] = {q: {seg: round(t, 1) for seg, _, t in rows}
                                      for q, rows in profile.items()}
    print(json.dumps(summary, indent=2))
    print(f"lite_fp32_ms={results['none']:.2f} lite_int8_ms={results['int8']:.2f} "
          f"savedmodel_ms={saved_median:.2f} int8_size_ratio={ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
