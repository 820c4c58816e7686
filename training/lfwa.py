"""Run config: LFWA (`--data lfwa:DIR`, the paper authors' release).

Paper Sec. 3: "When being evaluated on LFWA, LNet and ANet are trained on
CelebA"; the SVMs are trained on LFWA's training half (6,263 images) and it is
tested on the other half. So: train the networks with training/celeba.py, then
fit only the SVMs here in a COPY of that workdir:

  cp -r RUN_CELEBA RUN_LFWA && rm -rf RUN_LFWA/svm RUN_LFWA/faces
  python -m tfattr.train --data lfwa:/data/lfwa --workdir RUN_LFWA \\
      --config training/lfwa.py --stages svm

`svm.split=val` uses the identity-disjoint val slice the LFWA reader carves
out of LFWA's train half (tfattr/data/celeba.py `_lfwa_val_split`); with
`train_heldout` the SVMs use a tenth of the train identities instead.
LFWA images are in the wild: the CelebA run's LNet localizes the faces.
"""

from tfattr.config import ExperimentConfig, SVMConfig, TrainConfig


def get_config():
    return ExperimentConfig(
        name="lfwa_svm",
        preset="paper",
        stages=("svm",),
        train=TrainConfig(batch_size=256, checkpoint_every=1000, seed=0, verbose=1),
        svm=SVMConfig(split="val", c_grid=(0.001, 0.01, 0.1, 1.0), holdout_fraction=0.3),
    )
