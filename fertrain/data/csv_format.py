"""Kaggle's FER2013 CSV files: `fer2013.csv` (emotion,pixels,Usage) and `icml_face_data.csv`
(emotion, Usage, pixels). Columns are found by name, so both layouts share one reader.

Speed: the full file is 287 MB of text. Each row's pixels are parsed by one `np.fromstring` call
in C; Python only touches rows, never pixels.
"""

from __future__ import annotations

import numpy as np

from fertrain.data.dataset import SPLITS
from fertrain.data.records import (
    IMAGE_SIZE,
    NUM_CLASSES,
    USAGE_TO_SPLIT,
    BadRows,
    Progress,
    SourceData,
    shorten,
    split_by_index,
    split_rows,
)
from fertrain.errors import DataError

PIXELS_PER_IMAGE = IMAGE_SIZE * IMAGE_SIZE
COLUMNS = ("emotion", "pixels", "usage")
LAYOUTS = {
    ("emotion", "pixels", "usage"): "fer2013.csv (emotion,pixels,Usage)",
    ("emotion", "usage", "pixels"): "icml_face_data.csv (emotion, Usage, pixels)",
}
EXPECTED_HEADER = "emotion,pixels,Usage (fer2013.csv) or emotion, Usage, pixels (icml_face_data.csv)"
LABEL_BYTES = {str(label).encode(): label for label in range(NUM_CLASSES)}
USAGE_BYTES = {usage.encode(): SPLITS.index(split) for usage, split in USAGE_TO_SPLIT.items()}
PIXEL_CHARACTERS = b"0123456789 "
PROGRESS_EVERY = 1024


def looks_like_fer2013_csv(head: bytes) -> bool:
    """Whether the first bytes of a file are a FER2013 CSV header."""
    names = _header_names(head.split(b"\n", 1)[0])
    return set(COLUMNS) <= set(names)


def _header_names(header: bytes) -> list[str]:
    text = header.decode("utf-8-sig", errors="replace").rstrip("\r")
    return [name.strip().strip('"').strip().lower() for name in text.split(",")]


def _column_positions(header: bytes, name: str) -> tuple[dict[str, int], int, str]:
    """Where each column is, how many columns a row has, and which Kaggle layout this is."""
    names = _header_names(header)
    for column in COLUMNS:
        if column not in names:
            shown = "Usage" if column == "usage" else column
            raise DataError(
                f"{name}: line 1: missing column {shown!r} (expected header {EXPECTED_HEADER}, "
                f"got {shorten(header, 60)})"
            )
    positions = {column: names.index(column) for column in COLUMNS}
    order = tuple(sorted(COLUMNS, key=positions.get))
    return positions, len(names), LAYOUTS.get(order, "FER2013 CSV, columns in another order")


def _field(value: bytes) -> bytes:
    return value.strip().strip(b'"').strip()


def _parse_label(value: bytes) -> int | str:
    """The label, or what is wrong with it."""
    label = LABEL_BYTES.get(_field(value))
    if label is None:
        return f"emotion {shorten(_field(value))} is not a label 0-6 (0 angry ... 6 neutral)"
    return label


def _parse_pixels(value: bytes) -> np.ndarray | str:
    """The 2,304 pixels as int64, or what is wrong with them."""
    value = _field(value)
    strays = value.translate(None, PIXEL_CHARACTERS)
    if strays:
        bad_token = next(token for token in value.split() if token.translate(None, PIXEL_CHARACTERS))
        return f"pixel {shorten(bad_token)} is not an integer 0-255"
    pixels = np.fromstring(value, dtype=np.int64, sep=" ")
    if pixels.size != PIXELS_PER_IMAGE:
        return f"expected {PIXELS_PER_IMAGE} space-separated pixels, got {pixels.size}"
    if pixels.max() > 255:
        position = int(np.argmax(pixels > 255))
        return f"pixel {position + 1} is {pixels[position]}, outside 0-255"
    return pixels


def _parse_row(fields: list[bytes], positions: dict[str, int]) -> tuple[np.ndarray, int, int] | str:
    """(pixels, label, split index) of one row, or what is wrong with it."""
    label = _parse_label(fields[positions["emotion"]])
    if isinstance(label, str):
        return label
    usage = _field(fields[positions["usage"]])
    split = USAGE_BYTES.get(usage)
    if split is None:
        return f"unknown Usage {shorten(usage)} (expected Training, PublicTest or PrivateTest)"
    pixels = _parse_pixels(fields[positions["pixels"]])
    if isinstance(pixels, str):
        return pixels
    return pixels, label, split


def read_fer2013_csv(data: bytes, name: str, bad_rows: BadRows, progress: Progress) -> SourceData:
    """Parses a whole FER2013 CSV held in memory; `name` is how errors refer to the file."""
    lines = data.split(b"\n")
    positions, num_columns, layout = _column_positions(lines[0], name)
    rows = len(lines) - 1
    images = np.empty((rows, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    labels = np.empty(rows, dtype=np.uint8)
    splits = np.empty(rows, dtype=np.uint8)
    # Each kept row's position among the data rows (blank lines are not rows), for joining FER+.
    ordinals = np.empty(rows, dtype=np.int64)
    kept = ordinal = 0
    for line_number, line in enumerate(lines[1:], start=2):
        if line_number % PROGRESS_EVERY == 0:
            progress("parsing", line_number - 1, rows)
        if not line.strip():
            continue
        ordinal += 1
        fields = line.split(b",")
        row = (
            _parse_row(fields, positions)
            if len(fields) == num_columns
            else f"expected {num_columns} comma-separated fields, got {len(fields)}"
        )
        if isinstance(row, str):
            bad_rows.report(f"{name}: line {line_number}", row)
            continue
        pixels, labels[kept], splits[kept] = row
        images[kept] = pixels.reshape(IMAGE_SIZE, IMAGE_SIZE)
        ordinals[kept] = ordinal - 1
        kept += 1
    progress("parsing", rows, rows)
    return SourceData(
        format="csv",
        layout=layout,
        splits=split_by_index(images[:kept], labels[:kept], splits[:kept]),
        skipped=bad_rows.skipped,
        rows={split: ordinals[:kept][at] for split, at in split_rows(splits[:kept]).items()},
        row_count=ordinal,
    )
