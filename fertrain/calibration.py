"""`fertrain calibrate`: temperature scaling, so that a 0.9 is right about nine times in ten.

Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", 2017) divides the
model's log-probabilities by one scalar T fitted to minimise the negative log-likelihood on held-out
faces (PublicTest by default). Dividing by a positive T keeps every row's order, so the top class and
accuracy cannot change. The calibrated model is the model with its `ClassNames` output layer given T
(`fertrain.models.class_names`), saved as a `.keras` file, so that `predict`, `evaluate`, `export` and
the Python API all use the calibrated probabilities, and every export carries them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fertrain.errors import ConfigError, DataError, ModelError
from fertrain.evaluation import evaluate
from fertrain.fileio import write_atomic
from fertrain.inference import load_classifier, run_data_dir
from fertrain.metrics import classification_metrics
from fertrain.models.class_names import PROBABILITY_FLOOR

CALIBRATED_MODEL_FILE = "calibrated.keras"  # in the run directory, beside model.keras
CALIBRATION_RECORD = "calibration.json"
# The temperatures searched, wide enough for any real network: a model with T at either end is
# all but always right (T -> 0) or its probabilities carry no information (T -> inf).
TEMPERATURE_RANGE = (1e-3, 1e3)
_BISECTIONS = 80  # halves the log-temperature interval to below float64 resolution
HEADLINE = ("accuracy", "ece", "nll")


@dataclass(frozen=True)
class Calibration:
    """The fitted temperature, the calibrated model written, and the headline metrics on the fitting
    split before and after; `record` is the run's calibration.json (None for a model file)."""

    temperature: float
    model: Path
    record: Path | None
    split: str
    num_images: int
    before: dict[str, float]
    after: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "model": str(self.model),
            "record": None if self.record is None else str(self.record),
        }


def _scores(probabilities: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(np.asarray(probabilities, dtype=np.float64), PROBABILITY_FLOOR))


def _softmax(scores: np.ndarray) -> np.ndarray:
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def tempered(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(p) / T) row by row: what a `ClassNames` layer with this temperature outputs."""
    return _softmax(_scores(probabilities) / temperature)


def fit_temperature(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The T in TEMPERATURE_RANGE minimising the mean NLL of softmax(log(p) / T) against `labels`.

    With b = 1/T the NLL, mean(logsumexp(b * z) - b * z_true), is convex in b and its slope
    mean(E_softmax(b z)[z] - z_true) rises with b, so bisecting on the slope's sign finds the minimum.
    """
    scores = _scores(probabilities)
    true_scores = scores[np.arange(len(scores)), np.asarray(labels, dtype=np.int64)]

    def slope(inverse_temperature: float) -> float:
        expected = (_softmax(inverse_temperature * scores) * scores).sum(axis=1)
        return float(np.mean(expected - true_scores))

    low, high = np.log(1 / TEMPERATURE_RANGE[1]), np.log(1 / TEMPERATURE_RANGE[0])
    for _ in range(_BISECTIONS):
        middle = (low + high) / 2
        if slope(np.exp(middle)) > 0:
            high = middle
        else:
            low = middle
    return float(np.exp(-(low + high) / 2))


def calibrated_model(model, classes: Sequence[str], temperature: float):
    """A Keras model whose output is `model`'s tempered by `temperature` in a `ClassNames` layer.

    A model that ends in `ClassNames` gets a new one in its place, its temperature the product of both
    (calibrating a calibrated model refines it); any other, the bundled one among them, gains one.
    """
    import keras

    from fertrain.models.class_names import ClassNames

    last = model.layers[-1] if model.layers else None
    if isinstance(last, ClassNames):
        outputs, temperature = last.input, last.temperature * temperature
    else:
        outputs = model.outputs[0]
    return keras.Model(model.inputs, ClassNames(classes, temperature)(outputs), name=model.name)


def _headline(summary: dict[str, Any]) -> dict[str, float]:
    return {key: summary[key] for key in HEADLINE}


def calibrate(
    target: str | Path,
    data_dir: str | Path | None = None,
    split: str = "val",
    normalize: str = "raw",
    out: str | Path | None = None,
    batch_size: int = 256,
) -> Calibration:
    """Fits the temperature of `target` (a run directory or Keras model file) on `split` and writes the
    calibrated model: to `out`, by default the run's calibrated.keras. A run directory also gets
    calibration.json (the temperature, the data it was fitted on, the metrics before and after)."""
    from fertrain.training.callbacks import save_atomic

    model = load_classifier(target)
    if model.keras_model is None:
        raise ModelError(
            f"{model.path}: a SavedModel cannot be calibrated; calibrate the .keras model it came from"
        )
    run_dir = model.run_dir
    if out is None:
        if run_dir is None:
            raise ConfigError(f"{model.path}: not a run directory, so name the calibrated file with --out")
        out = run_dir / CALIBRATED_MODEL_FILE
    out = Path(out)
    if out.suffix != ".keras":
        raise ConfigError(f"{out}: the calibrated model is a Keras file; give it the .keras suffix")
    if data_dir is None:
        if run_dir is None:
            raise DataError(f"{model.path}: not a run directory, so pass the data with --data DIR")
        data_dir = run_data_dir(run_dir)
    # Scored as a plain model, so that evaluate leaves the run's evaluation-SPLIT.json alone.
    scored = dataclasses.replace(model, run_dir=None)
    evaluation = evaluate([scored], data_dir, split=split, normalize=normalize, batch_size=batch_size)
    temperature = fit_temperature(evaluation.labels, evaluation.probabilities)
    classes = tuple(evaluation.summary["class_names"])
    calibrated = tempered(evaluation.probabilities, temperature)
    after = classification_metrics(evaluation.labels, calibrated, classes)
    save_atomic(calibrated_model(model.keras_model, classes, temperature), out)
    result = Calibration(
        temperature,
        out,
        None if run_dir is None else run_dir / CALIBRATION_RECORD,
        split,
        evaluation.summary["num_images"],
        _headline(evaluation.summary),
        _headline(after),
    )
    if result.record is not None:
        record = {
            **result.to_dict(),
            "source": str(model.path),
            "data_dir": str(data_dir),
            "normalize": normalize,
        }
        write_atomic(result.record, json.dumps(record, indent=2) + "\n")
    return result
