"""`make demo`: the main job end to end on synthetic in-the-wild data.

generate data -> train every stage (tiny preset) -> export ONE SavedModel ->
start the gRPC server -> send held-out in-the-wild photos through it ->
write demo_out/ (annotated PNGs, one JSON per image, evaluation reports and
plots) -> print a summary. The server it starts is stopped on success,
failure and Ctrl-C.

Every step is a real CLI of the project run as a subprocess, so the demo
shows exactly the commands a user would type (they are printed).
"""

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def _run(cmd, log):
    log(f"$ {' '.join(str(c) for c in cmd)}")
    subprocess.run([str(c) for c in cmd], check=True)


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serving(model_base_path, port, log):
    """Starts `python -m tfattr.serve` on 127.0.0.1:port; always stops it."""
    cmd = [sys.executable, "-m", "tfattr.serve", "--model_base_path", str(model_base_path),
           "--model_name", "tfattr", "--port", str(port), "--host", "127.0.0.1"]
    log(f"$ {' '.join(cmd)} &")
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        _wait_until_serving(port, proc)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log("server stopped")


def _wait_until_serving(port, proc, timeout=180):
    from tfattr.client import AttributeClient

    client = AttributeClient(f"127.0.0.1:{port}", timeout=5)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before serving")
        try:
            client.status()
            return
        except Exception:  # not up yet
            time.sleep(1)
    raise TimeoutError(f"server not serving on port {port} after {timeout}s")


def _rounded(x):
    return None if x is None else round(x, 4)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_out", help="where results go")
    parser.add_argument("--identities", type=int, default=200,
                        help="synthetic identities to generate")
    parser.add_argument("--images-per-identity", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-predict", type=int, default=12,
                        help="held-out in-the-wild images sent through the server")
    parser.add_argument("--set", action="append", default=[],
                        help="extra train overrides, e.g. train.epochs=1 (repeatable)")
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    def log(msg):
        print(f"[demo {time.time() - started:6.0f}s] {msg}", flush=True)

    py = sys.executable
    data_dir = out / "data"
    workdir = out / "run"
    models = out / "models" / "tfattr"

    if not (data_dir / "list_attr_celeba.txt").exists():
        _run([py, "-m", "tfattr.data.synthetic", "--out", data_dir, "--identities", args.identities,
              "--images-per-identity", args.images_per_identity, "--seed", args.seed,
              "--workers", "2"], log)
    train_cmd = [py, "-m", "tfattr.train", "--data", f"synthetic:{data_dir}", "--preset", "tiny",
                 "--workdir", workdir, "--config", "training/synthetic.py"]
    for item in args.set:
        train_cmd += ["--set", item]
    _run(train_cmd, log)
    _run([py, "-m", "tfattr.export", "--workdir", workdir, "--out", models, "--overwrite",
          "--version", "1"], log)

    from tfattr.data.celeba import load_celeba

    data = load_celeba(data_dir, name="synthetic")
    test_idx = data.indices(2)
    multi = [i for i in test_idx if data.all_face_boxes is not None
             and len(data.all_face_boxes.get(data.filenames[i], ())) > 1]
    chosen = list(dict.fromkeys(multi[:3] + list(test_idx)))[: args.num_predict]
    images = [data.wild_path(i) for i in chosen]

    port = _free_port()
    predictions = out / "predictions"
    with serving(models, port, log):
        _run([py, "-m", "tfattr.predict", *images, "--server", f"127.0.0.1:{port}",
              "--out", predictions], log)
    reports = out / "report"
    _run([py, "-m", "tfattr.evaluate", "attributes", "--data", f"synthetic:{data_dir}",
          "--model", models, "--out", reports / "attributes"], log)
    _run([py, "-m", "tfattr.evaluate", "localization", "--data", f"synthetic:{data_dir}",
          "--model", workdir, "--out", reports / "localization", "--num-heatmaps", "8"], log)
    _run([py, "-m", "tfattr.analyze", "all", "--data", f"synthetic:{data_dir}", "--model", workdir,
          "--out", reports / "analyses", "--occlusion-images", "50"], log)
    attributes = json.loads((reports / "attributes" / "metrics.json").read_text())
    localization = json.loads((reports / "localization" / "metrics.json").read_text())

    summary = {
        "wall_time_s": round(time.time() - started, 1),
        "test_images": attributes["num_images"],
        "mean_accuracy_all_40": round(attributes["mean_accuracy"], 4),
        "mean_accuracy_rendered": round(attributes.get("mean_accuracy_rendered", float("nan")), 4),
        "majority_baseline_rendered": round(
            attributes.get("mean_majority_baseline_rendered", float("nan")), 4),
        "images_without_a_face": attributes.get("images_without_a_face"),
        # accuracy vs majority where LNet's top box hits / misses the face (rendered attributes)
        "accuracy_by_localization": {
            name: (g["images"], _rounded(g["accuracy"]), _rounded(g["majority_baseline"]))
            for name, g in attributes.get("accuracy_by_localization", {}).get("groups", {}).items()},
        "localization_recall_at_0.1_fppi": {
            name: round(m.get("recall_at_fppi_0.1", float("nan")), 4)
            for name, m in localization.get("methods", {}).items()},
        "data": str(data_dir),
        "workdir": str(workdir),
        "saved_model": str(models / "1"),
        "predictions": str(predictions),
        "reports": str(reports),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    log("done. Where to look:")
    for key, value in summary.items():
        print(f"  {key:28s} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
