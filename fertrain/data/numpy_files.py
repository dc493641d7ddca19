"""The notebook's NumPy form of FER2013: `X_train.npy`, `y_train.npy`, `X_test.npy`, `y_test.npy`
(and `X_val.npy`, `y_val.npy` when a notebook kept a validation split).

Images may be N x 48 x 48, N x 48 x 48 x 1 or N x 2304; uint8, other integers, or floats scaled
0-1 or 0-255. Labels may be integers 0-6 (N or N x 1) or one-hot (N x 7).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fertrain.data.dataset import SPLITS
from fertrain.data.records import (
    IMAGE_SIZE,
    NUM_CLASSES,
    BadRows,
    Progress,
    SourceData,
    display_path,
)
from fertrain.errors import DataError

LAYOUT = "X_{train,test}.npy images with y_{train,test}.npy labels"


def _pair_names(split: str) -> tuple[str, str]:
    return f"x_{split}.npy", f"y_{split}.npy"


def _files_by_lower_name(folder: Path) -> dict[str, Path]:
    return {path.name.lower(): path for path in sorted(folder.iterdir()) if path.is_file()}


def find_numpy_files(root: Path) -> Path | None:
    """`root`, or its one subdirectory, when it holds X_<split>.npy files."""
    candidates = [root, *sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))]
    for candidate in candidates:
        names = _files_by_lower_name(candidate)
        if any(_pair_names(split)[0] in names for split in SPLITS):
            return candidate
    return None


def _load(path: Path, shown: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{shown}: not a readable .npy array ({exc})") from None


def _image_problems(images: np.ndarray, shown: str) -> tuple[np.ndarray, dict[int, str]]:
    """uint8 [N, 48, 48] images, and what is wrong with each bad row."""
    shape = images.shape
    if images.ndim == 4 and shape[3] == 1:
        images = images[..., 0]
    if images.ndim == 2 and shape[1] == IMAGE_SIZE * IMAGE_SIZE:
        images = images.reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(
            f"{shown}: images of shape {shape}, expected N x 48 x 48, N x 48 x 48 x 1 or N x 2304"
        )
    if images.dtype == np.uint8:
        return images, {}
    if images.dtype.kind not in "iuf":
        raise DataError(f"{shown}: images of dtype {images.dtype}, expected uint8, integers or floats")
    values = images.astype(np.float64)
    finite = np.isfinite(values)
    if images.dtype.kind == "f" and finite.any() and values[finite].max() <= 1.0:
        values = values * 255.0  # the notebook's `X / 255.0`
    values = np.round(values)
    bad = ~finite.all(axis=(1, 2)) | (np.nan_to_num(values, nan=-1.0) < 0).any(axis=(1, 2))
    bad |= (np.nan_to_num(values) > 255).any(axis=(1, 2))
    problems = {
        int(row): "pixel values must be finite and within 0-255 (or 0-1 for floats)"
        for row in np.flatnonzero(bad)
    }
    return np.clip(np.nan_to_num(values), 0, 255).astype(np.uint8), problems


def _label_problems(labels: np.ndarray, shown: str) -> tuple[np.ndarray, dict[int, str]]:
    """uint8 [N] labels, and what is wrong with each bad row."""
    if labels.ndim == 2 and labels.shape[1] == NUM_CLASSES:
        one_hot = (labels == 1).sum(axis=1) == 1
        one_hot &= ((labels == 0) | (labels == 1)).all(axis=1)
        problems = {int(row): "not a one-hot row of 7 zeros and ones" for row in np.flatnonzero(~one_hot)}
        return np.argmax(labels, axis=1).astype(np.uint8), problems
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or labels.dtype.kind not in "iuf":
        raise DataError(
            f"{shown}: labels of shape {labels.shape} and dtype {labels.dtype}, "
            "expected integers 0-6 (N or N x 1) or one-hot (N x 7)"
        )
    valid = np.isin(labels, np.arange(NUM_CLASSES))
    problems = {int(row): f"label {labels[row]} is not an integer 0-6" for row in np.flatnonzero(~valid)}
    return np.where(valid, labels, 0).astype(np.uint8), problems


def _read_pair(
    x_path: Path, y_path: Path, root: Path, name: str, bad_rows: BadRows
) -> tuple[np.ndarray, np.ndarray]:
    x_shown, y_shown = display_path(x_path, root, name), display_path(y_path, root, name)
    images, image_problems = _image_problems(_load(x_path, x_shown), x_shown)
    labels, label_problems = _label_problems(_load(y_path, y_shown), y_shown)
    if len(images) != len(labels):
        raise DataError(
            f"{x_shown}: {len(images)} images but {y_shown} has {len(labels)} labels "
            "(expected the same number)"
        )
    for row, problem in sorted(image_problems.items()):
        bad_rows.report(f"{x_shown}: index {row}", problem)
    for row, problem in sorted(label_problems.items()):
        bad_rows.report(f"{y_shown}: index {row}", problem)
    keep = np.ones(len(images), dtype=bool)
    keep[list(image_problems) + list(label_problems)] = False
    return images[keep], labels[keep]


def read_numpy_files(
    folder: Path, root: Path, name: str, bad_rows: BadRows, progress: Progress
) -> SourceData:
    """Reads the X/y pairs in `folder` (inside `root`, which errors call `name`)."""
    files = _files_by_lower_name(folder)
    splits = {}
    for done, split in enumerate(SPLITS):
        progress("loading arrays", done, len(SPLITS))
        x_name, y_name = _pair_names(split)
        if x_name not in files and y_name not in files:
            continue
        for present, absent in ((x_name, y_name), (y_name, x_name)):
            if absent not in files:
                shown = display_path(files[present], root, name)
                raise DataError(f"{shown}: no {absent.replace('x_', 'X_')} beside it")
        splits[split] = _read_pair(files[x_name], files[y_name], root, name, bad_rows)
    progress("loading arrays", len(SPLITS), len(SPLITS))
    return SourceData(format="npy", layout=LAYOUT, splits=splits, skipped=bad_rows.skipped)
