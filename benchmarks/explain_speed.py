"""Faces per second of Grad-CAM (`fertrain predict --explain`'s maps) on a prepared split.

    python benchmarks/explain_speed.py fertrain/assets/model.keras --data prepared/fer2013 --faces 1024

Times `GradCam.face_maps` (one forward pass to the feature map and one through the head and back, per
network, batches of 64) for each face's top class over the first `--faces` faces after one warm-up
call, and prints the best of `--repeats` passes. Face detection and writing the images are not timed.
"""

from __future__ import annotations

import argparse
import time

from fertrain.data.dataset import load_split
from fertrain.explain import GradCam
from fertrain.inference import load_classifier, predict_probabilities


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--faces", type=int, default=1024)
    parser.add_argument("--normalize", default="raw")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    faces = load_split(args.data, args.split)[0][: args.faces]
    model = load_classifier(args.model)
    explainer = GradCam(model)
    targets = predict_probabilities([model], faces, normalize=args.normalize).argmax(axis=1)
    explainer.face_maps(faces[:128], targets[:128], args.normalize)
    best = 0.0
    for _ in range(args.repeats):
        start = time.perf_counter()
        explainer.face_maps(faces, targets, args.normalize)
        best = max(best, len(faces) / (time.perf_counter() - start))
    where = ", ".join(explainer.layers)
    print(f"{args.model}: {best:,.0f} faces/s explained ({len(faces)} {args.split} faces, at {where})")


if __name__ == "__main__":
    main()
