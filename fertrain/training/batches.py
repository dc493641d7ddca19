"""The training input pipeline: whole batches cut from uint8 arrays, shuffled per epoch from the seed.

A `keras.utils.PyDataset` works under every Keras backend; each batch is one NumPy fancy-index
(no per-sample Python), so building a batch costs microseconds next to a training step. The order of
epoch e depends only on (seed, e), which makes an interrupted-and-resumed run see the same batches.
"""

from __future__ import annotations

import math

import keras
import numpy as np

from fertrain.config import TrainConfig
from fertrain.errors import ConfigError
from fertrain.training.augmentation import BatchMixer


class ArrayBatches(keras.utils.PyDataset):
    """Yields (images [B, H, W, 1], float32 targets [B, K] (or [B, 2K])[, float32 weights [B]]).

    Targets are the labels one-hot, or the rows of `targets` (soft: FER+'s vote distributions). With
    `sample_targets` each use of a face draws one class from its row instead (FER+'s `probability`
    mode), seeded by (seed, epoch, batch) like the shuffle, so a resumed run draws the same classes.
    `teacher` probabilities [N, K] are appended after the targets for distillation (`DistillationLoss`
    splits them off again). A class weight applies to a soft row as the row's mean weight.

    Images stay uint8 unless `image_dtype` says otherwise (float16 holds 0-255 exactly); a `mixer`
    (mixup/CutMix) makes them float32 blends and the labels soft.
    `drop_remainder` leaves out the last partial batch (different images each shuffled epoch): under
    XLA every new batch shape is another compilation, which costs more than the images are worth.
    `pad_remainder` instead fills the last batch up with blank rows (no label, weight 0), for
    validation (no class weights, no mixer), which must see every image. Each real row then weighs
    (padded rows / real rows), so that Keras' loss, a mean over all rows of a batch, averages to the
    mean over the real ones; `LabelledAccuracy` leaves the blank rows out. One batch shape is one
    compilation, and it splits evenly across the devices of JAX data parallelism.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        num_classes: int,
        batch_size: int,
        shuffle_seed: int | None = None,
        class_weights: np.ndarray | None = None,
        image_dtype: str = "uint8",
        drop_remainder: bool = False,
        pad_remainder: bool = False,
        mixer: BatchMixer | None = None,
        targets: np.ndarray | None = None,
        sample_targets: bool = False,
        teacher: np.ndarray | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.images = images
        self.image_dtype = np.dtype(image_dtype)
        self.drop_remainder = drop_remainder and len(labels) >= batch_size
        self.labels = labels
        self.batch_size = batch_size
        self.pad_remainder = pad_remainder
        self.shuffle_seed = shuffle_seed
        self.one_hot = np.eye(num_classes, dtype="float32")
        self.targets = self.one_hot[labels] if targets is None else targets.astype("float32")
        self.sample_targets = sample_targets
        self.teacher = None if teacher is None else teacher.astype("float32")
        self.row_weights = None if class_weights is None else (self.targets @ class_weights).astype("float32")
        self.mixer = mixer
        self.epoch = 0
        self._order = self._order_for(0)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self._order = self._order_for(epoch)

    def _order_for(self, epoch: int) -> np.ndarray:
        if self.shuffle_seed is None:
            return np.arange(len(self.labels))
        return np.random.default_rng([self.shuffle_seed, epoch]).permutation(len(self.labels))

    def __len__(self) -> int:
        batches = len(self.labels) / self.batch_size
        return math.floor(batches) if self.drop_remainder else math.ceil(batches)

    @property
    def images_per_epoch(self) -> int:
        return min(len(self) * self.batch_size, len(self.labels))

    def __getitem__(self, index: int):
        rows = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        targets = self.targets[rows]
        if self.sample_targets:
            targets = self._sampled(targets, index)
        if self.teacher is not None:
            targets = np.concatenate([targets, self.teacher[rows]], axis=1)
        batch = (self.images[rows][..., None].astype(self.image_dtype, copy=False), targets)
        if self.row_weights is not None:
            batch = (*batch, self.row_weights[rows])
        if self.pad_remainder:
            return self._padded(*batch)
        if self.mixer is None:
            return batch
        return self.mixer(np.random.default_rng([self.shuffle_seed or 0, self.epoch, index]), *batch)

    def _sampled(self, distributions: np.ndarray, index: int) -> np.ndarray:
        """One class per row drawn from its distribution, one-hot; its own stream, not the mixer's."""
        uniform = np.random.default_rng([self.shuffle_seed or 0, self.epoch, index, 1]).random(
            len(distributions)
        )
        cumulative = np.cumsum(distributions, axis=1)
        drawn = np.minimum((uniform[:, None] >= cumulative).sum(axis=1), distributions.shape[1] - 1)
        return self.one_hot[drawn]

    def _padded(self, images: np.ndarray, labels: np.ndarray):
        blank = self.batch_size - len(labels)
        weights = np.zeros(self.batch_size, dtype="float32")
        weights[: len(labels)] = len(self) * self.batch_size / len(self.labels)
        images = np.concatenate([images, np.zeros((blank, *images.shape[1:]), images.dtype)])
        return images, np.concatenate([labels, np.zeros((blank, labels.shape[1]), labels.dtype)]), weights


class LabelledAccuracy(keras.metrics.CategoricalAccuracy):
    """Categorical accuracy of the rows that have a label: the blank rows padding a last validation
    batch (all-zero labels) do not count. Keras gives `metrics` no sample weights, so these rows
    weigh by their label mass: 1 for one-hot and mixed labels alike. Teacher probabilities appended
    to the targets (distillation) are left out: accuracy is against the data's own targets."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = y_true[..., : y_pred.shape[-1]]
        return super().update_state(y_true, y_pred, sample_weight=keras.ops.sum(y_true, axis=-1))


def class_weights(train: TrainConfig, labels: np.ndarray, num_classes: int) -> np.ndarray | None:
    """Per-class loss weights: `balanced` is n / (k * count_c) over the k classes present, as
    scikit-learn's compute_class_weight("balanced"); absent classes get 0 (they have no samples)."""
    setting = train.class_weights
    if setting == "none":
        return None
    if setting == "balanced":
        counts = np.bincount(labels, minlength=num_classes).astype("float64")
        present = counts > 0
        weights = np.zeros(num_classes)
        weights[present] = len(labels) / (present.sum() * counts[present])
        return weights
    if len(setting) != num_classes:
        raise ConfigError(
            f"train.class_weights: expected {num_classes} weights (one per class), got {len(setting)}"
        )
    return np.asarray(setting, dtype="float64")
