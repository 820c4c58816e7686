"""Images -> face boxes + 40 attribute probabilities, as JSON and annotated PNGs.

    python -m tfattr.predict photo1.jpg photo2.png --server 127.0.0.1:8500 --out preds/
    python -m tfattr.predict photo1.jpg --model models/tfattr --out preds/ [--top-k 5]

`--server` calls a TF Serving endpoint (official or `python -m tfattr.serve`)
through `tfattr.client`; `--model` loads the SavedModel in this process
(a base path -> its highest numeric version, or a version folder) and calls
`serving_default`. For each image `<out>/<stem>.json` holds every face (box
ymin,xmin,ymax,xmax in input pixels, score, the 40 named attribute
probabilities and SVM scores, the top-k) and `<out>/<stem>.png` is the image
with boxes and the top-k attributes drawn. A file that cannot be read or
decoded gets an error line on stderr (and an `"error"` JSON); the others are
still processed; the exit code is 1 if any file failed.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from tfattr import signatures as sig
from tfattr.attributes import ATTRIBUTE_NAMES
from tfattr.client import outputs_to_predictions

BATCH = 8


def resolve_version_dir(model_path):
    """A version folder (has saved_model.pb) or a base path -> its highest numeric version."""
    from tfattr.serve import list_versions

    path = Path(model_path)
    if (path / "saved_model.pb").exists():
        return path
    versions = list_versions(path)
    if not versions:
        raise FileNotFoundError(f"{path} is neither a SavedModel nor a base path with numeric "
                                "version folders")
    return versions[max(versions)]


class LocalPredictor:
    """Calls `serving_default` of a SavedModel loaded in this process."""

    def __init__(self, model_path):
        import tensorflow as tf

        self.path = resolve_version_dir(model_path)
        self.version = int(self.path.name) if self.path.name.isdigit() else None
        self._fn = tf.saved_model.load(str(self.path)).signatures[sig.SIGNATURE_BYTES]

    def predict(self, images):
        import tensorflow as tf

        from tfattr.serve import DEFAULT_MAX_IMAGE_PIXELS, check_image_bytes

        images = [bytes(b) for b in images]
        for i, data in enumerate(images):   # same header checks as the server
            check_image_bytes(data, DEFAULT_MAX_IMAGE_PIXELS, index=i)
        outputs = self._fn(**{sig.INPUT_IMAGE_BYTES: tf.constant(list(images), dtype=tf.string)})
        return outputs_to_predictions({k: v.numpy() for k, v in outputs.items()},
                                      model_version=self.version)


def _is_bad_input(exc):
    import grpc
    import tensorflow as tf

    from tfattr.serve import ServingError

    if isinstance(exc, tf.errors.InvalidArgumentError):
        return True
    if isinstance(exc, ServingError):
        return exc.code == grpc.StatusCode.INVALID_ARGUMENT
    return isinstance(exc, grpc.RpcError) and exc.code() == grpc.StatusCode.INVALID_ARGUMENT


def predict_all(predictor, items):
    """[(name, bytes)] -> {name: result dict or Exception}; a bad image fails alone."""
    results = {}
    for start in range(0, len(items), BATCH):
        chunk = items[start:start + BATCH]
        try:
            for (name, _), result in zip(chunk, predictor.predict([d for _, d in chunk])):
                results[name] = result
        except Exception as exc:  # noqa: BLE001 - isolate the offending image
            if len(chunk) == 1 or not _is_bad_input(exc):
                for name, _ in chunk:
                    results[name] = exc
                continue
            for name, data in chunk:
                try:
                    results[name] = predictor.predict([data])[0]
                except Exception as one_exc:  # noqa: BLE001
                    results[name] = one_exc
    return results


def _error_text(exc):
    from tfattr.serve import ServingError, clean_tf_message

    details = getattr(exc, "details", None)
    if callable(details):
        return f"{exc.code().name}: {details()}"
    if isinstance(exc, ServingError):
        return f"{exc.code.name}: {exc.message}"
    message = getattr(exc, "message", None)
    if message is not None:
        return clean_tf_message(message)
    return str(exc) or type(exc).__name__


def decode_for_drawing(data):
    """Encoded bytes -> BGR uint8 for OpenCV (OpenCV first, Pillow for what it can't read)."""
    import cv2

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is not None:
        return image
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as pil:
        rgb = np.asarray(pil.convert("RGB"))
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def annotate(image, result, top_k):
    """Draws every face box and its top-k attributes on a BGR image (in place)."""
    import cv2

    height, width = image.shape[:2]
    scale = max(0.35, min(width, height) / 600.0)
    thickness = max(1, int(round(scale * 2)))
    colors = [(0, 220, 0), (0, 165, 255), (255, 128, 0), (255, 0, 255)]
    if not result["faces"]:
        cv2.putText(image, "no face", (5, int(20 * scale) + 5), cv2.FONT_HERSHEY_SIMPLEX,
                    scale, (0, 0, 255), thickness, cv2.LINE_AA)
    for k, face in enumerate(result["faces"]):
        color = colors[k % len(colors)]
        ymin, xmin, ymax, xmax = (int(round(v)) for v in face["box"])
        cv2.rectangle(image, (xmin, ymin), (xmax, ymax), color, thickness)
        lines = [f"face {k} {face['score']:.2f}"] + [f"{n} {p:.2f}" for n, p in face["top"]]
        line_h = int(22 * scale) + 2
        x = min(max(xmin + 3, 0), max(width - 10, 0))
        y = max(ymin, 0) + line_h
        for line in lines:
            cv2.putText(image, line, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale * 0.8, (0, 0, 0),
                        thickness + 2, cv2.LINE_AA)
            cv2.putText(image, line, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale * 0.8, color,
                        thickness, cv2.LINE_AA)
            y += line_h
    return image


def _unique_stem(path, used):
    stem = Path(path).stem or "image"
    candidate, i = stem, 1
    while candidate in used:
        candidate = f"{stem}_{i}"
        i += 1
    used.add(candidate)
    return candidate


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", help="image files (JPEG/PNG/GIF/BMP/WebP)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", help="TF Serving gRPC endpoint host:port")
    where.add_argument("--model", help="SavedModel base path or version folder (in process)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--top-k", type=int, default=5, help="attributes drawn per face")
    parser.add_argument("--model-name", default=sig.MODEL_NAME)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failures = 0
    items, errors = [], {}
    for path in args.images:
        try:
            items.append((path, Path(path).read_bytes()))
        except OSError as exc:
            errors[path] = exc
    if args.server:
        from tfattr.client import AttributeClient

        predictor = AttributeClient(args.server, model_name=args.model_name,
                                    timeout=args.timeout, max_images_per_request=BATCH)
    else:
        predictor = LocalPredictor(args.model)
    results = predict_all(predictor, items) if items else {}
    results.update(errors)
    data = dict(items)
    used = set()
    for path in args.images:
        stem = _unique_stem(path, used)
        result = results[path]
        if isinstance(result, Exception):
            failures += 1
            message = _error_text(result)
            print(f"error: {path}: {message}", file=sys.stderr)
            (out / f"{stem}.json").write_text(json.dumps({"image": str(path), "error": message},
                                                         indent=2))
            continue
        for face in result["faces"]:
            ranked = sorted(face["attributes"].items(), key=lambda kv: -kv[1])
            face["top"] = [[n, p] for n, p in ranked[:max(args.top_k, 0)]]
        record = {"image": str(path), **result, "attribute_names": list(ATTRIBUTE_NAMES)}
        (out / f"{stem}.json").write_text(json.dumps(record, indent=2))
        try:
            import cv2

            drawn = annotate(decode_for_drawing(data[path]), result, args.top_k)
            cv2.imwrite(str(out / f"{stem}.png"), drawn)
        except Exception as exc:  # noqa: BLE001 - JSON is written; drawing is best effort
            print(f"warning: {path}: could not draw the annotated image: {exc}", file=sys.stderr)
        print(f"{path}: {result['num_faces']} face(s) -> {out / stem}.json, .png", file=sys.stderr)
    ok = len(args.images) - failures
    print(f"predict: {ok} image(s) done, {failures} failed, results in {out}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
