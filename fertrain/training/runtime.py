"""Where training runs: backend, devices, and every `auto` choice (precision, XLA, distribution).

The `auto` rules live together in `AutoRules` so that measurements (`fertrain benchmark`) can retune
them in one place. Everything else here turns a resolved choice into Keras/TensorFlow settings.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import keras

from fertrain import __version__
from fertrain.config import TrainConfig
from fertrain.errors import ConfigError

# The backends each distribution runs under: tf.distribute's strategies, and for `mirrored` also
# Keras' DataParallel under JAX.
DISTRIBUTION_BACKENDS = {"mirrored": ("tensorflow", "jax"), "multi_worker": ("tensorflow",)}
# Keras dtype policies for each `mixed_precision` value.
POLICIES = {"off": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}


@dataclass(frozen=True)
class Accelerator:
    """One GPU as the backend sees it; `compute_capability` is (major, minor) for NVIDIA GPUs."""

    name: str
    compute_capability: tuple[int, int] | None = None


@dataclass(frozen=True)
class Devices:
    backend: str
    gpus: tuple[Accelerator, ...] = ()

    def describe(self) -> list[str]:
        if not self.gpus:
            return [f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"]
        return [gpu.name for gpu in self.gpus]


@dataclass(frozen=True)
class AutoRules:
    """What `auto` means. Tuned from measurements; change them here only.

    - XLA: on this project's 2-core CPU box XLA made mini-Xception ~4x slower, so CPU stays eager-graph;
      on GPUs XLA fuses the many small depthwise/pointwise kernels and wins.
    - bfloat16 needs no loss scaling and is native from Ampere (compute capability 8.0) on;
      older GPUs get float16 with dynamic loss scaling (Keras wraps the optimizer itself).
    - Several GPUs on one host: synchronous data parallelism (MirroredStrategy, or DataParallel under JAX).
    """

    jit_compile_on_cpu: bool = False
    jit_compile_on_gpu: bool = True
    bfloat16_min_capability: tuple[int, int] = (8, 0)
    mirrored_min_gpus: int = 2

    def mixed_precision(self, devices: Devices) -> str:
        if not devices.gpus:
            return "off"
        capability = devices.gpus[0].compute_capability
        if capability is None or capability >= self.bfloat16_min_capability:
            return "bfloat16"
        return "float16"

    def jit_compile(self, devices: Devices) -> bool:
        if devices.backend == "jax":
            # Keras-on-JAX without jit runs op by op; jit is what makes JAX fast.
            return True
        if devices.backend == "torch":
            # torch.compile recompiles per input shape and costs minutes up front.
            return False
        return self.jit_compile_on_gpu if devices.gpus else self.jit_compile_on_cpu

    def distribution(self, devices: Devices) -> str:
        if (
            devices.backend in DISTRIBUTION_BACKENDS["mirrored"]
            and len(devices.gpus) >= self.mirrored_min_gpus
        ):
            return "mirrored"
        return "one_device"


@dataclass(frozen=True)
class Runtime:
    """The resolved choices a training run uses (recorded in metrics.json)."""

    backend: str
    devices: list[str]
    mixed_precision: str
    jit_compile: bool
    distribution: str
    deterministic: bool
    worker_index: int = 0
    num_workers: int = 1
    # The tf.distribute strategy, or under JAX the Keras distribution, whose scope distributes the run.
    strategy: Any = field(default=None, repr=False, compare=False)
    # Devices each batch is cut into equal parts for (JAX data parallelism; tf.distribute splits any batch).
    batch_shards: int = 1

    @property
    def dtype_policy(self) -> str:
        return POLICIES[self.mixed_precision]

    @property
    def batch_image_dtype(self) -> str:
        """dtype of the image batches fed to training.

        Under tf.distribute, Keras averages a first batch across replicas to build the model, which
        fails for integer tensors; float16 carries 0-255 exactly at twice uint8's size.
        """
        return "float16" if self.backend == "tensorflow" and self.strategy is not None else "uint8"

    @property
    def is_chief(self) -> bool:
        return self.worker_index == 0

    def summary(self) -> dict[str, Any]:
        """The choices as recorded in metrics.json and shown when training starts."""
        return {
            "backend": self.backend,
            "devices": self.devices,
            "mixed_precision": self.mixed_precision,
            "jit_compile": self.jit_compile,
            "distribution": self.distribution,
            "workers": self.num_workers,
        }

    def scope(self) -> contextlib.AbstractContextManager:
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def fit_scope(self) -> contextlib.AbstractContextManager:
        """The scope `fit` runs in: Keras-on-JAX finds its distribution (the devices a batch is split
        across) in the global scope while fitting; a tf.distribute strategy travels with the
        compiled trainer instead."""
        return self.scope() if self.backend == "jax" else contextlib.nullcontext()


def detect_devices() -> Devices:
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return Devices(backend, _tensorflow_gpus())
    if backend == "torch":
        return Devices(backend, _torch_gpus())
    if backend == "jax":
        return Devices(backend, _jax_gpus())
    return Devices(backend)


def _tensorflow_gpus() -> tuple[Accelerator, ...]:
    import tensorflow as tf

    gpus = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        gpus.append(Accelerator(details.get("device_name", gpu.name), details.get("compute_capability")))
    return tuple(gpus)


def _torch_gpus() -> tuple[Accelerator, ...]:
    import torch

    return tuple(
        Accelerator(torch.cuda.get_device_name(i), tuple(torch.cuda.get_device_capability(i)))
        for i in range(torch.cuda.device_count())
    )


def _jax_gpus() -> tuple[Accelerator, ...]:
    import jax

    gpus = []
    for device in jax.devices():
        if device.platform != "gpu":
            continue
        capability = getattr(device, "compute_capability", None)
        parsed = tuple(int(part) for part in str(capability).split(".")[:2]) if capability else None
        gpus.append(Accelerator(device.device_kind, parsed))
    return tuple(gpus)


def resolve_runtime(train_config: TrainConfig, rules: AutoRules = AutoRules()) -> Runtime:
    """Turns the config's `auto` values into concrete choices and creates the distribution strategy.

    Call this before any other TensorFlow work: MultiWorkerMirroredStrategy must exist before the
    TensorFlow runtime starts.
    """
    backend = keras.backend.backend()
    allowed = DISTRIBUTION_BACKENDS.get(train_config.distribution)
    if allowed is not None and backend not in allowed:
        instead = "mirrored (one host)" if backend in DISTRIBUTION_BACKENDS["mirrored"] else "one_device"
        raise ConfigError(
            f"train.distribution: {train_config.distribution!r} needs KERAS_BACKEND={' or '.join(allowed)}, "
            f"got {backend}; use {instead}"
        )
    if backend == "jax":
        _keep_jax_compilations()
    if train_config.distribution == "multi_worker":
        # Only the strategy may touch TensorFlow first; device queries would start the runtime.
        strategy, worker_index, num_workers = _multi_worker_strategy()
        devices = detect_devices()
        distribution = "multi_worker"
    else:
        devices = detect_devices()
        distribution = (
            rules.distribution(devices) if train_config.distribution == "auto" else train_config.distribution
        )
        strategy, worker_index, num_workers = _single_host_strategy(distribution, backend), 0, 1
    mixed_precision = (
        rules.mixed_precision(devices)
        if train_config.mixed_precision == "auto"
        else train_config.mixed_precision
    )
    jit_compile = {"on": True, "off": False}.get(train_config.jit_compile, rules.jit_compile(devices))
    return Runtime(
        backend=backend,
        devices=devices.describe(),
        mixed_precision=mixed_precision,
        jit_compile=jit_compile,
        distribution=distribution,
        deterministic=train_config.deterministic,
        worker_index=worker_index,
        num_workers=num_workers,
        strategy=strategy,
        batch_shards=strategy.device_mesh.devices.size if backend == "jax" and strategy else 1,
    )


def _single_host_strategy(distribution: str, backend: str) -> Any:
    if distribution == "one_device":
        return None
    if backend == "jax":
        # Replicates the variables on every local device and splits each global batch across them.
        return keras.distribution.DataParallel()
    import tensorflow as tf

    return tf.distribute.MirroredStrategy()


def _keep_jax_compilations() -> None:
    """Turns on JAX's persistent compilation cache unless the user chose one: a rerun with the same
    model and batch shapes loads XLA's programs instead of compiling them again (Xception's first
    step compiles for about 90 s on an H100)."""
    import jax

    if jax.config.jax_compilation_cache_dir:
        return
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    jax.config.update("jax_compilation_cache_dir", os.path.join(cache_home, "fertrain", "jax"))


def _multi_worker_strategy() -> tuple[Any, int, int]:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise ConfigError("train.distribution: 'multi_worker' needs the TF_CONFIG environment variable")
    try:
        tf_config = json.loads(raw)
        workers = tf_config["cluster"]["worker"]
        task = tf_config["task"]
        index = int(task["index"]) if task["type"] == "worker" else -1
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            'TF_CONFIG: expected {"cluster": {"worker": [host:port, ...]}, '
            f'"task": {{"type": "worker", "index": i}}}} ({exc})'
        ) from None
    if not 0 <= index < len(workers):
        raise ConfigError(f"TF_CONFIG: task must be a worker with index 0..{len(workers) - 1}, got {task}")
    import tensorflow as tf

    return tf.distribute.MultiWorkerMirroredStrategy(), index, len(workers)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seeds Python, NumPy and the backend; `deterministic` also makes backend kernels deterministic."""
    keras.utils.set_random_seed(seed)
    if not deterministic:
        return
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    elif backend == "torch":
        import torch

        torch.use_deterministic_algorithms(True, warn_only=True)


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Builds layers under a dtype policy without leaving it set for the rest of the process."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def versions() -> dict[str, str | None]:
    found = {
        "python": platform.python_version(),
        "tensorflow": _module_version("tensorflow"),
        "keras": keras.__version__,
        "fertrain": __version__,
    }
    backend = keras.backend.backend()
    if backend not in found:
        found[backend] = _module_version(backend)
    return found


def _module_version(name: str) -> str | None:
    module = sys.modules.get(name)
    if module is None:
        try:
            module = __import__(name)
        except ImportError:
            return None
    return getattr(module, "__version__", None)
