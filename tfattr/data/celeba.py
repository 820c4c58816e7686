"""Readers for CelebA (and LFWA) as distributed, into one `CelebADataset`.

CelebA layout (``root/``)::

    list_attr_celeba.txt              required  count / 40 names / `file v1..v40` (1 or -1)
    list_eval_partition.txt           required  `file p` (0 train, 1 val, 2 test), no count/header
    list_bbox_celeba.txt              optional  count / `image_id x_1 y_1 width height` / rows
    list_landmarks_celeba.txt         optional  count / 10 names / `file 10 ints` (in-the-wild)
    list_landmarks_align_celeba.txt   optional  count / 10 names / `file 10 ints` (aligned)
    identity_CelebA.txt               optional  `file id`, no count/header
    img_celeba/                       in-the-wild images   } at least one of the two
    img_align_celeba/                 178x218 aligned crops }
    list_bbox_all_faces.txt           synthetic only: one row per face, dominant first
    backgrounds/                      synthetic only: face-free images

Whitespace between columns is irregular in the official files (several
spaces); any run of whitespace separates columns. Blank lines are ignored.
Anything else that is off (a missing required file, a row with the wrong
number of columns, a value that is not 1/-1, a count line that disagrees with
the rows, a header that is not `tfattr.attributes.ATTRIBUTE_NAMES`, a
duplicated or unknown file name, a listed image missing from an image folder)
raises `DatasetError` naming the file and the 1-based line number. Nothing is
silently dropped.

Conversions done here (docs/interfaces.md): attributes -1/1 -> {0, 1} uint8;
boxes `x_1 y_1 width height` -> (ymin, xmin, ymax, xmax) float32 with
ymax = y_1 + height, xmax = x_1 + width; landmarks -> float32 [N, 5, 2] as
(x, y) pairs in the file's order (LANDMARK_NAMES).
"""

import dataclasses
import os
from pathlib import Path

import numpy as np

from tfattr.attributes import ATTRIBUTE_NAMES, NUM_ATTRIBUTES

ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
BBOX_FILE = "list_bbox_celeba.txt"
LANDMARKS_FILE = "list_landmarks_celeba.txt"
LANDMARKS_ALIGN_FILE = "list_landmarks_align_celeba.txt"
IDENTITY_FILE = "identity_CelebA.txt"
ALL_FACES_FILE = "list_bbox_all_faces.txt"
WILD_DIR = "img_celeba"
ALIGNED_DIR = "img_align_celeba"
BACKGROUNDS_DIR = "backgrounds"

BBOX_HEADER = ("image_id", "x_1", "y_1", "width", "height")
LANDMARK_NAMES = ("lefteye", "righteye", "nose", "leftmouth", "rightmouth")
LANDMARK_HEADER = tuple(f"{n}_{c}" for n in LANDMARK_NAMES for c in ("x", "y"))
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")

# LFWA (the official release of the paper's authors).
LFWA_LABEL_FILE = "lfw_att_40.mat"
LFWA_INDEX_FILE = "indices_train_test.mat"
LFWA_IMAGE_DIRS = ("lfw", "img", "lfw-deepfunneled")
LFWA_VAL_MODULUS = 10  # train identities whose sorted rank % 10 == 9 form the val split


class DatasetError(ValueError):
    """A dataset file is missing or malformed; the message names file and line."""


@dataclasses.dataclass(frozen=True, eq=False)
class CelebADataset:
    """A face-attribute dataset (CelebA, LFWA or synthetic) in memory.

    Attributes:
      root: the dataset folder.
      filenames: N image names relative to the image folders.
      attributes: uint8 [N, 40] in {0, 1}, order `ATTRIBUTE_NAMES`.
      partition: int8 [N]: 0 train, 1 val, 2 test.
      identities: int32 [N] or None.
      bboxes: float32 [N, 4] (ymin, xmin, ymax, xmax) in in-the-wild pixels,
        or None. EVALUATION ONLY (LNet never trains on boxes).
      landmarks_wild: float32 [N, 5, 2] (x, y) in in-the-wild pixels, or None.
      landmarks_aligned: float32 [N, 5, 2] (x, y) in aligned-crop pixels, or None.
      wild_dir: `img_celeba/` (LFWA: its image folder) if present.
      aligned_dir: `img_align_celeba/` if present.
      all_face_boxes: {filename: float32 [K, 4]} every face, dominant first
        (synthetic `list_bbox_all_faces.txt`), or None.
      backgrounds_dir: face-free images (synthetic `backgrounds/`), or None.
      name: "celeba", "lfwa" or "synthetic".
    """

    root: Path
    filenames: list
    attributes: np.ndarray
    partition: np.ndarray
    identities: np.ndarray | None = None
    bboxes: np.ndarray | None = None
    landmarks_wild: np.ndarray | None = None
    landmarks_aligned: np.ndarray | None = None
    wild_dir: Path | None = None
    aligned_dir: Path | None = None
    all_face_boxes: dict | None = None
    backgrounds_dir: Path | None = None
    name: str = "celeba"

    def __len__(self):
        return len(self.filenames)

    def wild_path(self, i):
        if self.wild_dir is None:
            raise DatasetError(f"{self.root}: no in-the-wild image folder ({WILD_DIR}/)")
        return self.wild_dir / self.filenames[i]

    def aligned_path(self, i):
        if self.aligned_dir is None:
            raise DatasetError(f"{self.root}: no aligned image folder ({ALIGNED_DIR}/)")
        return self.aligned_dir / self.filenames[i]

    def indices(self, partition):
        """Indices (int64, ascending) of the images of partition 0, 1 or 2."""
        if partition not in (0, 1, 2):
            raise ValueError(f"partition must be 0, 1 or 2, got {partition!r}")
        return np.flatnonzero(self.partition == partition)

    def background_paths(self):
        """Sorted face-free image paths (synthetic `backgrounds/`), [] if none."""
        if self.backgrounds_dir is None:
            return []
        return sorted(p for p in self.backgrounds_dir.iterdir()
                      if p.suffix.lower() in IMAGE_EXTENSIONS)


# --------------------------------------------------------------------------- text tables

def _read_lines(path):
    """[(line_number, tokens)] of the non-blank lines of `path`."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    with open(path, "r", encoding="utf-8", errors="strict") as f:
        try:
            text = f.read()
        except UnicodeDecodeError as e:
            raise DatasetError(f"{path}: not UTF-8 text ({e})") from None
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if tokens:
            out.append((number, tokens))
    return out


def _read_table(path, num_values, header=None, has_count=True, optional_leading=None):
    """Reads `file v1 .. v_num_values` rows.

    Returns (names list, values int64 [N, num_values], line numbers int [N]).
    `header`: expected header tokens (a leading `optional_leading` token is
    accepted too), None when the file has no header line.
    """
    lines = _read_lines(path)
    pos = 0
    count = None
    if has_count:
        if not lines:
            raise DatasetError(f"{path}:1: empty file, expected a count line")
        number, tokens = lines[0]
        if len(tokens) != 1 or not tokens[0].isdigit():
            raise DatasetError(f"{path}:{number}: expected the row count, got {' '.join(tokens)!r}")
        count = int(tokens[0])
        pos = 1
    if header is not None:
        if pos >= len(lines):
            raise DatasetError(f"{path}:{pos + 1}: missing header line")
        number, tokens = lines[pos]
        got = tuple(tokens)
        if optional_leading and got and got[0] == optional_leading:
            got = got[1:]
        if got != tuple(header):
            diff = [f"column {j + 1}: expected {e!r}, got {g!r}"
                    for j, (e, g) in enumerate(zip(header, got)) if e != g]
            if len(got) != len(header):
                diff.append(f"{len(got)} names, expected {len(header)}")
            raise DatasetError(f"{path}:{number}: header does not match the expected names "
                               f"({'; '.join(diff[:3])})")
        pos += 1
    rows = lines[pos:]
    names, numbers, values = [], [], []
    seen = {}
    for number, tokens in rows:
        if len(tokens) != num_values + 1:
            raise DatasetError(f"{path}:{number}: expected {num_values + 1} columns "
                               f"(file name + {num_values} values), got {len(tokens)}")
        name = tokens[0]
        if name in seen:
            raise DatasetError(f"{path}:{number}: duplicate entry {name!r} "
                               f"(first on line {seen[name]})")
        seen[name] = number
        names.append(name)
        numbers.append(number)
        values.append(tokens[1:])
    try:
        array = np.array(values, dtype=np.int64).reshape(len(values), num_values)
    except ValueError:
        for number, vals in zip(numbers, values):
            for v in vals:
                try:
                    int(v)
                except ValueError:
                    raise DatasetError(f"{path}:{number}: value {v!r} is not an integer") from None
        raise
    if count is not None and count != len(names):
        raise DatasetError(f"{path}:{lines[0][0]}: count line says {count} rows but the file "
                           f"has {len(names)}")
    return names, array, np.asarray(numbers)


def _check_values(path, array, numbers, allowed, what):
    bad = ~np.isin(array, allowed)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DatasetError(f"{path}:{numbers[r]}: {what} must be one of {list(allowed)}, "
                           f"got {array[r, c]} in column {c + 2}")


def _align(path, names, numbers, index, what):
    """Row order of `names` in terms of `index` (name -> position); every name once."""
    order = np.empty(len(index), dtype=np.int64)
    order.fill(-1)
    for name, number, k in zip(names, numbers, range(len(names))):
        j = index.get(name)
        if j is None:
            raise DatasetError(f"{path}:{number}: {name!r} is not listed in {ATTR_FILE}")
        order[j] = k
    missing = np.flatnonzero(order < 0)
    if missing.size:
        first = list(index)[missing[0]]
        raise DatasetError(f"{path}: no row for {missing.size} image(s) of {ATTR_FILE}, "
                           f"first {first!r}; {what} must cover every image")
    return order


def _xywh_to_yxyx(xywh):
    xywh = xywh.astype(np.float32)
    return np.stack([xywh[:, 1], xywh[:, 0], xywh[:, 1] + xywh[:, 3], xywh[:, 0] + xywh[:, 2]],
                    axis=1)


def _read_bboxes(path, names, numbers_attr, index):
    bnames, values, numbers = _read_table(path, 4, header=BBOX_HEADER[1:], optional_leading="image_id")
    _check_nonnegative_size(path, values, numbers)
    order = _align(path, bnames, numbers, index, "bounding boxes")
    return _xywh_to_yxyx(values[order])


def _check_nonnegative_size(path, values, numbers):
    bad = np.flatnonzero((values[:, 2] <= 0) | (values[:, 3] <= 0))
    if bad.size:
        raise DatasetError(f"{path}:{numbers[bad[0]]}: box width and height must be > 0, "
                           f"got {values[bad[0], 2]} x {values[bad[0], 3]}")


def _read_landmarks(path, index):
    lnames, values, numbers = _read_table(path, 10, header=LANDMARK_HEADER, optional_leading="image_id")
    order = _align(path, lnames, numbers, index, "landmarks")
    return values[order].astype(np.float32).reshape(-1, 5, 2)


def _read_all_faces(path, index):
    """{filename: float32 [K, 4] (ymin, xmin, ymax, xmax)} keeping the file's row order."""
    lines = _read_lines(path)
    if not lines:
        raise DatasetError(f"{path}:1: empty file, expected a count line")
    number, tokens = lines[0]
    if len(tokens) != 1 or not tokens[0].isdigit():
        raise DatasetError(f"{path}:{number}: expected the row count, got {' '.join(tokens)!r}")
    count = int(tokens[0])
    if len(lines) < 2:
        raise DatasetError(f"{path}:2: missing header line")
    hnum, header = lines[1]
    if tuple(header) != BBOX_HEADER:
        raise DatasetError(f"{path}:{hnum}: header must be {' '.join(BBOX_HEADER)!r}, "
                           f"got {' '.join(header)!r}")
    boxes = {}
    for number, tokens in lines[2:]:
        if len(tokens) != 5:
            raise DatasetError(f"{path}:{number}: expected 5 columns, got {len(tokens)}")
        name = tokens[0]
        if name not in index:
            raise DatasetError(f"{path}:{number}: {name!r} is not listed in {ATTR_FILE}")
        try:
            vals = np.array([int(v) for v in tokens[1:]], dtype=np.int64)[None]
        except ValueError:
            raise DatasetError(f"{path}:{number}: non-integer value in {tokens[1:]}") from None
        _check_nonnegative_size(path, vals, [number])
        boxes.setdefault(name, []).append(_xywh_to_yxyx(vals)[0])
    rows = len(lines) - 2
    if rows != count:
        raise DatasetError(f"{path}:{lines[0][0]}: count line says {count} rows but the file has {rows}")
    return {k: np.stack(v).astype(np.float32) for k, v in boxes.items()}


def _check_images(folder, names, attr_path, attr_numbers):
    present = set(os.listdir(folder))
    for name, number in zip(names, attr_numbers):
        if name not in present and not (folder / name).is_file():
            raise DatasetError(f"{attr_path}:{number}: image {name!r} does not exist in {folder}")


def load_celeba(root, check_images=True, name="celeba"):
    """Reads a CelebA-layout folder (see the module docstring) -> CelebADataset.

    Args:
      root: the folder.
      check_images: verify that every listed image exists in each present
        image folder (one `os.listdir` per folder).
      name: stored in `CelebADataset.name`.
    Raises:
      DatasetError (a ValueError) naming the file and line of the first problem.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    attr_path = root / ATTR_FILE
    names, values, numbers = _read_table(attr_path, NUM_ATTRIBUTES, header=ATTRIBUTE_NAMES)
    if not names:
        raise DatasetError(f"{attr_path}: no image rows")
    _check_values(attr_path, values, numbers, (1, -1), "attribute values")
    attributes = (values > 0).astype(np.uint8)
    index = {n: i for i, n in enumerate(names)}

    part_path = root / PARTITION_FILE
    pnames, pvalues, pnumbers = _read_table(part_path, 1, header=None, has_count=False)
    _check_values(part_path, pvalues, pnumbers, (0, 1, 2), "partition values")
    order = _align(part_path, pnames, pnumbers, index, "the partition")
    partition = pvalues[order, 0].astype(np.int8)

    identities = bboxes = landmarks_wild = landmarks_aligned = all_faces = None
    if (root / IDENTITY_FILE).exists():
        path = root / IDENTITY_FILE
        inames, ivalues, inumbers = _read_table(path, 1, header=None, has_count=False)
        order = _align(path, inames, inumbers, index, "identities")
        identities = ivalues[order, 0].astype(np.int32)
    if (root / BBOX_FILE).exists():
        bboxes = _read_bboxes(root / BBOX_FILE, names, numbers, index)
    if (root / LANDMARKS_FILE).exists():
        landmarks_wild = _read_landmarks(root / LANDMARKS_FILE, index)
    if (root / LANDMARKS_ALIGN_FILE).exists():
        landmarks_aligned = _read_landmarks(root / LANDMARKS_ALIGN_FILE, index)
    if (root / ALL_FACES_FILE).exists():
        all_faces = _read_all_faces(root / ALL_FACES_FILE, index)

    wild_dir = root / WILD_DIR if (root / WILD_DIR).is_dir() else None
    aligned_dir = root / ALIGNED_DIR if (root / ALIGNED_DIR).is_dir() else None
    if wild_dir is None and aligned_dir is None:
        raise DatasetError(f"{root}: neither {WILD_DIR}/ nor {ALIGNED_DIR}/ exists")
    if check_images:
        for folder in (wild_dir, aligned_dir):
            if folder is not None:
                _check_images(folder, names, attr_path, numbers)
    backgrounds = root / BACKGROUNDS_DIR if (root / BACKGROUNDS_DIR).is_dir() else None
    return CelebADataset(root=root, filenames=names, attributes=attributes, partition=partition,
                         identities=identities, bboxes=bboxes, landmarks_wild=landmarks_wild,
                         landmarks_aligned=landmarks_aligned, wild_dir=wild_dir,
                         aligned_dir=aligned_dir, all_face_boxes=all_faces,
                         backgrounds_dir=backgrounds, name=name)


# --------------------------------------------------------------------------- LFWA

def _mat_strings(path, var, cell):
    """A MATLAB cell array of strings (any orientation) -> list[str]."""
    out = []
    for k, item in enumerate(np.asarray(cell, dtype=object).ravel()):
        while isinstance(item, np.ndarray) and item.dtype == object and item.size == 1:
            item = item.ravel()[0]
        if isinstance(item, np.ndarray):
            if item.size != 1 or item.dtype.kind not in "US":
                raise DatasetError(f"{path}: {var}[{k + 1}] is not a string (got {item!r})")
            item = item.ravel()[0]
        if not isinstance(item, str):
            raise DatasetError(f"{path}: {var}[{k + 1}] is not a string (got {item!r})")
        out.append(item.strip().replace("\\", "/"))
    return out


def _mat_var(path, mat, var):
    if var not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise DatasetError(f"{path}: variable {var!r} not found (has {keys})")
    return mat[var]


def _lfwa_val_split(names, train_idx):
    """Deterministic val slice of the train split: by identity (folder name).

    The train identities are sorted by name; those whose rank % 10 == 9 (about
    a tenth) become val, so no identity is in both train and val.
    """
    folders = sorted({names[i].split("/")[0] for i in train_idx})
    val_folders = {f for r, f in enumerate(folders) if r % LFWA_VAL_MODULUS == LFWA_VAL_MODULUS - 1}
    return [i for i in train_idx if names[i].split("/")[0] in val_folders]


def load_lfwa(root, check_images=True):
    """Reads LFWA as released with the paper -> CelebADataset.

    Layout: `lfw_att_40.mat` (`label` [N, 40] in {0, 1} (or 1/-1), `name` a cell
    array of paths like `Aaron_Eckhart/Aaron_Eckhart_0001.jpg`),
    `indices_train_test.mat` (`indices_img_train`, `indices_img_test`,
    1-based into `name`), images under `lfw/` (or `img/`, `lfw-deepfunneled/`).
    Partition: test -> 2, train -> 0 except a deterministic slice by identity
    (`_lfwa_val_split`, about 10 %) -> 1. Every image must be in exactly one of
    train/test. Identities are the folder names numbered in sorted order.
    A folder holding the CelebA text layout instead is read with `load_celeba`.
    """
    import scipy.io

    root = Path(root)
    label_path = root / LFWA_LABEL_FILE
    if not label_path.exists() and (root / ATTR_FILE).exists():
        return load_celeba(root, check_images=check_images, name="lfwa")
    index_path = root / LFWA_INDEX_FILE
    for p in (label_path, index_path):
        if not p.is_file():
            raise DatasetError(f"{p}: file not found")
    try:
        labels_mat = scipy.io.loadmat(label_path)
        index_mat = scipy.io.loadmat(index_path)
    except Exception as e:  # scipy raises several types for corrupt files
        raise DatasetError(f"{root}: cannot read LFWA .mat files ({e})") from None
    label = np.asarray(_mat_var(label_path, labels_mat, "label"))
    names = _mat_strings(label_path, "name", _mat_var(label_path, labels_mat, "name"))
    if label.ndim != 2 or label.shape[1] != NUM_ATTRIBUTES:
        raise DatasetError(f"{label_path}: 'label' must be [N, {NUM_ATTRIBUTES}], got {label.shape}")
    if label.shape[0] != len(names):
        raise DatasetError(f"{label_path}: 'label' has {label.shape[0]} rows but 'name' "
                           f"has {len(names)} entries")
    values = set(np.unique(label).tolist())
    if values <= {0, 1}:
        attributes = label.astype(np.uint8)
    elif values <= {-1, 1}:
        attributes = (label > 0).astype(np.uint8)
    else:
        r, c = np.argwhere(~np.isin(label, (0, 1)))[0]
        raise DatasetError(f"{label_path}: 'label' must hold 0/1 (or -1/1), got {label[r, c]} "
                           f"at row {r + 1}, column {c + 1}")
    dup = len(set(names)) != len(names)
    if dup:
        seen = set()
        for k, n in enumerate(names):
            if n in seen:
                raise DatasetError(f"{label_path}: 'name' entry {k + 1} {n!r} is a duplicate")
            seen.add(n)
    n = len(names)
    splits = {}
    for var in ("indices_img_train", "indices_img_test"):
        idx = np.asarray(_mat_var(index_path, index_mat, var)).ravel()
        if idx.size and (np.any(idx != np.round(idx)) or idx.min() < 1 or idx.max() > n):
            raise DatasetError(f"{index_path}: {var} must hold 1-based indices in [1, {n}], "
                               f"got range [{idx.min()}, {idx.max()}]")
        splits[var] = idx.astype(np.int64) - 1
    partition = np.full(n, -1, dtype=np.int8)
    partition[splits["indices_img_train"]] = 0
    both = np.intersect1d(splits["indices_img_train"], splits["indices_img_test"])
    if both.size:
        raise DatasetError(f"{index_path}: image {both[0] + 1} ({names[both[0]]!r}) is in both "
                           f"indices_img_train and indices_img_test")
    partition[splits["indices_img_test"]] = 2
    neither = np.flatnonzero(partition < 0)
    if neither.size:
        raise DatasetError(f"{index_path}: {neither.size} image(s) in neither split, first "
                           f"{neither[0] + 1} ({names[neither[0]]!r})")
    partition[_lfwa_val_split(names, np.flatnonzero(partition == 0))] = 1
    folders = sorted({x.split("/")[0] for x in names})
    folder_id = {f: i + 1 for i, f in enumerate(folders)}
    identities = np.array([folder_id[x.split("/")[0]] for x in names], dtype=np.int32)
    image_dir = next((root / d for d in LFWA_IMAGE_DIRS if (root / d).is_dir()), None)
    if image_dir is None:
        raise DatasetError(f"{root}: no LFW image folder (one of {LFWA_IMAGE_DIRS})")
    if check_images:
        for k, x in enumerate(names):
            if not (image_dir / x).is_file():
                raise DatasetError(f"{label_path}: 'name' entry {k + 1}: image {x!r} does not "
                                   f"exist in {image_dir}")
    return CelebADataset(root=root, filenames=names, attributes=attributes, partition=partition,
                         identities=identities, wild_dir=image_dir, name="lfwa")


def parse_data_spec(spec, check_images=True):
    """`"celeba:DIR"`, `"lfwa:DIR"` or `"synthetic:DIR"` -> CelebADataset."""
    kind, sep, path = str(spec).partition(":")
    if not sep or not path:
        raise ValueError(f"data spec must be 'celeba:DIR', 'lfwa:DIR' or 'synthetic:DIR', got {spec!r}")
    if kind == "celeba":
        return load_celeba(path, check_images=check_images)
    if kind == "synthetic":
        return load_celeba(path, check_images=check_images, name="synthetic")
    if kind == "lfwa":
        return load_lfwa(path, check_images=check_images)
    raise ValueError(f"unknown dataset kind {kind!r} in {spec!r}; expected celeba, lfwa or synthetic")
