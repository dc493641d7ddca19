"""Scores every mean of K of the given models on a prepared split and prints the best of each size: how
the bundled models' members were chosen (fertrain/assets/README.md).

    python benchmarks/ensemble_search.py runs/ferplus-*-e60*/last.keras --data prepared/ferplus \
        --split val --sizes 2 3 4

Each model predicts the split once (through `fertrain evaluate`'s inference path); a mean is scored as
`evaluate` scores an ensemble: mean probabilities, accuracy on FER+'s strict-majority faces on data with
votes, else on every face. Whatever split chooses the members flatters their figures on it.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from fertrain.data.dataset import load_split, load_votes
from fertrain.data.ferplus import majority_mask
from fertrain.evaluation import check_classes
from fertrain.inference import load_classifier, predict_probabilities


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--tta", default="none")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument(
        "--two-fold", type=int, metavar="SEED", help="also the two-fold check, its halves drawn with SEED"
    )
    args = parser.parse_args()
    models = [load_classifier(path) for path in args.models]
    check_classes(models, Path(args.data))
    faces, labels = load_split(args.data, args.split)
    votes = load_votes(args.data, args.split)
    scored = majority_mask(votes) if votes is not None else np.ones(len(labels), dtype=bool)
    probabilities_by_model = {}
    for path, model in zip(args.models, models, strict=True):
        probabilities = predict_probabilities([model], faces, tta=args.tta)
        probabilities_by_model[path] = probabilities
        print(f"{100 * _correct(probabilities, labels)[scored].mean():6.2f}  {path}")
    halves = _halves(scored, args.two_fold) if args.two_fold is not None else []
    for size in args.sizes:
        combos = list(itertools.combinations(args.models, size))
        correct = [_correct(sum(probabilities_by_model[path] for path in combo), labels) for combo in combos]
        accuracies = [faces_correct[scored].mean() for faces_correct in correct]
        ranked = sorted(range(len(combos)), key=lambda index: -accuracies[index])
        print(f"best means of {size} of {len(args.models)} ({len(combos)} in all, {scored.sum()} faces):")
        for index in ranked[: args.top]:
            print(f"{100 * accuracies[index]:6.2f}  " + " + ".join(combos[index]))
        for chosen_on, scored_on in itertools.permutations(halves):
            best = max(range(len(combos)), key=lambda index: correct[index][chosen_on].mean())
            there, other = (100 * correct[best][half].mean() for half in (chosen_on, scored_on))
            print(
                f"two-fold, size {size}: chosen on {len(chosen_on)} faces ({there:.2f} there), "
                f"{other:.2f} on the other {len(scored_on)}: " + " + ".join(combos[best])
            )


def _halves(scored: np.ndarray, seed: int) -> list[np.ndarray]:
    """The scored faces' indices in two random halves."""
    indices = np.flatnonzero(scored)
    np.random.default_rng(seed).shuffle(indices)
    return [indices[: len(indices) // 2], indices[len(indices) // 2 :]]


def _correct(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per face: does the most probable class match the label."""
    return probabilities.argmax(axis=1) == labels


if __name__ == "__main__":
    main()
