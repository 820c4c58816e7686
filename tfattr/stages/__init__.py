"""The training stages, in order, and what data each one needs.

`STAGES` maps a stage name to (module, function, needs): `run(ctx)` trains the
stage and writes `workdir/<stage>/` + `DONE` (docs/interfaces.md);
`needs(data, config)` returns None when the dataset has what the stage needs,
else a one-line reason (the stage is then skipped with that message).
Functions are imported lazily so `tfattr.train --help` stays fast.
"""

import dataclasses
import importlib

from tfattr.config import STAGE_NAMES


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    module: str
    function: str
    needs: object  # (data, config) -> None | str
    description: str

    def run(self, ctx):
        return getattr(importlib.import_module(self.module), self.function)(ctx)


def _needs_wild(data, config):
    if data.wild_dir is None:
        return "the dataset has no in-the-wild images (img_celeba/): LNet cannot be trained"
    return None


def _needs_identities(data, config):
    if data.identities is None:
        return "the dataset has no identity file (identity_CelebA.txt): no identity pre-training"
    import numpy as np

    ids = data.identities[data.partition == 0]
    _, counts = np.unique(ids, return_counts=True)
    if (counts >= 2).sum() < 2:
        return "fewer than 2 train identities with >= 2 images: no identity pre-training"
    return None


def _needs_attributes(data, config):
    if (data.partition == 0).sum() == 0:
        return "the dataset has no train partition images"
    return None


def _needs_svm_split(data, config):
    split = config.svm.split
    if split == "val" and (data.partition == 1).sum() < 4:
        return ("the dataset has (almost) no val partition images for the SVM split; "
                "use --set svm.split=train_heldout")
    if split == "train_heldout" and data.identities is None:
        return "svm.split=train_heldout needs identities (identity_CelebA.txt)"
    return None


STAGES = {
    "lnet_pretrain": Stage("lnet_pretrain", "tfattr.stages.lnet", "run_lnet_pretrain", _needs_wild,
                           "LNet pre-training on object categories (softmax)"),
    "lnet_o": Stage("lnet_o", "tfattr.stages.lnet", "run_lnet_o", _needs_wild,
                    "LNet_o fine-tuned with image-level attribute tags on whole images"),
    "lnet_s": Stage("lnet_s", "tfattr.stages.lnet", "run_lnet_s", _needs_wild,
                    "LNet_s fine-tuned on LNet_o head-shoulder windows; threshold calibration"),
    "anet_pretrain": Stage("anet_pretrain", "tfattr.stages.anet", "run_anet_pretrain",
                           _needs_identities,
                           "ANet pre-training on identities (softmax + similarity loss)"),
    "anet": Stage("anet", "tfattr.stages.anet", "run_anet", _needs_attributes,
                  "ANet fine-tuned with attributes on patches of the (LNet-localized) face region"),
    "svm": Stage("svm", "tfattr.stages.svm", "run_svm", _needs_svm_split,
                 "LinearSVC per attribute on per-patch FC features, Platt calibration"),
}
assert tuple(STAGES) == STAGE_NAMES


def parse_stages(text):
    """"a,b,c" -> ordered tuple of known stage names (run order); ValueError on unknown names."""
    names = [s.strip() for s in str(text).split(",") if s.strip()]
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; known: {', '.join(STAGE_NAMES)}")
    if not names:
        raise ValueError(f"no stage given; known: {', '.join(STAGE_NAMES)}")
    return tuple(n for n in STAGE_NAMES if n in names)
