"""The names of a model's output columns, saved inside the model itself.

A prepared dataset names its classes (FER2013's 7 emotions, FER+'s 8, an image folder's folders);
`fertrain train` ends the network with a `ClassNames` layer holding them, so that a `.keras` file on
its own tells `evaluate`, `predict`, `report` and `export` what each probability means. The layer is
the identity: it costs nothing and changes no output, unless `fertrain calibrate` gave it a
temperature T != 1: it then returns softmax(log(p) / T), temperature scaling (Guo et al. 2017)
applied to probabilities, so the calibration travels inside the model file to every export.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from fertrain.data.records import FER2013_CLASSES

CLASS_NAMES_LAYER = "class_names"
# Probabilities are floored here before their log, so that a float32 softmax that underflowed to 0 gives
# a finite score; `fertrain.calibration` fits with the same floor.
PROBABILITY_FLOOR = 1e-12


@keras.saving.register_keras_serializable(package="fertrain")
class ClassNames(keras.layers.Layer):
    """Identity on the [N, classes] probabilities (softmax(log(p) / temperature) when the temperature
    is not 1); `classes` names their columns, in order."""

    def __init__(self, classes: Sequence[str], temperature: float = 1.0, **kwargs):
        kwargs.setdefault("name", CLASS_NAMES_LAYER)
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.classes = tuple(str(name) for name in classes)
        self.temperature = float(temperature)

    def call(self, probabilities):
        if self.temperature == 1.0:
            return probabilities
        ops = keras.ops
        scores = ops.log(ops.maximum(probabilities, PROBABILITY_FLOOR))
        return ops.softmax(scores / self.temperature, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "classes": list(self.classes), "temperature": self.temperature}


def with_class_names(outputs, classes: Sequence[str]):
    """`outputs` (a symbolic [N, K] tensor) passed through a `ClassNames` layer naming its K columns."""
    if len(classes) != outputs.shape[-1]:
        raise ValueError(f"{len(classes)} class names for {outputs.shape[-1]} outputs")
    return ClassNames(classes)(outputs)


def saved_class_names(model: keras.Model) -> tuple[str, ...] | None:
    """The names a model's output layer carries, or None for a model saved without them."""
    last = model.layers[-1] if model.layers else None
    return last.classes if isinstance(last, ClassNames) else None


def default_class_names(num_outputs: int) -> tuple[str, ...] | None:
    """Names for a model saved without any: FER2013's emotions for 7 outputs (what every model meant
    before class lists were data, and what foreign FER2013 models such as `fer`'s mean), else None."""
    return FER2013_CLASSES if num_outputs == len(FER2013_CLASSES) else None
