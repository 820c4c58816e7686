"""Face localization evaluation (paper Sec. 3.1, Fig. 7) with an OpenCV Haar baseline.

On the test partition of a CelebA-layout dataset (boxes used HERE ONLY):

- dominant-face recall at IoU >= 0.5 of the top-scoring box (no threshold);
- Fig. 7(a): true-positive rate of the dominant face vs false positives per
  image (FPPI), sweeping the score threshold; TPR read at FPPI = 0.01 / 0.1;
- Fig. 7(c): recall (TPR at FPPI = 0.1) vs the IoU threshold;
- multi-face recall on the images with several faces (list_bbox_all_faces.txt):
  the fraction of all their faces found by a box the method reports as a face
  (ours: the first `num_faces` boxes, i.e. score >= the calibrated threshold;
  Haar: its detections);
- false alarms per face-free image on the backgrounds NOT used for calibration;
- response-map heatmaps over a sample of images (overlay + boxes).

Matching: a detection is a true positive if its IoU with the dominant face is
>= the IoU threshold (only the best-scoring such detection; more are
duplicates = false positives); a detection matching another annotated face
of a multi-face image is neither; every other detection is a false positive.

Baseline: `cv2.CascadeClassifier(cv2.data.haarcascades +
"haarcascade_frontalface_default.xml").detectMultiScale3(..., outputRejectLevels=True)`,
the level weights as scores.
"""

import csv
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

IOU_THRESHOLDS = tuple(np.round(np.arange(0.1, 0.91, 0.05), 2))
FPPI_POINTS = (0.01, 0.1)


def iou_matrix(a, b):
    """numpy IoU of boxes a [N, 4] and b [M, 4] (ymin, xmin, ymax, xmax) -> [N, M]."""
    a = np.asarray(a, np.float64).reshape(-1, 4)[:, None, :]
    b = np.asarray(b, np.float64).reshape(-1, 4)[None, :, :]
    ih = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    iw = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = ih * iw
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / np.maximum(area_a + area_b - inter, 1e-9)


@dataclasses.dataclass
class Detections:
    """Per image: boxes [k, 4], scores [k] (sorted descending), `accepted` [k] bool
    (what the method itself calls a face)."""

    boxes: list
    scores: list
    accepted: list


def roc_curve(detections, gt_faces, iou_threshold=0.5):
    """(thresholds, fppi, tpr) of the dominant face. gt_faces[i]: [K_i, 4], dominant first."""
    n = len(gt_faces)
    dominant_scores = np.full(n, -np.inf)
    fp_scores = []
    for i, (boxes, scores, faces) in enumerate(zip(detections.boxes, detections.scores, gt_faces)):
        if len(boxes) == 0:
            continue
        iou = iou_matrix(boxes, faces)
        hits_dominant = iou[:, 0] >= iou_threshold
        hits_other = (iou[:, 1:] >= iou_threshold).any(1) if faces.shape[0] > 1 else np.zeros(len(boxes), bool)
        if hits_dominant.any():
            best = np.flatnonzero(hits_dominant)[np.argmax(np.asarray(scores)[hits_dominant])]
            dominant_scores[i] = scores[best]
            dup = hits_dominant.copy()
            dup[best] = False
            fp_scores += list(np.asarray(scores)[dup])
        fp_scores += list(np.asarray(scores)[~hits_dominant & ~hits_other])
    fp_scores = np.sort(np.asarray(fp_scores, np.float64))
    thresholds = np.unique(np.concatenate([dominant_scores[np.isfinite(dominant_scores)], fp_scores]))[::-1]
    thresholds = np.concatenate([[np.inf], thresholds])
    tpr = (dominant_scores[None, :] >= thresholds[:, None]).mean(1)
    fppi = (len(fp_scores) - np.searchsorted(fp_scores, thresholds, side="left")) / n
    return thresholds, fppi, tpr


def tpr_at_fppi(fppi, tpr, target):
    ok = fppi <= target + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def top1_recall(detections, gt_faces, iou_threshold=0.5):
    hits = [len(b) > 0 and iou_matrix(b[:1], f[:1])[0, 0] >= iou_threshold
            for b, f in zip(detections.boxes, gt_faces)]
    return float(np.mean(hits)), [float(iou_matrix(b[:1], f[:1])[0, 0]) if len(b) else 0.0
                                  for b, f in zip(detections.boxes, gt_faces)]


def multi_face_recall(detections, gt_faces, iou_threshold=0.5):
    found = total = images = 0
    for boxes, accepted, faces in zip(detections.boxes, detections.accepted, gt_faces):
        if faces.shape[0] < 2:
            continue
        images += 1
        total += faces.shape[0]
        acc = np.asarray(boxes)[np.asarray(accepted, bool)] if len(boxes) else np.zeros((0, 4))
        if len(acc):
            found += int((iou_matrix(faces, acc) >= iou_threshold).any(1).sum())
    return {"images": images, "faces": total, "found": found,
            "recall": float(found / total) if total else float("nan")}


# ------------------------------------------------------------------ methods

class HaarBaseline:
    name = "opencv_haar"

    def __init__(self, scale_factor=1.1, min_neighbors=3, min_size=12):
        import cv2

        self.cv2 = cv2
        self.cascade = cv2.CascadeClassifier(cv2.data.haarcascades
                                             + "haarcascade_frontalface_default.xml")
        if self.cascade.empty():
            raise RuntimeError("OpenCV Haar cascade haarcascade_frontalface_default.xml not found")
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size = min_size

    def detect(self, image_rgb):
        gray = self.cv2.cvtColor(image_rgb, self.cv2.COLOR_RGB2GRAY)
        rects, _, weights = self.cascade.detectMultiScale3(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
            minSize=(self.min_size, self.min_size), outputRejectLevels=True)
        if len(rects) == 0:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, bool), None
        rects = np.asarray(rects, np.float32)
        boxes = np.stack([rects[:, 1], rects[:, 0], rects[:, 1] + rects[:, 3],
                          rects[:, 0] + rects[:, 2]], 1)
        scores = np.asarray(weights, np.float32).reshape(-1)
        order = np.argsort(-scores, kind="stable")
        return boxes[order], scores[order], np.ones(len(order), bool), None


class LNetMethod:
    name = "lnet"

    def __init__(self, localizer):
        import tensorflow as tf

        self.localizer = localizer
        self._fn = tf.function(localizer.localize,
                               input_signature=[tf.TensorSpec([None, None, 3], tf.float32)])
        self.tf = tf

    def detect(self, image_rgb):
        image = self.tf.constant(image_rgb.astype(np.float32) / 127.5 - 1.0)
        out = {k: v.numpy() for k, v in self._fn(image).items()}
        valid = out["valid"]
        boxes, scores = out["boxes"][valid], out["box_scores"][valid]
        accepted = np.arange(len(boxes)) < int(out["num_faces"])
        return boxes, scores, accepted, out


def load_model(model, preset=None):
    """MODEL: a training workdir (lnet_o, lnet_s stages done) -> FaceLocalizer."""
    from tfattr.presets import get_preset
    from tfattr.stages.lnet import load_face_localizer

    model = Path(model)
    if (model / "lnet_s" / "localizer.json").exists():
        name = preset
        if name is None and (model / "config.json").exists():
            name = json.loads((model / "config.json").read_text()).get("preset")
        return load_face_localizer(model, get_preset(name or "tiny"))
    raise ValueError(f"{model}: not a training workdir with a finished lnet_s stage "
                     f"(lnet_s/localizer.json missing); evaluating an exported SavedModel "
                     f"is not implemented yet")


# ------------------------------------------------------------------ plots

def _heatmap_overlay(image_rgb, out, localizer):
    """The LNet_o response map drawn over the input image (through the letterbox)."""
    import cv2

    from tfattr.models.lnet import response_map_geometry

    h, w = image_rgb.shape[:2]
    size = localizer.lnet_o_input_size
    geo = response_map_geometry(localizer.lnet_o)
    o_map = out["o_map"]
    mh, mw = o_map.shape
    y0 = geo.offset + 0.5 - geo.stride / 2
    canvas = np.zeros((size, size), np.float32)
    up = cv2.resize(o_map / max(o_map.max(), 1e-9), (int(mw * geo.stride), int(mh * geo.stride)),
                    interpolation=cv2.INTER_LINEAR)
    ys, xs = int(round(y0)), int(round(y0))
    ye, xe = min(size, ys + up.shape[0]), min(size, xs + up.shape[1])
    canvas[max(ys, 0):ye, max(xs, 0):xe] = up[max(-ys, 0):ye - ys, max(-xs, 0):xe - xs]
    sy, sx = out["scale_yx"]
    new_h, new_w = int(round(h * sy)), int(round(w * sx))
    heat = cv2.resize(canvas[:new_h, :new_w], (w, h), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    return (0.55 * image_rgb + 0.45 * colour).astype(np.uint8)


def _draw_boxes(image, boxes, colour, thickness=2, labels=None):
    import cv2

    image = np.ascontiguousarray(image)
    for k, b in enumerate(np.asarray(boxes).reshape(-1, 4)):
        cv2.rectangle(image, (int(round(b[1])), int(round(b[0]))), (int(round(b[3])), int(round(b[2]))),
                      colour, thickness)
        if labels is not None:
            cv2.putText(image, labels[k], (int(b[1]) + 2, int(b[0]) + 12), cv2.FONT_HERSHEY_SIMPLEX,
                        0.4, colour, 1, cv2.LINE_AA)
    return image


def _plot_curves(path, curves, xlabel, ylabel, title, xlog=False, vline=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for label, (x, y) in curves.items():
        ax.plot(x, y, label=label, drawstyle="steps-post" if xlog else None)
    if xlog:
        ax.set_xscale("log")
    if vline is not None:
        ax.axvline(vline, color="grey", ls=":", lw=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------ main

def evaluate_localization(data, model, out_dir, partition=2, max_images=0, num_heatmaps=12,
                          preset=None, haar=True, log=print):
    """Runs ours + Haar on the partition, writes CSV/Markdown/PNG to out_dir, returns the metrics."""
    import cv2

    if data.bboxes is None or data.wild_dir is None:
        raise ValueError("localization evaluation needs in-the-wild images and face boxes")
    out_dir = Path(out_dir)
    (out_dir / "heatmaps").mkdir(parents=True, exist_ok=True)
    localizer = load_model(model, preset)
    methods = [LNetMethod(localizer)] + ([HaarBaseline()] if haar else [])
    indices = list(data.indices(partition))
    if max_images:
        indices = indices[:max_images]
    gt = []
    for i in indices:
        faces = None
        if data.all_face_boxes is not None:
            faces = data.all_face_boxes.get(data.filenames[i])
        gt.append(np.asarray(faces if faces is not None and len(faces) else data.bboxes[i:i + 1],
                             np.float32).reshape(-1, 4))
    multi = [k for k, f in enumerate(gt) if f.shape[0] > 1]
    sample = list(dict.fromkeys(multi[:max(1, num_heatmaps // 3)] + list(range(len(indices)))))[:num_heatmaps]

    dets = {m.name: Detections([], [], []) for m in methods}
    seconds = {m.name: 0.0 for m in methods}
    for n, i in enumerate(indices):
        image = cv2.imread(str(data.wild_path(i)), cv2.IMREAD_COLOR)[:, :, ::-1].copy()
        drawn = None
        for m in methods:
            start = time.perf_counter()
            boxes, scores, accepted, extra = m.detect(image)
            seconds[m.name] += time.perf_counter() - start
            dets[m.name].boxes.append(boxes)
            dets[m.name].scores.append(scores)
            dets[m.name].accepted.append(accepted)
            if n in sample:
                if m.name == "lnet":
                    drawn = _heatmap_overlay(image, extra, localizer)
                    drawn = _draw_boxes(drawn, extra["regions"][extra["valid"]][:1], (255, 255, 0), 1)
                    drawn = _draw_boxes(drawn, gt[n], (0, 255, 0))
                    drawn = _draw_boxes(drawn, boxes[accepted], (255, 0, 0), 2,
                                        [f"{s:.2f}" for s in scores[accepted]])
                    drawn = _draw_boxes(drawn, boxes[~accepted], (255, 128, 128), 1)
                else:
                    drawn = _draw_boxes(drawn if drawn is not None else image, boxes, (0, 0, 255), 1)
        if drawn is not None:
            cv2.imwrite(str(out_dir / "heatmaps" / f"{data.filenames[i].rsplit('.', 1)[0]}.png"),
                        drawn[:, :, ::-1])
        if (n + 1) % 100 == 0:
            log(f"  evaluated {n + 1}/{len(indices)} images")

    # Face-free images not used for calibration (the odd positions of backgrounds/).
    from tfattr.stages.lnet import calibration_backgrounds

    bg_all = list(data.background_paths()) if data.backgrounds_dir is not None else []
    calib = set(map(str, calibration_backgrounds(data)))
    bg_eval = [p for p in bg_all if str(p) not in calib]
    bg_false = {}
    for m in methods:
        count = 0
        for p in bg_eval:
            image = cv2.imread(str(p), cv2.IMREAD_COLOR)[:, :, ::-1].copy()
            _, _, accepted, _ = m.detect(image)
            count += int(np.sum(accepted))
        bg_false[m.name] = count / len(bg_eval) if bg_eval else float("nan")

    metrics = {"num_images": len(indices), "num_multi_face_images": len(multi),
               "num_eval_backgrounds": len(bg_eval), "threshold": localizer.threshold,
               "methods": {}}
    roc_rows, iou_rows, curves_roc, curves_iou = [], [], {}, {}
    for m in methods:
        d = dets[m.name]
        thr, fppi, tpr = roc_curve(d, gt, 0.5)
        curves_roc[m.name] = (np.maximum(fppi, 1e-3), tpr)
        roc_rows += [(m.name, t, f, r) for t, f, r in zip(thr, fppi, tpr)]
        recall_iou = []
        for t in IOU_THRESHOLDS:
            _, f2, r2 = roc_curve(d, gt, float(t))
            recall_iou.append(tpr_at_fppi(f2, r2, 0.1))
            iou_rows.append((m.name, float(t), recall_iou[-1]))
        curves_iou[m.name] = (np.array(IOU_THRESHOLDS), np.array(recall_iou))
        top1, ious = top1_recall(d, gt, 0.5)
        accepted_fp = sum(int(np.sum(a)) for a in d.accepted)
        own = {"tpr": float(np.mean([len(b) > 0 and (iou_matrix(b[a], f[:1]) >= 0.5).any()
                                     for b, a, f in zip(d.boxes, d.accepted, gt)]))}
        metrics["methods"][m.name] = {
            "top1_recall_iou50": top1,
            "mean_top1_iou": float(np.mean(ious)),
            **{f"recall_at_fppi_{p}": tpr_at_fppi(fppi, tpr, p) for p in FPPI_POINTS},
            "own_decision_dominant_recall": own["tpr"],
            "own_decision_boxes_per_image": accepted_fp / len(indices),
            "multi_face": multi_face_recall(d, gt, 0.5),
            "false_alarms_per_background_image": bg_false[m.name],
            "seconds_per_image": seconds[m.name] / max(len(indices), 1),
        }
    _write_outputs(out_dir, metrics, roc_rows, iou_rows, curves_roc, curves_iou)
    return metrics


def _write_outputs(out_dir, metrics, roc_rows, iou_rows, curves_roc, curves_iou):
    with open(out_dir / "roc_fppi.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "threshold", "fppi", "tpr"])
        w.writerows([(n, f"{t:.6g}", f"{fp:.6g}", f"{r:.6g}") for n, t, fp, r in roc_rows])
    with open(out_dir / "recall_vs_iou.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "iou_threshold", "recall_at_fppi_0.1"])
        w.writerows([(n, f"{t:.2f}", f"{r:.6g}") for n, t, r in iou_rows])
    _plot_curves(out_dir / "roc_fppi.png", curves_roc, "false positives per image",
                 "true positive rate (dominant face, IoU >= 0.5)", "Fig. 7(a): ROC", xlog=True,
                 vline=0.1)
    _plot_curves(out_dir / "recall_vs_iou.png", curves_iou, "IoU threshold",
                 "recall at FPPI = 0.1", "Fig. 7(c): recall vs overlap")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    keys = [("top1_recall_iou50", "dominant recall, top box, IoU>=0.5"),
            ("recall_at_fppi_0.1", "TPR @ 0.1 FPPI (IoU>=0.5)"),
            ("recall_at_fppi_0.01", "TPR @ 0.01 FPPI (IoU>=0.5)"),
            ("mean_top1_iou", "mean IoU of the top box"),
            ("own_decision_dominant_recall", "dominant recall, boxes called faces"),
            ("own_decision_boxes_per_image", "boxes called faces per image"),
            ("multi_face_recall", "multi-face recall (all faces, IoU>=0.5)"),
            ("false_alarms_per_background_image", "false alarms per face-free image"),
            ("seconds_per_image", "seconds per image (CPU)")]
    names = list(metrics["methods"])
    rows = []
    for key, label in keys:
        vals = []
        for n in names:
            m = metrics["methods"][n]
            v = m["multi_face"]["recall"] if key == "multi_face_recall" else m[key]
            vals.append(v)
        rows.append((label, vals))
    with open(out_dir / "summary.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["metric"] + names)
        w.writerows([[label] + [f"{v:.4f}" for v in vals] for label, vals in rows])
    lines = [f"# Face localization: {metrics['num_images']} test images "
             f"({metrics['num_multi_face_images']} with several faces), "
             f"{metrics['num_eval_backgrounds']} held-out face-free images",
             "", f"Calibrated threshold (ours): {metrics['threshold']:.4f}", "",
             "| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {label} | " + " | ".join(f"{v:.3f}" for v in vals) + " |" for label, vals in rows]
    lines += ["", "Figures: roc_fppi.png (Fig. 7a), recall_vs_iou.png (Fig. 7c), heatmaps/*.png "
              "(LNet_o response map overlay; green: annotated faces, red: ours (score), "
              "pink: ours below threshold, yellow: head-shoulder window, blue: Haar)."]
    (out_dir / "summary.md").write_text("\n".join(lines) + "\n")
    width = max(len(label) for label, _ in rows)
    print(f"{'metric':{width}s} " + " ".join(f"{n:>12s}" for n in names))
    for label, vals in rows:
        print(f"{label:{width}s} " + " ".join(f"{v:12.3f}" for v in vals))
