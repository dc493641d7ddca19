"""`fertrain evaluate`: metrics of one model or an ensemble on a prepared split, optionally with TTA."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fertrain.config import EMOTIONS
from fertrain.data.dataset import load_split
from fertrain.errors import DataError
from fertrain.fileio import write_atomic
from fertrain.inference import load_classifier, predict_probabilities, run_data_dir
from fertrain.metrics import classification_metrics
from fertrain.plots import confusion_png


@dataclass(frozen=True)
class Evaluation:
    """`summary` is the JSON object `evaluate --json` prints; the arrays are per image."""

    summary: dict[str, Any]
    faces: np.ndarray
    labels: np.ndarray
    probabilities: np.ndarray
    written: tuple[Path, ...]


def evaluation_file(run_dir: Path, split: str) -> Path:
    return run_dir / f"evaluation-{split}.json"


def confusion_file(run_dir: Path, split: str) -> Path:
    return run_dir / f"confusion-{split}.png"


def _checked_labels(labels: np.ndarray, data_dir: Path, split: str) -> np.ndarray:
    if len(labels) == 0:
        raise DataError(f"{data_dir}: split {split!r} has no images")
    if labels.max() >= len(EMOTIONS):
        row = int(np.argmax(labels >= len(EMOTIONS)))
        raise DataError(
            f"{data_dir}/{split}.npz: label {labels[row]} at row {row}; expected 0..{len(EMOTIONS) - 1}"
        )
    return labels


def evaluate(
    targets: Sequence[str | Path],
    data_dir: str | Path | None = None,
    split: str = "test",
    tta: str = "none",
    normalize: str = "raw",
    batch_size: int = 256,
    out: str | Path | None = None,
) -> Evaluation:
    """Evaluates the mean prediction of `targets` on `split`.

    `data_dir` defaults to the data the first target (a run directory) was trained on. When the
    only target is a run directory, evaluation-<split>.json and confusion-<split>.png are written
    into it; `out` also receives the JSON summary.
    """
    if not targets:
        raise DataError("no model given: pass a run directory or a model file")
    models = [load_classifier(target) for target in targets]
    if data_dir is None:
        if models[0].run_dir is None:
            raise DataError(f"{models[0].path}: not a run directory, so pass the data with --data DIR")
        data_dir = run_data_dir(models[0].run_dir)
    data_dir = Path(data_dir)
    faces, labels = load_split(data_dir, split)
    labels = _checked_labels(labels, data_dir, split)
    probabilities = predict_probabilities(models, faces, normalize=normalize, tta=tta, batch_size=batch_size)
    summary = {
        "models": [str(model.path) for model in models],
        "data_dir": str(data_dir),
        "split": split,
        "tta": tta,
        "normalize": normalize,
        **classification_metrics(labels, probabilities),
    }
    written = _write_outputs(summary, models[0].run_dir if len(models) == 1 else None, out)
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
