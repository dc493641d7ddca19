"""Training-time augmentation as Keras preprocessing layers, run inside the training step.

The augmentation lives in `AugmentedTrainer`, a training-only wrapper around the network; the saved
model (`model.keras`) is the bare network, so serving needs raw pixels and no fertrain code.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from fertrain.config import AugmentConfig

# Aspect-ratio range of an erased rectangle, from Zhong et al., "Random Erasing Data Augmentation" (2017).
ERASING_ASPECT_RANGE = (0.3, 1 / 0.3)
ERASING_MIN_AREA = 0.02


@keras.saving.register_keras_serializable(package="fertrain")
class RandomErasing(keras.layers.Layer):
    """With probability `probability`, replaces one random rectangle of each image with uniform noise.

    The rectangle covers a uniform fraction in [`min_area`, `max_area`] of the image with a
    log-uniform aspect ratio; a no-op outside training.
    """

    def __init__(
        self,
        probability: float,
        max_area: float,
        min_area: float = ERASING_MIN_AREA,
        value_range: tuple[float, float] = (0.0, 255.0),
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.probability = probability
        self.max_area = max_area
        self.min_area = min(min_area, max_area)
        self.value_range = tuple(value_range)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=True):
        if not training or self.probability == 0:
            return images
        batch = ops.shape(images)[0]
        height, width = images.shape[1], images.shape[2]

        def uniform(shape, low=0.0, high=1.0):
            return keras.random.uniform(shape, low, high, dtype=self.compute_dtype, seed=self.seed_generator)

        area = uniform((batch,), self.min_area, self.max_area)
        log_low, log_high = (math.log(r) for r in ERASING_ASPECT_RANGE)
        aspect = ops.exp(uniform((batch,), log_low, log_high))
        box_height = ops.clip(ops.sqrt(area * aspect) * height, 1.0, float(height))
        box_width = ops.clip(ops.sqrt(area / aspect) * width, 1.0, float(width))
        top = uniform((batch,)) * (height - box_height)
        left = uniform((batch,)) * (width - box_width)

        rows = ops.reshape(ops.arange(height, dtype=self.compute_dtype), (1, height, 1, 1))
        cols = ops.reshape(ops.arange(width, dtype=self.compute_dtype), (1, 1, width, 1))

        def per_image(values):
            return ops.reshape(values, (-1, 1, 1, 1))

        inside = (
            (rows >= per_image(top))
            & (rows < per_image(top + box_height))
            & (cols >= per_image(left))
            & (cols < per_image(left + box_width))
        )
        erase = per_image(uniform((batch,)) < self.probability)
        noise = uniform(ops.shape(images), *self.value_range)
        return ops.where(inside & erase, noise, images)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "probability": self.probability,
            "max_area": self.max_area,
            "min_area": self.min_area,
            "value_range": self.value_range,
            "seed": self.seed,
        }


def build_augmentation(config: AugmentConfig, image_size: int, seed: int) -> keras.Sequential:
    """The configured transforms in a fixed order; a strength of 0 (or false) leaves a transform out.

    Layers compute in float32 whatever the global dtype policy: interpolating pixel values in
    float16/bfloat16 would quantize them before the network sees them.
    """
    common = {"dtype": "float32"}
    geometric = {"fill_mode": config.fill_mode, **common}
    layers: list[keras.layers.Layer] = []
    if config.horizontal_flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed, **common))
    if config.rotation_degrees:
        layers.append(
            keras.layers.RandomRotation(config.rotation_degrees / 360.0, seed=seed + 1, **geometric)
        )
    if config.zoom:
        layers.append(keras.layers.RandomZoom(config.zoom, seed=seed + 2, **geometric))
    if config.shift:
        layers.append(keras.layers.RandomTranslation(config.shift, config.shift, seed=seed + 3, **geometric))
    if config.crop_padding:
        # "Pad by p, crop back at random" is a whole-pixel shift of up to p with black fill; as a
        # translation it keeps static shapes, which XLA (and so Keras-on-JAX) needs.
        reach = config.crop_padding / image_size
        layers.append(
            keras.layers.RandomTranslation(
                reach, reach, fill_mode="constant", interpolation="nearest", seed=seed + 4, **common
            )
        )
    if config.brightness:
        layers.append(keras.layers.RandomBrightness(config.brightness, seed=seed + 6, **common))
    if config.contrast:
        layers.append(keras.layers.RandomContrast(config.contrast, seed=seed + 7, **common))
    if config.erasing_probability:
        layers.append(
            RandomErasing(config.erasing_probability, config.erasing_max_area, seed=seed + 5, **common)
        )
    if keras.backend.backend() == "jax":
        # Keras flags RandomZoom and RandomTranslation as not XLA-compilable because
        # TensorFlow's image-transform op has no XLA kernel; their JAX versions trace fine, and
        # Keras-on-JAX without jit would run every op eagerly.
        for layer in layers:
            layer.supports_jit = True
    return keras.Sequential(layers, name="augmentation")


class AugmentedTrainer(keras.Model):
    """Fits `network` on augmented pixels; validation and inference pass raw pixels straight through."""

    def __init__(self, network: keras.Model, augmentation: keras.Sequential, **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.augmentation = augmentation

    def build(self, input_shape):
        if self.augmentation.layers:
            self.augmentation.build(input_shape)

    def build_for_training(self, example_batch) -> None:
        """Creates every variable (network, augmentation, optimizer, loss, metrics) before `fit`.

        A backup can then be restored into them, and Keras' own build in `fit` is skipped: under
        TensorFlow it first averages an example batch across replicas with `strategy.reduce`, which
        MultiWorkerMirroredStrategy rejects for an (images, labels) tuple (Keras 3.15).
        """
        self._symbolic_build(data_batch=example_batch)
        self._built_for_training = True

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if not getattr(self, "_built_for_training", False):
            super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def fit(self, *args, **kwargs):
        history = super().fit(*args, **kwargs)
        self._unshare_averaged_weights()
        return history

    def _unshare_averaged_weights(self) -> None:
        """Gives each weight its own buffer again after `fit` ended with the optimizer's EMA.

        With `use_ema`, Keras ends `fit` by assigning each moving average to its weight. Under JAX
        that assignment stores the average's own array in the weight (Keras 3.15), so the next `fit`
        passes one buffer twice to a training step that donates its whole state; XLA refuses ("donate
        the same buffer twice"), and Keras' cleanup then fails on the purged variables with
        "'NoneType' object is not callable". `fertrain benchmark` fits the same trainer repeatedly.
        """
        optimizer = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        if keras.backend.backend() != "jax" or optimizer is None or not optimizer.use_ema:
            return
        for variable in self.trainable_weights:
            variable.assign(ops.copy(variable.value))

    def call(self, images, training=False):
        images = ops.cast(images, "float32")
        if training and self.augmentation.layers:
            images = self.augmentation(images, training=True)
        return self.network(images, training=training)


class MultiWorkerTrainer(AugmentedTrainer):
    """AugmentedTrainer for TensorFlow's MultiWorkerMirroredStrategy.

    Keras 3.15 averages each step's logs across workers with `strategy.reduce("MEAN", v, axis=0)`,
    which fails for the scalar loss and metrics (tensorflow/tensorflow#72388); giving them a batch
    axis of one makes that reduce a plain mean over workers.
    """

    def train_step(self, data):
        return _with_batch_axis(super().train_step(data))

    def test_step(self, data):
        return _with_batch_axis(super().test_step(data))


def _with_batch_axis(logs):
    return {name: ops.reshape(value, (1,)) for name, value in logs.items()}


class BatchMixer:
    """mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) on whole batches, in NumPy.

    Each image is blended with a partner from the same batch through a per-pixel share map `m`
    (mixup: one value, CutMix: 0 inside a box, 1 outside); its label becomes the same blend of the
    two one-hot labels, weighted by the mean of `m`, so that the label states how much of each face
    the pixels show. With both on, each mixed image uses one of the two, chosen with equal odds.
    Mixing runs on the input batches (before the geometric transforms) so that it is seeded by
    (seed, epoch, batch) like the batch order, and a resumed run mixes the same pairs.
    """

    def __init__(self, mixup_alpha: float, cutmix_alpha: float, probability: float = 1.0):
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.probability = probability

    @classmethod
    def from_config(cls, config: AugmentConfig) -> BatchMixer | None:
        if not (config.mixup_alpha or config.cutmix_alpha) or config.mix_probability == 0:
            return None
        return cls(config.mixup_alpha, config.cutmix_alpha, config.mix_probability)

    def share_maps(self, rng: np.random.Generator, batch: int, height: int, width: int) -> np.ndarray:
        """float32 [batch, height, width]: the share of each pixel that stays the image's own."""
        shares = np.ones((batch, height, width), dtype=np.float32)
        mixed = rng.random(batch) < self.probability
        cutmix = np.full(batch, self.cutmix_alpha > 0)
        if self.mixup_alpha and self.cutmix_alpha:
            cutmix = rng.random(batch) < 0.5
        if self.mixup_alpha:
            chosen = mixed & ~cutmix
            lam = rng.beta(self.mixup_alpha, self.mixup_alpha, size=batch).astype(np.float32)
            shares[chosen] = lam[chosen, None, None]
        if self.cutmix_alpha:
            chosen = mixed & cutmix
            lam = rng.beta(self.cutmix_alpha, self.cutmix_alpha, size=batch)
            shares[chosen] = _cutmix_maps(rng, lam[chosen], height, width)
        return shares

    def __call__(self, rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, weights=None):
        """Mixed float32 images [B, H, W, 1], soft labels [B, K] and (when given) weights [B]."""
        batch, height, width = images.shape[:3]
        partner = rng.permutation(batch)
        shares = self.share_maps(rng, batch, height, width)
        own = shares.reshape(images.shape[:3] + (1,) * (images.ndim - 3))
        pixels = images.astype(np.float32)
        mixed_images = own * pixels + (1.0 - own) * pixels[partner]
        lam = shares.mean(axis=(1, 2))
        mixed_labels = lam[:, None] * labels + (1.0 - lam[:, None]) * labels[partner]
        if weights is None:
            return mixed_images, mixed_labels
        return mixed_images, mixed_labels, lam * weights + (1.0 - lam) * weights[partner]


def _cutmix_maps(rng: np.random.Generator, lam: np.ndarray, height: int, width: int) -> np.ndarray:
    """One 0-inside/1-outside box map per lambda; each box covers about 1 - lambda of the image,
    less where it is clipped at a border (the label follows the box actually cut)."""
    count = len(lam)
    side = np.sqrt(1.0 - lam)
    box_h, box_w = np.round(side * height).astype(int), np.round(side * width).astype(int)
    centre_y, centre_x = rng.integers(0, height, count), rng.integers(0, width, count)
    top, bottom = np.clip(centre_y - box_h // 2, 0, height), np.clip(centre_y + (box_h + 1) // 2, 0, height)
    left, right = np.clip(centre_x - box_w // 2, 0, width), np.clip(centre_x + (box_w + 1) // 2, 0, width)
    rows, cols = np.arange(height)[None, :, None], np.arange(width)[None, None, :]
    inside = (
        (rows >= top[:, None, None])
        & (rows < bottom[:, None, None])
        & (cols >= left[:, None, None])
        & (cols < right[:, None, None])
    )
    return np.where(inside, 0.0, 1.0).astype(np.float32)
