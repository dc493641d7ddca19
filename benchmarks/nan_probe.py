"""Where a diverging `fertrain train` first goes non-finite (Keras on JAX), for short device checks.

Builds the training job exactly as `fertrain train` does (data, batches, augmentation, dtype policy,
optimizer, XLA), runs `--steps` training steps on the first batches of epoch 1, printing each loss,
then probes the next batch without training on it:

- the loss and every gradient, as the training step computes them (non-finite ones in layer order,
  the global norm and the largest norms);
- every layer's output in training mode (BatchNormalization on batch statistics) on the batch
  augmented as in training: the first non-finite one, the largest magnitudes, and the smallest
  per-channel batch variance entering each BatchNormalization.

`--debug-nans` turns on `jax_debug_nans` instead: JAX reruns the first step whose output holds a NaN
op by op and raises at the primitive that made it.

    KERAS_BACKEND=jax python benchmarks/nan_probe.py --config configs/fer2013_gpu.yaml \\
        --data prepared/fer2013 --set model.width_multiplier=0.5 --steps 2

The 2026-11-26 H100 runs of that command's config diverged at batch 3 of epoch 1 (bfloat16); on the
2-core CPU (jax 0.10.2, bfloat16 forced with --set train.mixed_precision=bfloat16) batch 3 probed
finite: loss 2.048, gradient norm 5.7, activations below 22, BN input variances above 5e-4.
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import keras
import numpy as np

from fertrain.config import load_config
from fertrain.training.loop import _prepare_job, _with_data_dir


def probe_gradients(trainer, images, labels) -> None:
    state = [
        [v.value for v in variables]
        for variables in (
            trainer.trainable_variables,
            trainer.non_trainable_variables,
            trainer.metrics_variables,
            trainer.optimizer.variables,
        )
    ]
    trainable, non_trainable, metrics, optimizer = state

    def loss_of(trainable, images, labels):
        loss, _ = trainer.compute_loss_and_updates(
            trainable,
            non_trainable,
            metrics,
            images,
            labels,
            None,
            training=True,
            optimizer_variables=optimizer,
        )
        return loss

    loss, grads = jax.jit(jax.value_and_grad(loss_of))(trainable, jnp.asarray(images), jnp.asarray(labels))
    print(f"probe batch: loss {float(loss):.5f}")
    norms = [
        (float(jnp.linalg.norm(g.astype(jnp.float32))), v.path)
        for g, v in zip(grads, trainer.trainable_variables, strict=True)
    ]
    bad = [path for norm, path in norms if not math.isfinite(norm)]
    print(f"non-finite gradients: {len(bad)} {bad[:8]}")
    finite = [norm for norm, _ in norms if math.isfinite(norm)]
    print(f"global gradient norm (finite ones): {math.sqrt(sum(n * n for n in finite)):.4g}")
    for norm, path in sorted(((n, p) for n, p in norms if math.isfinite(n)), reverse=True)[:5]:
        print(f"  gradient norm {norm:.4g} {path}")


def probe_activations(trainer, images) -> None:
    network = trainer.network
    layers = network.layers[1:]
    probe = keras.Model(network.inputs, [layer.output for layer in layers])
    augmented = trainer.augmentation(keras.ops.cast(images, "float32"), training=True)
    outputs = [np.asarray(out).astype(np.float32) for out in probe(augmented, training=True)]
    named = list(zip(layers, outputs, strict=True))
    first_bad = next((layer.name for layer, out in named if not np.isfinite(out).all()), None)
    print(f"first non-finite layer output: {first_bad}")
    largest = sorted(((float(np.nanmax(np.abs(out))), layer.name) for layer, out in named), reverse=True)
    for value, name in largest[:5]:
        print(f"  max |output| {value:.4g} {name}")
    variances = []
    for index, layer in enumerate(layers):
        if isinstance(layer, keras.layers.BatchNormalization) and index > 0:
            entering = outputs[index - 1]
            variance = entering.reshape(-1, entering.shape[-1]).var(axis=0)
            variances.append((float(variance.min()), layer.name, entering.shape[-1]))
    for value, name, width in sorted(variances)[:5]:
        print(f"  smallest batch variance entering {name} ({width} channels): {value:.3g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--data", help="prepared data directory (default: the config's)")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--steps", type=int, default=2, help="training steps before the probed batch")
    parser.add_argument("--debug-nans", action="store_true")
    args = parser.parse_args()
    if args.debug_nans:
        jax.config.update("jax_debug_nans", True)
    config = _with_data_dir(load_config(args.config, args.overrides), args.data)
    job = _prepare_job(config)
    trainer = job.trainer
    print({**job.runtime.summary(), "params": trainer.network.count_params()})
    job.train_batches.set_epoch(0)
    with job.runtime.fit_scope():
        for step in range(args.steps):
            start = time.perf_counter()
            logs = trainer.train_on_batch(*job.train_batches[step], return_dict=True)
            seconds = time.perf_counter() - start
            print(f"step {step + 1}: loss {logs['loss']:.5f} ({seconds:.1f} s)", flush=True)
        images, labels = job.train_batches[args.steps][:2]
        probe_gradients(trainer, images, labels)
        probe_activations(trainer, images)


if __name__ == "__main__":
    main()
