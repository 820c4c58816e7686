"""Run config: the paper's networks on CelebA (official files, `--data celeba:DIR`).

  python -m tfattr.train --data celeba:/data/celeba --workdir RUN --config training/celeba.py

Paper Sec. 3: the first 8,000 identities (train partition) train LNet and ANet,
the SVMs are fitted on other identities (here the val partition, 19,867 images
of ~1,000 identities), the test partition is for evaluation only. LNet
pre-training needs an ImageNet-style folder: `--set lnet.pretrain_dir=/data/imagenet/train`.
Meant for GPUs (`train.batch_size` is the global batch over all replicas).
"""

from tfattr.config import (ANetConfig, ANetPretrainConfig, ExperimentConfig, LNetStageConfig,
                           SVMConfig, TrainConfig)


def get_config():
    return ExperimentConfig(
        name="celeba_paper",
        preset="paper",
        train=TrainConfig(batch_size=256, checkpoint_every=1000, seed=0, verbose=1),
        lnet_pretrain=LNetStageConfig(epochs=30, learning_rate=1e-3, weight_decay=5e-4),
        lnet_o=LNetStageConfig(epochs=10, learning_rate=1e-4, weight_decay=5e-4),
        lnet_s=LNetStageConfig(epochs=10, learning_rate=1e-4, weight_decay=5e-4),
        anet_pretrain=ANetPretrainConfig(epochs=30, learning_rate=1e-3, similarity_weight=0.01),
        anet=ANetConfig(epochs=15, learning_rate=1e-4),
        svm=SVMConfig(split="val", c_grid=(0.001, 0.01, 0.1, 1.0), holdout_fraction=0.3,
                      max_images=20000),
    )
