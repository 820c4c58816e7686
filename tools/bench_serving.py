"""Serving throughput: the SavedModel called in process vs. through `python -m tfattr.serve` over gRPC.

    python tools/bench_serving.py [--model_base_path models/tfattr] [--preset tiny]
                                  [--requests 2000] [--clients 16] [--rounds 2]

Without --model_base_path it builds the real tfattr cascade of `--preset`
(default `tiny`: LNet_o -> LNet_s -> ANet -> SVM head, random weights; speed
does not depend on training) with `tfattr.export.build_model` and exports it
with `tfattr.export.export_saved_model` to a temporary folder, as
tools/bench_latency.py does.

The comparison is like for like, in the same run:
- same model version folder, loaded once in this process with plain
  `tf.saved_model.load` and once by the server subprocess;
- same requests: one image per request, cycling through the same 8 JPEGs
  (different content and sizes, 160x120 to 300x300) in the same order;
- same concurrency: `--clients` threads (16), each issuing its next request
  as soon as the previous one returns; every output tensor is materialized
  as numpy on both sides;
- same execution: one `serving_default` call per request on both sides (the
  headline server runs WITHOUT server-side batching), so the ratio is the
  cost of gRPC + the serving layer alone;
- warm-up: 100 requests per side before timing (the server also replays its
  warmup records before it serves);
- the phases alternate (in-process, gRPC, in-process, gRPC, ... `--rounds`
  times) and each side's throughput is its requests over its summed time, so
  a change of background load on the shared machine hits both sides alike.

Then (unless --no-batching-phase) a second server with server-side batching
(serving/batching_parameters.txt) is timed the same way, as information: it
merges concurrent requests into one model call, which the in-process side
does not do.

The last line is exactly `grpc_vs_inprocess=<throughput ratio> p50_ms=<a> p99_ms=<b>`
(the unbatched gRPC latencies); the target is a ratio >= 0.9.
"""

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "serving"))

IMAGE_SIZES = ((120, 160), (300, 300), (200, 150), (160, 120), (240, 320), (150, 200),
               (300, 240), (128, 128))  # (height, width)


def _jpegs(seed=0):
    """8 smooth synthetic JPEGs (a JPEG of pure noise is unrealistically large)."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    out = []
    for h, w in IMAGE_SIZES:
        small = rng.integers(0, 256, size=(1, max(h // 10, 2), max(w // 10, 2), 3))
        image = tf.image.resize(small.astype(np.float32), [h, w], method="bilinear")[0]
        out.append(tf.io.encode_jpeg(tf.cast(image, tf.uint8), quality=90).numpy())
    return out


def bench(make_state, call, num_clients, total, images):
    """`total` calls of call(state, image) over num_clients threads -> (seconds, latencies_s).

    Request i sends images[i % len(images)] (the same sequence on every side).
    """
    lock = threading.Lock()
    counter = [0]
    latencies, errors = [], []
    barrier = threading.Barrier(num_clients + 1)

    def worker():
        state = make_state()
        barrier.wait()
        local = []
        while True:
            with lock:
                if counter[0] >= total:
                    break
                i = counter[0]
                counter[0] += 1
            start = time.perf_counter()
            try:
                call(state, images[i % len(images)])
            except Exception as exc:  # noqa: BLE001 - counted, reported
                errors.append(exc)
            local.append(time.perf_counter() - start)
        with lock:
            latencies.extend(local)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(num_clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} of {total} calls failed, first: {errors[0]!r}")
    return elapsed, latencies


def _export_model(preset, base):
    import keras

    from tfattr.export import build_model, export_saved_model

    keras.utils.set_random_seed(0)
    model = build_model(preset)
    return export_saved_model(model, base, version=1), model.max_faces


class _Side:
    """Accumulates one side's timed rounds."""

    def __init__(self, name):
        self.name, self.seconds, self.requests, self.latencies = name, 0.0, 0, []

    def add(self, seconds, latencies):
        self.seconds += seconds
        self.requests += len(latencies)
        self.latencies.extend(latencies)

    @property
    def rps(self):
        return self.requests / self.seconds

    def ms(self, q):
        return float(np.percentile(self.latencies, q) * 1000)

    def line(self):
        return (f"{self.name:28s} {self.rps:8.1f} req/s  p50 {self.ms(50):8.2f} ms  "
                f"p99 {self.ms(99):8.2f} ms  ({self.requests} requests)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_base_path",
                        help="SavedModel base path (default: export --preset to a temporary folder)")
    parser.add_argument("--preset", default="tiny", help="preset exported without --model_base_path")
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per side")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2,
                        help="alternating in-process / gRPC rounds the requests are split into")
    parser.add_argument("--warmup", type=int, default=100, help="untimed requests per side")
    parser.add_argument("--batching_parameters_file",
                        default=str(REPO / "serving" / "batching_parameters.txt"))
    parser.add_argument("--no-batching-phase", action="store_true",
                        help="skip the informational server-side batching phase")
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import serving_helpers as h
    import tensorflow as tf

    from tfattr import signatures as sig
    from tfattr.client import AttributeClient
    from tfattr.serve import list_versions

    tmp = None
    base = args.model_base_path
    described = base
    if base is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_serving_")
        base = Path(tmp.name) / "tfattr"
        start = time.perf_counter()
        _, max_faces = _export_model(args.preset, base)
        described = (f"tfattr cascade, {args.preset} preset, K={max_faces}, random weights "
                     f"(built + exported in {time.perf_counter() - start:.1f} s)")
    versions = list_versions(base)
    if not versions:
        raise SystemExit(f"no SavedModel version under {base}")
    version_dir = versions[max(versions)]
    images = _jpegs()
    per_round = max(1, args.requests // args.rounds)

    fn = tf.saved_model.load(str(version_dir)).signatures[sig.SIGNATURE_BYTES]
    inputs = [tf.constant([image]) for image in images]
    index = {image: i for i, image in enumerate(images)}

    def local_call(_, image):
        out = fn(**{sig.INPUT_IMAGE_BYTES: inputs[index[image]]})
        {k: v.numpy() for k, v in out.items()}

    clients = []

    def make_client(target):
        def make():
            client = AttributeClient(target, timeout=120)
            clients.append(client)
            return client
        return make

    def grpc_call(client, image):
        client.predict_raw([image])

    def run_server(extra_args, sides, rounds):
        """Starts a server, warms both sides up, runs `rounds` alternating rounds."""
        log_path = Path(tempfile.mkstemp(prefix="bench_serving_server_", suffix=".log")[1])
        server = h.ServerProcess(base, log_path, extra_args=[
            "--file_system_poll_wait_seconds", "600", *extra_args])
        try:
            make = make_client(server.target)
            bench(make, grpc_call, args.clients, args.warmup, images)
            for r in range(rounds):
                for side in sides:
                    if side.name.startswith("in-process"):
                        if r == 0 and not side.requests:
                            bench(lambda: None, local_call, args.clients, args.warmup, images)
                        side.add(*bench(lambda: None, local_call, args.clients, per_round, images))
                    else:
                        side.add(*bench(make, grpc_call, args.clients, per_round, images))
            for client in clients:
                client.close()
            clients.clear()
        finally:
            code = server.stop()
            log = server.log()
            log_path.unlink(missing_ok=True)
        if code != 0:
            print(f"warning: server exit code {code}\n{log[-2000:]}", file=sys.stderr)

    load_before = os.getloadavg()[0]
    local = _Side("in-process (16 threads)")
    grpc_plain = _Side("gRPC, no batching")
    try:
        run_server([], [local, grpc_plain], args.rounds)
        grpc_batched = None
        if not args.no_batching_phase:
            grpc_batched = _Side("gRPC, server batching")
            run_server(["--batching_parameters_file", args.batching_parameters_file],
                       [grpc_batched], args.rounds)
    finally:
        if tmp is not None:
            tmp.cleanup()

    sizes = ", ".join(f"{w}x{h}" for h, w in IMAGE_SIZES)
    print(f"model: {described}")
    print(f"requests: {local.requests} per side in {args.rounds} alternating rounds, "
          f"{args.clients} concurrent clients, one image per request cycling through 8 JPEGs "
          f"({sizes}; {min(map(len, images))}-{max(map(len, images))} bytes)")
    print(local.line())
    print(grpc_plain.line() + f"  ratio {grpc_plain.rps / local.rps:.3f}")
    if grpc_batched is not None:
        print(grpc_batched.line() + f"  ratio {grpc_batched.rps / local.rps:.3f}  "
              f"(batching: {args.batching_parameters_file}; merges requests, not like for like)")
    print(f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs "
          "(the server, the clients and other processes share them)")
    print(f"grpc_vs_inprocess={grpc_plain.rps / local.rps:.3f} p50_ms={grpc_plain.ms(50):.2f} "
          f"p99_ms={grpc_plain.ms(99):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
