"""Inference runs several batches at once on TensorFlow; that must not change a single probability."""

from __future__ import annotations

from dataclasses import replace

import keras
import numpy as np
import pytest

from fertrain.benchmark import synthetic_faces
from fertrain.config import load_config
from fertrain.inference import TF_BATCHES_IN_FLIGHT, load_classifier, predict_probabilities
from fertrain.models import build_model


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="concurrent batches are TensorFlow's")
@pytest.mark.parametrize("saved_as", ["keras", "savedmodel"])
def test_batches_in_flight_give_the_one_at_a_time_probabilities(tmp_path, saved_as) -> None:
    model = build_model(load_config("configs/mini_xception.yaml").model)
    rng = np.random.default_rng(0)
    # Moving statistics away from 0 and 1, as after training (inference folds them into the convolutions).
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0.0, 0.3, layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, layer.moving_variance.shape))
    if saved_as == "keras":
        target = tmp_path / "model.keras"
        model.save(target)
    else:
        target = tmp_path / "savedmodel"
        model.export(target, format="tf_saved_model", verbose=False)
    classifier = load_classifier(target)
    assert classifier.batches_in_flight == TF_BATCHES_IN_FLIGHT > 1
    faces, _ = synthetic_faces(300, 48, 7, seed=1)  # four full batches of 64 and a partial one

    concurrent = predict_probabilities([classifier], faces, batch_size=64)
    one_at_a_time = predict_probabilities([replace(classifier, batches_in_flight=1)], faces, batch_size=64)
    np.testing.assert_allclose(concurrent, one_at_a_time, rtol=0, atol=1e-6)
    # Each row is its own face's, in order: the same face alone gives the same probabilities.
    np.testing.assert_allclose(
        concurrent[[0, 299]], predict_probabilities([classifier], faces[[0, 299]]), atol=1e-6
    )
