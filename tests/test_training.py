"""`fertrain train`: run directory, resume after SIGKILL, reproducibility, schedules, class weights,
augmentation, runtime rules and every bad-input case."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from cli_main import run_cli
from sklearn.utils.class_weight import compute_class_weight

import fertrain.models  # noqa: F401  (registers fertrain's layers for load_model)
from fertrain.config import AugmentConfig, TrainConfig, load_config
from fertrain.data.dataset import load_split
from fertrain.errors import ConfigError
from fertrain.models import build_model
from fertrain.training import read_history, train
from fertrain.training.augmentation import AugmentedTrainer, RandomErasing, build_augmentation
from fertrain.training.batches import ArrayBatches, LabelledAccuracy, class_weights
from fertrain.training.callbacks import (
    AtomicBackupAndRestore,
    CheckpointClock,
    LearningRateLog,
    ScalarTensorBoard,
)
from fertrain.training.runtime import Accelerator, AutoRules, Devices, resolve_runtime

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
# A mini-Xception small enough that an epoch of the 700-image sample takes about a second on CPU.
TINY = ["model.width_multiplier=0.25", "model.entry_widths=[16, 32]", "train.early_stopping_patience=0"]
HISTORY_COLUMNS = {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"}
METRICS_FIELDS = {
    "best_epoch",
    "best_val_accuracy",
    "best_val_loss",
    "epochs_run",
    "wall_time_s",
    "time_s",
    "train_images_per_s",
    "backend",
    "devices",
    "versions",
}


def tiny_config(data_dir: Path, *overrides: str):
    return load_config(QUICKSTART, [*TINY, f"data.dir={data_dir}", *overrides])


def train_args(data_dir: Path, *overrides: str) -> list[str]:
    sets = [arg for override in (*TINY, *overrides) for arg in ("--set", override)]
    return ["train", "--config", QUICKSTART, "--data", data_dir, *sets]


def subprocess_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def fertrain_command(*args) -> list[str]:
    return [sys.executable, "-m", "fertrain", *map(str, args)]


def run_fertrain(*args, **env: str) -> subprocess.CompletedProcess:
    """`fertrain *args` in a fresh process, as a user runs it; `env` adds environment variables."""
    return subprocess.run(
        fertrain_command(*args),
        capture_output=True,
        text=True,
        env=subprocess_env(**env),
        timeout=600,
        cwd=REPO,
    )


def assert_times_add_up(metrics: dict) -> None:
    times = metrics["time_s"]
    assert list(times) == ["startup", "compile", "train", "validate", "checkpoint", "other"]
    assert all(seconds >= 0 for seconds in times.values()), times
    assert times["compile"] > 0 and times["train"] > 0 and times["validate"] > 0 and times["checkpoint"] > 0
    assert sum(times.values()) == pytest.approx(metrics["wall_time_s"], abs=0.01)


def model_weights(path: Path) -> list[np.ndarray]:
    return keras.saving.load_model(path, safe_mode=True).get_weights()


def make_dataset(directory: Path, train_size: int, val_size: int = 32, seed: int = 0) -> Path:
    """A prepared directory of random faces whose class is visible as a bright band."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    for split, size in (("train", train_size), ("val", val_size)):
        labels = np.arange(size, dtype="uint8") % 7
        images = rng.integers(0, 256, (size, 48, 48), dtype="uint8")
        for label in range(7):
            images[labels == label, label * 6 : label * 6 + 6] = 255
        np.savez(directory / f"{split}.npz", images=images, labels=labels)
    (directory / "manifest.json").write_text("{}")
    return directory


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory, prepared_sample):
    """`fertrain train` for one epoch on the bundled sample, run the way a user runs it."""
    run_dir = tmp_path_factory.mktemp("train") / "run"
    done = run_fertrain(*train_args(prepared_sample, "train.epochs=1"), "--run-dir", run_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir, done.stdout


@pytest.mark.slow
def test_one_epoch_on_the_sample_writes_a_complete_run_directory(one_epoch_run, prepared_sample):
    run_dir, stdout = one_epoch_run
    for name in ("config.yaml", "model.keras", "last.keras", "history.csv", "metrics.json"):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert not (run_dir / "backup").exists()  # resume state is dropped once the run finishes

    history = read_history(run_dir / "history.csv")
    assert len(history) == 1 and HISTORY_COLUMNS <= set(history[0])
    assert history[0]["epoch"] == 1
    assert history[0]["learning_rate"] == pytest.approx(1e-3)

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert METRICS_FIELDS <= set(metrics)
    assert metrics["status"] == "finished" and metrics["epochs_run"] == 1 and metrics["best_epoch"] == 1
    assert metrics["best_val_accuracy"] == pytest.approx(history[0]["val_accuracy"])
    assert metrics["best_val_loss"] == pytest.approx(history[0]["val_loss"])
    assert metrics["train_images"] == 700 and metrics["train_images_per_s"] > 0
    assert metrics["backend"] == "tensorflow"
    assert_times_add_up(metrics)
    assert set(metrics["versions"]) >= {"python", "tensorflow", "keras", "fertrain"}

    # The saved model takes raw uint8 pixels and scores the val split as training measured it.
    model = keras.saving.load_model(run_dir / "model.keras", safe_mode=True)
    faces, labels = load_split(prepared_sample, "val")
    probabilities = model.predict(faces[..., None], verbose=0)
    assert probabilities.shape == (196, 7) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    accuracy = float(np.mean(probabilities.argmax(axis=1) == labels))
    assert accuracy == pytest.approx(metrics["best_val_accuracy"], abs=1e-6)
    assert not any(layer.name == "augmentation" for layer in model.layers)

    saved = load_config(run_dir / "config.yaml")
    assert saved == tiny_config(prepared_sample.resolve(), "train.epochs=1")
    # Not a terminal: exactly one line per epoch, no progress bar.
    assert [line.split("  ")[0] for line in stdout.splitlines() if line.startswith("epoch ")] == ["epoch 1/1"]
    assert "\r" not in stdout and "\x1b[" not in stdout
    assert stdout.splitlines()[-2].startswith("time: startup ")


@pytest.mark.slow
def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path, prepared_sample):
    overrides = (
        "train.epochs=4",
        "train.deterministic=true",
        "train.schedule.name=cosine",
        "train.schedule.warmup_epochs=1",
        "data.augment.erasing_probability=0.5",
        "data.augment.crop_padding=2",
        "model.crop_size=44",
        "model.dropout=0.2",
        # the accuracy techniques keep the guarantee: mixing is seeded per batch, the averages are
        # optimizer state in the backup
        "data.augment.mixup_alpha=0.4",
        "data.augment.cutmix_alpha=1.0",
        "data.augment.brightness=0.1",
        "data.augment.contrast=0.1",
        "train.ema=0.9",
    )
    args = train_args(prepared_sample, *overrides)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    uninterrupted = subprocess.Popen(
        fertrain_command(*args, "--run-dir", whole), env=subprocess_env(), stdout=subprocess.DEVNULL, cwd=REPO
    )
    victim = subprocess.Popen(
        fertrain_command(*args, "--run-dir", killed),
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        cwd=REPO,
    )
    backup_state = killed / "backup" / "state.json"
    deadline = time.monotonic() + 300
    while not (backup_state.is_file() and json.loads(backup_state.read_text())["epoch"] >= 2):
        assert victim.poll() is None and time.monotonic() < deadline, "run ended before epoch 2 was backed up"
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    assert len(read_history(killed / "history.csv")) < 4
    assert (
        not (killed / "metrics.json").is_file()
        or json.loads((killed / "metrics.json").read_text())["status"] == "running"
    )

    resumed = run_fertrain("train", "--resume", killed)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming after epoch" in resumed.stdout
    assert uninterrupted.wait(timeout=300) == 0

    whole_history = read_history(whole / "history.csv")
    assert [row["epoch"] for row in read_history(killed / "history.csv")] == [1, 2, 3, 4]
    assert read_history(killed / "history.csv") == whole_history
    for name in ("last.keras", "model.keras"):
        for a, b in zip(model_weights(whole / name), model_weights(killed / name), strict=True):
            np.testing.assert_array_equal(a, b)
    whole_metrics = json.loads((whole / "metrics.json").read_text())
    killed_metrics = json.loads((killed / "metrics.json").read_text())
    for field in ("best_epoch", "best_val_accuracy", "best_val_loss", "epochs_run", "status"):
        assert killed_metrics[field] == whole_metrics[field]


@pytest.mark.slow
def test_same_config_and_seed_twice_give_the_same_history(tmp_path, prepared_sample):
    config = tiny_config(prepared_sample, "train.epochs=2", "train.deterministic=true")
    first = train(config, run_dir=tmp_path / "first")
    second = train(config, run_dir=tmp_path / "second")
    assert (first.run_dir / "history.csv").read_text() == (second.run_dir / "history.csv").read_text()
    other = train(
        config.model_copy(update={"train": config.train.model_copy(update={"seed": 7})}),
        run_dir=tmp_path / "other",
    )
    assert read_history(other.run_dir / "history.csv") != read_history(first.run_dir / "history.csv")


def expected_rate(schedule: str, step: int, total: int, steps_per_epoch: int) -> float:
    """The configured schedules written out independently of fertrain.training.schedules."""
    peak = 0.01
    if schedule == "constant":
        return peak
    if schedule == "cosine":  # warm-up over 1 epoch to the peak, then cosine down to 1e-4
        warmup = steps_per_epoch
        if step < warmup:
            return peak * (step + 1) / warmup
        progress = (step - warmup) / (total - warmup)
        return 1e-4 + (peak - 1e-4) * 0.5 * (1 + math.cos(math.pi * progress))
    # one_cycle: from peak/25 up over 30% of the steps, then down to 1e-4
    rise = 0.3 * total
    if step < rise:
        return peak / 25 + (peak - peak / 25) * 0.5 * (1 - math.cos(math.pi * step / rise))
    return 1e-4 + (peak - 1e-4) * 0.5 * (1 + math.cos(math.pi * (step - rise) / (total - rise)))


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["constant", "cosine", "one_cycle"])
def test_history_learning_rates_follow_the_schedule(tmp_path, schedule):
    data = make_dataset(tmp_path / "data", train_size=64)
    epochs, steps = 4, 4  # 64 images in batches of 16
    config = tiny_config(
        data,
        f"train.epochs={epochs}",
        "data.batch_size=16",
        "train.optimizer.learning_rate=0.01",
        f"train.schedule.name={schedule}",
        "train.schedule.warmup_epochs=1",
        "train.schedule.min_learning_rate=1e-4",
    )
    result = train(config, run_dir=tmp_path / "run")
    logged = [row["learning_rate"] for row in read_history(result.run_dir / "history.csv")]
    # Each row holds the rate of the epoch's last update.
    expected = [expected_rate(schedule, (e + 1) * steps - 1, epochs * steps, steps) for e in range(epochs)]
    np.testing.assert_allclose(logged, expected, rtol=1e-5)


@pytest.mark.slow
def test_reduce_on_plateau_halves_the_rate_after_each_epoch_without_improvement(tmp_path):
    data = make_dataset(tmp_path / "data", train_size=64)
    config = tiny_config(
        data,
        "train.epochs=5",
        "data.batch_size=16",
        "train.optimizer.learning_rate=0.05",
        "train.schedule.name=reduce_on_plateau",
        "train.schedule.plateau_patience=1",
        "train.schedule.plateau_factor=0.5",
    )
    history = read_history(train(config, run_dir=tmp_path / "run").run_dir / "history.csv")
    rate, best, expected = 0.05, math.inf, []
    for row in history:
        expected.append(rate)
        if row["val_loss"] < best:
            best = row["val_loss"]
        else:
            rate *= 0.5
    np.testing.assert_allclose([row["learning_rate"] for row in history], expected, rtol=1e-6)


def test_balanced_class_weights_match_scikit_learn():
    rng = np.random.default_rng(3)
    labels = rng.choice(7, size=500, p=[0.14, 0.02, 0.14, 0.25, 0.17, 0.11, 0.17]).astype("uint8")
    assert len(np.unique(labels)) == 7
    ours = class_weights(TrainConfig(class_weights="balanced"), labels, 7)
    np.testing.assert_allclose(ours, compute_class_weight("balanced", classes=np.arange(7), y=labels))

    without_disgust = labels[labels != 1]
    present = np.unique(without_disgust)
    ours = class_weights(TrainConfig(class_weights="balanced"), without_disgust, 7)
    np.testing.assert_allclose(
        ours[present], compute_class_weight("balanced", classes=present, y=without_disgust)
    )
    assert ours[1] == 0.0

    explicit = [1.0, 9.0, 1.0, 0.5, 1.0, 1.0, 1.0]
    np.testing.assert_array_equal(class_weights(TrainConfig(class_weights=explicit), labels, 7), explicit)
    assert class_weights(TrainConfig(class_weights="none"), labels, 7) is None
    with pytest.raises(ConfigError, match="expected 7 weights"):
        class_weights(TrainConfig(class_weights=[1.0, 2.0]), labels, 7)


def test_batches_are_seeded_per_epoch_uint8_and_carry_class_weights():
    # Image i is all pixels i, so a batch shows which rows it holds.
    images = np.broadcast_to(np.arange(10, dtype="uint8")[:, None, None], (10, 48, 48)).copy()
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 0, 1, 2], dtype="uint8")
    weights = np.linspace(1.0, 2.0, 7)

    def epoch_rows(batches, epoch):
        batches.set_epoch(epoch)
        return np.concatenate([batches[i][0][:, 0, 0, 0] for i in range(len(batches))])

    first = ArrayBatches(images, labels, 7, batch_size=4, shuffle_seed=5, class_weights=weights)
    again = ArrayBatches(images, labels, 7, batch_size=4, shuffle_seed=5, class_weights=weights)
    assert len(first) == 3
    np.testing.assert_array_equal(epoch_rows(first, 3), epoch_rows(again, 3))
    assert sorted(epoch_rows(first, 3)) == sorted(images[:, 0, 0])  # every image once per epoch
    assert not np.array_equal(epoch_rows(first, 3), epoch_rows(first, 4))

    x, y, w = first[0]
    assert x.dtype == np.uint8 and x.shape == (4, 48, 48, 1)
    batch_labels = y.argmax(axis=1)
    np.testing.assert_array_equal(y, np.eye(7, dtype="float32")[batch_labels])
    np.testing.assert_allclose(w, weights[batch_labels])


def test_random_erasing_covers_the_configured_area_and_only_in_training():
    images = np.full((256, 48, 48, 1), -1.0, dtype="float32")  # outside the noise's 0-255 range
    always = RandomErasing(probability=1.0, max_area=0.25, seed=1)
    erased = keras.ops.convert_to_numpy(always(images, training=True)) != -1.0
    fractions = erased.reshape(256, -1).mean(axis=1)
    assert fractions.min() > 0.0 and fractions.max() <= 0.25 + 2 * 48 / 48**2  # rounding up to whole pixels
    assert fractions.mean() == pytest.approx((0.02 + 0.25) / 2, abs=0.03)
    never = keras.ops.convert_to_numpy(RandomErasing(0.0, 0.25, seed=1)(images, training=True))
    np.testing.assert_array_equal(never, images)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(always(images, training=False)), images)
    half = keras.ops.convert_to_numpy(RandomErasing(0.5, 0.25, seed=2)(images, training=True)) != -1.0
    assert half.reshape(256, -1).any(axis=1).mean() == pytest.approx(0.5, abs=0.1)


def test_augmentation_runs_only_while_training(tmp_path):
    config = tiny_config(tmp_path, "data.augment.erasing_probability=0.5", "data.augment.crop_padding=3")
    network = build_model(config.model)
    augmentation = build_augmentation(config.data.augment, 48, seed=0)
    names = [type(layer).__name__ for layer in augmentation.layers]
    assert names == [
        "RandomFlip",
        "RandomRotation",
        "RandomZoom",
        "RandomTranslation",
        "RandomTranslation",
        "RandomErasing",
    ]
    off = AugmentConfig(horizontal_flip=False, rotation_degrees=0, zoom=0, shift=0)
    assert build_augmentation(off, 48, seed=0).layers == []

    trainer = AugmentedTrainer(network, augmentation)
    pixels = np.random.default_rng(0).integers(0, 256, (8, 48, 48, 1)).astype("uint8")
    direct = keras.ops.convert_to_numpy(network(pixels.astype("float32"), training=False))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(trainer(pixels, training=False)), direct, rtol=1e-6)
    augmented = keras.ops.convert_to_numpy(trainer(pixels, training=True))
    assert not np.allclose(augmented, direct)


def test_auto_choices():
    rules = AutoRules()
    cpu = Devices("tensorflow")
    ampere = Devices("tensorflow", (Accelerator("NVIDIA A100", (8, 0)),))
    turing = Devices("tensorflow", (Accelerator("Tesla T4", (7, 5)),))
    pair = Devices("tensorflow", ampere.gpus * 2)
    assert [rules.mixed_precision(d) for d in (cpu, ampere, turing)] == ["off", "bfloat16", "float16"]
    assert [rules.jit_compile(d) for d in (cpu, ampere)] == [False, True]
    assert rules.jit_compile(Devices("jax")) is True and rules.jit_compile(Devices("torch")) is False
    assert [rules.distribution(d) for d in (cpu, ampere, pair)] == ["one_device", "one_device", "mirrored"]
    assert rules.distribution(Devices("jax", pair.gpus)) == "mirrored"
    assert rules.distribution(Devices("torch", pair.gpus)) == "one_device"

    explicit = resolve_runtime(TrainConfig(mixed_precision="bfloat16", jit_compile="on"))
    assert (explicit.mixed_precision, explicit.dtype_policy, explicit.jit_compile) == (
        "bfloat16",
        "mixed_bfloat16",
        True,
    )


@pytest.mark.parametrize(
    ("backend", "distribution", "message"),
    [
        (
            "jax",
            "multi_worker",
            "'multi_worker' needs KERAS_BACKEND=tensorflow, got jax; use mirrored (one host)",
        ),
        ("torch", "multi_worker", "'multi_worker' needs KERAS_BACKEND=tensorflow, got torch; use one_device"),
        ("torch", "mirrored", "'mirrored' needs KERAS_BACKEND=tensorflow or jax, got torch; use one_device"),
    ],
)
def test_distributions_refuse_backends_they_do_not_run_on(monkeypatch, backend, distribution, message):
    monkeypatch.setattr(keras.backend, "backend", lambda: backend)
    with pytest.raises(ConfigError, match=f"^{re.escape(f'train.distribution: {message}')}$"):
        resolve_runtime(TrainConfig(distribution=distribution))


def test_multi_worker_without_tf_config_is_a_config_error(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        resolve_runtime(TrainConfig(distribution="multi_worker"))


def _one_line_error(code: int, err: str, expected: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert expected in lines[0], lines[0]


@pytest.mark.parametrize(
    ("case", "extra", "expected"),
    [
        ("missing data", ["--set", "train.epochs=1"], "data directory not found"),
        ("not prepared", ["--set", "train.epochs=1"], "manifest.json: missing"),
        ("config error", ["--set", "train.epochs=0"], "train.epochs: must be >= 1"),
        ("class weights", ["--set", "train.class_weights=[1, 2]"], "expected 7 weights"),
    ],
)
def test_bad_training_input_is_one_line_exit_2_and_writes_nothing(
    tmp_path, monkeypatch, capsys, prepared_sample, case, extra, expected
):
    monkeypatch.chdir(tmp_path)
    data = {
        "missing data": tmp_path / "nowhere",
        "not prepared": tmp_path,
    }.get(case, prepared_sample)
    code, _, err = run_cli(["train", "--config", QUICKSTART, "--data", data, *extra], capsys, monkeypatch)
    _one_line_error(code, err, expected)
    assert not (tmp_path / "runs").exists()


def test_resume_of_something_that_is_not_a_run_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plain").mkdir()
    code, _, err = run_cli(["train", "--resume", tmp_path / "plain"], capsys, monkeypatch)
    _one_line_error(code, err, "not a fertrain run directory")
    code, _, err = run_cli(["train", "--resume", tmp_path / "absent"], capsys, monkeypatch)
    _one_line_error(code, err, "run directory not found")
    code, _, err = run_cli(
        ["train", "--resume", tmp_path / "plain", "--config", QUICKSTART], capsys, monkeypatch
    )
    _one_line_error(code, err, "--resume continues a run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain"] and not any((tmp_path / "plain").iterdir())


@pytest.mark.slow
def test_finished_or_occupied_run_directories_are_never_overwritten(
    one_epoch_run, prepared_sample, monkeypatch, capsys
):
    run_dir, _ = one_epoch_run
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    code, _, err = run_cli(["train", "--resume", run_dir], capsys, monkeypatch)
    _one_line_error(code, err, "already finished")
    occupied = ["train", "--config", QUICKSTART, "--data", prepared_sample, "--run-dir", run_dir]
    code, _, err = run_cli(occupied, capsys, monkeypatch)
    _one_line_error(code, err, "already exists and is not empty")
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before


@pytest.mark.slow
def test_nan_loss_stops_with_exit_4_naming_the_epoch(tmp_path, monkeypatch, capsys):
    data = make_dataset(tmp_path / "data", train_size=64)
    code, _, err = run_cli(
        [
            *train_args(data, "train.epochs=2", "data.batch_size=16", "model.l2=0"),
            "--set",
            "train.optimizer.name=sgd",
            "--set",
            "train.optimizer.learning_rate=1e30",
            "--run-dir",
            tmp_path / "run",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 4, err
    assert "training diverged" in err and "in epoch 1" in err and len(err.strip().splitlines()) == 1
    assert read_history(tmp_path / "run" / "history.csv") == []


@pytest.mark.slow
def test_two_workers_on_localhost_train_one_epoch(tmp_path, prepared_sample):
    import socket

    def free_port() -> int:
        with socket.socket() as sock:
            sock.bind(("localhost", 0))
            return sock.getsockname()[1]

    cluster = {"worker": [f"localhost:{free_port()}", f"localhost:{free_port()}"]}
    run_dir = tmp_path / "run"
    args = train_args(prepared_sample, "train.epochs=1", "train.distribution=multi_worker")
    workers = [
        subprocess.Popen(
            fertrain_command(*args, "--run-dir", run_dir),
            env=subprocess_env(
                TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for i in range(2)
    ]
    outputs = [worker.communicate(timeout=300) for worker in workers]
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err[-3000:]
    assert "the chief (worker 0) wrote the run" in outputs[1][0]
    for name in ("config.yaml", "model.keras", "last.keras", "history.csv", "metrics.json"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (
        metrics["distribution"] == "multi_worker" and metrics["workers"] == 2 and metrics["epochs_run"] == 1
    )
    assert len(read_history(run_dir / "history.csv")) == 1


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_other_keras_backends_train_with_the_same_command(tmp_path, prepared_sample, backend):
    import importlib.util

    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    run_dir = tmp_path / "run"
    done = run_fertrain(
        *train_args(prepared_sample, "train.epochs=1", "data.augment.erasing_probability=0.5"),
        "--run-dir",
        run_dir,
        KERAS_BACKEND=backend,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["backend"] == backend and metrics["epochs_run"] == 1
    # A model trained under another backend loads and predicts here (TensorFlow).
    faces, labels = load_split(prepared_sample, "val")
    probabilities = keras.saving.load_model(run_dir / "model.keras", safe_mode=True).predict(
        faces[..., None], verbose=0
    )
    accuracy = float(np.mean(probabilities.argmax(axis=1) == labels))
    # Another backend's kernels round differently: a near-tie may flip for one face, no more.
    assert accuracy == pytest.approx(metrics["best_val_accuracy"], abs=1.01 / len(labels))


@pytest.mark.slow
def test_early_stopping_ends_the_run_and_says_so(tmp_path):
    data = make_dataset(tmp_path / "data", train_size=64)
    # A learning rate this small leaves val accuracy where it started: no epoch improves on the first.
    config = tiny_config(
        data,
        "train.epochs=6",
        "data.batch_size=16",
        "train.optimizer.learning_rate=1e-12",
        "train.early_stopping_patience=2",
    )
    result = train(config, run_dir=tmp_path / "run")
    scores = [row["val_accuracy"] for row in read_history(result.run_dir / "history.csv")]
    stop = first_epoch_out_of_patience(scores, patience=2)
    assert stop is not None and len(scores) == stop < 6 and result.metrics["stopped_early"] is True
    assert result.metrics["status"] == "finished" and result.metrics["epochs_run"] == stop


def first_epoch_out_of_patience(scores: list[float], patience: int) -> int | None:
    """The 1-based epoch after which early stopping must end training, or None."""
    best, wait = scores[0], 0
    for epoch, score in enumerate(scores[1:], start=2):
        best, wait = (score, 0) if score > best else (best, wait + 1)
        if wait >= patience:
            return epoch
    return None


def test_patience_counters_continue_across_a_resume():
    from fertrain.training.callbacks import ResumableEarlyStopping, ResumableReduceLROnPlateau

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    past = [
        {"epoch": 1, "val_accuracy": 0.50, "val_loss": 1.0},
        {"epoch": 2, "val_accuracy": 0.40, "val_loss": 1.1},
        {"epoch": 3, "val_accuracy": 0.45, "val_loss": 1.2},
    ]
    stopping = ResumableEarlyStopping(past, monitor="val_accuracy", mode="max", patience=3)
    stopping.set_model(model)
    stopping.on_train_begin()
    assert (stopping.best, stopping.wait, model.stop_training) == (0.50, 2, False)

    plateau = ResumableReduceLROnPlateau(past, 0.1, monitor="val_loss", mode="min", factor=0.5, patience=2)
    plateau.set_model(model)
    plateau.on_train_begin()
    # Replayed from the initial 0.1: epochs 2 and 3 did not improve, so the rate was halved once.
    assert (plateau.best, plateau.wait) == (1.0, 0)
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(0.05)


def test_checkpoint_clock_decides_once_per_epoch_and_always_at_the_end():
    every_epoch = CheckpointClock(0.0, epochs=3)
    assert [every_epoch.due(epoch, stopping=False) for epoch in range(3)] == [True, True, True]
    rarely = CheckpointClock(3600.0, epochs=5)
    assert [rarely.due(epoch, stopping=False) for epoch in range(5)] == [False, False, False, False, True]
    stopped = CheckpointClock(3600.0, epochs=5)
    assert stopped.due(1, stopping=True) is True
    assert stopped.due(1, stopping=False) is True  # each writer of an epoch gets the same answer
    soon = CheckpointClock(0.05, epochs=5)
    assert soon.due(0, stopping=False) is False
    time.sleep(0.06)
    assert soon.due(1, stopping=False) is True and soon.due(2, stopping=False) is False
    with soon.timed():
        time.sleep(0.01)
    assert soon.seconds >= 0.01


def test_padded_validation_batches_keep_the_scores_and_one_shape():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 4, 4), dtype="uint8")
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0], dtype="uint8")
    batches = ArrayBatches(images, labels, 3, batch_size=4, image_dtype="float32", pad_remainder=True)
    shapes = {(batches[i][0].shape, batches[i][1].shape, batches[i][2].shape) for i in range(len(batches))}
    assert len(batches) == 3 and shapes == {((4, 4, 4, 1), (4, 3), (4,))}
    x, y, w = batches[2]
    np.testing.assert_allclose(w, [1.2, 1.2, 0.0, 0.0], rtol=1e-6)  # 12 rows for 10 images
    assert not x[2:].any() and not y[2:].any()

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(3, "softmax")]
    )
    model.compile(
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
        metrics=[LabelledAccuracy(name="accuracy")],
    )
    padded = model.evaluate(batches, return_dict=True, verbose=0)
    plain = model.evaluate(
        images[..., None].astype("float32"), np.eye(3)[labels], batch_size=4, return_dict=True, verbose=0
    )
    assert padded["loss"] == pytest.approx(plain["loss"], rel=1e-5)
    assert padded["accuracy"] == pytest.approx(plain["accuracy"], abs=1e-6)


class Killed(Exception):
    """Stands for SIGKILL in-process: nothing after it runs, nothing is cleaned up."""


@pytest.mark.slow
def test_checkpoints_every_few_epochs_resume_to_the_result_of_every_epoch(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "data", train_size=64)
    overrides = ("train.epochs=5", "data.batch_size=16", "train.deterministic=true", "model.dropout=0.2")
    every_epoch = train(tiny_config(data, *overrides), run_dir=tmp_path / "every")

    # Checkpoints after epochs 2 and 5 (the last) only, and a kill in epoch 4 just before its backup
    # would have been due: epochs 3 and 4 are in history but not in the backup.
    monkeypatch.setattr(
        CheckpointClock, "due", lambda self, epoch, stopping: epoch + 1 in (2, self.epochs) or stopping
    )
    save_backup = AtomicBackupAndRestore._save_model

    def killed_in_epoch_4(self):
        if self._current_epoch == 4:
            raise Killed
        save_backup(self)

    monkeypatch.setattr(AtomicBackupAndRestore, "_save_model", killed_in_epoch_4)
    throttled = tmp_path / "throttled"
    config = tiny_config(data, *overrides, "train.checkpoint_every_s=3600")
    with pytest.raises(Killed):
        train(config, run_dir=throttled)
    assert [row["epoch"] for row in read_history(throttled / "history.csv")] == [1, 2, 3, 4]
    assert json.loads((throttled / "backup" / "state.json").read_text())["epoch"] == 2
    # Neither file holds an epoch the resume redoes; an improvement since waits aside.
    backup_time = (throttled / "backup" / "state.json").stat().st_mtime_ns
    for name in ("model.keras", "last.keras"):
        assert (throttled / name).stat().st_mtime_ns <= backup_time, name

    killed_session = json.loads((throttled / "metrics.json").read_text())
    monkeypatch.setattr(AtomicBackupAndRestore, "_save_model", save_backup)
    resumed = train(resume=throttled)
    assert resumed.resumed_from_epoch == 2
    assert [row["epoch"] for row in read_history(throttled / "history.csv")] == [1, 2, 3, 4, 5]
    assert read_history(throttled / "history.csv") == read_history(every_epoch.run_dir / "history.csv")
    for name in ("last.keras", "model.keras"):
        for a, b in zip(
            model_weights(every_epoch.run_dir / name), model_weights(throttled / name), strict=True
        ):
            np.testing.assert_array_equal(a, b)
    assert sorted(p.name for p in throttled.iterdir()) == sorted(
        p.name for p in every_epoch.run_dir.iterdir()
    )
    assert_times_add_up(every_epoch.metrics)
    assert_times_add_up(resumed.metrics)  # over both sessions
    # The resumed session's own startup adds to the killed one's (not a comparison of two timings).
    assert resumed.metrics["time_s"]["startup"] > killed_session["time_s"]["startup"] > 0


def tensorboard_scalars(log_dir: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{"train": {tag: [(step, value), ...]}, "validation": {...}} read back from the event files."""
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    found = {}
    for run in ("train", "validation"):
        events = EventAccumulator(str(log_dir / run))
        events.Reload()
        found[run] = {
            tag: [(event.step, float(make_ndarray(event.tensor_proto))) for event in events.Tensors(tag)]
            for tag in events.Tags()["tensors"]
        }
    return found


def test_tensorboardx_writes_what_keras_tensorboard_writes(tmp_path):
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(32, 3)).astype("float32")
    y = np.eye(2, dtype="float32")[(x[:, 0] > 0).astype(int)]
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, "softmax")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy", metrics=["accuracy"])
    model.fit(
        x,
        y,
        validation_data=(x, y),
        epochs=3,
        batch_size=8,
        verbose=0,
        callbacks=[
            LearningRateLog(0.1),
            keras.callbacks.TensorBoard(str(tmp_path / "keras"), write_graph=False, profile_batch=0),
            ScalarTensorBoard(tmp_path / "tensorboardx"),
        ],
    )
    theirs, ours = tensorboard_scalars(tmp_path / "keras"), tensorboard_scalars(tmp_path / "tensorboardx")
    assert {"epoch_loss", "epoch_accuracy", "epoch_learning_rate"} <= set(ours["train"])
    assert {"epoch_loss", "epoch_accuracy", "evaluation_loss_vs_iterations"} <= set(ours["validation"])
    for run in ("train", "validation"):
        assert set(ours[run]) == set(theirs[run]), run
        for tag, points in theirs[run].items():
            assert [step for step, _ in ours[run][tag]] == [step for step, _ in points], tag
            np.testing.assert_allclose([v for _, v in ours[run][tag]], [v for _, v in points], rtol=1e-6)


@pytest.mark.slow
def test_a_run_without_tensorflow_still_writes_tensorboard_logs(tmp_path, monkeypatch):
    import fertrain.training.loop

    monkeypatch.setattr(fertrain.training.loop, "_tensorflow_available", lambda: False)
    data = make_dataset(tmp_path / "data", train_size=32)
    result = train(tiny_config(data, "train.epochs=2", "data.batch_size=16"), run_dir=tmp_path / "run")
    scalars = tensorboard_scalars(result.run_dir / "tensorboard")
    history = read_history(result.run_dir / "history.csv")
    for run, prefix in (("train", ""), ("validation", "val_")):
        for metric in ("loss", "accuracy"):
            logged = scalars[run][f"epoch_{metric}"]
            assert [step for step, _ in logged] == [0, 1]
            np.testing.assert_allclose(
                [v for _, v in logged], [row[prefix + metric] for row in history], rtol=1e-6
            )
    assert [v for _, v in scalars["train"]["epoch_learning_rate"]] == pytest.approx([1e-3, 1e-3])
    assert result.notes == ()


@pytest.mark.slow
def test_jax_data_parallel_over_two_devices_matches_one_device(tmp_path, prepared_sample):
    import importlib.util

    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed")
    cache = tmp_path / "cache"
    jax_env = {
        "KERAS_BACKEND": "jax",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "XDG_CACHE_HOME": str(cache),
        # Also keep the tiny model's quick compilations, so that the cache shows up on CPU.
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    args = train_args(prepared_sample, "train.epochs=2")
    runs = {}
    for distribution in ("one_device", "mirrored"):
        run_dir = tmp_path / distribution
        done = run_fertrain(
            *args, "--set", f"train.distribution={distribution}", "--run-dir", run_dir, **jax_env
        )
        assert done.returncode == 0, done.stderr[-3000:]
        runs[distribution] = run_dir
    assert json.loads((runs["mirrored"] / "metrics.json").read_text())["distribution"] == "mirrored"
    one, two = (read_history(runs[d] / "history.csv") for d in ("one_device", "mirrored"))
    for column in ("loss", "val_loss"):
        np.testing.assert_allclose([r[column] for r in two], [r[column] for r in one], rtol=1e-3)
    # Rounding differs with the summation order across devices: a near-tie may flip for a face or two.
    for column in ("accuracy", "val_accuracy"):
        np.testing.assert_allclose([r[column] for r in two], [r[column] for r in one], atol=2.01 / 196)
    for a, b in zip(
        model_weights(runs["one_device"] / "last.keras"),
        model_weights(runs["mirrored"] / "last.keras"),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-3)
    assert any((cache / "fertrain" / "jax").iterdir())

    odd = run_fertrain(
        *args, "--set", "train.distribution=mirrored", "--set", "data.batch_size=33", **jax_env
    )
    _one_line_error(
        odd.returncode, odd.stderr, "data.batch_size: 33 does not split evenly across the 2 devices"
    )
