"""Temperature scaling measured on faces it was not fitted on: two-fold cross-validation on one split.

    python benchmarks/calibration_folds.py bundled --data prepared/fer2013 --split val

`fertrain calibrate` fits T on PublicTest and reports ECE and NLL on the same faces; this script
splits the split in two halves (seeded shuffle), fits T on each half and scores the other, and
prints the held-out ECE and NLL before and after, summed over both halves (each face scored once).
"""

from __future__ import annotations

import argparse

import numpy as np

from fertrain.calibration import fit_temperature, tempered
from fertrain.data.dataset import dataset_classes, load_split
from fertrain.inference import load_classifier, predict_probabilities
from fertrain.metrics import classification_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--normalize", default="raw")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    faces, labels = load_split(args.data, args.split)
    classes = dataset_classes(args.data)
    probabilities = predict_probabilities([load_classifier(args.model)], faces, normalize=args.normalize)
    halves = np.array_split(np.random.default_rng(args.seed).permutation(len(labels)), 2)
    calibrated = np.empty_like(probabilities)
    temperatures = []
    for fit, score in (halves, halves[::-1]):
        temperatures.append(fit_temperature(labels[fit], probabilities[fit]))
        calibrated[score] = tempered(probabilities[score], temperatures[-1])
    before = classification_metrics(labels, probabilities, classes)
    after = classification_metrics(labels, calibrated, classes)
    print(
        f"{args.model}: T fitted on each half {temperatures[0]:.4f} / {temperatures[1]:.4f}; held out: "
        f"ECE {before['ece']:.4f} -> {after['ece']:.4f}, NLL {before['nll']:.4f} -> {after['nll']:.4f}, "
        f"accuracy {before['accuracy']:.4f} -> {after['accuracy']:.4f}"
    )


if __name__ == "__main__":
    main()
