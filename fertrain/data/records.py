"""What every source reader returns, and how it reports rows it cannot use."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fertrain.data.dataset import FER2013_CLASSES, SPLITS
from fertrain.errors import DataError

IMAGE_SIZE = 48
NUM_CLASSES = len(FER2013_CLASSES)
# Kaggle's Usage column names the splits; fertrain calls them train/val/test.
USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}

# progress(description, completed, total); readers call it as they go.
Progress = Callable[[str, int, int], None]


def no_progress(description: str, completed: int, total: int) -> None:
    del description, completed, total


@dataclass
class SourceData:
    """Images uint8 [N, 48, 48] and labels uint8 [N] per split, in source order.

    `classes` names the labels. A reader that keeps its source's row order (the CSV forms) fills
    `rows`: each kept image's position among the source's data rows, which FER+'s votes join on,
    and `row_count`, the source's data rows, bad ones included. `votes` holds FER+'s vote counts
    per split once they are joined. `faces_not_found` lists the images in which face detection
    (`prepare --detect-faces`) found no face; None when detection was off."""

    format: str
    layout: str
    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    skipped: list[str] = field(default_factory=list)
    classes: tuple[str, ...] = FER2013_CLASSES
    rows: dict[str, np.ndarray] | None = None
    row_count: int = 0
    votes: dict[str, np.ndarray] = field(default_factory=dict)
    faces_not_found: list[str] | None = None


def split_by_index(images: np.ndarray, labels: np.ndarray, split_indices: np.ndarray) -> dict:
    """{split name: (images, labels)} for the splits present; `split_indices` index `SPLITS`."""
    return {split: (images[rows], labels[rows]) for split, rows in split_rows(split_indices).items()}


def split_rows(split_indices: np.ndarray) -> dict[str, np.ndarray]:
    """{split name: positions of its rows} for the splits present; `split_indices` index `SPLITS`."""
    return {
        split: np.flatnonzero(split_indices == index)
        for index, split in enumerate(SPLITS)
        if (split_indices == index).any()
    }


class BadRows:
    """Raises on the first bad row, or with `skip` records it and lets the reader move on."""

    def __init__(self, skip: bool):
        self.skip = skip
        self.skipped: list[str] = []

    def report(self, where: str, problem: str) -> None:
        if not self.skip:
            raise DataError(f"{where}: {problem} (use --skip-bad-rows to skip such rows)")
        self.skipped.append(f"{where}: {problem}")


def shorten(text: str | bytes, limit: int = 20) -> str:
    """A field quoted in an error message, cut so that the message stays one short line."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return repr(text if len(text) <= limit else text[:limit] + "...")


def display_path(path: Path, root: Path, root_name: str) -> str:
    """`path` as errors show it: relative to `root`, which they call `root_name`."""
    relative = path.relative_to(root)
    return root_name if relative == Path(".") else f"{root_name}/{relative.as_posix()}"
