"""fertrain's SeparableConv2D must be Keras' layer in everything but speed."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from fertrain.models.layers import SeparableConv2D, shifted_depthwise_conv


@pytest.mark.parametrize(
    ("shape", "kernel_size"),
    [((4, 3, 3, 16), 3), ((2, 2, 2, 8), 3), ((3, 24, 24, 5), 3), ((2, 7, 6, 4), 5), ((2, 5, 5, 3), 2)],
)
def test_shifted_depthwise_conv_matches_tensorflow_with_gradients(shape, kernel_size) -> None:
    rng = np.random.default_rng(sum(shape) + kernel_size)
    x = tf.constant(rng.normal(size=shape), dtype="float32")
    kernel = tf.constant(rng.normal(size=(kernel_size, kernel_size, shape[-1], 1)), dtype="float32")
    upstream = tf.constant(rng.normal(size=shape), dtype="float32")
    results = []
    for depthwise in (
        lambda x, k: tf.nn.depthwise_conv2d(x, k, strides=[1, 1, 1, 1], padding="SAME"),
        shifted_depthwise_conv,
    ):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            y = depthwise(x, kernel)
            loss = tf.reduce_sum(y * upstream)
        results.append((y, *tape.gradient(loss, [x, kernel])))
    for expected, actual in zip(results[0], results[1], strict=True):
        assert actual.shape == expected.shape
        np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=1e-5, atol=1e-4)


def test_shifted_depthwise_conv_keeps_the_input_dtype() -> None:
    x = tf.ones((1, 3, 3, 2), dtype="bfloat16")
    kernel = tf.ones((3, 3, 2, 1), dtype="bfloat16")
    y = shifted_depthwise_conv(x, kernel)
    assert y.dtype == tf.bfloat16
    # Corner pixels see 4 of the 9 taps, edges 6, the centre all 9.
    np.testing.assert_array_equal(
        tf.cast(y[0, :, :, 0], "float32").numpy(), [[4, 6, 4], [6, 9, 6], [4, 6, 4]]
    )


def test_layer_keeps_keras_config_weights_and_outputs(tmp_path) -> None:
    reference = keras.layers.SeparableConv2D(6, 3, padding="same", name="sep")
    ours = SeparableConv2D(6, 3, padding="same", name="sep")
    x = np.random.default_rng(0).normal(size=(2, 3, 3, 4)).astype("float32")
    reference(x)
    ours(x)
    ours.set_weights(reference.get_weights())
    assert ours.get_config() == reference.get_config()
    np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(reference(x)), rtol=1e-6)
    model = keras.Sequential([keras.Input((3, 3, 4)), ours])
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert type(loaded.layers[0]) is SeparableConv2D
    np.testing.assert_allclose(loaded.predict(x, verbose=0), np.asarray(reference(x)), rtol=1e-6)


def test_shifted_path_is_for_jax_on_small_stride_one_maps_only(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = SeparableConv2D(4, 3, padding="same")
    small, large = tf.zeros((1, 3, 3, 2)), tf.zeros((1, 6, 6, 2))
    # Under this test's TensorFlow backend, Keras' own path always runs.
    assert not layer._shifted(small)
    strided = SeparableConv2D(4, 3, strides=2, padding="same")
    valid = SeparableConv2D(4, 3, padding="valid")
    # The dispatch only asks keras.backend.backend().
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    assert layer._shifted(small)
    assert not layer._shifted(large)
    assert not strided._shifted(small)
    assert not valid._shifted(small)
