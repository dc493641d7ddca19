"""Image folders: one folder per class, either directly in the source (`happy/`, `not_happy/`, ...)
or inside `train/`, `val/` and `test/` folders (any of them).

Classes come from the folder names, sorted, or in the order `--classes` gives. Folders that all name
FER2013 emotions (Kaggle's image version: `train/<emotion>/`, `test/<emotion>/`, also with Kaggle's
aliases such as `anger` or `happiness`) keep FER2013's 7 classes in FER2013's order, and there files
named `Training_*`, `PublicTest_*` or `PrivateTest_*` keep the split they came from, whatever folder
they are in. Any size, colour or format PIL reads becomes 48x48 gray; with `detect_faces` the largest
face the Haar cascade finds (the one `fertrain predict` uses) is cropped first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
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
FER2013_LAYOUT = "train/<emotion>/*, test/<emotion>/* images"
SPLIT_LAYOUT = "train|val|test/<class>/* images"
FLAT_LAYOUT = "<class>/* images"
READ_ERRORS = (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError)


@dataclass(frozen=True)
class FolderOptions:
    """How image folders are read: `classes` names the classes and their order (None: FER2013's
    emotions when every folder names one, else the folder names sorted); `detect_faces` crops each
    image to the largest face found in it."""

    classes: tuple[str, ...] | None = None
    detect_faces: bool = False

    @property
    def given(self) -> bool:
        return self.classes is not None or self.detect_faces


PLAIN_FOLDERS = FolderOptions()


def _is_junk(path: Path) -> bool:
    return path.name.startswith(".") or path.name.lower() in JUNK_FILES or path.name == "__MACOSX"


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not _is_junk(p))


def find_image_folder(root: Path) -> Path | None:
    """`root`, or its one subdirectory, when it holds train/, val/ or test/ folders."""
    for candidate in [root, *_subfolders(root)]:
        if any(child.name.lower() in SPLIT_FOLDERS for child in _subfolders(candidate)):
            return candidate
    return None


def _holds_files(folder: Path) -> bool:
    return any(p.is_file() and not _is_junk(p) for p in folder.iterdir())


def find_class_folders(root: Path) -> Path | None:
    """`root` when its subfolders hold files (one folder per class), or its one subfolder when that
    one is such a folder (an archive's top folder)."""
    folders = _subfolders(root)
    if any(_holds_files(folder) for folder in folders):
        return root
    if len(folders) == 1 and any(_holds_files(folder) for folder in _subfolders(folders[0])):
        return folders[0]
    return None


def _natural_key(name: str) -> tuple:
    """Sorts `Training_10.png` after `Training_9.png`."""
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name))


def _split_of(image: Path, folder_split: str) -> str:
    name = image.name.lower()
    return next((s for prefix, s in FILE_PREFIX_SPLITS.items() if name.startswith(prefix)), folder_split)


@dataclass(frozen=True)
class _Layout:
    """The class folders of each split, by split name (`train` only for flat class folders)."""

    shown: str  # how errors name the top folder
    top: Path
    split_dirs: dict[str, Path]
    class_dirs: dict[str, dict[str, Path]]  # split -> folder name -> folder
    description: str

    def where(self, path: Path) -> str:
        return f"{self.shown}/{path.relative_to(self.top).as_posix()}"


def _layout(folder: Path, shown: str, split_folders: bool, bad_rows: BadRows) -> _Layout:
    if split_folders:
        split_dirs = {}
        for child in _subfolders(folder):
            split = SPLIT_FOLDERS.get(child.name.lower())
            if split is not None:
                split_dirs.setdefault(split, child)
        split_dirs = {split: split_dirs[split] for split in SPLITS if split in split_dirs}
        description = SPLIT_LAYOUT
    else:
        split_dirs, description = {"train": folder}, FLAT_LAYOUT
    class_dirs: dict[str, dict[str, Path]] = {}
    for split, split_dir in split_dirs.items():
        class_dirs[split] = {}
        for child in sorted(split_dir.iterdir()):
            if _is_junk(child):
                continue
            if not child.is_dir():
                where = f"{shown}/{child.relative_to(folder).as_posix()}"
                bad_rows.report(where, "a file where class folders were expected")
                continue
            class_dirs[split][child.name] = child
    return _Layout(shown, folder, split_dirs, class_dirs, description)


def _is_fer2013(layout: _Layout, options: FolderOptions) -> bool:
    names = {name.lower() for folders in layout.class_dirs.values() for name in folders}
    return options.classes is None and bool(names) and names <= EMOTION_FOLDERS.keys()


def _generic_labels(layout: _Layout, options: FolderOptions, bad_rows: BadRows) -> dict[str, int]:
    """Folder name -> label for folders of any names; reports folders and classes that do not fit."""
    found = sorted({name for folders in layout.class_dirs.values() for name in folders})
    classes = options.classes if options.classes is not None else tuple(found)
    if len(set(classes)) != len(classes) or not all(classes):
        raise DataError(f"--classes {','.join(classes)}: expected distinct, non-empty class names")
    if options.classes is not None:
        absent = [name for name in classes if name not in found]
        if absent:
            raise DataError(
                f"{layout.shown}: no folder for class {absent[0]!r} of --classes "
                f"(folders: {', '.join(found) or 'none'})"
            )
    if len(classes) < 2:
        raise DataError(
            f"{layout.shown}: found {len(classes)} class folder(s) ({', '.join(classes) or 'none'}); "
            f"expected one folder per class, at least two ({layout.description})"
        )
    for split, folders in layout.class_dirs.items():
        for name, path in folders.items():
            if name not in classes:
                bad_rows.report(layout.where(path), f"class folder not in --classes {','.join(classes)}")
        for name in classes:
            if name not in folders:
                where = layout.where(layout.split_dirs[split])
                bad_rows.report(where, f"no folder for class {name!r} (other splits have one)")
    return {name: label for label, name in enumerate(classes)}


def _list_images(
    layout: _Layout, labels: dict[str, int], fer2013: bool, bad_rows: BadRows
) -> list[tuple[int, tuple, int, Path]]:
    """(split index, sort key, label, path) of every image, sorted into source order: by file name
    (numbers compared as numbers) in FER2013's folders, whose file names keep its row order, else
    class by class."""
    images = []
    for folder_split, folders in layout.class_dirs.items():
        for name, class_dir in folders.items():
            label = labels.get(name.lower() if fer2013 else name)
            if label is None:
                continue
            files = [p for p in class_dir.iterdir() if p.is_file() and not _is_junk(p)]
            if not files:
                bad_rows.report(layout.where(class_dir), "empty class folder (no images)")
            for image in files:
                split = _split_of(image, folder_split) if fer2013 else folder_split
                key = (_natural_key(image.name), label) if fer2013 else (label, _natural_key(image.name))
                images.append((SPLITS.index(split), key, label, image))
    return sorted(images, key=lambda item: item[:2])


def largest_face(detector, gray: np.ndarray) -> tuple[int, int, int, int] | None:
    """The box (x, y, width, height) of the largest face the cascade finds, or None."""
    from fertrain.predict import detect_faces

    boxes = detect_faces(detector, gray)
    return max(boxes, key=lambda box: box[2] * box[3]) if boxes else None


def load_gray_48(path: Path, detector=None) -> tuple[np.ndarray, bool]:
    """A face image as uint8 [48, 48]: EXIF-rotated, gray, cropped to the largest face when a
    `detector` is given and finds one, centre-cropped square, resized. The flag: a face was found
    (always True without a detector)."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("L")
    found = True
    if detector is not None:
        box = largest_face(detector, np.asarray(image))
        found = box is not None
        if found:
            x, y, width, height = box
            image = image.crop((x, y, x + width, y + height))
    side = min(image.size)
    if image.width != image.height:
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if side != IMAGE_SIZE:
        image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8), found


def read_image_folder(
    folder: Path,
    root: Path,
    name: str,
    bad_rows: BadRows,
    progress: Progress,
    options: FolderOptions = PLAIN_FOLDERS,
    split_folders: bool = True,
) -> SourceData:
    """Reads `folder` (inside `root`, which errors call `name`): class folders inside split folders,
    or (`split_folders` False) directly in `folder`."""
    layout = _layout(folder, display_path(folder, root, name), split_folders, bad_rows)
    fer2013 = _is_fer2013(layout, options)
    labels = EMOTION_FOLDERS if fer2013 else _generic_labels(layout, options, bad_rows)
    classes = FER2013_CLASSES if fer2013 else tuple(labels)
    listed = _list_images(layout, labels, fer2013, bad_rows)
    detector = None
    if options.detect_faces:
        from fertrain.predict import face_detector

        detector = face_detector()
    images = np.empty((len(listed), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    label_array = np.empty(len(listed), dtype=np.uint8)
    splits = np.empty(len(listed), dtype=np.uint8)
    no_face = []
    kept = 0
    for done, (split, _, label, path) in enumerate(listed):
        if done % 64 == 0:
            progress("detecting faces" if detector else "reading images", done, len(listed))
        try:
            images[kept], found = load_gray_48(path, detector)
        except READ_ERRORS as exc:
            problem = str(exc).replace(str(path), "").strip(" :'") or type(exc).__name__
            bad_rows.report(layout.where(path), f"unreadable image ({problem})")
            continue
        if not found:
            no_face.append(layout.where(path))
        label_array[kept], splits[kept] = label, split
        kept += 1
    progress("detecting faces" if detector else "reading images", len(listed), len(listed))
    return SourceData(
        format="image-folder",
        layout=FER2013_LAYOUT if fer2013 else layout.description,
        splits=split_by_index(images[:kept], label_array[:kept], splits[:kept]),
        skipped=bad_rows.skipped,
        classes=classes,
        faces_not_found=no_face if detector is not None else None,
    )
