"""Diagnosis only: face regions cut from the LABELLED boxes or landmarks, for ANet/SVM runs.

How much of the in-the-wild attribute accuracy does LNet's framing cost? This tool copies
a finished training workdir's LNet stages into a new workdir and fills its face-region
cache (`faces/regions_<split>_lnet.npy`, the file the anet and svm stages and the workdir
evaluator read) with regions framed by the dataset's labels instead of LNet's boxes.
Then the same ANet, SVM and evaluator run on an oracle framing (docs/training.md,
"third look"):

    python tools/oracle_regions.py --data synthetic:DIR --from RUN --out ORACLE --framing box
    python -m tfattr.train --data synthetic:DIR --workdir ORACLE --stages anet,svm ... (RUN's flags)
    python -m tfattr.evaluate attributes --data synthetic:DIR --model ORACLE --out EVAL

Framings (the product's is LNet's box x`face_enlarge`, square):
  box              the labelled box x`--enlarge`, square, about its centre;
  box-jitter       the same after moving the box's centre by N(0, J h) in each axis and
                   scaling it by exp N(0, J), J = `--jitter`, fixed per photo;
  box-aligned      the labelled box framed as CelebA's aligned crop (1.9 w x 1.66 h,
                   0.076 h above the box's centre), resized to R x R;
  landmarks        the in-the-wild pixels warped by the similarity that maps the five
                   labelled landmarks onto the aligned crop's, then resized (rotation removed);
  landmarks-rotated  the same, rotated back by a random angle in +-20 degrees.

Never part of training or serving: the product reads no box or landmark.
"""

import argparse
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np

from tfattr.data.celeba import parse_data_spec
from tfattr.data.synthetic import ALIGNED_SIZE  # CelebA's img_align_celeba (width, height)

FRAMINGS = ("box", "box-jitter", "box-aligned", "landmarks", "landmarks-rotated")
COPIED = ("config.json", "lnet_pretrain", "lnet_o", "lnet_s", "anet_pretrain")


def _box_matrix(cx, cy, width, height, size):
    """Affine map of the rectangle (centre, width, height) onto a size x size region."""
    src = np.float32([[cx - width / 2, cy - height / 2], [cx + width / 2, cy - height / 2],
                      [cx - width / 2, cy + height / 2]])
    return cv2.getAffineTransform(src, np.float32([[0, 0], [size, 0], [0, size]]))


def region_matrix(data, index, framing, size, enlarge=1.2, jitter=0.05, seed=0):
    """2x3 affine map from photo `index`'s in-the-wild pixels to its oracle region
    (`size` x `size`), and the output size to warp to before resizing (or None)."""
    if framing.startswith("box"):
        y0, x0, y1, x1 = (float(v) for v in data.bboxes[index])
        cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
        if framing == "box-aligned":
            return _box_matrix(cx, cy - 0.076 * h, 1.9 * w, 1.66 * h, size), None
        if framing == "box-jitter":
            rng = np.random.default_rng([seed, int(index)])
            cy += rng.normal() * jitter * h
            cx += rng.normal() * jitter * h
            k = np.exp(rng.normal() * jitter)
            w, h = w * k, h * k
        side = enlarge * max(w, h)
        return _box_matrix(cx, cy, side, side, size), None
    if data.landmarks_wild is None or data.landmarks_aligned is None:
        raise FileNotFoundError("--framing landmarks needs list_landmarks_celeba.txt and "
                                "list_landmarks_align_celeba.txt")
    m, _ = cv2.estimateAffinePartial2D(data.landmarks_wild[index], data.landmarks_aligned[index])
    if framing == "landmarks-rotated":
        rng = np.random.default_rng([seed, int(index)])
        centre = (ALIGNED_SIZE[0] / 2, ALIGNED_SIZE[1] / 2)
        m = cv2.getRotationMatrix2D(centre, rng.uniform(-20, 20), 1.0) @ np.vstack([m, [0, 0, 1]])
    return m, ALIGNED_SIZE


def oracle_region(data, index, framing, size, **kwargs):
    """uint8 RGB [size, size, 3]: photo `index` framed by its labels (`region_matrix`)."""
    image = cv2.imread(str(data.wild_path(index)), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot decode {data.wild_path(index)}")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    matrix, warp_size = region_matrix(data, index, framing, size, **kwargs)
    if warp_size is None:
        return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_AREA,
                              borderMode=cv2.BORDER_CONSTANT)
    warped = cv2.warpAffine(image, matrix, warp_size, flags=cv2.INTER_AREA,
                            borderMode=cv2.BORDER_CONSTANT)
    return cv2.resize(warped, (size, size), interpolation=cv2.INTER_AREA)


def write_oracle_workdir(data, source, out, framing, **kwargs):
    """Copies `source`'s LNet stages into `out` and writes oracle regions under every cache
    key `source/faces/` has LNet regions for (same splits, image indices, file names).
    Returns {cache key: number of regions}."""
    source, out = Path(source), Path(out)
    keys = sorted(p.name[len("indices_"):-len(".npy")]
                  for p in (source / "faces").glob("indices_*_lnet*.npy"))
    if not keys:
        raise FileNotFoundError(f"{source}/faces has no LNet face regions: run the anet stage "
                                "on it first (its splits and image indices are reused)")
    (out / "faces").mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        path = source / name
        if path.is_dir() and not (out / name).exists():
            shutil.copytree(path, out / name)
        elif path.is_file():
            shutil.copy(path, out / name)
    written = {}
    for key in keys:
        indices = np.load(source / "faces" / f"indices_{key}.npy")
        size = np.load(source / "faces" / f"regions_{key}.npy", mmap_mode="r").shape[1]
        regions = np.zeros((len(indices), size, size, 3), np.uint8)
        for k, i in enumerate(indices):
            regions[k] = oracle_region(data, i, framing, size, **kwargs)
        np.save(out / "faces" / f"regions_{key}.npy", regions)
        for kind in ("boxes", "indices"):
            shutil.copy(source / "faces" / f"{kind}_{key}.npy", out / "faces")
        written[key] = len(indices)
        print(f"[oracle] {key}: {len(indices)} regions framed by '{framing}'", flush=True)
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="synthetic:DIR or celeba:DIR (with labels)")
    ap.add_argument("--from", dest="source", required=True, type=Path,
                    help="a workdir whose anet stage ran on LNet regions")
    ap.add_argument("--out", required=True, type=Path, help="the new workdir")
    ap.add_argument("--framing", required=True, choices=FRAMINGS)
    ap.add_argument("--enlarge", type=float, default=1.2, help="box framings: region side / box side")
    ap.add_argument("--jitter", type=float, default=0.05, help="box-jitter: J (fraction of the height)")
    ap.add_argument("--seed", type=int, default=0, help="box-jitter / landmarks-rotated draws")
    args = ap.parse_args(argv)
    try:
        data = parse_data_spec(args.data)
        write_oracle_workdir(data, args.source, args.out, args.framing, enlarge=args.enlarge,
                             jitter=args.jitter, seed=args.seed)
    except (FileNotFoundError, ValueError) as e:
        print(f"oracle_regions: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
