"""What a training stage gets from `tfattr/train.py` (see docs/interfaces.md).

Stages never create a distribution strategy: `tfattr/train.py` builds the
context, and stages build/compile models inside `ctx.scope()` and train them
with `ctx.fit(...)`, which adds checkpoint/resume, TensorBoard and progress.
"""

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import keras
import tensorflow as tf


@dataclasses.dataclass
class StageContext:
    """Everything a stage function `run(ctx)` needs.

    Attributes:
      config: the resolved run config (a dataclass; see tfattr/config.py).
      preset: the architecture preset (tfattr.presets.Preset).
      data: the dataset (tfattr.data.celeba.CelebADataset).
      workdir: the run directory; stage results go to `workdir/<stage>/`.
      strategy: the tf.distribute strategy (default strategy if None).
      global_batch_size: batch size summed over replicas.
      deterministic: seeded, order-preserving pipelines and ops.
      seed: the run seed.
      checkpoint_every: checkpoint every N training steps (0: epoch ends only).
      verbose: Keras verbosity for fit (1 = progress bar).
    """

    config: Any
    preset: Any
    data: Any
    workdir: Path
    strategy: Any = None
    global_batch_size: int = 32
    deterministic: bool = False
    seed: int = 0
    checkpoint_every: int = 0
    verbose: int = 1
    log: Callable[[str], None] = print

    def stage_dir(self, stage):
        path = Path(self.workdir) / stage
        path.mkdir(parents=True, exist_ok=True)
        return path

    def is_done(self, stage):
        return (Path(self.workdir) / stage / "DONE").exists()

    def mark_done(self, stage, summary=None):
        (self.stage_dir(stage) / "DONE").write_text(json.dumps(summary or {}, indent=2))

    def scope(self):
        """Build and compile models inside this (the strategy scope)."""
        if self.strategy is None:
            return contextlib.nullcontext()
        return self.strategy.scope()

    def callbacks(self, stage):
        """Checkpoint/resume (BackupAndRestore), TensorBoard for `stage`."""
        stage_dir = self.stage_dir(stage)
        save_freq = self.checkpoint_every if self.checkpoint_every > 0 else "epoch"
        return [
            keras.callbacks.BackupAndRestore(str(stage_dir / "backup"), save_freq=save_freq,
                                             delete_checkpoint=True),
            keras.callbacks.TensorBoard(str(Path(self.workdir) / "tensorboard" / stage),
                                        update_freq="epoch"),
        ]

    def fit(self, model, dataset, stage, epochs, steps_per_epoch=None, validation_data=None):
        """model.fit with the stage's callbacks; returns the History."""
        self.log(f"[{stage}] training {epochs} epoch(s)")
        return model.fit(dataset, epochs=epochs, steps_per_epoch=steps_per_epoch,
                         validation_data=validation_data, callbacks=self.callbacks(stage),
                         verbose=self.verbose)
