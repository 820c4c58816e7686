"""Run config: the in-the-wild `tiny` run on the synthetic CelebA, every stage in one command.

  python -m tfattr.data.synthetic --out DATA --identities 1000 --images-per-identity 6 --seed 1
  python -m tfattr.train --data synthetic:DATA --workdir RUN --config training/synthetic_wild.py
  python -m tfattr.evaluate attributes --data synthetic:DATA --model RUN --out EVAL

`training/synthetic.py` plus the README's LNet localization recipe (3 LNet_o candidates
averaged, LNet_s' self-trained box head, the cascade score; docs/localization.md) with the
box head trained 12 epochs per round instead of 32, and the anet stage's attribute-trained
framer (docs/training.md, sixth look). Measured in docs/training.md, seventh look: C1p
(this config) and C1 (the paper's "w/o" ablation: add `--stages
lnet_pretrain,lnet_o,lnet_s,anet,svm --set anet.init=scratch`), 41-45 minutes on a 2-core
CPU; with the 32-epoch box head it is the sixth look's F9 / F9wo.
"""

import dataclasses
from pathlib import Path

from tfattr.config import load_config_file


def get_config():
    base = load_config_file(Path(__file__).with_name("synthetic.py"))
    return dataclasses.replace(
        base,
        name="synthetic_wild_tiny",
        lnet_o=dataclasses.replace(base.lnet_o, epochs=4),
        # every grid patch per step, the framer trained on regions jittered by +-0.1 region
        # sides / log scale, 1.6x regions (the neck attributes), two framer passes at inference.
        anet=dataclasses.replace(base.anet, epochs=80, patches="all", framer=True,
                                 framer_jitter=0.1, face_enlarge=1.6),
        lnet={**base.lnet, "calibration_images": 300, "o_input_size": 192, "o_map": "face_tag",
              "head_shoulder_enlarge": 2.5, "o_candidates": 3, "o_ensemble": True,
              "o_select": "consistency", "s_box_scale": 1.15, "s_box_aspect": 1.15,
              "s_box_head_epochs": 12, "s_box_head_rounds": 2, "s_box_head_scale_jitter": 0.8,
              "s_box_head_min_face": 0.3, "s_box_head_refine": True,
              "s_box_head_consensus": True, "box_score": "cascade"},
    )
