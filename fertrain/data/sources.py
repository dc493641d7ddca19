"""Finding the faces in whatever a user passes: FER2013 as a CSV (plain, .gz, inside .tar.gz or .zip)
or the .npy quartet, or image folders of any classes (each as a directory or inside an archive)."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from fertrain.data.csv_format import looks_like_fer2013_csv, read_fer2013_csv
from fertrain.data.image_folder import (
    PLAIN_FOLDERS,
    FolderOptions,
    find_class_folders,
    find_image_folder,
    read_image_folder,
)
from fertrain.data.numpy_files import find_numpy_files, read_numpy_files
from fertrain.data.records import BadRows, Progress, SourceData
from fertrain.errors import DataError

SourceFormat = Literal["auto", "csv", "image-folder", "npy"]
FORMATS: tuple[str, ...] = get_args(SourceFormat)
WHERE_TO_GET = (
    "download FER2013 from Kaggle as described in data/README.md, "
    "or try the bundled sample data/sample/fer2013_sample.csv.gz"
)
# File names Kaggle uses for the CSV forms, most direct first.
KAGGLE_FILE_NAMES = ("fer2013.csv", "icml_face_data.csv", "fer2013.csv.gz", "fer2013.tar.gz")
GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGIC = b"PK\x03\x04"
NPY_MAGIC = b"\x93NUMPY"
CHUNK_BYTES = 1 << 23


def sha256_of(path: Path) -> str:
    """SHA-256 of a file, or of a directory's `sha256sum`-style listing of every file in it."""
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    listing = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        listing.update(f"{digest}  {file.relative_to(path).as_posix()}\n".encode())
    return listing.hexdigest()


@dataclass(frozen=True)
class _Reading:
    """What every reader of one source shares: the requested format, how bad rows are handled,
    the progress callback and the image-folder options."""

    fmt: str
    bad_rows: BadRows
    progress: Progress
    folders: FolderOptions


def read_source(
    source: Path,
    fmt: str,
    skip_bad_rows: bool,
    progress: Progress,
    folders: FolderOptions = PLAIN_FOLDERS,
) -> SourceData:
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if not source.exists():
        raise DataError(f"{source}: no such file or directory; {WHERE_TO_GET}")
    reading = _Reading(fmt, BadRows(skip_bad_rows), progress, folders)
    if source.is_dir():
        data = _read_directory(source, str(source), reading)
    else:
        data = _read_file_bytes(_read_bytes(source), str(source), reading)
    if folders.given and data.format != "image-folder":
        raise DataError(f"{source}: --classes and --detect-faces apply to image folders, not {data.layout}")
    return data


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None


def _gunzip(data: bytes, name: str, progress: Progress) -> bytes:
    parts = []
    raw = io.BytesIO(data)
    try:
        with gzip.GzipFile(fileobj=raw) as unzipped:
            while part := unzipped.read(CHUNK_BYTES):
                parts.append(part)
                progress("decompressing", raw.tell(), len(data))
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{name}: not a valid gzip file ({exc})") from None
    return b"".join(parts)


def _read_file_bytes(data: bytes, name: str, reading: _Reading) -> SourceData:
    fmt = reading.fmt
    if data.startswith(GZIP_MAGIC):
        data = _gunzip(data, name, reading.progress)
    if data[257:262] == b"ustar":
        return _read_archive(_TarArchive(data, name), name, reading)
    if data.startswith(ZIP_MAGIC):
        return _read_archive(_ZipArchive(data, name), name, reading)
    if data.startswith(NPY_MAGIC):
        raise DataError(
            f"{name}: a single .npy file; pass the directory holding X_train.npy, y_train.npy, "
            "X_test.npy and y_test.npy"
        )
    if fmt not in ("auto", "csv"):
        raise DataError(f"{name}: is a file, but --format {fmt} expects a directory or an archive")
    return read_fer2013_csv(data, name, reading.bad_rows, reading.progress)


def _read_directory(root: Path, name: str, reading: _Reading) -> SourceData:
    """Reads the one form found in `root`; `name` is how errors refer to `root`."""
    fmt, bad_rows, progress = reading.fmt, reading.bad_rows, reading.progress
    if fmt in ("auto", "npy") and (found := find_numpy_files(root)):
        return read_numpy_files(found, root, name, bad_rows, progress)
    if fmt in ("auto", "image-folder") and (found := find_image_folder(root)):
        return read_image_folder(found, root, name, bad_rows, progress, reading.folders)
    if fmt in ("auto", "csv") and (found := _find_kaggle_file(root)):
        relative = found.relative_to(root).as_posix()
        return _read_file_bytes(_read_bytes(found), f"{name}/{relative}", reading)
    if fmt in ("auto", "image-folder") and (found := find_class_folders(root)):
        return read_image_folder(found, root, name, bad_rows, progress, reading.folders, split_folders=False)
    expected = {
        "auto": "fer2013.csv, icml_face_data.csv, image folders (<class>/ or train/<class>/, "
        "test/<class>/), or X_train.npy, y_train.npy, X_test.npy, y_test.npy",
        "csv": "fer2013.csv or icml_face_data.csv",
        "image-folder": "one folder of images per class, directly or in train/, val/, test/",
        "npy": "X_train.npy, y_train.npy, X_test.npy, y_test.npy",
    }[fmt]
    raise DataError(f"{name}: no FER2013 data found (expected {expected}); {WHERE_TO_GET}")


def _find_kaggle_file(root: Path) -> Path | None:
    for file_name in KAGGLE_FILE_NAMES:
        for depth_pattern in (file_name, f"*/{file_name}"):
            matches = sorted(root.glob(depth_pattern))
            if matches:
                return matches[0]
    return None


class _TarArchive:
    def __init__(self, data: bytes, name: str):
        try:
            self.tar = tarfile.open(fileobj=io.BytesIO(data))
        except tarfile.TarError as exc:
            raise DataError(f"{name}: not a valid tar archive ({exc})") from None

    def members(self) -> list[str]:
        return [member.name for member in self.tar.getmembers() if member.isfile()]

    def read(self, member: str) -> bytes:
        return self.tar.extractfile(member).read()

    def extract_to(self, directory: Path) -> None:
        # The "data" filter refuses absolute paths, `..`, links out of the tree and device files.
        self.tar.extractall(directory, filter="data")


class _ZipArchive:
    def __init__(self, data: bytes, name: str):
        try:
            self.zip = zipfile.ZipFile(io.BytesIO(data))
        except zipfile.BadZipFile as exc:
            raise DataError(f"{name}: not a valid zip archive ({exc})") from None

    def members(self) -> list[str]:
        return [info.filename for info in self.zip.infolist() if not info.is_dir()]

    def read(self, member: str) -> bytes:
        return self.zip.read(member)

    def extract_to(self, directory: Path) -> None:
        # ZipFile.extractall drops absolute paths and `..` components.
        self.zip.extractall(directory)


def _kaggle_member(members: list[str]) -> str | None:
    for file_name in KAGGLE_FILE_NAMES:
        matches = sorted(m for m in members if m.rsplit("/", 1)[-1] == file_name)
        if matches:
            return min(matches, key=lambda m: m.count("/"))
    return None


def _read_archive(archive: _TarArchive | _ZipArchive, name: str, reading: _Reading) -> SourceData:
    fmt, progress = reading.fmt, reading.progress
    members = archive.members()
    member = _kaggle_member(members) if fmt in ("auto", "csv") else None
    if member is None and fmt in ("auto", "csv"):
        member = next((m for m in members if m.endswith(".csv") and _member_is_fer2013(archive, m)), None)
    try:
        if member is not None:
            return _read_file_bytes(archive.read(member), f"{name}:{member}", reading)
        with tempfile.TemporaryDirectory(prefix="fertrain-extract-") as directory:
            progress("extracting", 0, 1)
            archive.extract_to(Path(directory))
            progress("extracting", 1, 1)
            return _read_directory(Path(directory), name, reading)
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise DataError(f"{name}: damaged archive ({exc})") from None


def _member_is_fer2013(archive: _TarArchive | _ZipArchive, member: str) -> bool:
    return looks_like_fer2013_csv(archive.read(member)[:200])
