"""Rebuilds data/sample/fer2013_sample.csv.gz, the small FER2013 sample bundled with fertrain.

    python data/sample/make_sample.py ../shared/data/fer2013_training_publictest.csv.gz

A stratified, seeded draw of original `fer2013.csv` lines, kept byte for byte and, within each
split, in source order. The development copy of FER2013 withholds PrivateTest, so the test rows
are a second draw of PublicTest lines, disjoint from the val draw and relabelled `PrivateTest`
(only their Usage field changes). They skip every PublicTest face whose pixels a Training row
repeats (FER2013 has 280 such duplicates), so no model trained on Training, the bundled one
included, has seen a test face. The sample is written to a temporary file and renamed into place.
"""

from __future__ import annotations

import argparse
import gzip
import os
import random
from collections import defaultdict
from pathlib import Path

HEADER = b"emotion,pixels,Usage\n"
NUM_CLASSES = 7
DEFAULT_OUT = Path(__file__).with_name("fer2013_sample.csv.gz")


def read_lines(source: Path) -> list[bytes]:
    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rb") as handle:
        lines = handle.read().splitlines(keepends=True)
    if lines[0] != HEADER:
        raise SystemExit(f"{source}: line 1: expected header {HEADER!r}, got {lines[0][:40]!r}")
    return lines[1:]


def fields(line: bytes) -> tuple[int, bytes, str]:
    """(emotion, pixels, Usage) of one CSV line."""
    emotion, pixels, usage = line.rstrip(b"\r\n").split(b",")
    return int(emotion), pixels, usage.decode("ascii")


def draw(rows: list[tuple], indices: list[int], per_class: int, rng: random.Random) -> list[int]:
    """Up to `per_class` of `indices` of each class, sorted; `rows` holds each line's `fields`."""
    by_class = defaultdict(list)
    for index in indices:
        by_class[rows[index][0]].append(index)
    drawn = []
    for emotion in range(NUM_CLASSES):
        pool = by_class[emotion]
        rng.shuffle(pool)
        drawn += pool[:per_class]
    return sorted(drawn)


def relabel(line: bytes, usage: bytes) -> bytes:
    head, _, _ = line.rstrip(b"\r\n").rpartition(b",")
    return head + b"," + usage + b"\n"


def make_sample(
    source: Path, out: Path, train_per_class: int, val_per_class: int, test_per_class: int, seed: int
) -> dict[str, int]:
    lines = read_lines(source)
    rows = [fields(line) for line in lines]
    training = [i for i, (_, _, usage) in enumerate(rows) if usage == "Training"]
    public = [i for i, (_, _, usage) in enumerate(rows) if usage == "PublicTest"]
    seen = {rows[i][1] for i in training}
    rng = random.Random(seed)
    train = draw(rows, training, train_per_class, rng)
    # Test before val: the unseen faces are the scarcer pool (41 of PublicTest's 56 disgust faces).
    test = draw(rows, [i for i in public if rows[i][1] not in seen], test_per_class, rng)
    taken = set(test)
    val = draw(rows, [i for i in public if i not in taken], val_per_class, rng)

    body = [lines[i] for i in train] + [lines[i] for i in val]
    body += [relabel(lines[i], b"PrivateTest") for i in test]
    tmp = out.with_name(out.name + ".tmp")
    # mtime=0 and no file name in the gzip header: the same draw gives the same bytes.
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(HEADER)
        gz.writelines(body)
    os.replace(tmp, out)
    return {"Training": len(train), "PublicTest": len(val), "PrivateTest": len(test)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="FER2013 in Kaggle fer2013.csv format (.csv or .csv.gz)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--train-per-class", type=int, default=100)
    # PublicTest has 56 disgust faces, 41 of them unseen in Training: 28 + 28 keeps both balanced.
    parser.add_argument("--val-per-class", type=int, default=28)
    parser.add_argument("--test-per-class", type=int, default=28)
    parser.add_argument("--seed", type=int, default=2013)
    args = parser.parse_args()
    counts = make_sample(
        args.source, args.out, args.train_per_class, args.val_per_class, args.test_per_class, args.seed
    )
    size_kb = args.out.stat().st_size / 1024
    print(f"{args.out}: {counts} rows, {size_kb:.0f} KiB")


if __name__ == "__main__":
    main()
