"""What the network learns from: one label per face, FER+'s vote distributions, and teachers.

`data.targets` picks the targets of the training faces (and which faces train): `labels` is each
face's one label; the `ferplus_*` modes are Barsoum et al.'s four ways to learn from FER+'s ten
votes, with Microsoft's rules (`fertrain.data.ferplus.mode_targets`). Validation always scores what
FER+ scores officially when the data has votes: the faces with a strict majority, by that majority.

`train.distill` adds teachers: their probabilities for every training face are computed once, before
the first epoch, averaged over the teachers and `distill.tta` views, and cached in the run directory
(`teacher-probabilities.npy`), so a resumed run learns from the very same numbers. Running them on
each augmented batch instead would cost a teacher forward pass per student step (the bundled
two-network teacher is about as slow as the student's training step on 2 cores) for every epoch;
the cache costs one pass over the training faces per view.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from fertrain.config import Config, DistillConfig
from fertrain.data.ferplus import majority_mask, mode_targets
from fertrain.errors import ConfigError, DataError
from fertrain.fileio import write_atomic

TEACHER_CACHE = "teacher-probabilities.npy"


@dataclass(frozen=True)
class TrainingTargets:
    """The training faces kept by the target mode, and what each teaches: `targets` rows [N, K]
    summing to 1 (one-hot or soft), drawn from at each use when `sample` is set."""

    images: np.ndarray
    labels: np.ndarray  # each face's most likely class, for class weights and counts
    targets: np.ndarray | None  # None: the labels one-hot
    sample: bool
    set_likelihood: bool  # the loss is -log of the probability of the target set (multi_target)
    dropped: int  # training faces the mode left out


def training_targets(
    config: Config, images: np.ndarray, labels: np.ndarray, votes: np.ndarray | None
) -> TrainingTargets:
    """The faces and targets `data.targets` trains on."""
    mode = config.data.targets
    if mode == "labels":
        return TrainingTargets(images, labels, None, sample=False, set_likelihood=False, dropped=0)
    if votes is None:
        raise DataError(
            f"{config.data.dir}/train.npz: data.targets {mode} needs FER+'s votes; "
            "prepare the data with `fertrain prepare fer2013.csv --ferplus fer2013new.csv`"
        )
    ferplus_mode = mode.removeprefix("ferplus_")
    targets, keep = mode_targets(votes, ferplus_mode)
    targets = targets[keep]
    if ferplus_mode == "multi_target":
        # The accepted classes, each as likely: the loss is then -log P(accepted set) + log |set|.
        accepted = (targets > 0).astype(np.float32)
        targets = accepted / accepted.sum(axis=1, keepdims=True)
    return TrainingTargets(
        images[keep],
        np.argmax(targets, axis=1).astype(np.uint8),
        targets.astype(np.float32),
        sample=ferplus_mode == "probability",
        set_likelihood=ferplus_mode == "multi_target",
        dropped=int((~keep).sum()),
    )


def validation_faces(
    images: np.ndarray, labels: np.ndarray, votes: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Validation faces and labels: with FER+ votes, the strict-majority faces (the official FER+
    figure; their stored label is that majority); else every face."""
    if votes is None:
        return images, labels
    keep = majority_mask(votes)
    return images[keep], labels[keep]


class TargetLoss(keras.losses.Loss):
    """The training loss for `TrainingTargets`, with distillation when the targets carry teachers.

    `y_true` is [B, K] targets, or [B, 2K]: targets then teacher probabilities. With targets t
    (label-smoothed: (1 - s) t + s / K) and the student's probabilities p:
      cross-entropy: -sum_k t_k log p_k;  set likelihood (multi_target): -log sum_k t_k p_k.
    With teachers q, weight a and temperature T, and p_T = softmax(log p / T) (= softmax(z / T) of the
    student's logits z), q_T likewise:  (1 - a) * that + a * T^2 * KL(q_T || p_T)  (Hinton et al. 2015).
    """

    def __init__(
        self,
        num_classes: int,
        label_smoothing: float = 0.0,
        set_likelihood: bool = False,
        distill_weight: float = 0.0,
        temperature: float = 1.0,
        name: str = "target_loss",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.set_likelihood = set_likelihood
        self.distill_weight = distill_weight
        self.temperature = temperature

    def call(self, y_true, y_pred):
        ops = keras.ops
        k = self.num_classes
        y_pred = ops.cast(y_pred, "float32")
        targets = ops.cast(y_true[..., :k], "float32")
        if self.set_likelihood:
            smoothed = targets * (1.0 - self.label_smoothing) + self.label_smoothing / k
            mass = ops.sum(smoothed * y_pred, axis=-1)
            loss = -ops.log(ops.clip(mass, keras.config.epsilon(), 1.0))
        else:
            loss = keras.losses.categorical_crossentropy(
                targets, y_pred, label_smoothing=self.label_smoothing
            )
        if y_true.shape[-1] == 2 * k and self.distill_weight:
            teacher = ops.cast(y_true[..., k:], "float32")
            distilled = distillation_divergence(teacher, y_pred, self.temperature)
            loss = (1.0 - self.distill_weight) * loss + self.distill_weight * distilled
        return loss


def distillation_divergence(teacher, student, temperature: float):
    """T^2 * KL(q_T || p_T) per row, from probabilities (both softened at temperature T)."""
    ops = keras.ops
    eps = keras.config.epsilon()
    log_q = ops.log_softmax(ops.log(ops.clip(teacher, eps, 1.0)) / temperature, axis=-1)
    log_p = ops.log_softmax(ops.log(ops.clip(student, eps, 1.0)) / temperature, axis=-1)
    return temperature**2 * ops.sum(ops.exp(log_q) * (log_q - log_p), axis=-1)


def training_loss(config: Config, targets: TrainingTargets, num_classes: int) -> keras.losses.Loss:
    """Keras' own categorical cross-entropy when nothing else is asked for (the numbers of every
    earlier run), else a `TargetLoss`."""
    distill = config.train.distill
    if not targets.set_likelihood and not distill.teachers:
        return keras.losses.CategoricalCrossentropy(label_smoothing=config.train.label_smoothing)
    return TargetLoss(
        num_classes,
        label_smoothing=config.train.label_smoothing,
        set_likelihood=targets.set_likelihood,
        distill_weight=distill.weight if distill.teachers else 0.0,
        temperature=distill.temperature,
    )


def teacher_probabilities(
    distill: DistillConfig, images: np.ndarray, classes: tuple[str, ...], run_dir: Path | None
) -> np.ndarray | None:
    """The teachers' mean probabilities [N, K] for the training faces, or None without teachers.

    Read from `run_dir` when an earlier session of the run cached them (`save_teacher_cache`)."""
    if not distill.teachers:
        return None
    cache = None if run_dir is None else Path(run_dir) / TEACHER_CACHE
    if cache is not None and cache.is_file():
        try:
            cached = np.load(cache, allow_pickle=False)
        except (OSError, ValueError):
            cached = None  # damaged: computed again below, as if it were missing
        if cached is not None and cached.shape == (len(images), len(classes)):
            return cached
    from fertrain.inference import load_classifier, predict_probabilities

    models = [load_classifier(teacher) for teacher in distill.teachers]
    for model in models:
        if model.classes != classes:
            raise ConfigError(
                f"train.distill.teachers: {model.path} predicts ({', '.join(model.classes)}) but the data's "
                f"classes are ({', '.join(classes)}); a teacher must name the same classes in the same order"
            )
    return predict_probabilities(models, images, tta=distill.tta).astype(np.float32)


def save_teacher_cache(run_dir: Path, probabilities: np.ndarray | None) -> None:
    """Keeps the teachers' probabilities in the run so that `--resume` need not compute them again."""
    if probabilities is None or (run_dir / TEACHER_CACHE).is_file():
        return
    buffer = io.BytesIO()
    np.save(buffer, probabilities, allow_pickle=False)
    write_atomic(run_dir / TEACHER_CACHE, buffer.getvalue())
