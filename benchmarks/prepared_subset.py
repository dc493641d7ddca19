"""A seeded random subset of a prepared dataset's training faces, written as a new prepared directory
(val and test as they are; FER+ votes kept with their faces), for few-label experiments such as
fine-tuning on 1,000 faces (benchmarks/accuracy.md).

    python benchmarks/prepared_subset.py prepared/ferplus /tmp/ferplus-1k --train 1000 --seed 0
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from fertrain.data.dataset import MANIFEST, load_manifest
from fertrain.data.prepare import class_counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, required=True, help="training faces to keep")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    manifest = load_manifest(args.source)
    args.out.mkdir(parents=True)
    with np.load(args.source / "train.npz", allow_pickle=False) as arrays:
        train = {name: arrays[name] for name in arrays.files}
    kept = np.sort(np.random.default_rng(args.seed).choice(len(train["labels"]), args.train, replace=False))
    np.savez(args.out / "train.npz", **{name: array[kept] for name, array in train.items()})
    for split in ("val", "test"):
        if (args.source / f"{split}.npz").is_file():
            shutil.copy(args.source / f"{split}.npz", args.out / f"{split}.npz")
    manifest["splits"]["train"].update(
        count=args.train, class_counts=class_counts(train["labels"][kept], tuple(manifest["classes"]))
    )
    manifest["subset"] = {"of": str(args.source.resolve()), "train": args.train, "seed": args.seed}
    (args.out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(manifest["splits"]["train"]["class_counts"]))


if __name__ == "__main__":
    main()
