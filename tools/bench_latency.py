"""End-to-end latency of the exported SavedModel (bytes in, attributes out).

Builds the `paper`-preset cascade with random weights (latency does not
depend on training), exports it with `tfattr.export.export_saved_model` into
a temporary folder, reloads it with plain `tf.saved_model.load`, and times
`serving_default` on a 300x300 JPEG:

- batch 1: warm-up runs, then >= 30 timed runs, median (p50) in ms;
- batched: requests of 8 JPEGs, images per second.

Then it times the cascade's stages in-process (decode, localizer as exported
and with LNet_s on every proposal, LNet_o / LNet_s alone, crop, ANet
interweaved pass, SVM head; wall and CPU ms) so a missed target says where
the time goes. CPU ms (all threads) is the figure robust to other load on the
machine; the load average is printed before and after.

    python tools/bench_latency.py [--preset paper] [--runs 30] [--batch 8] [--max-faces K]
        [--box-score lnet_o|cascade] [--box-head]

`--box-score cascade --box-head` times the README's localization recipe (LNet_s scores
and regresses every valid proposal, each box regressed twice); the default, the paper's
window cascade.

Last line, exactly: `latency_ms_p50=<x> images_per_s_batched=<y>`.
Target: <= 25 ms at batch 1 on the 2-core CPU (paper: 35 + 14 ms on a GPU).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tfattr.localize.localizer import BOX_SCORES  # noqa: E402

TARGET_MS = 25.0


def _timed(fn, runs, warmup, cpu=None):
    """Wall ms of each of `runs` calls (after `warmup`); CPU ms (all threads) appended to `cpu`."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
        if cpu is not None:
            cpu.append((time.process_time() - start_cpu) * 1000.0)
    return times


def _jpeg(size, seed):
    rng = np.random.default_rng(seed)
    # A smooth image (JPEG of noise is unrealistically large).
    small = rng.integers(0, 256, size=(size // 10, size // 10, 3)).astype(np.float32)
    image = tf.image.resize(small[np.newaxis], [size, size], method="bilinear")[0]
    return tf.io.encode_jpeg(tf.cast(image, tf.uint8), quality=90).numpy()


def _interleaved(fns, runs, warmup):
    """Like `_timed` for several callables, called in turn (a, b, a, b, ...) so a change of
    background load hits each alike -> [(median wall ms, median CPU ms)] in the order of `fns`."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    wall = [[] for _ in fns]
    cpu = [[] for _ in fns]
    for _ in range(runs):
        for i, fn in enumerate(fns):
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[i].append((time.perf_counter() - start) * 1000.0)
            cpu[i].append((time.process_time() - start_cpu) * 1000.0)
    return [(statistics.median(w), statistics.median(c)) for w, c in zip(wall, cpu)]


def profile_stages(model, jpeg, runs, warmup):
    """{stage: (median wall ms, median CPU ms)} for one image, run in-process as tf.functions.

    The localizer is timed as exported (LNet_s on the valid head-shoulder
    proposals only) against its all-proposal form (LNet_s on every one of the
    K proposals, what the exported graph did before), interleaved in the same
    run, on the benchmark JPEG and on a flat grey image (no face: a single
    separated peak, so one valid proposal). LNet_o is likewise timed plain
    against XLA (`jit_compile=True`, not used by the export: the stock
    tensorflow_model_server runs XLA only with --xla_cpu_compilation_enabled).
    """
    from tfattr.data import preprocess

    k, size = model.max_faces, model.face_region_size
    image = preprocess.decode_image(tf.constant(jpeg))
    normalized = preprocess.normalize(image)
    grey = tf.zeros_like(normalized)

    decode = tf.function(lambda b: preprocess.normalize(preprocess.decode_image(b)))
    stages = {"decode+normalize": lambda: decode(tf.constant(jpeg))}
    pairs = []  # [(name_a, fn_a, name_b, fn_b)], timed interleaved
    if model.localizer is not None:
        localizer = model.localizer
        spec = [tf.TensorSpec([None, None, 3], tf.float32)]
        proposals = tf.function(lambda im: localizer.head_shoulder_windows(im)["valid"],
                                input_signature=spec)
        localize = tf.function(localizer.localize, input_signature=spec)
        every = tf.function(lambda im: localizer.localize(im, lite=True), input_signature=spec)
        for label, x in (("JPEG", normalized), ("flat grey", grey)):
            num_valid = int(tf.reduce_sum(tf.cast(proposals(x), tf.int32)))
            pairs.append((f"localizer, {label}: LNet_s on its {num_valid} valid of {k} (exported)",
                          lambda x=x: localize(x),
                          f"localizer, {label}: LNet_s on all {k} (previous graph)",
                          lambda x=x: every(x)))
        o_size, s_size = localizer.lnet_o_input_size, localizer.lnet_s_input_size
        lnet_o = tf.function(localizer.lnet_o)  # one member of an LNet_o ensemble
        lnet_o_xla = tf.function(localizer.lnet_o, jit_compile=True)
        o_input = tf.zeros([1, o_size, o_size, 3])
        pairs.append((f"  LNet_o alone, 1 x {o_size}^2", lambda: lnet_o(o_input),
                      "  LNet_o alone, XLA jit_compile (NOT exported)", lambda: lnet_o_xla(o_input)))
        lnet_s = tf.function(localizer.lnet_s)
        s_one = tf.zeros([1, s_size, s_size, 3])
        stages[f"  LNet_s alone, 1 x {s_size}^2 (one proposal)"] = lambda: lnet_s(s_one)
        s_input = tf.zeros([k, s_size, s_size, 3])
        stages[f"  LNet_s alone, {k} x {s_size}^2 (K proposals)"] = lambda: lnet_s(s_input)
    full_localize = tf.function(model.localize)
    stages["localize + crop faces (JPEG)"] = lambda: full_localize(normalized)
    crops = tf.zeros([1, size, size, 3])
    anet = tf.function(model.interweaved_anet)
    stages["ANet interweaved, 1 face"] = lambda: anet(crops)
    if k > 1:
        crops_k = tf.zeros([k, size, size, 3])
        stages[f"ANet interweaved, {k} faces"] = lambda: anet(crops_k)
    features = anet(crops)
    head = tf.function(model.head)
    stages["SVM head, 1 face"] = lambda: head(features)
    whole = tf.function(model.predict_image_bytes)
    stages["whole cascade in-process (bytes, batch 1)"] = lambda: whole(tf.constant([jpeg]))
    medians = {}
    first = "decode+normalize"
    medians[first] = _interleaved([stages.pop(first)], runs, warmup)[0]
    for name_a, fn_a, name_b, fn_b in pairs:
        medians[name_a], medians[name_b] = _interleaved([fn_a, fn_b], runs, warmup)
    for name, fn in stages.items():
        cpu = []
        wall = _timed(fn, runs, warmup, cpu)
        medians[name] = (statistics.median(wall), statistics.median(cpu))
    return medians


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-faces", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=300)
    parser.add_argument("--box-score", default="lnet_o", choices=BOX_SCORES,
                        help="the localizer's box score (cascade: LNet_s on every valid proposal)")
    parser.add_argument("--box-head", action="store_true",
                        help="LNet_s' box head, run twice (s_box_refine), face-tag map")
    parser.add_argument("--lnet-o-members", type=int, default=1,
                        help="LNet_o backbones whose maps are averaged (lnet.o_ensemble: the "
                             "README localization recipe uses 3)")
    parser.add_argument("--framer-context", type=float, default=0.0,
                        help="> 1: a RegionFramer re-frames each region from a context crop "
                             "that much larger (anet.framer; training/synthetic.py: 1.75)")
    parser.add_argument("--framer-passes", type=int, default=2,
                        help="times the framer is applied (anet.framer_passes)")
    parser.add_argument("--no-profile", action="store_true", help="skip the per-stage profile")
    args = parser.parse_args(argv)
    if args.runs < 30:
        parser.error(f"--runs must be >= 30, got {args.runs}")

    import keras

    from tfattr.export import build_model, export_saved_model

    keras.utils.set_random_seed(0)
    load_start = os.getloadavg()[0]
    start = time.perf_counter()
    model = build_model(args.preset, max_faces=args.max_faces, box_score=args.box_score,
                        face_tag_map=args.box_head, box_head=args.box_head,
                        box_refine=args.box_head, lnet_o_members=args.lnet_o_members,
                        framer_context=args.framer_context or None,
                        framer_passes=args.framer_passes)
    jpeg = _jpeg(args.image_size, seed=0)
    with tempfile.TemporaryDirectory(prefix="tfattr-bench-") as tmp:
        path = export_saved_model(model, Path(tmp) / "tfattr", version=1)
        print(f"built + exported {args.preset} preset (K={model.max_faces}, box score "
              f"{args.box_score}{', box head' if args.box_head else ''}, "
              f"{args.lnet_o_members} LNet_o backbone(s)"
              f"{f', framer x{args.framer_context:g} ({args.framer_passes} passes)' if args.framer_context else ''}) in "
              f"{time.perf_counter() - start:.1f} s", flush=True)
        loaded = tf.saved_model.load(str(path))
        serve = loaded.signatures["serving_default"]
        one = tf.constant([jpeg])
        batch = tf.constant([_jpeg(args.image_size, seed=i) for i in range(args.batch)])
        out = serve(image_bytes=one)
        print(f"num_faces={out['num_faces'].numpy().tolist()} (random weights)")
        single_cpu = []
        single = _timed(lambda: serve(image_bytes=one), args.runs, args.warmup, single_cpu)
        batched = _timed(lambda: serve(image_bytes=batch), max(10, args.runs // 3), 2)
    p50 = statistics.median(single)
    images_per_s = args.batch / (statistics.median(batched) / 1000.0)
    print(f"batch 1: p50 {p50:.2f} ms, p90 {np.percentile(single, 90):.2f} ms, "
          f"min {min(single):.2f} ms over {len(single)} runs; CPU time (all threads) p50 "
          f"{statistics.median(single_cpu):.2f} ms per request (robust to other load: on "
          f"{os.cpu_count()} idle cores latency >= CPU time / {os.cpu_count()})")
    print(f"batch {args.batch}: {statistics.median(batched):.2f} ms per request, "
          f"{images_per_s:.1f} images/s")
    print(f"target <= {TARGET_MS:.0f} ms at batch 1: {'met' if p50 <= TARGET_MS else 'MISSED'} "
          f"(load average {load_start:.1f} at start, {os.getloadavg()[0]:.1f} now, on "
          f"{os.cpu_count()} CPUs: other processes inflate every wall figure)")
    if not args.no_profile:
        print("per-stage medians (in-process tf.functions, batch 1):  wall ms   CPU ms")
        for name, (wall, cpu) in profile_stages(model, jpeg, args.runs, args.warmup).items():
            print(f"  {name:62s} {wall:8.2f} {cpu:8.2f}")
    print(f"latency_ms_p50={p50:.2f} images_per_s_batched={images_per_s:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
