"""Where the time of one GPU training step goes, for benchmarks/results.md (Keras on JAX).

One process, written to run inside a short GPU lease; every measurement is appended to
`OUT/gpu_profile.jsonl` as soon as it exists, so a run cut off at its time limit keeps what it did:

- `sweep`: fertrain's own trainer (`fertrain.benchmark.benchmark`: augmentation, `auto` choices,
  i.e. bfloat16 and XLA on a GPU) at each batch size, with the fraction of the device's peak reached;
- `components`, at `--profile-batch`: the network's forward+backward alone on batches already on the
  GPU (no augmentation, no optimizer, no host copy), the same in float32, and the augmentation alone,
  each jitted and timed with `block_until_ready`;
- `shifted`: XLA's grouped convolution against `shifted_depthwise_conv` for each depthwise shape of
  Xception, and the network's step for several `SeparableConv2D.shifted_max_pixels`;
- `trace`: a `jax.profiler` trace of a few steps of fertrain's trainer (`OUT/trace.xplane.pb`, read
  back with `benchmarks/xplane_summary.py`);
- `ablations`: fertrain's trainer again without augmentation, and with `steps_per_execution` 4.

    KERAS_BACKEND=jax python benchmarks/gpu_profile.py --config configs/xception.yaml \\
        --batch-sizes 512,128,1024,256 --profile-batch 512 --peak-tflops 989 --out "$OUT" \\
        --parts sweep,components,shifted,trace,ablations
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import keras
import numpy as np

from fertrain.benchmark import TRAIN_FLOPS_PER_MAC, benchmark, synthetic_faces
from fertrain.config import AugmentConfig, Config, load_config
from fertrain.models import build_model
from fertrain.models.layers import SeparableConv2D, shifted_depthwise_conv
from fertrain.models.summary import summarize
from fertrain.training import compile_trainer
from fertrain.training.runtime import dtype_policy, resolve_runtime
from fertrain.training.schedules import build_schedule

START = time.perf_counter()


class Log:
    def __init__(self, out: Path):
        self.path = out / "gpu_profile.jsonl"

    def __call__(self, what: str, **fields) -> None:
        row = {"what": what, "elapsed_s": round(time.perf_counter() - START, 1), **fields}
        with self.path.open("a", encoding="utf-8") as file:
            file.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


def with_batch(config: Config, batch_size: int, **train_updates) -> Config:
    data = config.data.model_copy(update={"batch_size": batch_size})
    return config.model_copy(update={"data": data, "train": config.train.model_copy(update=train_updates)})


def without_augmentation(config: Config) -> Config:
    off = AugmentConfig(horizontal_flip=False, rotation_degrees=0, zoom=0, shift=0)
    return config.model_copy(update={"data": config.data.model_copy(update={"augment": off})})


def time_jitted(function: Callable, *args, repeats: int) -> float:
    """Best seconds per call of an already-compiled function (one untimed call compiles)."""
    jax.block_until_ready(function(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(function(*args))
        best = min(best, time.perf_counter() - start)
    return best


def sweep(config: Config, args, log: Log, macs: int) -> None:
    for batch_size in args.batch_sizes:
        result = benchmark(config, batch_size=batch_size, steps=args.steps, repeats=args.repeats)
        log(
            "fertrain trainer",
            batch=batch_size,
            train_images_per_s=result.fertrain.train_images_per_s,
            train_windows=result.fertrain.train_windows,
            train_tflops=round(result.train_tflops, 2),
            fraction_of_peak=round(result.train_tflops / args.peak_tflops, 4),
            predict_images_per_s=result.fertrain.predict_images_per_s,
            gpu_peak_mb=result.gpu_peak_mb,
            mixed_precision=result.mixed_precision,
            jit_compile=result.jit_compile,
            macs_per_image=macs,
        )


def network_step_seconds(network: keras.Model, x, y, repeats: int) -> float:
    """Best seconds of one jitted forward+backward of `network` on batches already on the device."""
    trainable = [v.value for v in network.trainable_variables]
    non_trainable = [v.value for v in network.non_trainable_variables]

    def loss(trainable, non_trainable, x, y):
        probabilities, non_trainable = network.stateless_call(trainable, non_trainable, x, training=True)
        return keras.losses.categorical_crossentropy(y, probabilities).mean(), non_trainable

    return time_jitted(
        jax.jit(jax.value_and_grad(loss, has_aux=True)), trainable, non_trainable, x, y, repeats=repeats
    )


def device_batch(config: Config, batch_size: int):
    images, labels = synthetic_faces(batch_size, config.model.input_size, config.model.num_classes, 0)
    one_hot = np.eye(config.model.num_classes, dtype="float32")[labels]
    return (images[..., None], one_hot), jnp.asarray(images[..., None], jnp.float32), jnp.asarray(one_hot)


def grouped_depthwise_conv(features, kernel):
    """The depthwise convolution as Keras-on-JAX runs it: XLA's grouped convolution."""
    height, width, channels, _ = kernel.shape
    return jax.lax.conv_general_dilated(
        features,
        # Keras' depthwise kernel layout (height, width, channels, 1) as XLA's HWIO with groups.
        kernel.reshape(height, width, 1, channels),
        (1, 1),
        "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=channels,
    )


DEPTHWISE_WAYS = {
    "XLA grouped convolution": grouped_depthwise_conv,
    "shifted_depthwise_conv": shifted_depthwise_conv,
}


def log_network_step(log: Log, args, macs: int, batch_size: int, seconds: float, **fields) -> None:
    tflops = batch_size / seconds * TRAIN_FLOPS_PER_MAC * macs / 1e12
    log(
        "network forward+backward, data on GPU",
        batch=batch_size,
        ms=round(1000 * seconds, 2),
        images_per_s=round(batch_size / seconds),
        tflops=round(tflops, 2),
        fraction_of_peak=round(tflops / args.peak_tflops, 4),
        **fields,
    )


def components(config: Config, args, log: Log, macs: int) -> None:
    """Network forward+backward, augmentation, and depthwise convolutions, each alone."""
    batch_size = args.profile_batch
    config = with_batch(config, batch_size)
    runtime = resolve_runtime(config.train)
    example, x, y = device_batch(config, batch_size)
    trainer = compile_trainer(config, runtime, build_schedule(config.train.schedule, 1e-3, 1, 1), example)
    network, augmentation = trainer.network, trainer.augmentation
    seconds = network_step_seconds(network, x, y, args.component_repeats)
    log_network_step(
        log, args, macs, batch_size, seconds, shifted_max_pixels=SeparableConv2D.shifted_max_pixels
    )
    with dtype_policy("float32"):
        float32_network = keras.models.clone_model(network)
    seconds = network_step_seconds(float32_network, x, y, args.component_repeats)
    log("same, float32 (no mixed precision)", batch=batch_size, ms=round(1000 * seconds, 2))

    if augmentation.layers:
        augment_variables = [v.value for v in augmentation.non_trainable_variables]

        def augment(variables, x):
            return augmentation.stateless_call([], variables, x, training=True)[0]

        seconds = time_jitted(jax.jit(augment), augment_variables, x, repeats=args.component_repeats)
        log(
            "augmentation alone",
            batch=batch_size,
            ms=round(1000 * seconds, 2),
            layers=[layer.name for layer in augmentation.layers],
        )


def shifted(config: Config, args, log: Log, macs: int) -> None:
    """XLA's grouped convolution against `shifted_depthwise_conv` for each depthwise shape of
    Xception, then the whole network's step for several `shifted_max_pixels`."""
    batch_size = args.profile_batch
    for side, channels in ((24, 128), (12, 256), (6, 728), (3, 728), (2, 1024)):
        features = jnp.ones((batch_size, side, side, channels), jnp.bfloat16)
        kernel = jnp.ones((3, 3, channels, 1), jnp.bfloat16)
        timings = {}
        for name, depthwise in DEPTHWISE_WAYS.items():

            def train(features, kernel, depthwise=depthwise):
                return jax.grad(lambda f, k: depthwise(f, k).astype(jnp.float32).sum(), argnums=(0, 1))(
                    features, kernel
                )

            timings[name] = round(
                1000 * time_jitted(jax.jit(train), features, kernel, repeats=args.component_repeats), 3
            )
        log("depthwise 3x3 forward + both gradients, ms", shape=[batch_size, side, side, channels], **timings)
    config = with_batch(config, batch_size)
    _, x, y = device_batch(config, batch_size)
    policy = resolve_runtime(config.train).dtype_policy
    default = SeparableConv2D.shifted_max_pixels
    try:
        for max_pixels in (0, 9, 36, 144, 576):
            SeparableConv2D.shifted_max_pixels = max_pixels
            with dtype_policy(policy):
                network = build_model(config.model)
            seconds = network_step_seconds(network, x, y, args.component_repeats)
            log_network_step(log, args, macs, batch_size, seconds, shifted_max_pixels=max_pixels)
    finally:
        # The parts after this one measure the layer as it ships.
        SeparableConv2D.shifted_max_pixels = default


def trace(config: Config, args, log: Log, out: Path) -> None:
    """A jax.profiler trace of fertrain's trainer fitting a few steps (after a compiling epoch)."""
    from fertrain.training.batches import ArrayBatches

    config = with_batch(config, args.profile_batch)
    runtime = resolve_runtime(config.train)
    steps = 6
    images, labels = synthetic_faces(
        args.profile_batch * steps, config.model.input_size, config.model.num_classes, 0
    )
    batches = ArrayBatches(images, labels, config.model.num_classes, args.profile_batch, shuffle_seed=0)
    schedule = build_schedule(config.train.schedule, 1e-3, 1, len(batches))
    trainer = compile_trainer(config, runtime, schedule, batches[0])
    trainer.fit(batches, epochs=1, verbose=0)
    with tempfile.TemporaryDirectory(prefix="jax-trace-") as scratch:
        start = time.perf_counter()
        with jax.profiler.trace(scratch):
            trainer.fit(batches, epochs=1, verbose=0)
        wall = time.perf_counter() - start
        traces = sorted(Path(scratch).rglob("*.xplane.pb"))
        if traces:
            shutil.copy(traces[0], out / "trace.xplane.pb")
    log("trace", batch=args.profile_batch, steps=steps, wall_s=round(wall, 3), files=[p.name for p in traces])


def ablations(config: Config, args, log: Log) -> None:
    for name, changed in (
        ("fertrain trainer without augmentation", without_augmentation(config)),
        (
            "fertrain trainer, steps_per_execution 4",
            with_batch(config, args.profile_batch, steps_per_execution=4),
        ),
    ):
        result = benchmark(changed, batch_size=args.profile_batch, steps=args.steps, repeats=args.repeats)
        log(
            name,
            batch=args.profile_batch,
            train_images_per_s=result.fertrain.train_images_per_s,
            train_windows=result.fertrain.train_windows,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument(
        "--batch-sizes", type=lambda s: [int(b) for b in s.split(",")], default=[512, 128, 1024, 256]
    )
    parser.add_argument("--profile-batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--component-repeats", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, required=True, help="The device's dense bf16 peak.")
    parser.add_argument("--parts", default="sweep,components,shifted,trace,ablations")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out)
    config = load_config(args.config)
    device = jax.devices()[0]
    log(
        "device",
        kind=device.device_kind,
        platform=device.platform,
        jax=jax.__version__,
        keras=keras.__version__,
    )
    macs = summarize(build_model(config.model)).macs
    parts = {
        "shifted": lambda: shifted(config, args, log, macs),
        "sweep": lambda: sweep(config, args, log, macs),
        "components": lambda: components(config, args, log, macs),
        "trace": lambda: trace(config, args, log, out),
        "ablations": lambda: ablations(config, args, log),
    }
    for part in args.parts.split(","):
        try:
            parts[part]()
        except Exception as error:  # one failing part must not cost the lease the others' figures
            log("failed", part=part, error=f"{type(error).__name__}: {error}")


if __name__ == "__main__":
    main()
