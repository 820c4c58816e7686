"""`python -m tfattr.evaluate attributes`: attribute accuracy of a trained run on a partition.

MODEL is either
- an exported SavedModel (a base path `models/tfattr` -> its highest numeric
  version, or a version folder): the partition's photos are sent as encoded
  bytes through `serving_default` exactly as a client would (in-the-wild photos
  for the in-the-wild variant, `img_align_celeba/` crops for the aligned one),
  and the dominant face's (face 0) attribute scores are the prediction; an
  image where the model finds no face gets all-zero scores (counted as wrong
  wherever the label is positive: the end-to-end figure). When the dataset has
  face boxes (`list_bbox_celeba.txt`; read for evaluation only), the accuracy
  is also split by what the localizer did with the image (no face / top box
  IoU >= 0.5 / a box that misses), each group beside the majority decision on
  the same images: it tells LNet's errors from ANet's; or
- a training workdir (config.json + anet/ + svm/ DONE): the same path as the
  run's training: face regions from the run's LNet localizer (or the whole
  aligned crop for an aligned-only run), ANet on every patch in one
  interweaved pass, the folded SVM head averaged over patches.
An attribute is predicted present when its averaged SVM score is > 0 (Platt
probability > 0.5 is the same decision when the Platt slope is positive).

Prints per-attribute accuracy beside the majority baseline, the mean over all
40 and over the rendered attributes (synthetic data:
`tfattr.data.synthetic.RENDERED_ATTRIBUTES`); writes `attributes.csv`,
`metrics.json` and the Table-1 report (`table1.{md,csv,png}`) to --out.
"""

import csv
import json
import sys
from pathlib import Path

import numpy as np

from tfattr.attributes import ATTRIBUTE_NAMES

PARTITION_NAMES = {0: "train", 1: "val", 2: "test"}


class ModelError(ValueError):
    """MODEL is not a usable training workdir."""


def check_workdir(workdir):
    workdir = Path(workdir)
    if not (workdir / "config.json").is_file():
        raise ModelError(f"--model {workdir}: not a training workdir (no config.json)")
    for stage in ("anet", "svm"):
        if not (workdir / stage / "DONE").exists():
            raise ModelError(f"--model {workdir}: stage {stage} is not DONE "
                             "(train it: python -m tfattr.train ... --stages anet,svm)")
    return json.loads((workdir / "config.json").read_text())


def predict_workdir(data, workdir, partition=2, log=print):
    """(scores [N, 40], probabilities [N, 40], indices [N]) for the images of `partition`."""
    from tfattr.presets import get_preset
    from tfattr.stages import anet as anet_stage
    from tfattr.stages import svm as svm_stage

    run = check_workdir(workdir)
    preset = get_preset(run.get("preset", "tiny"))
    idx = data.indices(partition)
    if len(idx) == 0:
        raise ModelError(f"the dataset has no {PARTITION_NAMES[partition]} images")
    source = anet_stage.run_summary(workdir, "anet").get("face_source", "aligned")
    if source == "lnet" and data.wild_dir is None:
        raise ModelError("the run localizes faces with LNet but the dataset has no in-the-wild images")
    if source == "aligned" and data.aligned_dir is None:
        raise ModelError("the run was trained on aligned crops but the dataset has no img_align_celeba/")
    regions, _ = anet_stage.run_face_regions(workdir, preset, data, idx,
                                             f"eval_{PARTITION_NAMES[partition]}", source, log)
    anet = anet_stage.load_anet(workdir, preset)
    head = svm_stage.load_svm_head(workdir)
    feats = svm_stage.patch_features(anet, preset, regions)
    out = head(feats)
    return out["attribute_scores"].numpy(), out["attribute_probabilities"].numpy(), idx


def resolve_saved_model(path):
    """A SavedModel version folder from a base path (highest numeric version) or itself."""
    path = Path(path)
    if (path / "saved_model.pb").is_file():
        return path
    versions = sorted((int(p.name) for p in path.glob("*")
                       if p.name.isdigit() and (p / "saved_model.pb").is_file()), reverse=True)
    if not versions:
        raise ModelError(f"--model {path}: no saved_model.pb there nor in a numeric version folder")
    return path / str(versions[0])


def is_saved_model(path):
    try:
        resolve_saved_model(path)
        return True
    except ModelError:
        return False


def predict_saved_model(data, model_path, partition=2, batch_size=16, log=print):
    """(scores [N, 40], probabilities [N, 40], indices [N], num_faces [N], boxes [N, 4]) of
    face 0 through serving_default; boxes (ymin, xmin, ymax, xmax) in the photo's pixels
    (None for an aligned-face model)."""
    import tensorflow as tf

    from tfattr import signatures as sig

    version_dir = resolve_saved_model(model_path)
    info_path = version_dir / "assets" / "model.json"
    variant = json.loads(info_path.read_text())["variant"] if info_path.exists() else "wild"
    if variant == "wild" and data.wild_dir is None:
        raise ModelError("the model localizes faces in photos but the dataset has no img_celeba/")
    if variant == "aligned" and data.aligned_dir is None:
        raise ModelError("the model expects face crops but the dataset has no img_align_celeba/")
    path_of = data.wild_path if variant == "wild" else data.aligned_path
    idx = data.indices(partition)
    if len(idx) == 0:
        raise ModelError(f"the dataset has no {PARTITION_NAMES[partition]} images")
    serve = tf.saved_model.load(str(version_dir)).signatures[sig.SIGNATURE_BYTES]
    scores, probabilities, faces, boxes = [], [], [], []
    for start in range(0, len(idx), batch_size):
        chunk = idx[start:start + batch_size]
        images = tf.constant([Path(path_of(i)).read_bytes() for i in chunk])
        out = serve(**{sig.INPUT_IMAGE_BYTES: images})
        scores.append(out[sig.OUTPUT_ATTRIBUTE_SCORES].numpy()[:, 0])
        probabilities.append(out[sig.OUTPUT_ATTRIBUTE_PROBABILITIES].numpy()[:, 0])
        faces.append(out[sig.OUTPUT_NUM_FACES].numpy())
        boxes.append(out[sig.OUTPUT_BOXES].numpy()[:, 0])
        log(f"evaluate: {min(start + batch_size, len(idx))}/{len(idx)} images")
    # An aligned-variant box is the whole crop, not comparable with the photo's face box.
    return (np.concatenate(scores), np.concatenate(probabilities), idx, np.concatenate(faces),
            np.concatenate(boxes) if variant == "wild" else None)


def accuracy_by_localization(correct, majority_correct, num_faces, top_box_iou, iou=0.5):
    """Accuracy split by what the localizer did with each image.

    correct, majority_correct: bool [N, A] (our decision / the majority class is right);
    num_faces [N]; top_box_iou [N] of face 0's box with the labelled face. Returns
    {group: {"images", "accuracy", "majority_baseline"}} for the groups "no face",
    "top box hits (IoU >= iou)" and "top box misses", each mean over the group's
    images and the A attributes (None when the group is empty).
    """
    found = np.asarray(num_faces) > 0
    hits = found & (np.asarray(top_box_iou) >= iou)
    groups = {"no face": ~found, f"top box hits (IoU >= {iou:g})": hits,
              "top box misses": found & ~hits}
    out = {}
    for name, mask in groups.items():
        n = int(mask.sum())
        out[name] = {"images": n,
                     "accuracy": float(correct[mask].mean()) if n else None,
                     "majority_baseline": float(majority_correct[mask].mean()) if n else None}
    return out


def rendered_attributes(data):
    if getattr(data, "name", "") != "synthetic":
        return None
    try:
        from tfattr.data.synthetic import RENDERED_ATTRIBUTES
    except ImportError:
        return None
    return tuple(RENDERED_ATTRIBUTES)


def paper_column(data):
    """The paper's Table-1 row to print beside ours: only for the real datasets."""
    return {"celeba": "celeba", "lfwa": "lfwa"}.get(getattr(data, "name", ""))


def evaluate_attributes(data, workdir, out_dir, partition=2, log=print):
    """Runs the evaluation, prints the table, writes the files; returns the metrics dict."""
    from tfattr.evaluation.report import compute_report, write_report

    num_faces = boxes = None
    if is_saved_model(workdir):
        scores, probabilities, idx, num_faces, boxes = predict_saved_model(data, workdir,
                                                                           partition, log=log)
    else:
        scores, probabilities, idx = predict_workdir(data, workdir, partition, log)
    labels = data.attributes[idx]
    report = compute_report(scores > 0, labels)
    rendered = rendered_attributes(data)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "attributes.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["attribute", "accuracy", "majority_baseline", "balanced_accuracy",
                    "positive_rate", "rendered"])
        for a, name in enumerate(ATTRIBUTE_NAMES):
            w.writerow([name, f"{report.accuracy[a]:.4f}", f"{report.majority_baseline[a]:.4f}",
                        f"{report.balanced_accuracy[a]:.4f}", f"{report.positive_rate[a]:.4f}",
                        "" if rendered is None else int(name in rendered)])
    metrics = {
        "model": str(workdir), "data": str(data.root), "partition": PARTITION_NAMES[partition],
        "num_images": int(len(idx)),
        "mean_accuracy": report.mean("accuracy"),
        "mean_majority_baseline": report.mean("majority_baseline"),
        "mean_balanced_accuracy": report.mean("balanced_accuracy"),
        "images_without_a_face": None if num_faces is None else int((num_faces == 0).sum()),
        "per_attribute": {n: {"accuracy": float(report.accuracy[a]),
                              "majority_baseline": float(report.majority_baseline[a])}
                          for a, n in enumerate(ATTRIBUTE_NAMES)},
    }
    by_localization = None
    if boxes is not None and data.bboxes is not None and (num_faces > 0).any():
        from tfattr.evaluation.localization import iou_matrix

        top_iou = np.array([iou_matrix(b, g)[0, 0] for b, g in zip(boxes, data.bboxes[idx])])
        cols = [ATTRIBUTE_NAMES.index(n) for n in (rendered or ATTRIBUTE_NAMES)]
        positive = labels[:, cols] > 0
        majority = np.broadcast_to(report.positive_rate[cols] >= 0.5, positive.shape)
        by_localization = accuracy_by_localization((scores[:, cols] > 0) == positive,
                                                   majority == positive, num_faces, top_iou)
        metrics["accuracy_by_localization"] = {
            "attributes": "rendered" if rendered else "all 40", "groups": by_localization}
    if rendered:
        below = [n for n in rendered if report.accuracy[ATTRIBUTE_NAMES.index(n)]
                 <= report.majority_baseline[ATTRIBUTE_NAMES.index(n)]]
        metrics.update({
            "rendered_attributes": list(rendered),
            "mean_accuracy_rendered": report.mean("accuracy", rendered),
            "mean_majority_baseline_rendered": report.mean("majority_baseline", rendered),
            "rendered_not_above_baseline": below,
        })
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_report(report, out_dir, f"Attributes: {workdir} on {data.root} ({PARTITION_NAMES[partition]})",
                 rendered=rendered, paper_column=paper_column(data))

    print(f"{'attribute':22s} {'accuracy':>9s} {'majority':>9s}")
    for a, name in enumerate(ATTRIBUTE_NAMES):
        mark = "" if rendered is None or name in rendered else "  (not rendered)"
        print(f"{name:22s} {report.accuracy[a]:9.4f} {report.majority_baseline[a]:9.4f}{mark}")
    print(f"{'mean (all 40)':22s} {metrics['mean_accuracy']:9.4f} "
          f"{metrics['mean_majority_baseline']:9.4f}")
    if rendered:
        print(f"{'mean (rendered ' + str(len(rendered)) + ')':22s} "
              f"{metrics['mean_accuracy_rendered']:9.4f} "
              f"{metrics['mean_majority_baseline_rendered']:9.4f}")
        print(f"rendered attributes not above the majority baseline: {below or 'none'}")
    if num_faces is not None:
        print(f"images where the model found no face: {metrics['images_without_a_face']}")
    if by_localization:
        what = metrics["accuracy_by_localization"]["attributes"]
        print(f"by what the localizer did (mean over the {what} attributes; the face boxes "
              "are read for this split only):")
        for name, g in by_localization.items():
            if g["images"]:
                print(f"  {name:28s} {g['images']:5d} images  accuracy {g['accuracy']:.4f}  "
                      f"majority {g['majority_baseline']:.4f}")
    print(f"{len(idx)} {PARTITION_NAMES[partition]} images; wrote {out_dir}/attributes.csv, "
          f"metrics.json, table1.md/csv/png")
    return metrics


# ------------------------------------------------------------ CLI (tfattr.evaluate)

def add_arguments(parser):
    parser.add_argument("--data", required=True, help="KIND:DIR (celeba, lfwa or synthetic)")
    parser.add_argument("--model", required=True,
                        help="an exported SavedModel (base path or version folder) or a "
                             "training workdir (anet + svm DONE)")
    parser.add_argument("--out", required=True, help="report folder (attributes.csv, metrics.json, table1.*)")
    parser.add_argument("--partition", type=int, default=2, choices=(0, 1, 2),
                        help="0 train, 1 val, 2 test (default)")


def run(args):
    from tfattr.data.celeba import DatasetError, parse_data_spec

    try:
        data = parse_data_spec(args.data)
        if not is_saved_model(args.model):
            check_workdir(args.model)
    except (DatasetError, ModelError, ValueError, OSError) as e:
        print(f"tfattr.evaluate attributes: error: {e}", file=sys.stderr)
        return 2
    evaluate_attributes(data, args.model, args.out, partition=args.partition)
    return 0
