"""Keras callbacks of a training run, each made safe to kill at any moment and to resume.

Resume rules: every epoch-end file is written atomically, the backup is written last (at each
checkpoint: every epoch, or every `train.checkpoint_every_s`), and callbacks with memory (best score,
patience counters) rebuild it from the history rows that the backup covers.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
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


class CheckpointClock:
    """Decides which epochs end with a checkpoint (`last.keras`, a better `model.keras`, the resume
    backup) and adds up the seconds spent writing them.

    A resume starts from the last checkpoint and redoes the epochs after it: checkpointing every
    `every_s` seconds instead of every epoch trades redone epochs after a kill for time not spent
    saving a large model. The final epoch always ends with one.
    """

    def __init__(self, every_s: float, epochs: int):
        self.every_s = every_s
        self.epochs = epochs
        self.seconds = 0.0
        self._last = time.perf_counter()
        self._decision: tuple[int, bool] | None = None

    def due(self, epoch: int, stopping: bool) -> bool:
        """Whether `epoch` ends with a checkpoint; asked by each writer, decided once per epoch."""
        if self._decision is None or self._decision[0] != epoch:
            now = time.perf_counter()
            due = stopping or epoch + 1 >= self.epochs or now - self._last >= self.every_s
            if due:
                self._last = now
            self._decision = (epoch, due)
        return self._decision[1]

    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start


class NetworkCheckpoints(keras.callbacks.Callback):
    """Saves the bare network (no augmentation, no optimizer) as `last` at each checkpoint and as
    `best` when the monitored validation score improves; each file is replaced atomically.

    An improvement between checkpoints goes to a pending file that the next checkpoint moves to
    `best`, so `best` never holds an epoch that a resume redoes (and may score differently).
    Must come after early stopping, whose stop makes the epoch the last, so a checkpoint.
    """

    def __init__(
        self,
        network: keras.Model,
        best_path: Path,
        last_path: Path,
        past: History,
        monitor: str,
        clock: CheckpointClock,
    ):
        super().__init__()
        self.network = network
        self.best_path = best_path
        self.pending_path = best_path.with_name(f".{best_path.stem}.pending{best_path.suffix}")
        self.last_path = last_path
        self.monitor = monitor
        self.clock = clock
        scores = [row[monitor] for row in past if math.isfinite(row.get(monitor, math.nan))]
        self.best = max(scores, default=-math.inf)

    def on_train_begin(self, logs=None):
        # Left by a killed session after its last checkpoint: this session redoes that epoch.
        self.pending_path.unlink(missing_ok=True)

    def on_epoch_end(self, epoch, logs=None):
        checkpoint = self.clock.due(epoch, self.model.stop_training)
        score = logs.get(self.monitor, math.nan)
        improved = score > self.best
        if improved:
            self.best = score
        with self.clock.timed():
            if not checkpoint:
                if improved:
                    save_atomic(self.network, self.pending_path)
                return
            if improved:
                save_atomic(self.network, self.best_path)
                self.pending_path.unlink(missing_ok=True)
            elif self.pending_path.is_file():
                with writing(self.best_path):
                    os.replace(self.pending_path, self.best_path)
            save_atomic(self.network, self.last_path)


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


class StopWhen(keras.callbacks.Callback):
    """Ends training after an epoch (numbered from 1) for which `decide(epoch, logs)` is true, e.g. a
    tuner pruning the trial. Like early stopping, it must come before the checkpoints, so that the
    epoch it stops after is saved as the last one."""

    def __init__(self, decide: Callable[[int, dict[str, float]], bool]):
        super().__init__()
        self.decide = decide

    def on_epoch_end(self, epoch, logs=None):
        if self.decide(epoch + 1, {key: float(value) for key, value in (logs or {}).items()}):
            self.model.stop_training = True


class DivergenceGuard(keras.callbacks.Callback):
    """TerminateOnNaN that stops with a TrainingDivergedError naming the epoch and batch.

    Raising (instead of setting stop_training) skips the epoch-end writers, so neither history nor
    the backup ever record the diverged epoch.
    """

    # Under JAX and PyTorch Keras then checks each batch in a thread while the next steps run, and
    # re-raises the error before the epoch ends; otherwise every step would wait for its loss.
    async_safe = True

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


class ScalarTensorBoard(keras.callbacks.Callback):
    """The scalars of Keras' TensorBoard callback, written with tensorboardX: for backends without
    TensorFlow, whose tf.summary Keras' callback writes with.

    Same layout and tags: `epoch_<metric>` per epoch under train/ and validation/ (without `val_`),
    and `evaluation_<metric>_vs_iterations` under validation/ at each validation's end.
    """

    def __init__(self, log_dir: Path):
        super().__init__()
        self.log_dir = Path(log_dir)
        self._writers: dict[str, Any] = {}

    def _writer(self, name: str):
        if name not in self._writers:
            from tensorboardX import SummaryWriter

            self._writers[name] = SummaryWriter(str(self.log_dir / name))
        return self._writers[name]

    def on_test_end(self, logs=None):
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        for name, value in (logs or {}).items():
            self._writer("validation").add_scalar(f"evaluation_{name}_vs_iterations", value, step)

    def on_epoch_end(self, epoch, logs=None):
        for name, value in (logs or {}).items():
            if name.startswith("val_"):
                self._writer("validation").add_scalar(f"epoch_{name[4:]}", value, epoch)
            else:
                self._writer("train").add_scalar(f"epoch_{name}", value, epoch)
        # A killed run keeps its curves up to its last epoch.
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


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
    """Where a session's time goes: each epoch's training phase (up to validation), for throughput,
    and the parts of metrics.json's `time_s`. Must come first, so that `fit`'s start is its start."""

    def __init__(self, images_per_epoch: int, session_start: float | None = None):
        super().__init__()
        self.images_per_epoch = images_per_epoch
        self.session_start = time.perf_counter() if session_start is None else session_start
        self.epoch_seconds: list[float] = []
        self.train_seconds: list[float] = []
        self.validate_seconds = 0.0
        self.fit_start = self.first_step_seconds = None
        self._epoch_start = self._train_end = self._test_start = self._first_step_start = None

    def on_train_begin(self, logs=None):
        self.fit_start = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start, self._train_end = time.perf_counter(), None

    # A batch-begin hook, unlike a batch-end one, leaves Keras' asynchronous step dispatch on.
    def on_train_batch_begin(self, batch, logs=None):
        if self._first_step_start is None:
            self._first_step_start = time.perf_counter()
        else:
            self._first_step_ended()

    def _first_step_ended(self) -> None:
        if self._first_step_start is not None and self.first_step_seconds is None:
            self.first_step_seconds = time.perf_counter() - self._first_step_start

    def on_test_begin(self, logs=None):
        self._first_step_ended()
        self._test_start = time.perf_counter()
        if self._epoch_start is not None and self._train_end is None:
            self._train_end = self._test_start

    def on_test_end(self, logs=None):
        self.validate_seconds += time.perf_counter() - self._test_start

    def on_epoch_end(self, epoch, logs=None):
        self._first_step_ended()
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

    def time_parts(self, session_seconds: float, checkpoint_seconds: float) -> dict[str, float]:
        """The session's seconds between completed epochs, split into disjoint parts: up to `fit`
        (config, data, model), the first training step (tracing, compilation), the other training
        steps, validation, checkpoint writes, and the rest (epoch-end logs, restoring a backup)."""
        compile_seconds = self.first_step_seconds or 0.0
        parts = {
            "startup": self.fit_start - self.session_start,
            "compile": compile_seconds,
            "train": sum(self.train_seconds) - compile_seconds,
            "validate": self.validate_seconds,
            "checkpoint": checkpoint_seconds,
        }
        parts["other"] = session_seconds - sum(parts.values())
        return parts


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
    # Its batch hook does nothing with save_freq="epoch"; Keras would otherwise sync after every step.
    async_safe = True

    def __init__(self, backup_dir: Path, clock: CheckpointClock):
        super().__init__(str(backup_dir), save_freq="epoch", delete_checkpoint=False)
        self.backup_path = Path(backup_dir)
        self.clock = clock

    def _load_model(self):
        state = read_backup_state(self.backup_path)
        if state is None:
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(self.backup_path / state["weights"])
        self.model._initial_epoch = state["epoch"]

    def _save_model(self):
        if self.clock.due(self._current_epoch - 1, self.model.stop_training):
            with self.clock.timed():
                self._write_backup()

    def _write_backup(self):
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
