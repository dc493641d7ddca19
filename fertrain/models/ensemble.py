"""Several trained networks as one Keras model whose output is the mean of their probabilities.

`fertrain evaluate RUN1 RUN2` averages models at prediction time; this builds the same average as a
single model so that it can ship as one `.keras` file (or be exported like any network).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from fertrain.errors import ModelError
from fertrain.models.class_names import default_class_names, saved_class_names, with_class_names


def average_ensemble(members: Sequence[keras.Model]) -> keras.Model:
    """One model: raw pixels in, the mean of the members' softmax outputs out, named by the members'
    class names (they must agree)."""
    if len(members) < 2:
        raise ModelError(f"an ensemble needs at least two models, got {len(members)}")
    shapes = {tuple(member.inputs[0].shape[1:]) for member in members}
    if len(shapes) != 1:
        raise ModelError(f"ensemble members must take the same input shape, got {sorted(shapes)}")
    # A member saved without names means what `fertrain.inference` reads it as (7 outputs: FER2013's).
    names = {
        saved_class_names(member) or default_class_names(member.outputs[0].shape[-1]) for member in members
    }
    if len(names) != 1:
        raise ModelError(f"ensemble members must name the same classes, got {sorted(map(str, names))}")
    classes = names.pop()
    inputs = keras.Input(shapes.pop(), name="pixels")
    outputs = []
    for index, member in enumerate(members, start=1):
        # Functional models need unique layer names; every fertrain network is named after its architecture.
        member.name = f"member{index}_{member.name}"
        outputs.append(member(inputs))
    mean = keras.layers.Average(name="mean_probabilities", dtype="float32")(outputs)
    if classes is not None:
        mean = with_class_names(mean, classes)
    return keras.Model(inputs, mean, name="ensemble")
