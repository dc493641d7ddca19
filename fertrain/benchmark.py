"""`fertrain benchmark`: training and inference throughput of a config on this machine.

Training is timed through fertrain's own path (the `AugmentedTrainer` that `fertrain train` compiles,
fed by `ArrayBatches`, augmentation included) on seeded random faces: throughput does not depend on
pixel values, and a benchmark must not need the data set. Each timed window is one `fit` epoch of
`steps` batches followed by one predict pass; a first, untimed window traces and compiles. The best
window is the headline because other processes on a shared machine only ever slow a window down.

`compare_notebook` also times "the notebook way" in the same process, alternating windows with
fertrain's so that both see the same machine: the same network with stock
Keras layers and no rescaling layer, plain `model.fit` on float32 arrays scaled to 0-1, batch 64,
default Adam, and `model.predict` with its default batch size.
"""

from __future__ import annotations

import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from fertrain.config import Config
from fertrain.errors import ConfigError
from fertrain.inference import load_classifier, predict_probabilities
from fertrain.models.summary import summarize
from fertrain.training import compile_trainer
from fertrain.training.batches import ArrayBatches, class_weights
from fertrain.training.callbacks import Stopwatch
from fertrain.training.runtime import resolve_runtime, seed_everything, versions
from fertrain.training.schedules import build_schedule

# Images in FER2013's Training split: one epoch of the real data set.
FER2013_TRAIN_IMAGES = 28_709
NOTEBOOK_BATCH_SIZE = 64
# Training costs about three forward passes (forward, gradient w.r.t. inputs, w.r.t. weights).
TRAIN_FLOPS_PER_MAC = 3 * 2


@dataclass(frozen=True)
class Throughput:
    """Images per second of one way of training and predicting."""

    batch_size: int
    train_images_per_s: float  # best timed window
    train_images_per_s_median: float
    train_windows: list[float]
    # Process CPU time (all threads) per trained image, best window: the work a step costs, which
    # other processes sharing the cores disturb far less than wall time.
    train_cpu_ms_per_image: float
    predict_images_per_s: float  # best of the timed passes


@dataclass(frozen=True)
class BenchmarkResult:
    config_name: str
    architecture: str
    params: int
    macs_per_image: int
    backend: str
    devices: list[str]
    mixed_precision: str
    jit_compile: bool
    steps: int
    repeats: int
    fertrain: Throughput
    notebook: Throughput | None
    peak_rss_mb: float  # of the fertrain measurements (taken before the notebook runs)
    gpu_peak_mb: float | None
    versions: dict[str, str | None]

    @property
    def epoch_seconds(self) -> float:
        """Training time of one FER2013 epoch implied by the best window."""
        return FER2013_TRAIN_IMAGES / self.fertrain.train_images_per_s

    @property
    def train_tflops(self) -> float:
        return self.fertrain.train_images_per_s * TRAIN_FLOPS_PER_MAC * self.macs_per_image / 1e12

    @property
    def train_speedup(self) -> float | None:
        if self.notebook is None:
            return None
        return self.fertrain.train_images_per_s / self.notebook.train_images_per_s

    @property
    def predict_speedup(self) -> float | None:
        if self.notebook is None:
            return None
        return self.fertrain.predict_images_per_s / self.notebook.predict_images_per_s

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "epoch_seconds": round(self.epoch_seconds, 2),
            "train_tflops": round(self.train_tflops, 4),
            "train_speedup": None if self.train_speedup is None else round(self.train_speedup, 2),
            "predict_speedup": None if self.predict_speedup is None else round(self.predict_speedup, 2),
        }


def synthetic_faces(count: int, size: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded uint8 faces [count, size, size] and labels [count] with every class present."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, size, size), dtype=np.uint8)
    labels = (np.arange(count) % num_classes).astype(np.uint8)
    return images, labels[rng.permutation(count)]


@dataclass
class _Way:
    """One way of training and predicting, driven a window at a time so that ways can alternate."""

    batch_size: int
    fit_epoch: Callable[[], None]
    predict_pass: Callable[[], None]
    stopwatch: Stopwatch
    cpu_ms_per_image: list[float] = field(default_factory=list)
    predict_rates: list[float] = field(default_factory=list)

    def warm_up(self) -> None:
        """Traces and compiles both paths; this epoch is not counted."""
        self.fit_epoch()
        self.predict_pass()

    def time_window(self, predict_images: int) -> None:
        cpu_start = time.process_time()
        self.fit_epoch()
        cpu_seconds = time.process_time() - cpu_start
        self.cpu_ms_per_image.append(1000 * cpu_seconds / self.stopwatch.images_per_epoch)
        start = time.perf_counter()
        self.predict_pass()
        self.predict_rates.append(predict_images / (time.perf_counter() - start))

    def throughput(self) -> Throughput:
        windows = [self.stopwatch.images_per_epoch / s for s in self.stopwatch.train_seconds[1:]]
        return Throughput(
            batch_size=self.batch_size,
            train_images_per_s=round(max(windows), 1),
            train_images_per_s_median=round(statistics.median(windows), 1),
            train_windows=[round(w, 1) for w in windows],
            train_cpu_ms_per_image=round(min(self.cpu_ms_per_image), 3),
            predict_images_per_s=round(max(self.predict_rates), 1),
        )


def fertrain_way(config: Config, runtime, steps: int, seed: int, model_path: Path, faces: np.ndarray):
    """fertrain's trainer on `steps` batches per epoch, and `fertrain evaluate`'s path (the network
    saved to `model_path`, loaded back, `predict_probabilities`). Returns (way, trainer)."""
    batch_size = config.data.batch_size
    images, labels = synthetic_faces(
        batch_size * steps, config.model.input_size, config.model.num_classes, seed
    )
    batches = ArrayBatches(
        images,
        labels,
        config.model.num_classes,
        batch_size,
        shuffle_seed=seed,
        class_weights=class_weights(config.train, labels, config.model.num_classes),
        image_dtype=runtime.batch_image_dtype,
    )
    schedule = build_schedule(config.train.schedule, config.train.optimizer.learning_rate, 1, len(batches))
    trainer = compile_trainer(config, runtime, schedule, batches[0])
    stopwatch = Stopwatch(len(images))

    def fit_epoch() -> None:
        with runtime.fit_scope():
            trainer.fit(batches, epochs=1, shuffle=False, verbose=0, callbacks=[stopwatch])

    trainer.network.save(model_path)
    classifier = load_classifier(model_path)

    def predict_pass() -> None:
        predict_probabilities([classifier], faces)

    return _Way(batch_size, fit_epoch, predict_pass, stopwatch), trainer


def _stock_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
    """The layer as the notebook has it: Keras' own class, and no rescaling (it feeds 0-1 floats)."""
    if isinstance(layer, keras.layers.Rescaling):
        return keras.layers.Identity(name=layer.name)
    stock = next(cls for cls in type(layer).__mro__ if cls.__module__.startswith("keras."))
    return stock.from_config(layer.get_config())


def notebook_network(network: keras.Model) -> keras.Model:
    """A fresh copy of `network`'s architecture built from stock Keras layers."""
    return keras.models.clone_model(network, clone_function=_stock_layer)


def notebook_way(network: keras.Model, steps: int, seed: int, faces: np.ndarray) -> _Way:
    """The notebook's way, untuned: float32 0-1 arrays, `fit` at batch 64, `predict` at its default."""
    num_classes = network.outputs[0].shape[-1]
    model = notebook_network(network)
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    images, labels = synthetic_faces(NOTEBOOK_BATCH_SIZE * steps, faces.shape[1], num_classes, seed)
    x = images[..., None].astype("float32") / 255.0
    y = keras.utils.to_categorical(labels, num_classes)
    test = faces[..., None].astype("float32") / 255.0
    stopwatch = Stopwatch(len(x))

    def fit_epoch() -> None:
        model.fit(x, y, batch_size=NOTEBOOK_BATCH_SIZE, epochs=1, verbose=0, callbacks=[stopwatch])

    def predict_pass() -> None:
        model.predict(test, verbose=0)

    return _Way(NOTEBOOK_BATCH_SIZE, fit_epoch, predict_pass, stopwatch)


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def gpu_peak_mb(backend: str) -> float | None:
    """Peak memory the backend allocated on the first GPU, or None without one."""
    if backend == "tensorflow":
        import tensorflow as tf

        if not tf.config.list_physical_devices("GPU"):
            return None
        return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform != "gpu":
            return None
        return device.memory_stats().get("peak_bytes_in_use", 0) / 2**20
    if backend == "torch":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return None


def benchmark(
    config: Config,
    batch_size: int | None = None,
    steps: int = 20,
    repeats: int = 3,
    predict_images: int = 4096,
    compare_notebook: bool = False,
    seed: int = 0,
) -> BenchmarkResult:
    """Training and inference images/s of `config` (batch size overridable), optionally beside the
    notebook's way, each after warm-up and as the best of `repeats` timed windows."""
    for name, value in (("steps", steps), ("repeats", repeats), ("predict_images", predict_images)):
        if value < 1:
            raise ConfigError(f"benchmark {name} must be >= 1, got {value}")
    if batch_size is not None:
        if batch_size < 1:
            raise ConfigError(f"benchmark batch size must be >= 1, got {batch_size}")
        config = config.model_copy(update={"data": config.data.model_copy(update={"batch_size": batch_size})})
    runtime = resolve_runtime(config.train)
    seed_everything(seed, config.train.deterministic)
    faces, _ = synthetic_faces(predict_images, config.model.input_size, config.model.num_classes, seed + 1)
    with tempfile.TemporaryDirectory(prefix="fertrain-benchmark-") as scratch:
        ours, trainer = fertrain_way(config, runtime, steps, seed, Path(scratch) / "model.keras", faces)
        network = trainer.network
        ours.warm_up()
        # Memory of fertrain's own training and inference, before the notebook's copy exists.
        rss, gpu = peak_rss_mb(), gpu_peak_mb(runtime.backend)
        ways = [ours]
        if compare_notebook:
            ways.append(notebook_way(network, steps, seed, faces))
            ways[-1].warm_up()
        # Alternating window by window, a burst of load from other processes hits both ways alike.
        for _ in range(repeats):
            for way in ways:
                way.time_window(predict_images)
        fertrain, notebook = ways[0].throughput(), (ways[1].throughput() if compare_notebook else None)
    summary = summarize(network)
    return BenchmarkResult(
        config_name=config.name,
        architecture=config.model.architecture,
        params=summary.total_params,
        macs_per_image=summary.macs,
        backend=runtime.backend,
        devices=runtime.devices,
        mixed_precision=runtime.mixed_precision,
        jit_compile=bool(trainer.jit_compile),
        steps=steps,
        repeats=repeats,
        fertrain=fertrain,
        notebook=notebook,
        peak_rss_mb=round(rss, 1),
        gpu_peak_mb=None if gpu is None else round(gpu, 1),
        versions=versions(),
    )
