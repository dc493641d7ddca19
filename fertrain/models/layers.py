"""Registered layers that keep Keras semantics but pick a faster kernel where one exists."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="fertrain")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """Keras BatchNormalization computed by TensorFlow's fused kernel (oneDNN / cuDNN) where it applies.

    Keras 3 normalizes with about ten separate ops on TensorFlow; the fused op does 1.7x less work in a
    mini-Xception training step on CPU and lets Grappler fold BN into the preceding convolution for
    inference (benchmarks/results.md). Same variables, same config, same math; every other backend
    and every case the fused op does not cover use Keras' own code.

    `statistics_frozen` (set while its layer is frozen, `train.freeze_epochs`) normalizes training
    batches with the moving statistics and leaves them as they are, as at inference.
    """

    statistics_frozen = False

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
        training = training and not self.statistics_frozen
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


def shifted_depthwise_conv(inputs, kernel):
    """A stride-1, "same"-padded depthwise convolution (depth multiplier 1, channels last) written as
    the sum of kernel-height x kernel-width shifted products, accumulated in float32.

    Its gradients are elementwise products and sums that XLA fuses. On an H100, XLA's grouped
    convolution spent 84 % of an Xception training step in one cuDNN kernel (the gradients of the
    3x3 and 2x2 feature maps of the middle and exit flows); this form took 12x less time there,
    while on maps of 6x6 and larger XLA's own convolution stayed faster (benchmarks/results.md).
    """
    kernel_height, kernel_width = kernel.shape[0], kernel.shape[1]
    height, width = inputs.shape[1], inputs.shape[2]
    top, left = (kernel_height - 1) // 2, (kernel_width - 1) // 2
    padded = ops.pad(
        ops.cast(inputs, "float32"),
        [[0, 0], [top, kernel_height - 1 - top], [left, kernel_width - 1 - left], [0, 0]],
    )
    taps = ops.cast(kernel[..., 0], "float32")
    total = None
    for row in range(kernel_height):
        for col in range(kernel_width):
            term = padded[:, row : row + height, col : col + width, :] * taps[row, col]
            total = term if total is None else total + term
    return ops.cast(total, inputs.dtype)


@keras.saving.register_keras_serializable(package="fertrain")
class SeparableConv2D(keras.layers.SeparableConv2D):
    """Keras SeparableConv2D whose depthwise step runs as `shifted_depthwise_conv` under JAX on
    feature maps of at most `shifted_max_pixels` pixels, where XLA's own depthwise gradient is slow.

    Same variables, same config, same math (float32 rounding aside); every other case runs Keras'
    own code. With it, an Xception training step on an H100 took 14 ms instead of 62 ms.
    """

    # 3x3: the largest maps where the shifted form won, measured per shape on an H100.
    shifted_max_pixels = 9

    def _shifted(self, inputs) -> bool:
        height, width = inputs.shape[1], inputs.shape[2]
        return (
            keras.backend.backend() == "jax"
            and self.data_format == "channels_last"
            and self.padding == "same"
            and self.depth_multiplier == 1
            and tuple(self.strides) == (1, 1)
            and tuple(self.dilation_rate) == (1, 1)
            and height is not None
            and width is not None
            and height * width <= self.shifted_max_pixels
        )

    def call(self, inputs):
        if not self._shifted(inputs):
            return super().call(inputs)
        outputs = ops.conv(
            shifted_depthwise_conv(inputs, self.depthwise_kernel),
            self.pointwise_kernel,
            strides=1,
            padding="valid",
            data_format=self.data_format,
        )
        if self.use_bias:
            outputs = ops.add(outputs, self.bias)
        return outputs if self.activation is None else self.activation(outputs)
