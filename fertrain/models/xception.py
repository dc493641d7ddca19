"""The Xception family, built from a `ModelConfig`: the notebook's Xception, mini-Xception and
everything in between differ only in config values.

Keras 3 layers only (no Lambda; the registered layers fall back to Keras' own code off
their backend), so the same code builds under TensorFlow, JAX and PyTorch and saves as a `.keras`
file that loads with `safe_mode=True` once `fertrain.models` is imported.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from fertrain.config import ModelConfig
from fertrain.models.class_names import with_class_names
from fertrain.models.layers import FusedBatchNormalization, SeparableConv2D

# The layer ten-crop TTA looks for to place its crops where the network will cut them.
CROP_LAYER = "crop"

# Pixel range the network sees after its built-in rescaling of raw 0-255 input.
_INPUT_SCALING = {"unit": (1.0 / 255.0, 0.0), "symmetric": (1.0 / 127.5, -1.0)}


def scaled_width(width: int, multiplier: float) -> int:
    """A config width after `width_multiplier`, rounded, never below one channel."""
    return max(1, round(width * multiplier))


def _regularizer(cfg: ModelConfig, stem: bool = False) -> keras.regularizers.Regularizer | None:
    """L2 on the kernel of a stem conv, or of any other layer when `l2_scope` is `all`."""
    return keras.regularizers.L2(cfg.l2) if cfg.l2 > 0 and (stem or cfg.l2_scope == "all") else None


def _batchnorm(cfg: ModelConfig, name: str) -> layers.BatchNormalization:
    return FusedBatchNormalization(momentum=cfg.batchnorm_momentum, name=name)


def _conv_bn_relu(x, width: int, stride: int, cfg: ModelConfig, name: str):
    x = layers.Conv2D(
        width,
        3,
        strides=stride,
        use_bias=cfg.use_bias,
        kernel_regularizer=_regularizer(cfg, stem=True),
        name=f"{name}_conv",
    )(x)
    x = _batchnorm(cfg, f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _separable_bn(x, width: int, cfg: ModelConfig, name: str, relu_first: bool):
    """(ReLU ->) SeparableConv 3x3 -> BN: the unit every Xception flow is made of."""
    if relu_first:
        x = layers.ReLU(name=f"{name}_relu")(x)
    x = SeparableConv2D(
        width,
        3,
        padding="same",
        use_bias=cfg.use_bias,
        depthwise_regularizer=_regularizer(cfg),
        pointwise_regularizer=_regularizer(cfg),
        name=f"{name}_sepconv",
    )(x)
    return _batchnorm(cfg, f"{name}_bn")(x)


def _squeeze_excite(x, width: int, cfg: ModelConfig, name: str):
    """Hu et al.'s channel gate: global context picks which of the branch's channels to keep, for the
    cost of two 1x1 convs on a 1x1 map."""
    if not cfg.squeeze_excite:
        return x
    gate = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_pool")(x)
    gate = layers.Conv2D(
        scaled_width(width, cfg.squeeze_excite), 1, activation="relu", name=f"{name}_se_reduce"
    )(gate)
    gate = layers.Conv2D(width, 1, activation="sigmoid", name=f"{name}_se_expand")(gate)
    return layers.Multiply(name=f"{name}_se_scale")([x, gate])


def _downsampling_block(x, widths: tuple[int, int], cfg: ModelConfig, name: str):
    """Two separable convs and a stride-2 max pool, added to a 1x1 stride-2 conv shortcut."""
    shortcut = layers.Conv2D(
        widths[1],
        1,
        strides=2,
        padding="same",
        use_bias=cfg.shortcut_bias,
        kernel_regularizer=_regularizer(cfg),
        name=f"{name}_skip_conv",
    )(x)
    if cfg.shortcut_batchnorm:
        shortcut = _batchnorm(cfg, f"{name}_skip_bn")(shortcut)
    x = _separable_bn(x, widths[0], cfg, f"{name}_1", relu_first=cfg.block_preactivation)
    x = _separable_bn(x, widths[1], cfg, f"{name}_2", relu_first=True)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"{name}_pool")(x)
    x = _squeeze_excite(x, widths[1], cfg, name)
    return layers.Add(name=f"{name}_add")([x, shortcut])


def stem(x, cfg: ModelConfig):
    """Plain 3x3 convolutions ('valid' padding) before the residual blocks."""
    for i, (width, stride) in enumerate(zip(cfg.stem_widths, cfg.stem_strides, strict=True), start=1):
        x = _conv_bn_relu(x, scaled_width(width, cfg.width_multiplier), stride, cfg, f"stem{i}")
    return x


def entry_flow(x, cfg: ModelConfig):
    for i, width in enumerate(cfg.entry_widths, start=1):
        width = scaled_width(width, cfg.width_multiplier)
        x = _downsampling_block(x, (width, width), cfg, f"entry{i}")
    return x


def middle_flow(x, cfg: ModelConfig):
    """`middle_repeats` residual blocks of `middle_layers` separable convs with identity shortcuts."""
    width = scaled_width(cfg.middle_width, cfg.width_multiplier)
    for i in range(1, cfg.middle_repeats + 1):
        shortcut = x
        for j in range(1, cfg.middle_layers + 1):
            x = _separable_bn(x, width, cfg, f"middle{i}_{j}", relu_first=True)
        x = _squeeze_excite(x, width, cfg, f"middle{i}")
        x = layers.Add(name=f"middle{i}_add")([x, shortcut])
    return x


def exit_flow(x, cfg: ModelConfig):
    """An optional downsampling block (`exit_widths`), then plain separable convs."""
    if cfg.exit_widths:
        first, second = (scaled_width(w, cfg.width_multiplier) for w in cfg.exit_widths)
        x = _downsampling_block(x, (first, second), cfg, "exit_block")
    for i, width in enumerate(cfg.exit_separable_widths, start=1):
        x = _separable_bn(x, scaled_width(width, cfg.width_multiplier), cfg, f"exit{i}", relu_first=True)
    return x


def _dropout(x, cfg: ModelConfig):
    return layers.Dropout(cfg.dropout, name="head_dropout")(x) if cfg.dropout > 0 else x


def classifier(x, cfg: ModelConfig):
    """`dense`: pool, dropout, Dense (Xception). `conv`: dropout, 3x3 conv to the classes, pool
    (mini-Xception).

    The softmax runs in float32 so that mixed-precision training still yields exact probabilities.
    """
    if cfg.head == "dense":
        x = layers.GlobalAveragePooling2D(name="head_pool")(x)
        x = _dropout(x, cfg)
        x = layers.Dense(cfg.num_classes, kernel_regularizer=_regularizer(cfg), name="head_dense")(x)
    else:
        x = _dropout(x, cfg)
        x = layers.Conv2D(
            cfg.num_classes, 3, padding="same", kernel_regularizer=_regularizer(cfg), name="head_conv"
        )(x)
        x = layers.GlobalAveragePooling2D(name="head_pool")(x)
    return layers.Activation("softmax", dtype="float32", name="predictions")(x)


def build_model(cfg: ModelConfig, classes: Sequence[str] | None = None) -> keras.Model:
    """Input: raw 0-255 pixels (N, S, S, 1), uint8 or float. Output: float32 softmax (N, num_classes),
    its columns named by `classes` inside the model when given (see `fertrain.models.class_names`)."""
    inputs = keras.Input(shape=(cfg.input_size, cfg.input_size, 1), name="pixels")
    x = inputs
    if cfg.crop_size:
        # Trained on random crops (a shift, then this crop), the network sees the centre at test time.
        x = layers.CenterCrop(cfg.crop_size, cfg.crop_size, name=CROP_LAYER)(x)
    if cfg.resize_to:
        x = layers.Resizing(cfg.resize_to, cfg.resize_to, interpolation="bilinear", name="resize")(x)
    scale, offset = _INPUT_SCALING[cfg.input_scaling]
    x = layers.Rescaling(scale, offset, name="rescale")(x)
    x = stem(x, cfg)
    x = entry_flow(x, cfg)
    x = middle_flow(x, cfg)
    x = exit_flow(x, cfg)
    outputs = classifier(x, cfg)
    if classes is not None:
        outputs = with_class_names(outputs, classes)
    return keras.Model(inputs, outputs, name=cfg.architecture)
