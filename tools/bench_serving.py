"""Serving throughput: the SavedModel called in process vs. through `python -m tfattr.serve` over gRPC.

    python tools/bench_serving.py [--model_base_path models/tfattr] [--requests 2000]

Both phases in the same run, same image, same concurrency (16 client
threads, one image per request):
- in process: 16 threads call the loaded `serving_default` signature directly;
- gRPC: the server runs as a subprocess on 127.0.0.1 with batching enabled
  (serving/batching_parameters.txt), 16 threads each with their own channel
  call Predict through tfattr.client.

Without --model_base_path it exports the toy stand-in model
(tests/serving/toy_model.py) to a temporary folder. The last line is
exactly `grpc_vs_inprocess=<throughput ratio> p50_ms=<a> p99_ms=<b>` (gRPC
latencies); the target is a ratio >= 0.9.
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


def _run_concurrently(call, num_clients, total):
    """`total` calls of call(worker_state) over num_clients threads -> (seconds, latencies_s)."""
    lock = threading.Lock()
    counter = [0]
    latencies = []
    errors = []
    barrier = threading.Barrier(num_clients + 1)

    def worker(make_state):
        state = make_state()
        barrier.wait()
        local = []
        while True:
            with lock:
                if counter[0] >= total:
                    break
                counter[0] += 1
            start = time.perf_counter()
            try:
                call(state)
            except Exception as exc:  # noqa: BLE001 - counted, reported
                errors.append(exc)
            local.append(time.perf_counter() - start)
        with lock:
            latencies.extend(local)

    return worker, barrier, latencies, errors


def bench(make_state, call, num_clients, total):
    worker, barrier, latencies, errors = _run_concurrently(call, num_clients, total)
    threads = [threading.Thread(target=worker, args=(make_state,), daemon=True)
               for _ in range(num_clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} of {total} calls failed, first: {errors[0]!r}")
    return elapsed, np.asarray(latencies)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_base_path", help="SavedModel base path (default: toy model)")
    parser.add_argument("--requests", type=int, default=2000, help="requests per phase")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--image", help="image file to send (default: a 160x120 synthetic JPEG)")
    parser.add_argument("--batching_parameters_file",
                        default=str(REPO / "serving" / "batching_parameters.txt"))
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import serving_helpers as h
    import tensorflow as tf

    from tfattr import signatures as sig
    from tfattr.client import AttributeClient
    from tfattr.serve import list_versions

    tmp = None
    base = args.model_base_path
    if base is None:
        import toy_model

        tmp = tempfile.TemporaryDirectory(prefix="bench_serving_")
        base = Path(tmp.name) / "tfattr"
        toy_model.export_toy_model(base, version=1)
        print(f"model: toy stand-in exported to {base}", file=sys.stderr)
    versions = list_versions(base)
    if not versions:
        raise SystemExit(f"no SavedModel version under {base}")
    version_dir = versions[max(versions)]
    image = Path(args.image).read_bytes() if args.image else h.jpeg(120, 160, seed=0)

    log_path = Path(tempfile.mkstemp(prefix="bench_serving_server_", suffix=".log")[1])
    server = h.ServerProcess(base, log_path, extra_args=[
        "--batching_parameters_file", args.batching_parameters_file,
        "--file_system_poll_wait_seconds", "60"])
    try:
        # In process: the loaded signature, same concurrency.
        fn = tf.saved_model.load(str(version_dir)).signatures[sig.SIGNATURE_BYTES]
        batch = tf.constant([image])

        def local_call(_):
            fn(**{sig.INPUT_IMAGE_BYTES: batch})[sig.OUTPUT_NUM_FACES].numpy()

        bench(lambda: None, local_call, args.clients, 100)             # warmup
        local_s, local_lat = bench(lambda: None, local_call, args.clients, args.requests)

        # gRPC: the server subprocess, one channel per client thread.
        clients = []

        def make_client():
            client = AttributeClient(server.target, timeout=60)
            clients.append(client)
            return client

        def grpc_call(client):
            client.predict_raw([image])

        bench(make_client, grpc_call, args.clients, 100)                # warmup
        grpc_s, grpc_lat = bench(make_client, grpc_call, args.clients, args.requests)
        for client in clients:
            client.close()
    finally:
        code = server.stop()
        log = server.log()
        log_path.unlink(missing_ok=True)
        if tmp is not None:
            tmp.cleanup()
    if code != 0:
        print(f"warning: server exit code {code}\n{log[-2000:]}", file=sys.stderr)

    local_rps = args.requests / local_s
    grpc_rps = args.requests / grpc_s
    ms = lambda lat, q: float(np.percentile(lat, q) * 1000)  # noqa: E731
    print(f"model: {version_dir}  image: {len(image)} bytes  clients: {args.clients}  "
          f"requests per phase: {args.requests}")
    print(f"in-process: {local_rps:8.1f} req/s  p50 {ms(local_lat, 50):7.2f} ms  "
          f"p99 {ms(local_lat, 99):7.2f} ms")
    print(f"gRPC:       {grpc_rps:8.1f} req/s  p50 {ms(grpc_lat, 50):7.2f} ms  "
          f"p99 {ms(grpc_lat, 99):7.2f} ms  (batching: {args.batching_parameters_file})")
    print(f"grpc_vs_inprocess={grpc_rps / local_rps:.3f} p50_ms={ms(grpc_lat, 50):.2f} "
          f"p99_ms={ms(grpc_lat, 99):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
