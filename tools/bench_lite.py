"""TFLite latency and size: fp32 / fp16 / int8 in LiteRT (XNNPACK, 2 threads) vs the SavedModel.

    python tools/bench_lite.py [--preset paper] [--runs 30] [--input-size S] [--model DIR]

Builds a `paper`-preset cascade with random weights (latency does not depend
on the weights; `--model` benchmarks an exported SavedModel instead), exports
it with `tfattr.export`, converts it with `tfattr.lite` three ways (int8
calibrated on random letterboxed synthetic photos), then times, in the same
process and on the same letterboxed input:

- each TFLite file in the stock `ai_edge_litert` Interpreter (XNNPACK is its
  default delegate), `num_threads=2`, through the named signature runner;
- the SavedModel's fixed-shape endpoint (`serve_fixed`) with TF limited to 2
  intra-op threads.

Warm-up runs first, then >= 30 timed rounds, each round calling every model
once back to back (the CPU is shared: load from other processes then hits
all models alike); medians reported. The last line is

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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--model", default=None, help="an exported SavedModel version dir")
    parser.add_argument("--input-size", type=int, default=None,
                        help="lite input side (default: the preset's LNet_o input size)")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calibration-images", type=int, default=16)
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

    photos = [synthetic_photo(int(size * (0.6 + 0.4 * (i % 3) / 2)), size, seed=i)
              for i in range(args.calibration_images)]
    representative = [lite.letterbox_for_lite(p, size)[0] for p in photos]
    files, sizes = {}, {}
    for quantize in ("none", "fp16", "int8"):  # int8: weights-only (see docs/lite.md)
        started = time.time()
        content = lite.convert_saved_model(
            model_dir, quantize=quantize,
            representative_images=None)
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
    for _ in range(args.runs):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1000.0)
    medians = {name: statistics.median(t) for name, t in times.items()}
    results = {q: medians[q] for q in files}
    saved_median = medians["savedmodel"]
    for quantize in files:
        print(f"lite {quantize:5s}: median {results[quantize]:8.2f} ms  "
              f"size {sizes[quantize] / 1e6:7.2f} MB", flush=True)
    print(f"savedmodel {lite.SAVED_MODEL_LITE_SIGNATURE}: median {saved_median:8.2f} ms", flush=True)

    ratio = sizes["int8"] / sizes["none"]
    summary = {
        "preset": args.preset, "input_size": size, "threads": args.threads, "runs": args.runs,
        "lite_ms": {k: round(v, 2) for k, v in results.items()},
        "savedmodel_ms": round(saved_median, 2),
        "bytes": sizes,
        "load_average": os.getloadavg(),
        "targets": {
            "fp32_not_slower_than_savedmodel": results["none"] <= saved_median,
            "int8_2x_faster_than_fp32": results["int8"] * 2 <= results["none"],
            "int8_size_at_most_1_over_3.5": ratio <= 1 / 3.5,
        },
    }
    print(json.dumps(summary, indent=2))
    print(f"lite_fp32_ms={results['none']:.2f} lite_int8_ms={results['int8']:.2f} "
          f"savedmodel_ms={saved_median:.2f} int8_size_ratio={ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
