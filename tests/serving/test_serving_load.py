"""`python -m tfattr.serve` as a subprocess: sustained load, memory, hot version swap, clean shutdown."""

import threading
import time

import grpc
import numpy as np
import pytest

import serving_helpers as h
import toy_model
from tfattr import signatures as sig
from tfattr.client import AttributeClient

NUM_CLIENTS = 16
NUM_REQUESTS = 2000
RSS_GROWTH_LIMIT = 64 * 1024 * 1024


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("load")
    base = root / "models" / "tfattr"
    toy_model.export_toy_model(base, version=1, variant=0.0)
    # Temp/non-numeric folders next to the versions must be ignored.
    (base / ".tmp-99").mkdir()
    (base / "tmp100").mkdir()
    (base / "notes").mkdir()
    server = h.ServerProcess(base, root / "server.log", extra_args=[
        "--batching_parameters_file", h.REPO / "serving" / "batching_parameters.txt",
        "--file_system_poll_wait_seconds", "0.5"])
    yield base, server
    code = server.stop()
    assert code == 0, f"server did not shut down cleanly ({code}):\n{server.log()[-3000:]}"


def _hammer(target, total, images, stop_when=None, deadline_s=240, results=None):
    """NUM_CLIENTS threads share `total` Predict calls; returns [(t, version, outputs) | exc].

    `results` (a list) is appended to as responses arrive, for watching from outside.
    """
    lock = threading.Lock()
    counter = [0]
    results = [] if results is None else results
    deadline = time.monotonic() + deadline_s

    def worker(index):
        with AttributeClient(target, timeout=30) as client:
            while time.monotonic() < deadline:
                with lock:
                    if counter[0] >= total or (stop_when is not None and stop_when()):
                        return
                    n = counter[0]
                    counter[0] += 1
                try:
                    outputs, version = client.predict_raw([images[n % len(images)]])
                    item = (time.monotonic(), version, outputs)
                except grpc.RpcError as exc:
                    item = exc
                with lock:
                    results.append(item)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(NUM_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(deadline_s + 30)
    return results


def test_load_without_errors_or_memory_growth(served):
    base, server = served
    images = [h.jpeg(48, 64, seed=s) for s in range(8)]
    warm = _hammer(server.target, 200, images)
    assert all(not isinstance(r, Exception) for r in warm)
    rss_before = server.rss()
    started = time.monotonic()
    results = _hammer(server.target, NUM_REQUESTS, images)
    elapsed = time.monotonic() - started
    rss_after = server.rss()
    errors = [r for r in results if isinstance(r, Exception)]
    assert len(results) == NUM_REQUESTS
    assert not errors, f"{len(errors)} errors, first: {errors[0].code()} {errors[0].details()}"
    growth = rss_after - rss_before
    print(f"{NUM_REQUESTS} requests from {NUM_CLIENTS} clients in {elapsed:.1f}s "
          f"({NUM_REQUESTS / elapsed:.0f} req/s); server RSS {rss_before / 2**20:.0f} -> "
          f"{rss_after / 2**20:.0f} MiB")
    assert growth < RSS_GROWTH_LIMIT, f"server RSS grew by {growth / 2**20:.0f} MiB"
    assert {r[1] for r in results} == {1}


def test_new_version_swapped_in_under_load_without_failures(served):
    base, server = served
    images = [h.jpeg(40, 40, seed=s) for s in range(4)]
    seen_v2 = []

    def enough_of_v2():
        return len(seen_v2) >= 1 and time.monotonic() - seen_v2[0] > 2.0

    results = []

    def load():
        # Bounded by count and time; normally stopped 2 s after v2 first answers.
        _hammer(server.target, 50_000, images, stop_when=enough_of_v2, deadline_s=90,
                results=results)

    loader = threading.Thread(target=load)
    loader.start()
    time.sleep(1.0)   # under load before the new version lands
    toy_model.export_toy_model(base, version=2, variant=3.0)   # temp dir + rename
    exported = time.monotonic()
    while loader.is_alive() and not seen_v2 and time.monotonic() - exported < 90:
        if any(not isinstance(r, Exception) and r[1] == 2 for r in list(results)):
            seen_v2.append(time.monotonic())
        time.sleep(0.05)
    loader.join(150)
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, f"{len(errors)} failed during the swap: {errors[0].code()} {errors[0].details()}"
    assert seen_v2, f"version 2 never answered:\n{server.log()[-3000:]}"
    ok = sorted((r for r in results), key=lambda r: r[0])
    first_v2 = next(i for i, r in enumerate(ok) if r[1] == 2)
    assert all(r[1] == 1 for r in ok[:first_v2])
    # Once v2 answered, later responses (after the in-flight ones drain) all come from v2.
    tail = [r for r in ok if r[0] > ok[first_v2][0] + 0.5]
    assert tail and all(r[1] == 2 for r in tail)
    # And its outputs differ (variant shifts every score).
    v1 = next(r for r in ok if r[1] == 1)[2][sig.OUTPUT_ATTRIBUTE_SCORES]
    v2 = tail[-1][2][sig.OUTPUT_ATTRIBUTE_SCORES]
    assert not np.allclose(v1, v2)
    with AttributeClient(server.target) as client:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            states = {s["version"]: s["state"] for s in client.status()}
            if states.get(1) == "END":
                break
            time.sleep(0.2)
        assert states == {2: "AVAILABLE", 1: "END"}
        assert client.metadata()["version"] == 2
    log = server.log()
    assert "loaded model tfattr version 2" in log and "unloaded model tfattr version 1" in log
    assert "version 99" not in log and "version 100" not in log
