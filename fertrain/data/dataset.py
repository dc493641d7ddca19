"""Reading a directory written by `fertrain prepare`: {train,val,test}.npz and manifest.json."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from fertrain.errors import DataError

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
# The labels of a manifest written before datasets named their classes: FER2013's emotions.
FER2013_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def load_manifest(data_dir: str | Path) -> dict[str, Any]:
    path = Path(data_dir) / MANIFEST
    if not Path(data_dir).is_dir():
        raise DataError(f"{data_dir}: data directory not found (create it with `fertrain prepare`)")
    if not path.is_file():
        raise DataError(f"{path}: missing; {data_dir} is not a `fertrain prepare` output directory")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None


def dataset_classes(data_dir: str | Path) -> tuple[str, ...]:
    """The names of a prepared dataset's labels 0, 1, ..., from its manifest."""
    classes = load_manifest(data_dir).get("classes", FER2013_CLASSES)
    if (
        not isinstance(classes, list | tuple)
        or len(classes) < 2
        or not all(isinstance(c, str) for c in classes)
    ):
        raise DataError(f"{Path(data_dir) / MANIFEST}: 'classes' must be a list of at least two names")
    return tuple(classes)


def _split_arrays(data_dir: str | Path, split: str, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Those of the arrays `names` that the split's .npz holds (reading only them)."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    load_manifest(data_dir)
    path = Path(data_dir) / f"{split}.npz"
    if not path.is_file():
        raise DataError(f"{path}: split {split!r} is not in this dataset (its source had no such split)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in names if name in archive.files}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a valid prepared split ({exc})") from None


def load_split(data_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns (images uint8 [N, H, W], labels uint8 [N]) of one prepared split."""
    path = Path(data_dir) / f"{split}.npz"
    arrays = _split_arrays(data_dir, split, ("images", "labels"))
    if len(arrays) < 2:
        raise DataError(f"{path}: not a valid prepared split (expected arrays 'images' and 'labels')")
    images, labels = arrays["images"], arrays["labels"]
    if images.dtype != np.uint8 or images.ndim != 3 or labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(f"{path}: expected images uint8 [N,H,W] and labels uint8 [N]")
    if len(images) != len(labels):
        raise DataError(f"{path}: {len(images)} images but {len(labels)} labels")
    return images, labels


def load_votes(data_dir: str | Path, split: str) -> np.ndarray | None:
    """FER+'s 10 vote counts per face (uint8 [N, 10]) of a split prepared with `--ferplus`, else None."""
    path = Path(data_dir) / f"{split}.npz"
    arrays = _split_arrays(data_dir, split, ("votes", "labels"))
    if "votes" not in arrays:
        return None
    votes = arrays["votes"]
    if votes.dtype != np.uint8 or votes.shape != (len(arrays["labels"]), 10):
        raise DataError(
            f"{path}: expected votes uint8 [{len(arrays['labels'])}, 10], got {votes.dtype} {votes.shape}"
        )
    return votes
