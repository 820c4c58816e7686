"""Run configuration: frozen dataclasses nested under one `ExperimentConfig`.

Experiments are plain Python functions `get_config() -> ExperimentConfig` in
`training/*.py` (big_vision style, no registry); architecture sizes live in
`tfattr/presets.py` and are referred to by name (`preset`). `tfattr.train`
resolves: defaults <- `--config FILE` <- `--preset` / `--data` / flags <-
`--set key=value` (repeatable, dotted paths, e.g. `--set train.batch_size=64`),
and saves the result to `workdir/config.json` (`dataclasses.asdict`); `from_dict`
reads it back.

Layers and models never import this module (STYLE.md section 1).
"""

import ast
import dataclasses
import importlib.util
import json
import typing
from pathlib import Path

STAGE_NAMES = ("lnet_pretrain", "lnet_o", "lnet_s", "anet_pretrain", "anet", "svm")
PRECISIONS = ("float32", "mixed_bfloat16")  # train.precision: Keras dtype policies


class ConfigError(ValueError):
    """A config file, key or value is wrong; the message says which."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What every stage shares.

    batch_size: the GLOBAL batch (summed over replicas and workers); every
      tf.data pipeline is batched with it and tf.distribute splits it.
    checkpoint_every: save a resumable checkpoint every N optimizer steps
      (0: once per data epoch). Stage ends always save.
    deterministic: keras.utils.set_random_seed + op determinism + data order
      that is a function of (seed, epoch, step), so a resumed run equals an
      uninterrupted one.
    seed: the run seed.
    verbose: Keras verbosity (1 progress bar, 2 one line per epoch, 0 silent).
    precision: the Keras dtype policy the ANet stages (anet_pretrain, anet) build their
      networks with: "float32" or "mixed_bfloat16" (bfloat16 arithmetic, float32
      variables, optimizer and logits; the framer's crop stays float32). The LNet
      stages, the SVM stage and the export always compute in float32. Recorded in the
      stage summaries.
    """

    batch_size: int = 32
    checkpoint_every: int = 100
    deterministic: bool = False
    seed: int = 0
    verbose: int = 1
    precision: str = "float32"


@dataclasses.dataclass(frozen=True)
class LNetStageConfig:
    """LNet pre-training / fine-tuning (stages lnet_pretrain, lnet_o, lnet_s)."""

    epochs: int = 2
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    max_steps: int = 0  # > 0 caps the stage's optimizer steps (smoke runs)


@dataclasses.dataclass(frozen=True)
class ANetPretrainConfig:
    """ANet pre-training on identities (paper Sec. 2.2): softmax + similarity loss.

    Batches are made of same-identity PAIRS (positions 2k, 2k+1), so the
    similarity loss sum_{y_i = y_j} ||FC_i - FC_j||^2 is a per-example term and
    reduces exactly under any replica split with an even per-replica batch.
    similarity_weight: lambda of the similarity loss (0 = softmax only).
    face_source: the face images the identities are learned on: "auto" (the anet
      stage's `anet.face_source`), "lnet" or "aligned" (the aligned crops, as the
      paper pre-trains on CelebFaces' face images; no box is used by the anet stage,
      which fine-tunes on LNet's regions either way).
    """

    epochs: int = 4
    learning_rate: float = 1e-3
    similarity_weight: float = 0.01
    max_steps: int = 0
    face_source: str = "auto"


@dataclasses.dataclass(frozen=True)
class ANetConfig:
    """ANet attribute fine-tuning on patches of the enlarged face region.

    face_source: "auto" (LNet boxes when LNet_s is trained and in-the-wild images
      exist, else the aligned crops), "lnet" (require LNet) or "aligned".
    init: "pretrain" (start from anet_pretrain when it ran), "scratch"
      (the paper's "w/o" ablation: no identity pre-training).
    schedule: "constant" learning rate or "cosine" (decay to 0 over the stage's
      steps; keyed by the optimizer's step counter, so resume keeps it).
    face_enlarge: factor the LNet face box is enlarged by (about its centre,
      then squared) to make the face region; 0 = the preset's `face_enlarge`.
      Recorded in the anet stage summary; the SVM stage, the evaluators and the
      export use that value. Not used for aligned crops (the whole crop).
    patches: "random" (each step trains on one grid patch per face region, drawn at
      random: the paper's multi-patch fine-tuning, Sec. 2.2) or "all" (each step trains
      on every grid patch of each region, in one interweaved pass: the paper's Fig. 5
      speed-up used for training; the loss is the mean over the patches).
    framer: train a `RegionFramer` jointly with ANet (needs LNet regions and
      patches="all"): it re-frames each LNet region from a context crop
      `framer_context` x the region's side, by the attribute loss only. The SVM
      stage, the evaluators and the export then cut the re-framed regions.
    framer_passes: how many times those apply the trained framer, each pass on a
      context crop around the previous pass's region (training uses one; two measured
      best, docs/training.md "sixth look"). Recorded by the anet stage.
    framer_jitter: training only: each step moves every region by a random shift
      (dy, dx, up to +-framer_jitter region sides) and log scale (up to +-framer_jitter)
      before the framer reads its context crop, so that it learns to undo larger
      framing errors than LNet's own (0 = LNet's regions as they are).
    framer_filters, framer_input_pool: the framer's three conv widths and the average
      pooling of its context crop (`RegionFramer`); recorded by the anet stage.
      (16, 32, 32) with pooling 4 cuts the anet step by about a quarter; with 60
      anet epochs that run lost a point in the wild ("eighth look"), with 80 and
      train.precision=mixed_bfloat16 it kept the accuracy ("tenth look",
      training/synthetic_wild.py). The default stays the framer of earlier workdirs.
    framer_fraction: the share of the stage's steps in which the framer trains with ANet
      (1 = all). After them the framer is frozen, the training regions are re-framed once
      as at inference, and ANet trains on them alone (a cheaper step: no framer, no
      context crop); the optimizer and its schedule continue. Recorded by the anet stage.
    attribute_loss_weights: {attribute name: weight} in the stage's cross-entropy (the
      others 1; the 40 weights are then scaled to mean 1, so the loss keeps its size).
      Our extension (the paper's loss is unweighted): with 40 tags sharing one FC, fine
      textures (Straight_Hair) are barely learned (docs/training.md, thirteenth look).
      Set whole (`--set "anet.attribute_loss_weights={'Straight_Hair': 4}"`) or per name
      (`--set anet.attribute_loss_weights.Straight_Hair=4`). Recorded by the anet stage.
    """

    epochs: int = 6
    learning_rate: float = 1e-3
    face_source: str = "auto"
    init: str = "pretrain"
    max_steps: int = 0
    schedule: str = "constant"  # or "cosine": learning_rate decayed to 0 over the stage's steps
    face_enlarge: float = 0.0
    patches: str = "random"
    framer: bool = False
    framer_context: float = 1.75
    framer_passes: int = 2
    framer_jitter: float = 0.0
    framer_filters: tuple = (24, 48, 64)
    framer_input_pool: int = 2
    framer_fraction: float = 1.0
    attribute_loss_weights: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class SVMConfig:
    """Linear SVMs per attribute on per-patch ANet FC features (paper Sec. 2.2, 3).

    split: "val" (the val partition: identities disjoint from training, as the
      paper), "train_heldout" (the identities of train whose rank % 10 == 9,
      excluded from ANet training then) or "train+val" (ANet's training images
      plus the fit part of val; for small datasets, where the val identities
      alone starve the SVMs). The split's identities (val for train+val) are
      divided again: `holdout_fraction` of them choose C (and the threshold)
      and fit the Platt sigmoid.
    threshold: "zero" (the SVM decision) or "holdout" (per attribute, the
      patch-averaged score threshold with the best held-out accuracy, folded
      into the intercept).
    """

    split: str = "val"
    threshold: str = "zero"
    c_grid: tuple = (0.001, 0.01, 0.1, 1.0)
    holdout_fraction: float = 0.3
    max_iter: int = 5000
    max_images: int = 0  # > 0 caps the SVM training images (0: all)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """The whole run. `preset` names an architecture in tfattr/presets.py."""

    name: str = "default"
    preset: str = "tiny"
    data: str = ""  # the --data spec, e.g. "synthetic:/data/synth"
    stages: tuple = ()  # empty: every stage whose data is there
    train: TrainConfig = TrainConfig()
    lnet_pretrain: LNetStageConfig = LNetStageConfig()
    lnet_o: LNetStageConfig = LNetStageConfig()
    lnet_s: LNetStageConfig = LNetStageConfig()
    anet_pretrain: ANetPretrainConfig = ANetPretrainConfig()
    anet: ANetConfig = ANetConfig()
    svm: SVMConfig = SVMConfig()
    # Free-form LNet/localizer options, validated by tfattr.stages.lnet.lnet_options
    # (attributes, pretrain_dir, synthetic_objects, window config, ...).
    lnet: dict = dataclasses.field(default_factory=dict)


# --------------------------------------------------------------------- dict I/O

def asdict(config):
    """JSON-ready dict (tuples become lists)."""
    return dataclasses.asdict(config)


def _field_types(cls):
    return typing.get_type_hints(cls)


def _coerce(value, typ, path):
    """value (from JSON or --set) -> typ, or ConfigError naming `path`."""
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return _from_dict(typ, value, path)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{path}: expected an integer, got {value!r}") from None
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: expected a number, got {value!r}") from None
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if typ is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if typ is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()] if value.strip() else []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return tuple(v.strip() if isinstance(v, str) else v for v in value)
    return value


def _from_dict(cls, data, path=""):
    types = _field_types(cls)
    unknown = sorted(set(data) - set(types))
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(f"unknown config key(s) {', '.join(where + k for k in unknown)}; "
                          f"known: {', '.join(sorted(types))}")
    kwargs = {k: _coerce(v, types[k], f"{path}.{k}" if path else k) for k, v in data.items()}
    return cls(**kwargs)


RECORD_ONLY_KEYS = ("architecture", "tfattr_version")  # written beside the config, not part of it


def from_dict(data):
    """The inverse of `asdict` (missing keys take their defaults; record-only keys ignored)."""
    data = {k: v for k, v in data.items() if k not in RECORD_ONLY_KEYS}
    return _from_dict(ExperimentConfig, data)


def override(config, key, value):
    """A copy of `config` with the dotted `key` set to `value` (a string from --set or a value)."""
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"--set {key}: empty key segment")

    def set_in(obj, parts, prefix):
        types = _field_types(type(obj))
        name = parts[0]
        here = f"{prefix}.{name}" if prefix else name
        if name not in types:
            raise ConfigError(f"unknown config key {here!r}; known at this level: "
                              f"{', '.join(sorted(types))}")
        if len(parts) == 1:
            typ = types[name]
            if dataclasses.is_dataclass(typ):
                raise ConfigError(f"{here} is a section; set one of its keys "
                                  f"({', '.join(sorted(_field_types(typ)))})")
            if isinstance(value, str) and typ in (tuple, dict):
                parsed = _parse_literal(value)
                val = parsed if isinstance(parsed, (list, tuple, dict)) else value
            else:
                val = value
            return dataclasses.replace(obj, **{name: _coerce(val, typ, here)})
        child = getattr(obj, name)
        if isinstance(child, dict) and len(parts) == 2:  # free-form section (lnet.*)
            return dataclasses.replace(obj, **{name: {**child, parts[1]: _parse_literal(value)
                                                      if isinstance(value, str) else value}})
        if not dataclasses.is_dataclass(child):
            raise ConfigError(f"{here} is not a section")
        return dataclasses.replace(obj, **{name: set_in(child, parts[1:], here)})

    return set_in(config, parts, "")


def _parse_literal(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(config, items):
    """items: ["a.b=v", ...] (the --set flags)."""
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        config = override(config, key.strip(), value.strip())
    return config


def load_config_file(path):
    """Imports a training/*.py file and returns its `get_config()`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: file not found")
    spec = importlib.util.spec_from_file_location(f"tfattr_run_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a broken config file is a usage error
        raise ConfigError(f"--config {path}: {type(e).__name__}: {e}") from None
    if not hasattr(module, "get_config"):
        raise ConfigError(f"--config {path}: no get_config() function")
    config = module.get_config()
    if not isinstance(config, ExperimentConfig):
        raise ConfigError(f"--config {path}: get_config() returned {type(config).__name__}, "
                          "expected tfattr.config.ExperimentConfig")
    return config


def save(config, path, extra=None):
    """Writes config (plus `extra` top-level entries, e.g. the preset's sizes) as JSON."""
    data = asdict(config)
    if extra:
        data.update(extra)
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
