"""Optimizers and learning-rate schedules from `TrainConfig`.

Schedules are functions of the optimizer step (0-based: `schedule(t)` is the rate of update t), so
they are exact under resume: the step counter is part of the restored optimizer state.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from fertrain.config import OptimizerConfig, ScheduleConfig, TrainConfig

# Normalization and bias parameters are not decayed: shrinking them only fights the normalization.
NO_DECAY_NAMES = ("bias", "gamma", "beta")


@keras.saving.register_keras_serializable(package="fertrain")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak` over `warmup_steps`, then half a cosine down to `floor` at `total_steps`.

    lr(t) = peak * (t + 1) / W                                   for t < W
    lr(t) = floor + (peak - floor) * (1 + cos(pi * p)) / 2,      p = min(1, (t - W) / (T - W))
    """

    def __init__(self, peak: float, total_steps: int, warmup_steps: int = 0, floor: float = 0.0):
        self.peak = peak
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.floor = floor

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = float(max(self.warmup_steps, 1))
        decay_steps = float(max(self.total_steps - self.warmup_steps, 1))
        progress = ops.clip((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        cosine = self.floor + (self.peak - self.floor) * 0.5 * (1.0 + ops.cos(math.pi * progress))
        warming = self.peak * (step + 1.0) / warmup
        return ops.where(step < self.warmup_steps, warming, cosine)

    def get_config(self):
        return {
            "peak": self.peak,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "floor": self.floor,
        }


@keras.saving.register_keras_serializable(package="fertrain")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """One-cycle policy (Smith 2018, cosine form as in PyTorch's OneCycleLR).

    Rises from peak / div_factor to `peak` over the first `rise_fraction` of the steps, then falls
    to `floor` at `total_steps`, both along half cosines.
    """

    def __init__(self, peak: float, total_steps: int, rise_fraction: float, div_factor: float, floor: float):
        self.peak = peak
        self.total_steps = total_steps
        self.rise_fraction = rise_fraction
        self.div_factor = div_factor
        self.floor = floor

    def __call__(self, step):
        step = ops.cast(step, "float32")
        start = self.peak / self.div_factor
        rise_steps = max(self.rise_fraction * self.total_steps, 1.0)
        fall_steps = max(self.total_steps - rise_steps, 1.0)
        rising = ops.clip(step / rise_steps, 0.0, 1.0)
        falling = ops.clip((step - rise_steps) / fall_steps, 0.0, 1.0)
        up = start + (self.peak - start) * 0.5 * (1.0 - ops.cos(math.pi * rising))
        down = self.floor + (self.peak - self.floor) * 0.5 * (1.0 + ops.cos(math.pi * falling))
        return ops.where(step < rise_steps, up, down)

    def get_config(self):
        return {
            "peak": self.peak,
            "total_steps": self.total_steps,
            "rise_fraction": self.rise_fraction,
            "div_factor": self.div_factor,
            "floor": self.floor,
        }


def build_schedule(
    schedule: ScheduleConfig, learning_rate: float, epochs: int, steps_per_epoch: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """A per-step schedule, or a plain rate for `constant` and `reduce_on_plateau` (a callback lowers it)."""
    total_steps = epochs * steps_per_epoch
    if schedule.name == "cosine":
        warmup_steps = round(schedule.warmup_epochs * steps_per_epoch)
        return WarmupCosine(learning_rate, total_steps, warmup_steps, schedule.min_learning_rate)
    if schedule.name == "one_cycle":
        return OneCycle(
            learning_rate,
            total_steps,
            schedule.one_cycle_start_fraction,
            schedule.one_cycle_div_factor,
            schedule.min_learning_rate,
        )
    return learning_rate


class WarmedUpAverage:
    """The weights' moving average (`train.ema`) with the momentum ramped up as min(ema, t / (t + 9))
    at update t (0-based; the first update starts the average from the weights it wrote).

    Keras' own average keeps ema^t of the initial weights: at 0.999 and 224 steps an epoch, a fifth
    of the network validated after 7 epochs was still its random start, and validation accuracy
    stayed near chance (18-23 %) for 12 epochs. With the ramp the average spans about the last ninth
    of the updates until it reaches `ema`.
    """

    def _update_model_variables_moving_average(self, trainable_variables):
        if not self.use_ema:
            return
        step = ops.cast(self.iterations, "float32")
        momentum = ops.minimum(self.ema_momentum, step / (step + 9.0))
        for variable, average in zip(trainable_variables, self._model_variables_moving_average, strict=True):
            if average is not None:
                kept = ops.cast(momentum, variable.dtype)
                average.assign(kept * average + (1.0 - kept) * variable)


class FreezableUpdates:
    """Leaves the variables named by `freeze` as they are: their gradients are dropped before the
    update, so neither the update nor weight decay touches them (and their optimizer state stays).

    The optimizer keeps tracking every variable, which Keras-on-JAX's stateless training step needs
    (it passes all of them, whatever `trainable` says). `freeze` takes effect when the training
    step is traced again (`make_train_function(force=True)`).
    """

    _frozen_indices: frozenset[int] = frozenset()

    def freeze(self, variables) -> None:
        self._frozen_indices = frozenset(self._get_variable_index(variable) for variable in variables)

    def apply(self, grads, trainable_variables=None):
        if self._frozen_indices:
            variables = trainable_variables if trainable_variables is not None else self._trainable_variables
            kept = [
                (grad, variable)
                for grad, variable in zip(grads, variables, strict=True)
                if self._get_variable_index(variable) not in self._frozen_indices
            ]
            grads, trainable_variables = [grad for grad, _ in kept], [variable for _, variable in kept]
        return super().apply(grads, trainable_variables)


class Adam(FreezableUpdates, WarmedUpAverage, keras.optimizers.Adam):
    pass


class AdamW(FreezableUpdates, WarmedUpAverage, keras.optimizers.AdamW):
    pass


class SGD(FreezableUpdates, WarmedUpAverage, keras.optimizers.SGD):
    pass


class RMSprop(FreezableUpdates, WarmedUpAverage, keras.optimizers.RMSprop):
    pass


def build_optimizer(
    train: TrainConfig, learning_rate: float | keras.optimizers.schedules.LearningRateSchedule
) -> keras.optimizers.Optimizer:
    settings: OptimizerConfig = train.optimizer
    # AdamW insists on a float; for the others None skips the decay step entirely.
    common = {
        "weight_decay": train.weight_decay if settings.name == "adamw" else train.weight_decay or None,
        "use_ema": train.ema > 0,
        "ema_momentum": train.ema or 0.99,
    }
    if settings.name in ("adam", "adamw"):
        adam = AdamW if settings.name == "adamw" else Adam
        optimizer = adam(
            learning_rate,
            beta_1=settings.beta_1,
            beta_2=settings.beta_2,
            epsilon=settings.epsilon,
            **common,
        )
    elif settings.name == "sgd":
        optimizer = SGD(learning_rate, momentum=settings.momentum, nesterov=settings.nesterov, **common)
    else:
        optimizer = RMSprop(learning_rate, momentum=settings.momentum, epsilon=settings.epsilon, **common)
    if train.weight_decay:
        optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY_NAMES))
    return optimizer
