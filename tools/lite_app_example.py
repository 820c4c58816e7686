"""What a phone app does with the tfattr TFLite file, in Python.

    python tools/lite_app_example.py --model model.tflite photo.jpg [more.jpg ...] [--top 5] [--json]

Per photo, exactly the steps an Android/iOS app implements with its LiteRT
interpreter (see docs/lite.md for the Kotlin/Swift equivalents):

1. load the model once: `Interpreter(model, num_threads=2)` (XNNPACK is the
   default CPU delegate) and get the named signature runner;
2. read the attribute names (embedded in the file; `<model>.attributes.txt`
   beside it holds the same list);
3. decode the photo to RGB uint8 and letterbox it into the [1, S, S, 3] input
   (longer side scaled to S, top-left, grey padding) -> input, scale;
4. invoke the runner with `images`, read the named outputs;
5. keep the first `num_faces` faces (face 0 = dominant), map their boxes back
   to the photo (divide by scale), print each face and its top attributes.

Only numpy, Pillow and ai_edge_litert are used at run time here (no
TensorFlow), like an app; the letterbox below mirrors
`tfattr.lite.letterbox_for_lite` (which uses TF's antialiased resize: pixel
values may differ by a grey level or so).
"""

import argparse
import json
import sys

import numpy as np
from PIL import Image

SIGNATURE = "serving_default"
INPUT = "images"
PAD = 128
ATTRIBUTES_METADATA = "tfattr_attribute_names"


def load_model(path, num_threads=2):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=num_threads)
    runner = interpreter.get_signature_runner(SIGNATURE)
    size = int(runner.get_input_details()[INPUT]["shape"][1])
    return runner, size


def attribute_names(path):
    """Names from the model's metadata entry, else from `<model>.attributes.txt`."""
    from ai_edge_litert import schema_py_generated as schema_fb

    with open(path, "rb") as f:
        model = schema_fb.Model.GetRootAs(bytearray(f.read()), 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name().decode() == ATTRIBUTES_METADATA:
            return bytes(model.Buffers(entry.Buffer()).DataAsNumpy()).decode().split()
    with open(path + ".attributes.txt") as f:
        return f.read().split()


def letterbox(photo, size):
    """uint8 [H, W, 3] -> (uint8 [1, size, size, 3], scale); photo point = input point / scale."""
    h, w = photo.shape[:2]
    scale = size / max(h, w)
    new_h, new_w = min(max(round(h * scale), 1), size), min(max(round(w * scale), 1), size)
    resized = np.asarray(Image.fromarray(photo).resize((new_w, new_h), Image.BILINEAR))
    canvas = np.full((size, size, 3), PAD, np.uint8)
    canvas[:new_h, :new_w] = resized
    return canvas[np.newaxis], scale


def describe(runner, size, names, photo, top):
    lite_input, scale = letterbox(photo, size)
    out = runner(**{INPUT: lite_input})
    num = int(out["num_faces"][0])
    faces = []
    for k in range(num):
        box = np.clip(out["boxes"][0, k] / scale, 0, [photo.shape[0], photo.shape[1]] * 2)
        probs = out["attribute_probabilities"][0, k]
        order = np.argsort(-probs)[:top]
        faces.append({"box": [round(float(v), 1) for v in box],
                      "score": round(float(out["box_scores"][0, k]), 4),
                      "top_attributes": [[names[i], round(float(probs[i]), 3)] for i in order]})
    return faces


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+")
    parser.add_argument("--model", required=True)
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="one JSON line per photo")
    args = parser.parse_args(argv)

    runner, size = load_model(args.model, args.threads)
    names = attribute_names(args.model)
    for path in args.images:
        photo = np.asarray(Image.open(path).convert("RGB"))
        faces = describe(runner, size, names, photo, args.top)
        if args.json:
            print(json.dumps({"image": path, "faces": faces}))
            continue
        print(f"{path}: {len(faces)} face(s)")
        for k, face in enumerate(faces):
            ymin, xmin, ymax, xmax = face["box"]
            attrs = ", ".join(f"{n} {p:.2f}" for n, p in face["top_attributes"])
            print(f"  face {k}: box y {ymin:.0f}-{ymax:.0f} x {xmin:.0f}-{xmax:.0f} "
                  f"score {face['score']:.3f} | {attrs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
