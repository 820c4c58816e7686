"""What a training stage gets from `tfattr/train.py` (see docs/interfaces.md).

Stages never create a distribution strategy: `tfattr/train.py` builds the
context, and stages build/compile models inside `ctx.scope()` and train them
with `ctx.fit(...)`, which adds checkpoint/resume, TensorBoard and progress.

Exact resume (docs/training.md "Fault tolerance"): pass `ctx.fit` a FUNCTION
`make_dataset(start_step) -> tf.data.Dataset` yielding the global batches of
steps start_step, start_step + 1, ... (build it on `ctx.step_indices`, whose
batch of step s is a pure function of (seed, epoch, s)). Training then runs in
chunks of `checkpoint_every` optimizer steps (Keras shows one progress bar
per chunk); after each chunk the weights AND the optimizer state are written
atomically to `<stage>/checkpoints/ckpt-<step>.weights.h5`. A restarted run
loads the newest readable checkpoint and continues at that step with the same
batches, so it ends with the same weights as an uninterrupted run.
Passing a plain `tf.data.Dataset` still works (keras BackupAndRestore, resume
at the start of the interrupted epoch).
"""

import contextlib
import dataclasses
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

CHECKPOINT_RE = re.compile(r"^ckpt-(\d+)\.weights\.h5$")
KEEP_CHECKPOINTS = 2


def save_arrays(path, array=None, **arrays):
    """A stage's array cache that a resumed run loads: `array` as .npy or `arrays` as .npz,
    written to a temporary file and renamed, so a kill mid-write leaves no truncated file."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    with open(tmp, "wb") as f:
        if array is not None:
            np.save(f, array)
        else:
            np.savez(f, **arrays)
    os.replace(tmp, path)


@dataclasses.dataclass
class StageContext:
    """Everything a stage function `run(ctx)` needs.

    Attributes:
      config: the resolved run config (tfattr.config.ExperimentConfig).
      preset: the architecture preset (tfattr.presets.Preset).
      data: the dataset (tfattr.data.celeba.CelebADataset).
      workdir: the run directory; stage results go to `workdir/<stage>/`.
        (A non-chief multi-worker replica gets its own `workdir/workers/<i>/`.)
      strategy: the tf.distribute strategy (default strategy if None).
      global_batch_size: batch size summed over replicas (and workers).
      deterministic: seeded, order-preserving pipelines and ops.
      seed: the run seed.
      checkpoint_every: checkpoint every N training steps (0: data-epoch ends only).
      verbose: Keras verbosity for fit (1 = progress bar).
      is_chief: False on non-chief multi-worker replicas.
      skipped: {stage: reason} for stages skipped because data is missing.
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
    is_chief: bool = True
    skipped: dict = dataclasses.field(default_factory=dict)

    # ------------------------------------------------------------------ files
    def stage_dir(self, stage):
        path = Path(self.workdir) / stage
        path.mkdir(parents=True, exist_ok=True)
        return path

    def is_done(self, stage):
        return (Path(self.workdir) / stage / "DONE").exists()

    def mark_done(self, stage, summary=None):
        path = self.stage_dir(stage) / "DONE"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(summary or {}, indent=2, default=str))
        os.replace(tmp, path)

    def save_weights(self, model, path):
        """model.save_weights, atomically (tmp file + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        model.save_weights(str(tmp))
        os.replace(tmp, path)
        return path

    # ----------------------------------------------------------- distribution
    def scope(self):
        """Build and compile models inside this (the strategy scope)."""
        if self.strategy is None:
            return contextlib.nullcontext()
        return self.strategy.scope()

    @contextlib.contextmanager
    def precision_scope(self):
        """Networks built inside compute in `train.precision` (a Keras dtype policy, e.g.
        bfloat16 arithmetic on float32 variables); the global policy is restored after, so
        the stages and tools that follow build float32 networks."""
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(getattr(self.config.train, "precision", "float32"))
        try:
            yield
        finally:
            keras.config.set_dtype_policy(previous)

    @property
    def num_replicas(self):
        return 1 if self.strategy is None else int(self.strategy.num_replicas_in_sync)

    @property
    def per_replica_batch_size(self):
        return self.global_batch_size // self.num_replicas

    def distribute(self, dataset):
        """Dataset options for tf.distribute: DATA auto-sharding (a global batch is split
        across workers by position, so the union per step is the global batch) and
        deterministic element order."""
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        options.deterministic = True
        return dataset.with_options(options)

    # ------------------------------------------------------------------- data
    def step_indices(self, num_examples, batch_size, start_step, num_steps, salt=0):
        """tf.data.Dataset of int64 [batch_size] example indices, one element per step.

        The batch of global step s is a pure function of (seed, salt, epoch, s):
        epoch e = s // steps_per_epoch, the examples of epoch e are a stateless
        permutation (tf.random.experimental.index_shuffle seeded by (seed + salt, e)),
        and step s takes slice (s % steps_per_epoch) of it. The last partial batch
        of an epoch is dropped. Yields steps start_step .. num_steps - 1.
        """
        num_examples = int(num_examples)
        batch_size = int(batch_size)
        if num_examples < batch_size:
            raise ValueError(f"{num_examples} examples are fewer than one batch of {batch_size}")
        steps_per_epoch = num_examples // batch_size
        seed = int(self.seed) * 1_000_003 + int(salt)

        def indices(step):
            epoch = step // steps_per_epoch
            position = step % steps_per_epoch
            slots = position * batch_size + tf.range(batch_size, dtype=tf.int64)
            return tf.random.experimental.index_shuffle(
                slots, seed=tf.stack([tf.constant(seed, tf.int64), epoch]),
                max_index=num_examples - 1)

        return tf.data.Dataset.range(int(start_step), int(num_steps)).map(indices)

    def steps_per_epoch(self, num_examples, batch_size=None):
        return max(1, int(num_examples) // int(batch_size or self.global_batch_size))

    # ------------------------------------------------------------- callbacks
    def tensorboard(self, stage):
        """TensorBoard scalars of `stage` under workdir/tensorboard/<stage>/.

        keras.callbacks.TensorBoard needs the `tensorboard` package (tf.summary),
        which is not installed here; `EventFileLogger` writes the same event files
        (TFRecord of Event protos) with TF alone.
        """
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            return EventFileLogger(Path(self.workdir) / "tensorboard" / stage)
        return keras.callbacks.TensorBoard(str(Path(self.workdir) / "tensorboard" / stage),
                                           update_freq="epoch")

    def callbacks(self, stage):
        """Checkpoint/resume (BackupAndRestore), TensorBoard for `stage` (Dataset path)."""
        stage_dir = self.stage_dir(stage)
        save_freq = self.checkpoint_every if self.checkpoint_every > 0 else "epoch"
        return [
            keras.callbacks.BackupAndRestore(str(stage_dir / "backup"), save_freq=save_freq,
                                             delete_checkpoint=True),
            self.tensorboard(stage),
        ]

    # ---------------------------------------------------------------- fitting
    def fit(self, model, dataset, stage, epochs, steps_per_epoch=None, validation_data=None,
            extra_callbacks=()):
        """Trains `model` (compiled inside `scope()`); returns a keras History.

        dataset: a function `make_dataset(start_step)` (exact step-level resume,
          see the module docstring; needs `steps_per_epoch`) or a tf.data.Dataset
          (keras BackupAndRestore; resume at the start of the interrupted epoch).
        epochs: data epochs; the stage trains epochs * steps_per_epoch steps.
        """
        if callable(dataset) and not isinstance(dataset, tf.data.Dataset):
            if not steps_per_epoch:
                raise ValueError("fit(make_dataset, ...) needs steps_per_epoch")
            return self.fit_steps(model, dataset, stage, int(epochs) * int(steps_per_epoch),
                                  chunk=self.checkpoint_every or int(steps_per_epoch),
                                  validation_data=validation_data,
                                  extra_callbacks=extra_callbacks)
        self.log(f"[{stage}] training {epochs} epoch(s)")
        return model.fit(self.distribute(dataset), epochs=epochs, steps_per_epoch=steps_per_epoch,
                          validation_data=validation_data,
                          callbacks=self.callbacks(stage) + list(extra_callbacks),
                          verbose=self.verbose)

    def checkpoint_dir(self, stage):
        path = self.stage_dir(stage) / "checkpoints"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def latest_checkpoint(self, stage):
        """(step, path) of the newest checkpoint of `stage`, or (0, None)."""
        folder = Path(self.workdir) / stage / "checkpoints"
        if not folder.is_dir():
            return 0, None
        found = sorted(((int(m.group(1)), folder / m.group(0)) for m in
                        (CHECKPOINT_RE.match(p.name) for p in folder.iterdir()) if m),
                       reverse=True)
        return found[0] if found else (0, None)

    def restore(self, model, stage):
        """Loads the newest readable checkpoint of `stage` into `model` (weights and
        optimizer state); returns its step (0 if none)."""
        folder = Path(self.workdir) / stage / "checkpoints"
        if not folder.is_dir():
            return 0
        candidates = sorted(((int(m.group(1)), folder / m.group(0)) for m in
                             (CHECKPOINT_RE.match(p.name) for p in folder.iterdir()) if m),
                            reverse=True)
        for step, path in candidates:
            try:
                if model.optimizer is not None and not model.optimizer.built:
                    model.optimizer.build(model.trainable_variables)
                model.load_weights(str(path))
            except (OSError, ValueError, KeyError) as e:  # a torn/corrupt file: try an older one
                self.log(f"[{stage}] checkpoint {path.name} unreadable ({e}); trying an older one")
                continue
            self.log(f"[{stage}] resumed from {path.name} (step {step})")
            return step
        return 0

    def _prebuild_for_multi_worker(self, model, dataset):
        """Works around Keras 3 fit() under MultiWorkerMirroredStrategy (keras-team/keras#20585:
        `_maybe_symbolic_build` reduces a PerReplica batch and fails): build the compiled
        model (optimizer, metrics) from one local batch inside the scope, then skip that step."""
        if not isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return
        batch = next(iter(dataset.take(1)))
        with self.strategy.scope():
            model._symbolic_build(data_batch=batch)
        model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
        # Keras reduces the step's logs with strategy.reduce(MEAN, axis=0) under MWMS, which
        # fails on scalars: give every log value a leading axis of 1, so the reduction is the
        # mean over all replicas (a scalar again).
        train_step = model.train_step

        def train_step_with_axis(data):
            logs = train_step(data)
            return {k: tf.reshape(v, [1]) if getattr(v, "shape", None) is not None
                    and v.shape.rank == 0 else v for k, v in logs.items()}

        model.train_step = train_step_with_axis

    def fit_steps(self, model, make_dataset, stage, total_steps, chunk=None, validation_data=None,
                  extra_callbacks=()):
        """Trains `total_steps` optimizer steps with exact step-level resume; returns a
        History whose entries are per chunk (empty when already at total_steps)."""
        total_steps = int(total_steps)
        chunk = max(1, int(chunk or self.checkpoint_every or total_steps))
        start = self.restore(model, stage)
        if start > total_steps:
            raise ValueError(f"[{stage}] checkpoint at step {start} is past the stage's "
                             f"{total_steps} steps (config changed?)")
        histories = []
        if start < total_steps:
            self._prebuild_for_multi_worker(model, make_dataset(start))
        saver = _StepCheckpoint(self, stage, chunk)
        callbacks = [saver, self.tensorboard(stage), *extra_callbacks]
        full_end = (total_steps // chunk) * chunk
        self.log(f"[{stage}] {total_steps} steps (global batch {self.global_batch_size}, "
                 f"{self.num_replicas} replica(s)), checkpoint every {chunk}, from step {start}")
        started = time.time()
        if start < full_end:
            if start % chunk:
                raise ValueError(f"[{stage}] checkpoint step {start} is not a multiple of "
                                 f"checkpoint_every={chunk} (config changed?)")
            saver.offset = 0
            dataset = self.distribute(make_dataset(start).take(full_end - start))
            histories.append(model.fit(dataset, epochs=full_end // chunk, initial_epoch=start // chunk,
                                       steps_per_epoch=chunk, callbacks=callbacks, shuffle=False,
                                       validation_data=validation_data, verbose=self.verbose))
            start = full_end
        if start < total_steps:
            rest = total_steps - start
            saver.offset, saver.chunk = start, rest
            dataset = self.distribute(make_dataset(start).take(rest))
            histories.append(model.fit(dataset, epochs=1, steps_per_epoch=rest, callbacks=callbacks, shuffle=False,
                                       validation_data=validation_data, verbose=self.verbose))
        self.log(f"[{stage}] trained to step {total_steps} in {time.time() - started:.1f}s")
        merged = keras.callbacks.History()
        merged.history = {}
        for h in histories:
            for k, v in h.history.items():
                merged.history.setdefault(k, []).extend(v)
        return merged


class EventFileLogger(keras.callbacks.Callback):
    """Writes per-batch and per-epoch scalars as TensorBoard event files (no tensorboard pkg).

    Steps are optimizer steps (model.optimizer.iterations), so resumed runs continue
    the same curves.
    """

    def __init__(self, log_dir, every=10):
        super().__init__()
        self.log_dir = Path(log_dir)
        self.every = int(every)
        self._writer = None

    def _write(self, tag_values, step):
        from tensorflow.core.framework import summary_pb2
        from tensorflow.core.util import event_pb2

        if self._writer is None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            name = f"events.out.tfevents.{int(time.time())}.{os.uname().nodename}.{os.getpid()}.train"
            self._writer = tf.io.TFRecordWriter(str(self.log_dir / name))
            self._writer.write(event_pb2.Event(wall_time=time.time(),
                                               file_version="brain.Event:2").SerializeToString())
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=t, simple_value=float(v))
                                             for t, v in tag_values.items()])
        self._writer.write(event_pb2.Event(wall_time=time.time(), step=int(step),
                                           summary=summary).SerializeToString())
        self._writer.flush()

    def _step(self):
        return int(self.model.optimizer.iterations.numpy()) if self.model.optimizer else 0

    def on_train_batch_end(self, batch, logs=None):
        if logs and self.every and (batch + 1) % self.every == 0:
            self._write({f"batch/{k}": v for k, v in logs.items() if np.isscalar(v)
                         or np.ndim(v) == 0}, self._step())

    def on_epoch_end(self, epoch, logs=None):
        if logs:
            self._write({f"epoch/{k}": v for k, v in logs.items() if np.ndim(v) == 0}, self._step())

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class _StepCheckpoint(keras.callbacks.Callback):
    """Saves weights + optimizer state to ckpt-<step>.weights.h5 at every (chunk) epoch end."""

    def __init__(self, ctx, stage, chunk):
        super().__init__()
        self.ctx, self.stage, self.chunk, self.offset = ctx, stage, chunk, 0

    def on_epoch_end(self, epoch, logs=None):
        step = self.offset + (epoch + 1) * self.chunk
        folder = self.ctx.checkpoint_dir(self.stage)
        self.ctx.save_weights(self.model, folder / f"ckpt-{step}.weights.h5")
        (folder / "latest.json").write_text(json.dumps({"step": step, "time": time.time()}))
        old = sorted(((int(m.group(1)), folder / m.group(0)) for m in
                      (CHECKPOINT_RE.match(p.name) for p in folder.iterdir()) if m), reverse=True)
        for _, path in old[KEEP_CHECKPOINTS:]:
            path.unlink(missing_ok=True)


def set_determinism(seed, deterministic):
    """Seeds Python/NumPy/TF (always) and enables op determinism (deterministic runs)."""
    keras.utils.set_random_seed(int(seed))
    np.random.seed(int(seed))
    if deterministic:
        tf.config.experimental.enable_op_determinism()
