"""Keras callbacks of a training run, each made safe to kill at any moment and to resume.

Resume rules: every epoch-end file is written atomically, the backup is written last, and callbacks
with memory (best score, patience counters) rebuild it from the history rows that the backup covers.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import keras
import numpy as np

from fertrain.errors import TrainingDivergedError
from fertrain.fileio import removed_on_failure, write_atomic, writing

History = Sequence[dict[str, float]]  # one dict per completed epoch, in order


class EpochSeeding(keras.callbacks.Callback):
    """Before each epoch, sets the batch order and every random-layer seed from (seed, epoch).

    Randomness then depends on the epoch number only, never on how many epochs this process ran.
    """

    def __init__(self, dataset, seed: int):
        super().__init__()
        self.dataset = dataset
        self.seed = seed

    def on_epoch_begin(self, epoch, logs=None):
        self.dataset.set_epoch(epoch)
        states = [v for v in self.model.variables if v.name == "seed_generator_state"]
        seeds = np.random.default_rng([self.seed, epoch]).integers(0, 2**31 - 1, size=len(states))
        for state, seed in zip(states, seeds, strict=True):
            state.assign(np.array([seed, 0], dtype=state.dtype))


class LearningRateLog(keras.callbacks.Callback):
    """Adds `learning_rate` to the epoch logs: the rate used by the epoch's last update."""

    def __init__(self, schedule: float | keras.optimizers.schedules.LearningRateSchedule):
        super().__init__()
        self.schedule = schedule

    def on_epoch_end(self, epoch, logs=None):
        if isinstance(self.schedule, keras.optimizers.schedules.LearningRateSchedule):
            last_step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) - 1
            rate = self.schedule(max(last_step, 0))
        else:
            rate = self.model.optimizer.learning_rate
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(rate))


class HistoryCSV(keras.callbacks.CSVLogger):
    """CSVLogger numbering epochs from 1, as the progress display and metrics.json do."""

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch + 1, logs)


class NetworkCheckpoints(keras.callbacks.Callback):
    """Saves the bare network (no augmentation, no optimizer) as `last` every epoch and as `best`
    when the monitored validation score improves; each file is replaced atomically."""

    def __init__(self, network: keras.Model, best_path: Path, last_path: Path, past: History, monitor: str):
        super().__init__()
        self.network = network
        self.best_path = best_path
        self.last_path = last_path
        self.monitor = monitor
        scores = [row[monitor] for row in past if math.isfinite(row.get(monitor, math.nan))]
        self.best = max(scores, default=-math.inf)

    def on_epoch_end(self, epoch, logs=None):
        save_atomic(self.network, self.last_path)
        score = logs.get(self.monitor, math.nan)
        if score > self.best:
            self.best = score
            save_atomic(self.network, self.best_path)


def save_atomic(model: keras.Model, path: Path) -> None:
    temporary = path.with_name(f".{path.stem}.tmp{path.suffix}")
    with writing(path), removed_on_failure(temporary):
        float32_copy(model).save(temporary)
        os.replace(temporary, path)


def float32_copy(model: keras.Model) -> keras.Model:
    """The model itself, or under mixed precision a float32 twin with the same weights: saved
    models are for inference, where float16/bfloat16 compute only costs accuracy (and on CPU, speed)."""
    if not any(layer.dtype_policy.name.startswith("mixed") for layer in model.layers):
        return model

    def in_float32(layer: keras.layers.Layer) -> keras.layers.Layer:
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})

    twin = keras.models.clone_model(model, clone_function=in_float32)
    twin.set_weights(model.get_weights())
    return twin


class AveragedWeightsForEvaluation(keras.callbacks.Callback):
    """With `train.ema`, validation, and the checkpoints written at epoch end, use the optimizer's
    exponential moving average of the weights; training resumes from its own weights.

    Swaps the averages in when validation begins and the training weights back at epoch end, so it
    must come after every callback that saves the network and before the backup (which keeps both
    sets: the averages are optimizer variables).
    """

    def __init__(self):
        super().__init__()
        self._training_values: list[np.ndarray] | None = None

    def _pairs(self):
        optimizer = getattr(self.model.optimizer, "inner_optimizer", self.model.optimizer)
        return zip(optimizer._trainable_variables, optimizer._model_variables_moving_average, strict=True)

    def on_test_begin(self, logs=None):
        if self._training_values is not None:
            return
        self._training_values = []
        for variable, average in self._pairs():
            self._training_values.append(keras.ops.convert_to_numpy(variable.value))
            # A copy, never the average's own buffer: JAX's training step donates (frees) both.
            variable.assign(keras.ops.convert_to_numpy(average.value))

    def on_epoch_end(self, epoch, logs=None):
        if self._training_values is None:
            return
        for (variable, _), value in zip(self._pairs(), self._training_values, strict=True):
            variable.assign(value)
        self._training_values = None


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping whose patience counter continues across a resume (replayed from history)."""

    def __init__(self, past: History, **kwargs):
        super().__init__(**kwargs)
        self.past = past

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        for epoch, row in enumerate(self.past):
            self.on_epoch_end(epoch, dict(row))
        # A replayed stop would have ended the earlier session; this one still has epochs to run.
        self.model.stop_training = False


class ResumableReduceLROnPlateau(keras.callbacks.ReduceLROnPlateau):
    """ReduceLROnPlateau whose plateau counter continues across a resume.

    Replays the past epochs from the initial rate; the backup restored afterwards holds the same rate.
    """

    def __init__(self, past: History, initial_learning_rate: float, **kwargs):
        super().__init__(**kwargs)
        self.past = past
        self.initial_learning_rate = initial_learning_rate

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if not self.past:
            return
        self.model.optimizer.learning_rate = self.initial_learning_rate
        for epoch, row in enumerate(self.past):
            self.on_epoch_end(epoch, dict(row))


class DivergenceGuard(keras.callbacks.Callback):
    """TerminateOnNaN that stops with a TrainingDivergedError naming the epoch and batch.

    Raising (instead of setting stop_training) skips the epoch-end writers, so neither history nor
    the backup ever record the diverged epoch.
    """

    def __init__(self):
        super().__init__()
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingDivergedError(
                f"training diverged: loss became {float(loss)} in epoch {self.epoch + 1}, batch {batch + 1}; "
                "lower train.optimizer.learning_rate or turn on warm-up"
            )


class TrainingReporter(Protocol):
    """Receives progress; the CLI renders it. Epochs and batches are numbered from 1."""

    wants_batches: bool

    def training_started(self, run_dir: Path | None, plan: dict[str, Any]) -> None: ...

    def epoch_started(self, epoch: int, epochs: int, steps: int) -> None: ...

    def batch_finished(self, step: int, logs: dict[str, float]) -> None: ...

    def epoch_finished(self, epoch: int, logs: dict[str, float]) -> None: ...


class ReporterBridge(keras.callbacks.Callback):
    def __init__(self, reporter: TrainingReporter, epochs: int, steps: int):
        super().__init__()
        self.reporter = reporter
        self.epochs = epochs
        self.steps = steps

    def on_epoch_begin(self, epoch, logs=None):
        self.reporter.epoch_started(epoch + 1, self.epochs, self.steps)

    def on_epoch_end(self, epoch, logs=None):
        self.reporter.epoch_finished(epoch + 1, {k: float(v) for k, v in logs.items()})


class BatchReporterBridge(ReporterBridge):
    """Separate class because Keras syncs the device after every batch for any batch hook."""

    def on_train_batch_end(self, batch, logs=None):
        self.reporter.batch_finished(batch + 1, {k: float(v) for k, v in (logs or {}).items()})


def reporter_callback(reporter: TrainingReporter, epochs: int, steps: int) -> keras.callbacks.Callback:
    bridge = BatchReporterBridge if reporter.wants_batches else ReporterBridge
    return bridge(reporter, epochs, steps)


class Stopwatch(keras.callbacks.Callback):
    """Wall time of each epoch and of its training phase (up to validation), for throughput."""

    def __init__(self, images_per_epoch: int):
        super().__init__()
        self.images_per_epoch = images_per_epoch
        self.epoch_seconds: list[float] = []
        self.train_seconds: list[float] = []
        self._epoch_start = self._train_end = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start, self._train_end = time.perf_counter(), None

    def on_test_begin(self, logs=None):
        if self._epoch_start is not None and self._train_end is None:
            self._train_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        self.epoch_seconds.append(now - self._epoch_start)
        self.train_seconds.append((self._train_end or now) - self._epoch_start)

    def train_images_per_s(self) -> float | None:
        """Training throughput of this process, leaving out its first epoch (tracing, compilation)
        when there is another."""
        seconds = self.train_seconds[1:] or self.train_seconds
        if not seconds:
            return None
        return round(self.images_per_epoch * len(seconds) / sum(seconds), 1)


class EpochEndHook(keras.callbacks.Callback):
    def __init__(self, hook: Callable[[int, dict[str, Any]], None]):
        super().__init__()
        self.hook = hook

    def on_epoch_end(self, epoch, logs=None):
        self.hook(epoch, logs)


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """BackupAndRestore whose state switches atomically from one epoch to the next.

    Each epoch's weights (model + optimizer + step counter) go to a new file; a small JSON pointer,
    replaced atomically, names the file and the number of completed epochs. A kill at any moment
    leaves either the old or the new state, never weights of one epoch labelled with another.
    """

    POINTER = "state.json"

    def __init__(self, backup_dir: Path):
        super().__init__(str(backup_dir), save_freq="epoch", delete_checkpoint=False)
        self.backup_path = Path(backup_dir)

    def _load_model(self):
        state = read_backup_state(self.backup_path)
        if state is None:
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(self.backup_path / state["weights"])
        self.model._initial_epoch = state["epoch"]

    def _save_model(self):
        self.backup_path.mkdir(parents=True, exist_ok=True)
        previous = read_backup_state(self.backup_path)
        weights = f"epoch-{self._current_epoch:05d}.weights.h5"
        saved = self.backup_path / weights
        with writing(saved), removed_on_failure(saved):
            self.model.save_weights(saved, overwrite=True)
        write_atomic(
            self.backup_path / self.POINTER, json.dumps({"epoch": self._current_epoch, "weights": weights})
        )
        if previous is not None and previous["weights"] != weights:
            (self.backup_path / previous["weights"]).unlink(missing_ok=True)


def read_backup_state(backup_dir: Path) -> dict[str, Any] | None:
    """{"epoch": completed epochs, "weights": file name} of the last backup, or None before the first."""
    pointer = Path(backup_dir) / AtomicBackupAndRestore.POINTER
    if not pointer.is_file():
        return None
    return json.loads(pointer.read_text(encoding="utf-8"))
