"""Faces per second of any model through `fertrain evaluate`'s own inference path, on a prepared split.

    python benchmarks/inference_speed.py fertrain/assets/model.keras --data prepared/fer2013 --split val

Times `predict_probabilities` (what `fertrain evaluate` runs, batch 256, TensorFlow keeping two batches
in flight) over the whole split after one warm-up call, and prints the best of `--repeats` passes.
"""

from __future__ import annotations

import argparse
import time

from fertrain.data.dataset import load_split
from fertrain.inference import load_classifier, predict_probabilities


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--tta", default="none")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    faces, _ = load_split(args.data, args.split)
    model = load_classifier(args.model)
    predict_probabilities([model], faces[:512], tta=args.tta)
    best = 0.0
    for _ in range(args.repeats):
        start = time.perf_counter()
        predict_probabilities([model], faces, tta=args.tta)
        best = max(best, len(faces) / (time.perf_counter() - start))
    print(f"{args.model}: {best:,.0f} faces/s on {len(faces)} faces ({args.split}, tta {args.tta})")


if __name__ == "__main__":
    main()
