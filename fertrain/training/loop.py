"""`fertrain train`: fits a model on a prepared dataset into a run directory that can be resumed.

A run directory holds the resolved `config.yaml`, `model.keras` (best validation accuracy),
`last.keras`, `history.csv`, `metrics.json`, `tensorboard/`, and while training runs `backup/`
(weights, optimizer state and epoch count of the last checkpoint, which `last.keras` also holds).
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np

from fertrain.config import Config, dump_config, load_config
from fertrain.data.dataset import dataset_classes, load_split, load_votes
from fertrain.errors import ConfigError, DataError, FileSystemError, ModelError
from fertrain.fileio import write_atomic
from fertrain.inference import RUN_CONFIG_FILE, RUN_HISTORY_FILE, RUN_METRICS_FILE, RUN_MODEL_FILE
from fertrain.training.augmentation import (
    AugmentedTrainer,
    BatchMixer,
    MultiWorkerTrainer,
    build_augmentation,
)
from fertrain.training.batches import ArrayBatches, LabelledAccuracy, class_weights
from fertrain.training.callbacks import (
    AtomicBackupAndRestore,
    AveragedWeightsForEvaluation,
    CheckpointClock,
    DivergenceGuard,
    EpochEndHook,
    EpochSeeding,
    History,
    HistoryCSV,
    LearningRateLog,
    NetworkCheckpoints,
    ResumableEarlyStopping,
    ResumableReduceLROnPlateau,
    ScalarTensorBoard,
    Stopwatch,
    StopWhen,
    TrainingReporter,
    read_backup_state,
    reporter_callback,
)
from fertrain.training.run_lock import RunLock
from fertrain.training.runtime import Runtime, dtype_policy, resolve_runtime, seed_everything, versions
from fertrain.training.schedules import build_optimizer, build_schedule
from fertrain.training.targets import (
    TrainingTargets,
    save_teacher_cache,
    teacher_probabilities,
    training_loss,
    training_targets,
    validation_faces,
)
from fertrain.training.transfer import HeadOnlyEpochs, TransferReport, copy_weights, frozen_layers

LAST_MODEL = "last.keras"
BACKUP_DIR = "backup"
TENSORBOARD_DIR = "tensorboard"
MONITOR = "val_accuracy"


@dataclass(frozen=True)
class TrainingResult:
    run_dir: Path | None  # None on a multi-worker worker other than the chief
    metrics: dict[str, Any]
    resumed_from_epoch: int
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Splits:
    """The faces a run trains and validates on, their classes and what they teach."""

    classes: tuple[str, ...]
    train: TrainingTargets
    val_images: np.ndarray
    val_labels: np.ndarray
    teacher: np.ndarray | None  # the teachers' probabilities per training face (train.distill)

    def sizes(self) -> dict[str, int]:
        return {"train_images": len(self.train.images), "val_images": len(self.val_labels)}

    def describe(self, config: Config) -> dict[str, Any]:
        """What metrics.json records of the classes and targets."""
        return {
            "classes": list(self.classes),
            "targets": config.data.targets,
            "train_faces_left_out_by_targets": self.train.dropped,
            "distill_teachers": list(config.train.distill.teachers),
        }


def train(
    config: Config | None = None,
    data_dir: str | Path | None = None,
    run_dir: str | Path | None = None,
    resume: str | Path | None = None,
    reporter: TrainingReporter | None = None,
    runs_root: str | Path = "runs",
    stop_when: Callable[[int, dict[str, float]], bool] | None = None,
) -> TrainingResult:
    """Trains `config` into a new run directory, or continues the run in `resume`.

    `data_dir` overrides `config.data.dir`. Nothing is written before the config, the data and the
    model have been checked. `stop_when(epoch, logs)`, asked after each epoch (from 1) with its
    logs, ends the run after that epoch when it returns true (a tuner's pruning).
    """
    session_start = time.perf_counter()
    config = _with_data_dir(_resolve_config(config, run_dir, resume), data_dir)
    # One writer per run directory: a resume is refused before any work while the run still trains.
    lock = RunLock(Path(resume)).acquire() if resume is not None else None
    try:
        job = _prepare_job(config, Path(resume) if resume is not None else None)
        config = job.config
        output_dir = _claim_output_dir(config, job.runtime, run_dir, resume, runs_root)
        try:
            if lock is None and job.runtime.is_chief:
                lock = RunLock(output_dir).acquire()
            completed = _completed_epochs(output_dir) if resume is not None else 0
            if resume is None:
                write_atomic(output_dir / RUN_CONFIG_FILE, dump_config(config))
            if job.runtime.is_chief:
                save_teacher_cache(output_dir, job.splits.teacher)
            if reporter is not None:
                reporter.training_started(output_dir if job.runtime.is_chief else None, job.plan(completed))
            metrics = _fit(job, output_dir, completed, reporter, session_start, stop_when)
            shutil.rmtree(output_dir / BACKUP_DIR, ignore_errors=True)
        except OSError as exc:
            raise _run_write_error(exc, output_dir, job.runtime) from exc
        finally:
            if not job.runtime.is_chief:
                shutil.rmtree(output_dir, ignore_errors=True)
    finally:
        if lock is not None:
            lock.release()
    notes = list(job.notes)
    if not job.runtime.is_chief:
        notes.append(f"worker {job.runtime.worker_index}: the chief (worker 0) wrote the run")
    return TrainingResult(
        run_dir=output_dir if job.runtime.is_chief else None,
        metrics=metrics,
        resumed_from_epoch=completed,
        notes=tuple(notes),
    )


@dataclass(frozen=True)
class TrainingJob:
    """Everything a run needs, checked and built before anything is written."""

    config: Config
    runtime: Runtime
    splits: Splits
    train_batches: ArrayBatches
    val_batches: ArrayBatches
    schedule: Any
    trainer: AugmentedTrainer
    notes: tuple[str, ...]
    transfer: TransferReport | None = None

    def plan(self, completed: int) -> dict[str, Any]:
        return {
            "init_from": None if self.transfer is None else self.transfer.summary(),
            "name": self.config.name,
            "resumed_from_epoch": completed,
            "epochs": self.config.train.epochs,
            "steps_per_epoch": len(self.train_batches),
            **self.splits.sizes(),
            **self.runtime.summary(),
            "worker": self.runtime.worker_index,
        }


def _resolve_config(config: Config | None, run_dir: str | Path | None, resume: str | Path | None) -> Config:
    if resume is not None:
        if config is not None or run_dir is not None:
            raise ConfigError(
                "--resume continues a run with its own saved config; drop --config and --run-dir"
            )
        config = read_run_config(resume)
        if config.train.distribution == "multi_worker":
            # Each worker would need its own backup of the same epoch; only the chief keeps one.
            raise ConfigError(f"{resume}: resuming a multi_worker run is not supported; start it again")
        return config
    if config is None:
        raise ConfigError("no config given: pass --config FILE (or --resume RUN_DIR)")
    if run_dir is not None:
        _refuse_occupied(Path(run_dir))
    return config


def _prepare_job(config: Config, resume: Path | None = None) -> TrainingJob:
    runtime = resolve_runtime(config.train)
    if config.data.batch_size % runtime.batch_shards:
        raise ConfigError(
            f"data.batch_size: {config.data.batch_size} does not split evenly across the "
            f"{runtime.batch_shards} devices of train.distribution {runtime.distribution!r}; "
            f"use a multiple of {runtime.batch_shards}"
        )
    seed_everything(config.train.seed, config.train.deterministic)
    config, splits = _load_splits(config, resume)
    image_dtype = runtime.batch_image_dtype
    classes, batch_size = config.model.num_classes, config.data.batch_size
    train = splits.train
    train_batches = ArrayBatches(
        train.images,
        train.labels,
        classes,
        batch_size,
        shuffle_seed=config.train.seed,
        class_weights=class_weights(config.train, train.labels, classes),
        image_dtype=image_dtype,
        drop_remainder=True,
        mixer=BatchMixer.from_config(config.data.augment),
        targets=train.targets,
        sample_targets=train.sample,
        teacher=splits.teacher,
    )
    val_batches = ArrayBatches(
        splits.val_images, splits.val_labels, classes, batch_size, image_dtype=image_dtype, pad_remainder=True
    )
    schedule = build_schedule(
        config.train.schedule, config.train.optimizer.learning_rate, config.train.epochs, len(train_batches)
    )
    loss = training_loss(config, train, classes)
    trainer = compile_trainer(config, runtime, schedule, train_batches[0], splits.classes, loss)
    transfer = _init_from(config, trainer.network, splits.classes)
    notes = []
    if train.dropped:
        notes.append(
            f"data.targets {config.data.targets}: {train.dropped} training faces left out (no target)"
        )
    if runtime.jit_compile and not trainer.jit_compile:
        notes.append(f"XLA off: {_xla_blocker(runtime, trainer)}")
        runtime = replace(runtime, jit_compile=False)
    if config.train.checkpoint_every_s and runtime.distribution == "multi_worker":
        notes.append(
            "train.checkpoint_every_s ignored: multi_worker workers checkpoint together, every epoch"
        )
    return TrainingJob(
        config, runtime, splits, train_batches, val_batches, schedule, trainer, tuple(notes), transfer
    )


def _init_from(config: Config, network: keras.Model, classes: tuple[str, ...]) -> TransferReport | None:
    """`train.init_from`'s weights copied into `network`, on every session of a run: a resumed one
    then restores its backup over them, or, killed before its first backup, starts as the first did."""
    train = config.train
    if train.init_from is None:
        return None
    report = copy_weights(network, train.init_from, classes)
    if not train.freeze_epochs:
        return report
    frozen = frozen_layers(network, report, train.unfrozen_layers)
    return replace(report, frozen=frozen, freeze_epochs=train.freeze_epochs)


def _fit(
    job: TrainingJob,
    output_dir: Path,
    completed: int,
    reporter: TrainingReporter | None,
    session_start: float,
    stop_when: Callable[[int, dict[str, float]], bool] | None = None,
) -> dict[str, Any]:
    """Runs `fit` from epoch `completed`; returns the final metrics.json contents."""
    past = _truncate_history(output_dir / RUN_HISTORY_FILE, completed)
    previous = _read_metrics(output_dir) if completed else {}
    stopwatch = Stopwatch(job.train_batches.images_per_epoch, session_start)
    # Workers of a multi_worker run write collectively: a decision by each one's clock could differ.
    every_s = 0.0 if job.runtime.distribution == "multi_worker" else job.config.train.checkpoint_every_s
    clock = CheckpointClock(every_s, job.config.train.epochs)

    def write_metrics(finished: bool = False) -> dict[str, Any]:
        session_seconds = time.perf_counter() - session_start
        times = _add_times(previous, stopwatch.time_parts(session_seconds, clock.seconds))
        return _write_metrics(output_dir, job, stopwatch, times, finished)

    callbacks = _callbacks(
        job, output_dir, past, stopwatch, clock, lambda epoch, logs: write_metrics(), stop_when
    )
    if reporter is not None:  # after the stopwatch, which must be first
        callbacks.insert(1, reporter_callback(reporter, job.config.train.epochs, len(job.train_batches)))
    with job.runtime.fit_scope():
        job.trainer.fit(
            job.train_batches,
            validation_data=job.val_batches,
            epochs=job.config.train.epochs,
            callbacks=callbacks,
            # ArrayBatches shuffles from (seed, epoch); Keras' own batch shuffle draws from the
            # process-global `random` state, which a resumed process does not share.
            shuffle=False,
            verbose=0,
        )
    return write_metrics(finished=True)


def _add_times(previous: dict[str, Any], session: dict[str, float]) -> dict[str, float]:
    """`time_s` of all sessions of the run so far; `other` keeps the parts summing to the wall time."""
    earlier = previous.get("time_s", {})
    times = {part: earlier.get(part, 0.0) + seconds for part, seconds in session.items()}
    times["other"] += previous.get("wall_time_s", 0.0) - sum(earlier.values())
    return times


def read_run_config(run_dir: str | Path) -> Config:
    """The saved config of a run directory that can still be resumed."""
    run_dir = Path(run_dir)
    config_path = run_dir / RUN_CONFIG_FILE
    if not run_dir.is_dir():
        raise ModelError(f"{run_dir}: run directory not found")
    if not config_path.is_file():
        raise ModelError(f"{run_dir}: not a fertrain run directory (no {RUN_CONFIG_FILE})")
    if _read_metrics(run_dir).get("status") == "finished":
        raise ModelError(f"{run_dir}: this run already finished; start a new run instead of resuming it")
    return load_config(config_path)


def _with_data_dir(config: Config, data_dir: str | Path | None) -> Config:
    directory = Path(data_dir if data_dir is not None else config.data.dir).expanduser().resolve()
    return config.model_copy(update={"data": config.data.model_copy(update={"dir": str(directory)})})


def _with_data_classes(config: Config, classes: tuple[str, ...]) -> Config:
    """`model.num_classes` from the data when the config leaves it out, else checked against it."""
    model = config.model
    if "num_classes" not in model.model_fields_set:
        return config.model_copy(update={"model": model.model_copy(update={"num_classes": len(classes)})})
    if model.num_classes != len(classes):
        raise ConfigError(
            f"model.num_classes is {model.num_classes} but {config.data.dir} has {len(classes)} classes "
            f"({', '.join(classes)}); set model.num_classes: {len(classes)} or leave it out"
        )
    return config


def _load_splits(config: Config, resume: Path | None) -> tuple[Config, Splits]:
    data_dir = config.data.dir
    classes = dataset_classes(data_dir)
    config = _with_data_classes(config, classes)
    train_images, train_labels = load_split(data_dir, "train")
    val_images, val_labels = load_split(data_dir, "val")
    size = config.model.input_size
    for split, images, labels in (("train", train_images, train_labels), ("val", val_images, val_labels)):
        if len(labels) == 0:
            raise DataError(f"{data_dir}/{split}.npz: has no images")
        if images.shape[1:] != (size, size):
            raise DataError(
                f"{data_dir}/{split}.npz: images are {images.shape[1]}x{images.shape[2]} but "
                f"model.input_size is {size}"
            )
        if labels.max() >= len(classes):
            raise DataError(
                f"{data_dir}/{split}.npz: label {int(labels.max())} but the data names "
                f"{len(classes)} classes ({', '.join(classes)})"
            )
    train = training_targets(config, train_images, train_labels, load_votes(data_dir, "train"))
    val_images, val_labels = validation_faces(val_images, val_labels, load_votes(data_dir, "val"))
    if len(train.labels) == 0:
        raise DataError(f"{data_dir}/train.npz: data.targets {config.data.targets} leaves no training face")
    teacher = teacher_probabilities(config.train.distill, train.images, classes, resume)
    return config, Splits(classes, train, val_images, val_labels, teacher)


def compile_trainer(
    config: Config,
    runtime: Runtime,
    schedule,
    example_batch,
    classes: tuple[str, ...] | None = None,
    loss: keras.losses.Loss | None = None,
) -> AugmentedTrainer:
    """The trainer around a new network whose output layer names `classes` (when given); `loss`
    defaults to categorical cross-entropy with the config's label smoothing."""
    from fertrain.models import build_model

    size = config.model.input_size
    if loss is None:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=config.train.label_smoothing)
    with runtime.scope():
        with dtype_policy(runtime.dtype_policy):
            network = build_model(config.model, classes)
            augmentation = build_augmentation(config.data.augment, size, config.train.seed)
            trainer_class = MultiWorkerTrainer if runtime.distribution == "multi_worker" else AugmentedTrainer
            trainer = trainer_class(network, augmentation, name="trainer")
        trainer.compile(
            optimizer=build_optimizer(config.train, schedule),
            loss=loss,
            metrics=[LabelledAccuracy(name="accuracy")],
            jit_compile=runtime.jit_compile and _xla_blocker(runtime, trainer) is None,
            steps_per_execution=config.train.steps_per_execution,
        )
        # Restoring a backup needs the variables to exist before `fit` builds them.
        trainer.build_for_training(example_batch)
    return trainer


def _xla_blocker(runtime: Runtime, trainer: AugmentedTrainer) -> str | None:
    """Why Keras would refuse XLA for this trainer, or None (checked first to avoid its warning)."""
    if runtime.backend == "tensorflow" and runtime.deterministic:
        return "TensorFlow's op determinism and XLA do not combine (train.deterministic)"
    blockers = [type(layer).__name__ for layer in trainer.augmentation.layers if not layer.supports_jit]
    if blockers:
        return f"{', '.join(sorted(set(blockers)))} use image ops that TensorFlow cannot compile with XLA"
    return None


def _claim_output_dir(
    config: Config, runtime: Runtime, run_dir: str | Path | None, resume: str | Path | None, runs_root
) -> Path:
    """The directory this process writes: the run itself on the chief, a scratch copy on other workers
    (whose writes must happen, collectively, but must not collide with the chief's)."""
    if not runtime.is_chief:
        return Path(tempfile.mkdtemp(prefix=f"fertrain-worker{runtime.worker_index}-"))
    if resume is not None:
        return Path(resume)
    if run_dir is not None:
        run_dir = Path(run_dir)
        _refuse_occupied(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    base = Path(runs_root) / f"{config.name}-{stamp}"
    for attempt in range(1, 1000):
        candidate = base if attempt == 1 else base.with_name(f"{base.name}-{attempt}")
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            continue
    raise ConfigError(f"{base}: could not find a free run directory name")


def _run_write_error(exc: OSError, output_dir: Path, runtime: Runtime) -> FileSystemError:
    """`exc` in one line, with the command that continues the run once its cause is fixed: every file
    of the last completed epoch is intact, so `--resume` carries on from there."""
    resumable = runtime.is_chief and (output_dir / RUN_CONFIG_FILE).is_file()
    return FileSystemError.from_os_error(
        exc, where=output_dir, then=f"fertrain train --resume {output_dir}" if resumable else None
    )


def _refuse_occupied(run_dir: Path) -> None:
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise ConfigError(
            f"{run_dir}: already exists and is not empty; resume it with --resume or pick another"
        )


def _completed_epochs(run_dir: Path) -> int:
    state = read_backup_state(run_dir / BACKUP_DIR)
    return 0 if state is None else int(state["epoch"])


def read_history(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def _truncate_history(path: Path, completed: int) -> History:
    """Drops rows of epochs the backup does not cover (a kill between the two writes) and returns the rest."""
    rows = [row for row in read_history(path) if row["epoch"] <= completed]
    if not rows:
        path.unlink(missing_ok=True)
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle))
    lines = [",".join(header)] + [",".join(_csv_number(row[key]) for key in header) for row in rows]
    write_atomic(path, "\n".join(lines) + "\n")
    return rows


def _csv_number(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def _callbacks(
    job: TrainingJob,
    output_dir: Path,
    past: History,
    stopwatch: Stopwatch,
    clock: CheckpointClock,
    record_epoch: Callable[[int, dict[str, Any]], None],
    stop_when: Callable[[int, dict[str, float]], bool] | None = None,
) -> list[keras.callbacks.Callback]:
    """Order matters: epoch-end logs are completed before they are written, early stopping decides
    before the checkpoints, and the backup is last."""
    train = job.config.train
    callbacks: list[keras.callbacks.Callback] = [
        stopwatch,
        EpochSeeding(job.train_batches, train.seed),
        DivergenceGuard(),
        LearningRateLog(job.schedule),
    ]
    if train.schedule.name == "reduce_on_plateau":
        callbacks.append(
            ResumableReduceLROnPlateau(
                past,
                train.optimizer.learning_rate,
                monitor="val_loss",
                mode="min",
                factor=train.schedule.plateau_factor,
                patience=train.schedule.plateau_patience,
                min_lr=train.schedule.min_learning_rate,
            )
        )
    callbacks.append(HistoryCSV(str(output_dir / RUN_HISTORY_FILE), append=True))
    if train.early_stopping_patience:
        callbacks.append(
            ResumableEarlyStopping(past, monitor=MONITOR, mode="max", patience=train.early_stopping_patience)
        )
    if stop_when is not None:
        callbacks.append(StopWhen(stop_when))
    callbacks.append(
        NetworkCheckpoints(
            job.trainer.network, output_dir / RUN_MODEL_FILE, output_dir / LAST_MODEL, past, MONITOR, clock
        )
    )
    if _tensorflow_available():
        callbacks.append(
            keras.callbacks.TensorBoard(str(output_dir / TENSORBOARD_DIR), write_graph=False, profile_batch=0)
        )
    else:
        callbacks.append(ScalarTensorBoard(output_dir / TENSORBOARD_DIR))
    if train.ema:
        callbacks.append(AveragedWeightsForEvaluation())
    if job.transfer is not None and job.transfer.freeze_epochs:
        callbacks.append(HeadOnlyEpochs(job.trainer.network, job.transfer.frozen, job.transfer.freeze_epochs))
    callbacks += [EpochEndHook(record_epoch), AtomicBackupAndRestore(output_dir / BACKUP_DIR, clock)]
    return callbacks


def _tensorflow_available() -> bool:
    try:
        import tensorflow  # noqa: F401  (Keras' TensorBoard callback writes with tf.summary)
    except ImportError:
        return False
    return True


def _read_metrics(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_METRICS_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return {}


def _write_metrics(
    output_dir: Path, job: TrainingJob, stopwatch: Stopwatch, times: dict[str, float], finished: bool
) -> dict[str, Any]:
    history = read_history(output_dir / RUN_HISTORY_FILE)
    scores = [row.get(MONITOR, math.nan) for row in history]
    best = int(np.nanargmax(scores)) if history and not all(map(math.isnan, scores)) else None
    metrics = {
        "status": "finished" if finished else "running",
        "best_epoch": None if best is None else int(history[best]["epoch"]),
        "best_val_accuracy": None if best is None else history[best][MONITOR],
        "best_val_loss": None if best is None else history[best]["val_loss"],
        "epochs_run": len(history),
        "epochs_planned": job.config.train.epochs,
        "stopped_early": finished and len(history) < job.config.train.epochs,
        "wall_time_s": round(sum(times.values()), 3),
        "time_s": {part: round(seconds, 3) for part, seconds in times.items()},
        "train_images_per_s": stopwatch.train_images_per_s(),
        **job.splits.sizes(),
        **job.splits.describe(job.config),
        **({} if job.transfer is None else {"init_from": job.transfer.to_dict()}),
        **job.runtime.summary(),
        "versions": versions(),
    }
    write_atomic(output_dir / RUN_METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
    return metrics
