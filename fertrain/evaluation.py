"""`fertrain evaluate`: metrics of one model or an ensemble on a prepared split, optionally with TTA."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fertrain.data.dataset import dataset_classes, load_split, load_votes
from fertrain.data.ferplus import majority_mask
from fertrain.errors import DataError
from fertrain.fileio import write_atomic
from fertrain.inference import (
    LoadedModel,
    ensemble_classes,
    load_classifier,
    predict_probabilities,
    run_data_dir,
)
from fertrain.metrics import classification_metrics
from fertrain.plots import confusion_png


@dataclass(frozen=True)
class Evaluation:
    """`summary` is the JSON object `evaluate --json` prints; the arrays are per image scored (on FER+
    data: the faces with a strict majority)."""

    summary: dict[str, Any]
    faces: np.ndarray
    labels: np.ndarray
    probabilities: np.ndarray
    written: tuple[Path, ...]


def evaluation_file(run_dir: Path, split: str) -> Path:
    return run_dir / f"evaluation-{split}.json"


def confusion_file(run_dir: Path, split: str) -> Path:
    return run_dir / f"confusion-{split}.png"


def _checked_labels(labels: np.ndarray, data_dir: Path, split: str, classes: tuple[str, ...]) -> np.ndarray:
    if len(labels) == 0:
        raise DataError(f"{data_dir}: split {split!r} has no images")
    if labels.max() >= len(classes):
        row = int(np.argmax(labels >= len(classes)))
        raise DataError(
            f"{data_dir}/{split}.npz: label {labels[row]} at row {row}; expected 0..{len(classes) - 1}"
        )
    return labels


def check_classes(models: Sequence[LoadedModel], data_dir: Path) -> tuple[str, ...]:
    """The classes the models and the data share; a model that names other classes (or the same
    in another order) cannot be scored on this data: fertrain maps no class to another by name."""
    classes = ensemble_classes(models)
    data_classes = dataset_classes(data_dir)
    if classes != data_classes:
        raise DataError(
            f"{models[0].path}: predicts ({', '.join(classes)}) but {data_dir} is labelled "
            f"({', '.join(data_classes)}); evaluate a model on data with its own classes"
        )
    return classes


def ferplus_accuracies(labels: np.ndarray, probabilities: np.ndarray, votes: np.ndarray) -> dict[str, Any]:
    """FER+'s two figures: accuracy on the faces with a strict majority (the official one, as in
    Barsoum et al. and Microsoft's code), and on every face whose votes' argmax is an emotion."""
    correct = np.argmax(probabilities, axis=1) == labels
    majority = majority_mask(votes)
    return {
        "majority_accuracy": float(correct[majority].mean()) if majority.any() else None,
        "majority_faces": int(majority.sum()),
        "argmax_accuracy": float(correct.mean()),
        "argmax_faces": int(len(labels)),
    }


def evaluate(
    targets: Sequence[str | Path | LoadedModel],
    data_dir: str | Path | None = None,
    split: str = "test",
    tta: str = "none",
    normalize: str = "raw",
    batch_size: int = 256,
    out: str | Path | None = None,
    write_run_files: bool = True,
) -> Evaluation:
    """Evaluates the mean prediction of `targets` on `split`.

    `data_dir` defaults to the data the first target (a run directory) was trained on. When the
    only target is a run directory (and `write_run_files`), evaluation-<split>.json and
    confusion-<split>.png are written into it; `out` also receives the JSON summary. On data with
    FER+ votes the metrics are those of the strict-majority faces (FER+'s official figure);
    `ferplus` adds the argmax figure.
    """
    if not targets:
        raise DataError("no model given: pass a run directory or a model file")
    models = [load_classifier(target) for target in targets]
    if data_dir is None:
        if models[0].run_dir is None:
            raise DataError(f"{models[0].path}: not a run directory, so pass the data with --data DIR")
        data_dir = run_data_dir(models[0].run_dir)
    data_dir = Path(data_dir)
    classes = check_classes(models, data_dir)
    faces, labels = load_split(data_dir, split)
    labels = _checked_labels(labels, data_dir, split, classes)
    votes = load_votes(data_dir, split)
    if votes is not None and not majority_mask(votes).any():
        raise DataError(
            f"{data_dir}/{split}.npz: no face has a strict majority of FER+ votes, so there is none to "
            "score (FER+'s figures count only those faces)"
        )
    probabilities = predict_probabilities(models, faces, normalize=normalize, tta=tta, batch_size=batch_size)
    ferplus = {}
    if votes is not None:
        ferplus = {"ferplus": ferplus_accuracies(labels, probabilities, votes)}
        scored = majority_mask(votes)
        faces, labels, probabilities = faces[scored], labels[scored], probabilities[scored]
    summary = {
        "models": [str(model.path) for model in models],
        "data_dir": str(data_dir),
        "split": split,
        "tta": tta,
        "normalize": normalize,
        **classification_metrics(labels, probabilities, classes),
        **ferplus,
    }
    run_dir = models[0].run_dir if len(models) == 1 and write_run_files else None
    written = _write_outputs(summary, run_dir, out)
    return Evaluation(summary, faces, labels, probabilities, written)


def _write_outputs(summary: dict[str, Any], run_dir: Path | None, out: str | Path | None) -> tuple[Path, ...]:
    text = json.dumps(summary, indent=2) + "\n"
    written = []
    if run_dir is not None:
        split = summary["split"]
        written.append(write_atomic(evaluation_file(run_dir, split), text))
        title = f"{run_dir.name}: {split} (accuracy {summary['accuracy']:.2%})"
        image = confusion_png(
            summary["confusion_matrix"], summary["confusion_matrix_normalized"], summary["class_names"], title
        )
        written.append(write_atomic(confusion_file(run_dir, split), image))
    if out is not None:
        written.append(write_atomic(out, text))
    return tuple(written)
