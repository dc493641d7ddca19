"""FusedBatchNormalization must be Keras' BatchNormalization in everything but speed."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from fertrain.models import FusedBatchNormalization

# gamma, beta, moving mean, moving variance
START = [
    np.random.default_rng(0).normal(m, s, 5) for m, s in ((1.0, 0.2), (0.0, 0.2), (0.0, 0.5), (1.5, 0.2))
]


def _pair() -> tuple[keras.layers.Layer, keras.layers.Layer]:
    reference = keras.layers.BatchNormalization(momentum=0.9)
    fused = FusedBatchNormalization(momentum=0.9)
    for layer in (reference, fused):
        layer.build((None, 6, 6, 5))
        layer.set_weights(START)
    return reference, fused


def test_training_step_matches_keras_outputs_gradients_and_moving_statistics() -> None:
    reference, fused = _pair()
    x = tf.constant(np.random.default_rng(1).normal(2.0, 3.0, (8, 6, 6, 5)), dtype="float32")
    upstream = tf.constant(np.random.default_rng(2).normal(size=(8, 6, 6, 5)), dtype="float32")
    results = []
    for layer in (reference, fused):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * upstream)
        grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
        results.append((y, *grads, layer.moving_mean, layer.moving_variance))
    for expected, actual in zip(results[0], results[1], strict=True):
        np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=1e-4, atol=1e-4)
    # Momentum 0.9 towards the batch's mean and biased (not Bessel-corrected) variance.
    batch = np.asarray(x).reshape(-1, 5)
    np.testing.assert_allclose(np.asarray(fused.moving_mean), 0.9 * START[2] + 0.1 * batch.mean(0), rtol=1e-4)
    np.testing.assert_allclose(
        np.asarray(fused.moving_variance), 0.9 * START[3] + 0.1 * batch.var(0), rtol=1e-4
    )


def test_inference_matches_keras() -> None:
    reference, fused = _pair()
    x = np.random.default_rng(3).normal(size=(4, 6, 6, 5)).astype("float32")
    np.testing.assert_allclose(
        np.asarray(fused(x, training=False)), np.asarray(reference(x, training=False)), rtol=1e-5, atol=1e-5
    )


def test_frozen_layer_uses_moving_statistics_in_training() -> None:
    reference, fused = _pair()
    reference.trainable = False
    fused.trainable = False
    x = np.random.default_rng(4).normal(size=(4, 6, 6, 5)).astype("float32")
    np.testing.assert_allclose(
        np.asarray(fused(x, training=True)), np.asarray(reference(x, training=True)), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 5)])
def test_other_ranks_fall_back_to_keras(shape: tuple[int, ...]) -> None:
    reference = keras.layers.BatchNormalization()
    fused = FusedBatchNormalization()
    x = np.random.default_rng(5).normal(size=shape).astype("float32")
    np.testing.assert_allclose(
        np.asarray(fused(x, training=True)), np.asarray(reference(x, training=True)), rtol=1e-5, atol=1e-5
    )
