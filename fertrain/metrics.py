"""Classification metrics computed from labels and predicted probabilities (pure numpy).

Definitions follow scikit-learn's so that numbers agree with it exactly: a ratio whose denominator
is zero counts as 0, and macro/weighted averages run over the classes that occur in the labels or
the predictions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# The headline numbers of `classification_metrics` and how the terminal and the report label them.
SUMMARY_METRICS = (
    ("accuracy", "accuracy"),
    ("top2_accuracy", "top-2 accuracy"),
    ("loss", "loss (NLL)"),
    ("ece", "ECE (15 bins)"),
    ("macro_f1", "macro F1"),
    ("weighted_f1", "weighted F1"),
)
PER_CLASS_COLUMNS = ("class", "precision", "recall", "F1", "support")
# Guo et al. (2017)'s reliability bins: equal-width confidence intervals ((m-1)/M, m/M].
CALIBRATION_BINS = 15


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    out = np.zeros(np.broadcast(numerator, denominator).shape, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def confusion_counts(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """[true class, predicted class] counts."""
    flat = labels.astype(np.int64) * num_classes + predictions.astype(np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def cross_entropy(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean categorical cross-entropy of probabilities, clipped away from 0 and 1 by float64 epsilon."""
    eps = np.finfo(np.float64).eps
    true_probability = probabilities[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(true_probability, eps, 1 - eps))))


def top_k_accuracy(labels: np.ndarray, probabilities: np.ndarray, k: int) -> float:
    """Share of images whose true class is among the k most probable (ties resolved by class index,
    the higher index ranking first, as scikit-learn does)."""
    ranked = np.argsort(probabilities, axis=1, kind="mergesort")[:, ::-1][:, :k]
    return float(np.mean(np.any(ranked == labels[:, None], axis=1)))


def reliability_bins(
    labels: np.ndarray, probabilities: np.ndarray, bins: int = CALIBRATION_BINS
) -> list[dict[str, Any]]:
    """Per equal-width bin of top-1 confidence ((m-1)/M, m/M], a confidence of 0 in the first): its
    bounds, how many images fall in it, their accuracy and mean confidence (None when empty)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    hits = np.bincount(index, weights=correct, minlength=bins)
    confidences = np.bincount(index, weights=confidence, minlength=bins)
    return [
        {
            "lower": m / bins,
            "upper": (m + 1) / bins,
            "count": int(counts[m]),
            "accuracy": float(hits[m] / counts[m]) if counts[m] else None,
            "confidence": float(confidences[m] / counts[m]) if counts[m] else None,
        }
        for m in range(bins)
    ]


def expected_calibration_error(reliability: list[dict[str, Any]]) -> float:
    """ECE = sum over bins of |B| / N * |accuracy(B) - confidence(B)|, from `reliability_bins`."""
    total = sum(row["count"] for row in reliability)
    return float(
        sum(row["count"] * abs(row["accuracy"] - row["confidence"]) for row in reliability if row["count"])
        / total
    )


def classification_metrics(
    labels: np.ndarray, probabilities: np.ndarray, class_names: tuple[str, ...]
) -> dict[str, Any]:
    """Every number `fertrain evaluate` reports, as plain JSON-ready Python values.

    `labels` are class indices [N]; `probabilities` are [N, num_classes] rows summing to 1.
    """
    labels = np.asarray(labels).astype(np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    num_classes = len(class_names)
    if probabilities.shape != (len(labels), num_classes):
        raise ValueError(
            f"expected probabilities of shape ({len(labels)}, {num_classes}), got {probabilities.shape}"
        )
    predictions = np.argmax(probabilities, axis=1)
    counts = confusion_counts(labels, predictions, num_classes)
    true_positives = np.diag(counts).astype(np.float64)
    support = counts.sum(axis=1)
    predicted = counts.sum(axis=0)
    precision = _safe_divide(true_positives, predicted)
    recall = _safe_divide(true_positives, support)
    f1 = _safe_divide(2 * true_positives, support + predicted)
    present = (support + predicted) > 0
    reliability = reliability_bins(labels, probabilities)
    loss = cross_entropy(labels, probabilities)
    return {
        "num_images": int(len(labels)),
        "accuracy": float(true_positives.sum() / len(labels)),
        "top2_accuracy": top_k_accuracy(labels, probabilities, k=2),
        "loss": loss,
        "nll": loss,  # the same number: cross-entropy against the labels is the negative log-likelihood
        "ece": expected_calibration_error(reliability),
        "reliability": reliability,
        "macro_f1": float(f1[present].mean()),
        "weighted_f1": float(np.sum(f1 * support) / support.sum()),
        "per_class": [
            {
                "class": name,
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        ],
        "confusion_matrix": counts.tolist(),
        "confusion_matrix_normalized": _safe_divide(counts, support[:, None]).tolist(),
        "class_names": list(class_names),
    }
