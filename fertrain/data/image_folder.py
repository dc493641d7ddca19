"""The image-folder form of FER2013 (Kaggle's popular image version): `train/<emotion>/*.jpg|png`
and `test/<emotion>/*.jpg|png`. Files named `Training_*`, `PublicTest_*` or `PrivateTest_*` keep
the split they came from, whatever folder they are in. Any size or colour becomes 48x48 gray.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fertrain.data.dataset import FER2013_CLASSES, SPLITS
from fertrain.data.records import (
    IMAGE_SIZE,
    BadRows,
    Progress,
    SourceData,
    display_path,
    split_by_index,
)
from fertrain.errors import DataError

SPLIT_FOLDERS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "validation": "val",
    "publictest": "val",
    "test": "test",
    "testing": "test",
    "privatetest": "test",
}
FILE_PREFIX_SPLITS = {"training_": "train", "publictest_": "val", "privatetest_": "test"}
# Folder names used by the image versions on Kaggle, besides fertrain's own label names.
EMOTION_ALIASES = {"anger": 0, "disgusted": 1, "fearful": 2, "happiness": 3, "sadness": 4, "surprised": 5}
EMOTION_FOLDERS = {name: label for label, name in enumerate(FER2013_CLASSES)} | EMOTION_ALIASES
JUNK_FILES = {"thumbs.db", "desktop.ini"}
LAYOUT = "train/<emotion>/*, test/<emotion>/* images"


def _is_junk(path: Path) -> bool:
    return path.name.startswith(".") or path.name.lower() in JUNK_FILES or path.name == "__MACOSX"


def find_image_folder(root: Path) -> Path | None:
    """`root`, or its one subdirectory, when it holds train/ or test/ folders."""
    candidates = [root, *sorted(p for p in root.iterdir() if p.is_dir() and not _is_junk(p))]
    for candidate in candidates:
        if any(child.is_dir() and child.name.lower() in SPLIT_FOLDERS for child in candidate.iterdir()):
            return candidate
    return None


def _natural_key(name: str) -> tuple:
    """Sorts `Training_10.png` after `Training_9.png`."""
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name))


def _split_of(image: Path, folder_split: str) -> str:
    name = image.name.lower()
    return next((s for prefix, s in FILE_PREFIX_SPLITS.items() if name.startswith(prefix)), folder_split)


def _list_images(folder: Path, shown: str) -> list[tuple[int, tuple, int, Path]]:
    """(split index, sort key, label, path) of every image, sorted into source order."""
    images = []
    for split_dir in sorted(folder.iterdir()):
        folder_split = SPLIT_FOLDERS.get(split_dir.name.lower())
        if not split_dir.is_dir() or folder_split is None:
            continue
        for class_dir in sorted(split_dir.iterdir()):
            if _is_junk(class_dir):
                continue
            label = EMOTION_FOLDERS.get(class_dir.name.lower())
            if label is None or not class_dir.is_dir():
                raise DataError(
                    f"{shown}/{class_dir.relative_to(folder).as_posix()}: expected an emotion folder "
                    f"named one of {', '.join(FER2013_CLASSES)}"
                )
            for image in class_dir.iterdir():
                if image.is_file() and not _is_junk(image):
                    split = SPLITS.index(_split_of(image, folder_split))
                    images.append((split, _natural_key(image.name), label, image))
    return sorted(images, key=lambda item: item[:3])


def load_gray_48(path: Path) -> np.ndarray:
    """A face image as uint8 [48, 48]: EXIF-rotated, gray, centre-cropped square, resized."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("L")
    side = min(image.size)
    if image.width != image.height:
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if side != IMAGE_SIZE:
        image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8)


def read_image_folder(
    folder: Path, root: Path, name: str, bad_rows: BadRows, progress: Progress
) -> SourceData:
    """Reads `folder` (inside `root`, which errors call `name`)."""
    shown = display_path(folder, root, name)
    listed = _list_images(folder, shown)
    images = np.empty((len(listed), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    labels = np.empty(len(listed), dtype=np.uint8)
    splits = np.empty(len(listed), dtype=np.uint8)
    kept = 0
    for done, (split, _, label, path) in enumerate(listed):
        if done % 256 == 0:
            progress("reading images", done, len(listed))
        try:
            images[kept] = load_gray_48(path)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            problem = str(exc).replace(str(path), "").strip(" :'") or type(exc).__name__
            bad_rows.report(f"{shown}/{path.relative_to(folder).as_posix()}", f"unreadable image ({problem})")
            continue
        labels[kept], splits[kept] = label, split
        kept += 1
    progress("reading images", len(listed), len(listed))
    return SourceData(
        format="image-folder",
        layout=LAYOUT,
        splits=split_by_index(images[:kept], labels[:kept], splits[:kept]),
        skipped=bad_rows.skipped,
    )
