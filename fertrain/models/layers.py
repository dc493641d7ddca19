"""Registered layers that keep Keras semantics but pick a faster kernel where one exists."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="fertrain")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """Keras BatchNormalization computed by TensorFlow's fused kernel (oneDNN / cuDNN) where it applies.

    Keras 3 normalizes with about ten separate ops on TensorFlow; the fused op does 1.7x less work in a
    mini-Xception training step on CPU and lets Grappler fold BN into the preceding convolution for
    inference (benchmarks/NOTES-perf.md). Same variables, same config, same math; every other backend
    and every case the fused op does not cover use Keras' own code.
    """

    def _fusable(self, inputs, mask) -> bool:
        return (
            keras.backend.backend() == "tensorflow"
            and mask is None
            and not self.renorm
            and not self.synchronized
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        x = tf.cast(inputs, "float32")
        channels = x.shape[-1]
        gamma = tf.cast(self.gamma, "float32") if self.scale else tf.ones(channels)
        beta = tf.cast(self.beta, "float32") if self.center else tf.zeros(channels)
        if training and self.trainable:
            y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                x, gamma, beta, epsilon=self.epsilon, data_format="NHWC", is_training=True
            )
            # The op returns the Bessel-corrected variance; Keras tracks the biased one.
            count = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), "float32")
            variance = variance * ((count - 1.0) / count)
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(
                self.moving_variance * self.momentum + variance * (1.0 - self.momentum)
            )
        else:
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x,
                gamma,
                beta,
                mean=tf.cast(self.moving_mean, "float32"),
                variance=tf.cast(self.moving_variance, "float32"),
                epsilon=self.epsilon,
                data_format="NHWC",
                is_training=False,
            )
        return tf.cast(y, self.compute_dtype)
