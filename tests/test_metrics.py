"""Every number `fertrain evaluate` reports, compared with scikit-learn on fixed predictions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from fertrain.data.dataset import FER2013_CLASSES
from fertrain.metrics import classification_metrics

CLASSES = list(range(7))


def _random_predictions(seed: int, n: int, missing_class: int | None = None):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 7, n)
    logits = rng.normal(size=(n, 7)) + 2.0 * np.eye(7)[labels]
    if missing_class is not None:
        labels[labels == missing_class] = (missing_class + 1) % 7
        logits[:, missing_class] -= 50.0
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probabilities


@pytest.mark.parametrize("seed, missing_class", [(0, None), (1, None), (2, 1)])
def test_metrics_equal_scikit_learn(seed, missing_class):
    labels, probabilities = _random_predictions(seed, 500, missing_class)
    predictions = probabilities.argmax(axis=1)
    got = classification_metrics(labels, probabilities, FER2013_CLASSES)

    assert got["num_images"] == 500
    assert got["accuracy"] == skm.accuracy_score(labels, predictions)
    assert got["top2_accuracy"] == skm.top_k_accuracy_score(labels, probabilities, k=2, labels=CLASSES)
    assert got["loss"] == pytest.approx(skm.log_loss(labels, probabilities, labels=CLASSES), rel=1e-12)
    assert got["macro_f1"] == pytest.approx(skm.f1_score(labels, predictions, average="macro"), rel=1e-12)
    assert got["weighted_f1"] == pytest.approx(
        skm.f1_score(labels, predictions, average="weighted"), rel=1e-12
    )
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, predictions, labels=CLASSES, zero_division=0
    )
    np.testing.assert_allclose([c["precision"] for c in got["per_class"]], precision, rtol=1e-12)
    np.testing.assert_allclose([c["recall"] for c in got["per_class"]], recall, rtol=1e-12)
    np.testing.assert_allclose([c["f1"] for c in got["per_class"]], f1, rtol=1e-12)
    assert [c["support"] for c in got["per_class"]] == support.tolist()
    assert got["confusion_matrix"] == skm.confusion_matrix(labels, predictions, labels=CLASSES).tolist()
    normalized = skm.confusion_matrix(labels, predictions, labels=CLASSES, normalize="true")
    np.testing.assert_allclose(got["confusion_matrix_normalized"], np.nan_to_num(normalized), rtol=1e-12)


def test_class_absent_from_labels_and_predictions_is_left_out_of_macro_average():
    labels, probabilities = _random_predictions(2, 300, missing_class=1)
    got = classification_metrics(labels, probabilities, FER2013_CLASSES)
    disgust = got["per_class"][1]
    assert disgust == {"class": "disgust", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert got["confusion_matrix_normalized"][1] == [0.0] * 7
    others = [c["f1"] for i, c in enumerate(got["per_class"]) if i != 1]
    assert got["macro_f1"] == pytest.approx(np.mean(others), rel=1e-12)


def test_hand_computed_small_case():
    labels = np.array([0, 0, 3, 3, 6])
    probabilities = np.full((5, 7), 0.05)
    for row, (first, second) in enumerate([(0, 3), (3, 0), (3, 6), (6, 0), (6, 3)]):
        probabilities[row, first] = 0.5
        probabilities[row, second] = 0.25
    got = classification_metrics(labels, probabilities, FER2013_CLASSES)
    assert got["accuracy"] == 3 / 5  # rows 0, 2 and 4
    assert got["top2_accuracy"] == 4 / 5  # row 3: true class 3 is not in {6, 0}
    assert got["loss"] == pytest.approx(-(3 * np.log(0.5) + np.log(0.25) + np.log(0.05)) / 5)
    assert got["confusion_matrix"][0] == [1, 0, 0, 1, 0, 0, 0]
    assert got["per_class"][6]["precision"] == 0.5
