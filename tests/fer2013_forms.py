"""Writers of every FER2013 form `fertrain prepare` accepts, built from rows of the bundled sample,
and an independent plain-Python reading of those rows to check the results against."""

from __future__ import annotations

import gzip
import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from fertrain.data.dataset import FER2013_CLASSES

HEADER = "emotion,pixels,Usage"
USAGE_SPLITS = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}


def sample_rows(sample_csv: Path) -> list[tuple[int, str, str]]:
    """(emotion, pixels text, Usage) of every row of the sample, in file order."""
    lines = gzip.decompress(sample_csv.read_bytes()).decode("ascii").splitlines()
    assert lines[0] == HEADER
    rows = []
    for line in lines[1:]:
        emotion, pixels, usage = line.split(",")
        rows.append((int(emotion), pixels, usage))
    return rows


def first_rows_per_usage(rows: list[tuple[int, str, str]], count: int) -> list[tuple[int, str, str]]:
    """The first `count` Training rows, then PublicTest, then PrivateTest rows, as in fer2013.csv."""
    return [row for usage in USAGE_SPLITS for row in [r for r in rows if r[2] == usage][:count]]


def expected_splits(rows: list[tuple[int, str, str]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each split's (images, labels) read one pixel at a time, the slow obvious way."""
    expected = {}
    for usage, split in USAGE_SPLITS.items():
        chosen = [row for row in rows if row[2] == usage]
        if chosen:
            images = np.array([[int(v) for v in p.split(" ")] for _, p, _ in chosen], dtype=np.uint8)
            labels = np.array([e for e, _, _ in chosen], dtype=np.uint8)
            expected[split] = images.reshape(-1, 48, 48), labels
    return expected


def csv_text(rows: list[tuple[int, str, str]]) -> str:
    return "\n".join([HEADER, *(f"{e},{p},{u}" for e, p, u in rows)]) + "\n"


def icml_text(rows: list[tuple[int, str, str]]) -> str:
    return "\n".join(["emotion, Usage, pixels", *(f"{e},{u},{p}" for e, p, u in rows)]) + "\n"


def write_csv(rows, path: Path) -> Path:
    path.write_text(csv_text(rows))
    return path


def write_icml(rows, path: Path) -> Path:
    path.write_text(icml_text(rows))
    return path


def write_csv_gz(rows, path: Path) -> Path:
    path.write_bytes(gzip.compress(csv_text(rows).encode(), compresslevel=1))
    return path


def write_tar_gz(rows, path: Path) -> Path:
    """Kaggle's fer2013.tar.gz: member fer2013/fer2013.csv beside a README."""
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, text in (("fer2013/README", "FER2013\n"), ("fer2013/fer2013.csv", csv_text(rows))):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_zip(rows, path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("fer2013.csv", csv_text(rows))
    return path


def write_competition_zip(rows, path: Path) -> Path:
    """The Kaggle competition download: a zip holding fer2013.tar.gz and other files."""
    tar_gz = write_tar_gz(rows, path.with_name("fer2013.tar.gz"))
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(tar_gz, "fer2013.tar.gz")
        archive.writestr("example_submission.csv", "Id,Emotion\n")
    return path


def write_image_folder(rows, root: Path) -> Path:
    """train/<emotion>/Training_<row>.png; PublicTest and PrivateTest rows in test/, as on Kaggle."""
    for index, (emotion, pixels, usage) in enumerate(rows):
        folder = root / ("train" if usage == "Training" else "test") / FER2013_CLASSES[emotion]
        folder.mkdir(parents=True, exist_ok=True)
        image = np.array([int(v) for v in pixels.split(" ")], dtype=np.uint8).reshape(48, 48)
        Image.fromarray(image, mode="L").save(folder / f"{usage}_{index:05d}.png")
    return root


def write_image_folder_zip(rows, path: Path) -> Path:
    """The image folder the way Kaggle ships it: one archive.zip holding train/ and test/."""
    folder = write_image_folder(rows, path.with_suffix(""))
    with zipfile.ZipFile(path, "w") as archive:
        for file in sorted(folder.rglob("*.png")):
            archive.write(file, file.relative_to(folder).as_posix())
    return path


def write_npy_quartet(
    rows, root: Path, image_form: str = "uint8", label_form: str = "int"
) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """X/y_train from Training rows, X/y_test from PrivateTest rows, in the notebook's forms:
    image_form uint8 | float01 (N,48,48,1 scaled 0-1) | float255 (N,2304); label_form int | onehot | float."""
    expected = expected_splits(rows)
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        images, labels = expected[split]
        x = {
            "uint8": images,
            "float01": images[..., None].astype(np.float32) / 255.0,
            "float255": images.reshape(len(images), -1).astype(np.float64),
        }[image_form]
        y = {
            "int": labels.astype(np.int64),
            "onehot": np.eye(7, dtype=np.float32)[labels],
            "float": labels.astype(np.float32)[:, None],
        }[label_form]
        np.save(root / f"X_{split}.npy", x)
        np.save(root / f"y_{split}.npy", y)
    return root, {split: expected[split] for split in ("train", "test")}
