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


def load_split(data_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns (images uint8 [N, H, W], labels uint8 [N]) of one prepared split."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    load_manifest(data_dir)
    path = Path(data_dir) / f"{split}.npz"
    if not path.is_file():
        raise DataError(f"{path}: split {split!r} is not in this dataset (its source had no such split)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            images, labels = archive["images"], archive["labels"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a valid prepared split ({exc})") from None
    if images.dtype != np.uint8 or images.ndim != 3 or labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(f"{path}: expected images uint8 [N,H,W] and labels uint8 [N]")
    if len(images) != len(labels):
        raise DataError(f"{path}: {len(images)} images but {len(labels)} labels")
    return images, labels
