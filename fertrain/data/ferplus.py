"""FER+ vote labels (microsoft/FERPlus `fer2013new.csv`): 10 annotators' votes for every FER2013 face.

FER+ has no pixels: its rows join FER2013's by row order (and must agree on `Usage`), never by
`Image name`, which skips numbers, repeats and is empty for the faces all annotators called "not a
face". This module only parses bytes and turns votes into targets; reading files is the caller's.

The rules turning votes into targets are those of Microsoft's `src/ferplus.py` (`_process_data` and
the loader after it), reproduced exactly: the same comparisons on float64 values, the same
first-wins tie breaking, and the same treatment of ties in the `probability`/`crossentropy` loop.

Speed: the whole file (about 32k rows) parses in a few hundred milliseconds: Python touches each row
once, the 10 votes of all rows are checked and converted by numpy at once.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass

import numpy as np

from fertrain.data.records import USAGE_TO_SPLIT, shorten
from fertrain.errors import DataError

FERPLUS_CLASSES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
VOTE_COLUMNS = (*FERPLUS_CLASSES, "unknown", "NF")  # 10 vote columns, in the file's order
TARGET_MODES = ("majority", "probability", "crossentropy", "multi_target")

NUM_EMOTIONS = len(FERPLUS_CLASSES)  # columns from here on (unknown, NF) are not emotions
MAX_VOTES = 10  # annotators per face
EXPECTED_HEADER = "Usage,Image name," + ",".join(VOTE_COLUMNS)
USAGES = tuple(USAGE_TO_SPLIT)  # Training, PublicTest, PrivateTest
_USAGE_BYTES = {usage.encode(): usage for usage in USAGES}
_GZIP_MAGIC = b"\x1f\x8b"
# Microsoft's thresholds, as fractions of a face's votes left after outlier removal.
_MAJORITY = 0.5
_PROBABILITY_MASS = 0.75
_PROBABILITY_MAX_CLASSES = 3
_MULTI_TARGET_THRESHOLD = 0.3


@dataclass(frozen=True)
class FerplusVotes:
    """Every data row of a FER+ vote file, in file order: data row i is file line i + 2."""

    usage: np.ndarray  # str [N]: "Training", "PublicTest" or "PrivateTest"
    votes: np.ndarray  # uint8 [N, 10]: counts per VOTE_COLUMNS, each row summing to 1-10
    name: str  # how errors refer to the file


# Parsing


def _decompressed(data: bytes, name: str) -> bytes:
    """`data` itself, or its contents when it is gzip-compressed (`fer2013new.csv.gz`)."""
    if not data.startswith(_GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{name}: not a readable gzip file ({exc})") from None


def _field(value: bytes) -> bytes:
    return value.strip().strip(b'"').strip()


def _column_positions(header: bytes, name: str) -> tuple[int, list[int], int]:
    """(Usage column, the 10 vote columns in VOTE_COLUMNS order, fields per row), found by name."""
    text = header.decode("utf-8-sig", errors="replace").rstrip("\r")
    names = [column.strip().strip('"').strip().lower() for column in text.split(",")]
    for column in ("Usage", *VOTE_COLUMNS):
        if column.lower() not in names:
            raise DataError(
                f"{name}: line 1: missing column {column!r} (expected header {EXPECTED_HEADER}, "
                f"got {shorten(header, 60)})"
            )
    vote_positions = [names.index(column.lower()) for column in VOTE_COLUMNS]
    return names.index("usage"), vote_positions, len(names)


def _data_lines(text: bytes, name: str) -> list[bytes]:
    """The lines after the header, without trailing blank lines; a blank line between rows is an error,
    since rows join FER2013's by position and a lost row would shift every row after it."""
    lines = text.split(b"\n")[1:]
    while lines and not lines[-1].strip():
        lines.pop()
    for index, line in enumerate(lines):
        if not line.strip():
            raise DataError(
                f"{name}: line {index + 2}: empty line (expected one row of votes per FER2013 row)"
            )
    if not lines:
        raise DataError(f"{name}: line 2: no rows after the header (expected one row per FER2013 row)")
    return lines


def _first_bad_vote(cells: np.ndarray, digits: np.ndarray, ok: np.ndarray, name: str) -> DataError:
    """The error for the first vote cell, row by row, that is not an integer 0-10."""
    row, column = np.argwhere(~ok)[0]
    got = str(int(cells[row, column])) if digits[row, column] else shorten(cells[row, column])
    return DataError(
        f"{name}: line {row + 2}: {VOTE_COLUMNS[column]} vote {got} is not an integer 0-{MAX_VOTES}"
    )


def read_ferplus_votes(data: bytes, name: str) -> FerplusVotes:
    """Parses a whole FER+ `fer2013new.csv` held in memory (plain or gzip-compressed); `name` is how
    errors refer to the file. Any malformed row stops parsing with a one-line `DataError` naming the
    line: unlike FER2013's pixel rows, a vote row cannot be skipped, since rows join by position."""
    text = _decompressed(data, name)
    if not text.strip():
        raise DataError(f"{name}: line 1: empty file (expected header {EXPECTED_HEADER})")
    usage_position, vote_positions, num_columns = _column_positions(text.split(b"\n", 1)[0], name)
    lines = _data_lines(text, name)

    usages: list[str] = []
    cells: list[bytes] = []
    for line_number, line in enumerate(lines, start=2):
        fields = line.rstrip(b"\r").split(b",")
        if len(fields) != num_columns:
            raise DataError(
                f"{name}: line {line_number}: expected {num_columns} comma-separated fields "
                f"({EXPECTED_HEADER}), got {len(fields)}"
            )
        usage = _USAGE_BYTES.get(_field(fields[usage_position]))
        if usage is None:
            raise DataError(
                f"{name}: line {line_number}: unknown Usage {shorten(_field(fields[usage_position]))} "
                f"(expected {', '.join(USAGES[:-1])} or {USAGES[-1]})"
            )
        usages.append(usage)
        cells.extend(fields[position] for position in vote_positions)

    vote_cells = np.array(cells, dtype=bytes).reshape(len(lines), len(VOTE_COLUMNS))
    vote_cells = np.strings.strip(np.strings.strip(np.strings.strip(vote_cells), b'"'))
    # Up to 3 digits: enough to tell 11 or 100 from a vote, too few to overflow the conversion.
    digits = np.strings.isdigit(vote_cells) & (np.strings.str_len(vote_cells) <= 3)
    values = np.where(digits, vote_cells, b"0").astype(np.int64)
    ok = digits & (values <= MAX_VOTES)
    if not ok.all():
        raise _first_bad_vote(vote_cells, digits, ok, name)
    totals = values.sum(axis=1)
    bad_total = (totals < 1) | (totals > MAX_VOTES)
    if bad_total.any():
        row = int(np.argmax(bad_total))
        raise DataError(
            f"{name}: line {row + 2}: votes sum to {totals[row]} "
            f"(expected 1-{MAX_VOTES}, the votes of up to {MAX_VOTES} annotators)"
        )
    return FerplusVotes(usage=np.array(usages, dtype=str), votes=values.astype(np.uint8), name=name)


def join_check(
    votes: FerplusVotes, fer_row_count: int, fer_rows: np.ndarray, fer_usage: np.ndarray, fer_name: str
) -> None:
    """Raises `DataError` unless `votes` can join FER2013 by row order: as many rows as `fer_name`
    holds (`fer_row_count`, bad rows included), and the same `Usage` on each kept FER2013 row:
    `fer_rows` are their positions among the data rows (row i is line i + 2 of both files),
    `fer_usage` their Usage."""
    if len(votes.usage) != fer_row_count:
        raise DataError(
            f"{votes.name}: {len(votes.usage)} vote rows but {fer_name} has {fer_row_count} rows; "
            "FER+ rows join FER2013's by order, so both files must hold the same rows"
        )
    fer_usage = np.asarray(fer_usage, dtype=str)
    differ = np.asarray(votes.usage, dtype=str)[fer_rows] != fer_usage
    if differ.any():
        at = int(np.argmax(differ))
        line = int(fer_rows[at]) + 2
        theirs = str(votes.usage[fer_rows[at]])
        raise DataError(
            f"{votes.name}: line {line}: Usage {theirs!r} but {fer_name}: line {line}: "
            f"Usage {str(fer_usage[at])!r}; FER+ rows join FER2013's by order, so their Usage must agree "
            "row by row"
        )


# Votes to targets


def _cleaned(votes: np.ndarray) -> np.ndarray:
    """float64 [N, 10]: Microsoft's outlier removal; float64 so that thresholds compare as in Python."""
    votes = np.asarray(votes, dtype=np.float64)
    if votes.ndim != 2 or votes.shape[1] != len(VOTE_COLUMNS):
        raise ValueError(f"expected votes of shape [N, {len(VOTE_COLUMNS)}], got {votes.shape}")
    # Microsoft: `if emotion_raw[i] < 1.0 + sys.float_info.epsilon: emotion_raw[i] = 0.0`.
    return np.where(votes < 1.0 + np.finfo(np.float64).eps, 0.0, votes)


def clean_votes(votes: np.ndarray) -> np.ndarray:
    """float32 [N, 10]: the votes with every single vote set to 0. Microsoft treats a class only one
    annotator chose as that annotator's mistake (outlier removal) before any labelling rule."""
    return _cleaned(votes).astype(np.float32)


def emotion_argmax_kept(votes: np.ndarray) -> np.ndarray:
    """bool [N]: faces whose most-voted class after cleaning (first wins ties, as `np.argmax`) is one
    of the 8 emotions, not `unknown` or `NF`, and that have any vote left: the faces a FER+ prepare
    keeps. Which of them a training mode uses is `mode_targets`' `keep`."""
    cleaned = _cleaned(votes)
    return (cleaned.argmax(axis=1) < NUM_EMOTIONS) & (cleaned.sum(axis=1) > 0)


def argmax_labels(votes: np.ndarray) -> np.ndarray:
    """uint8 [N]: the index in VOTE_COLUMNS of each face's most-voted class after cleaning (first
    wins ties). An emotion label 0-7 in FERPLUS_CLASSES order only where `emotion_argmax_kept`."""
    return _cleaned(votes).argmax(axis=1).astype(np.uint8)


def majority_mask(votes: np.ndarray) -> np.ndarray:
    """bool [N]: faces where one emotion has a strict majority (more than half) of the cleaned votes:
    FER+'s `majority` mode, and its official evaluation set, labelled by `argmax_labels`."""
    cleaned = _cleaned(votes)
    return (cleaned.max(axis=1) > _MAJORITY * cleaned.sum(axis=1)) & (cleaned.argmax(axis=1) < NUM_EMOTIONS)


def _probability_picks(cleaned: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Microsoft's `probability`/`crossentropy` selection for all rows at once: (picked votes [N, 10],
    picks per row [N]).

    Per row, Microsoft repeats, while the picked votes are under 75 % of the total, fewer than 3 classes
    are picked and no `unknown`/`NF` was met: take every class tied at the highest remaining vote, in
    column order; on reaching `unknown` or `NF` stop, and drop it again if anything else was picked.
    Each round picks at least one class, so three rounds finish every row.
    """
    rows = np.arange(len(cleaned))
    remaining = cleaned.copy()
    picked = np.zeros_like(cleaned)
    count = np.zeros(len(cleaned), dtype=np.int64)
    total = cleaned.sum(axis=1)
    active = np.ones(len(cleaned), dtype=bool)
    for _ in range(_PROBABILITY_MAX_CLASSES):
        active &= (picked.sum(axis=1) < _PROBABILITY_MASS * total) & (count < _PROBABILITY_MAX_CLASSES)
        if not active.any():
            break
        maxval = remaining.max(axis=1)
        tied = (remaining == maxval[:, None]) & active[:, None]
        # The column loop breaks at the first tied non-emotion column: NF is not reached after unknown.
        non_emotion = tied[:, NUM_EMOTIONS:]
        meets_non_emotion = non_emotion.any(axis=1)
        first_non_emotion = NUM_EMOTIONS + non_emotion.argmax(axis=1)
        take = tied.copy()
        take[:, NUM_EMOTIONS:] = False
        take[rows[meets_non_emotion], first_non_emotion[meets_non_emotion]] = True
        picked = np.where(take, remaining, picked)
        remaining = np.where(take, 0.0, remaining)
        count += take.sum(axis=1)
        # `if sum(emotion) > maxval: emotion[i] = 0; count -= 1`: unknown/NF stays only when alone.
        drop = meets_non_emotion & (picked.sum(axis=1) > maxval)
        picked[rows[drop], first_non_emotion[drop]] = 0.0
        count -= drop
        active &= ~meets_non_emotion
    return picked, count


def mode_targets(votes: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(targets float32 [N, 8], keep bool [N]) by Microsoft's rules for `mode` (see TARGET_MODES).

    After outlier removal (`clean_votes`), with T a face's cleaned total:
    - majority: the emotion with more than T/2 votes; target one-hot.
    - probability, crossentropy: the classes picked by `_probability_picks`, if they hold more than T/2
      votes and at most 3 classes (ties can pick more); target their votes normalised. (probability
      samples a one-hot label from it later, in training.)
    - multi_target: every class with at least 0.3 * T votes, if together more than T/2; target their
      emotion votes normalised (training turns it into a set of labels).
    A face is kept when the chosen votes exist and their most-voted class (first wins ties) is an
    emotion; `unknown`/`NF` votes among the chosen ones are then dropped from the target. Rows not
    kept have all-zero targets; kept rows sum to 1.
    """
    if mode not in TARGET_MODES:
        raise ValueError(f"unknown FER+ target mode {mode!r} (expected one of {', '.join(TARGET_MODES)})")
    cleaned = _cleaned(votes)
    total = cleaned.sum(axis=1)
    if mode == "majority":
        chosen = np.where(cleaned == cleaned.max(axis=1, keepdims=True), cleaned, 0.0)
        accepted = cleaned.max(axis=1) > _MAJORITY * total
    elif mode == "multi_target":
        chosen = np.where(cleaned >= _MULTI_TARGET_THRESHOLD * total[:, None], cleaned, 0.0)
        accepted = chosen.sum(axis=1) > _MAJORITY * total
    else:
        chosen, count = _probability_picks(cleaned)
        accepted = (chosen.sum(axis=1) > _MAJORITY * total) & (count <= _PROBABILITY_MAX_CLASSES)
    keep = accepted & (chosen.argmax(axis=1) < NUM_EMOTIONS)
    emotions = np.where(keep[:, None], chosen[:, :NUM_EMOTIONS], 0.0)
    sums = emotions.sum(axis=1, keepdims=True)
    targets = np.divide(emotions, sums, out=np.zeros_like(emotions), where=sums > 0)
    return targets.astype(np.float32), keep
