"""`fertrain prepare`: any form of FER2013, or image folders of any classes, in; one validated
directory of .npz splits out.

The directory is built beside its destination and renamed into place, so a failed or interrupted
prepare never leaves a half-written directory and never destroys an existing good one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from fertrain import __version__
from fertrain.data.dataset import MANIFEST, SPLITS
from fertrain.data.ferplus import (
    FERPLUS_CLASSES,
    argmax_labels,
    emotion_argmax_kept,
    join_check,
    majority_mask,
    read_ferplus_votes,
)
from fertrain.data.image_folder import FolderOptions
from fertrain.data.records import IMAGE_SIZE, USAGE_TO_SPLIT, Progress, SourceData, no_progress
from fertrain.data.sources import read_source, sha256_of
from fertrain.errors import DataError
from fertrain.fileio import writing


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, carved) that carve `fraction` of each class off, both in source order."""
    rng = np.random.default_rng(seed)
    carved = [np.zeros(0, dtype=np.int64)]
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        carved.append(rng.permutation(members)[: round(len(members) * fraction)])
    carved = np.sort(np.concatenate(carved))
    return np.setdiff1d(np.arange(len(labels)), carved), carved


def class_counts(labels: np.ndarray, classes: tuple[str, ...]) -> dict[str, int]:
    counts = np.bincount(labels, minlength=len(classes))
    return {name: int(count) for name, count in zip(classes, counts, strict=True)}


def _carve_val(data: SourceData, val_fraction: float, seed: int) -> dict[str, Any]:
    """Adds a stratified val split taken from train when the source has none; says what it did."""
    splits = data.splits
    if "val" in splits:
        return {"origin": "source"}
    if "train" not in splits or val_fraction == 0:
        return {"origin": "none"}
    images, labels = splits["train"]
    kept, carved = stratified_split(labels, val_fraction, seed)
    splits["train"] = images[kept], labels[kept]
    splits["val"] = images[carved], labels[carved]
    if "train" in data.votes:
        votes = data.votes["train"]
        data.votes["train"], data.votes["val"] = votes[kept], votes[carved]
    return {"origin": "carved from train", "fraction": val_fraction, "seed": seed}


def join_ferplus(data: SourceData, votes_path: Path, source_name: str) -> dict[str, Any]:
    """Replaces `data`'s FER2013 labels by FER+'s: joins the vote rows on row order (each row's
    Usage must agree), keeps the faces whose votes' argmax is an emotion, labels them with it, and
    keeps their 10 vote counts. Returns what the manifest records of the join."""
    if data.rows is None:
        raise DataError(
            f"{source_name}: --ferplus joins FER+ votes to FER2013's rows by order, so the source must be "
            f"a FER2013 CSV (plain, .gz, or inside a .tar.gz/.zip), not {data.layout}"
        )
    try:
        raw = votes_path.read_bytes()
    except OSError as exc:
        raise DataError(f"{votes_path}: cannot read ({exc.strerror or exc})") from None
    votes = read_ferplus_votes(raw, str(votes_path))
    usage_of_split = {split: usage for usage, split in USAGE_TO_SPLIT.items()}
    rows = np.concatenate([data.rows[split] for split in data.splits])
    usage = np.concatenate([[usage_of_split[split]] * len(data.rows[split]) for split in data.splits])
    join_check(votes, data.row_count, rows, usage, source_name)
    dropped = {}
    for split, (images, _) in list(data.splits.items()):
        split_votes = votes.votes[data.rows[split]]
        keep = emotion_argmax_kept(split_votes)
        data.splits[split] = images[keep], argmax_labels(split_votes[keep])
        data.votes[split] = split_votes[keep]
        dropped[split] = int((~keep).sum())
    data.classes = FERPLUS_CLASSES
    return {
        "file": votes_path.name,
        "sha256": sha256_of(votes_path),
        "dropped_faces": dropped,
        "majority_faces": {split: int(majority_mask(v).sum()) for split, v in data.votes.items()},
        "rules": "data/README.md, section FER+ vote labels",
    }


def _manifest(source: Path, data: SourceData, val_split: dict[str, Any]) -> dict[str, Any]:
    splits = {}
    for split in SPLITS:
        images, labels = data.splits.get(split, (None, np.zeros(0, dtype=np.uint8)))
        splits[split] = {
            "present": images is not None,
            "file": f"{split}.npz" if images is not None else None,
            "count": int(len(labels)),
            "class_counts": class_counts(labels, data.classes),
        }
    return {
        "fertrain_version": __version__,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": {
            "name": source.name,
            "path": str(source.resolve()),
            "format": data.format,
            "layout": data.layout,
            "sha256": sha256_of(source),
            "sha256_of": "directory listing (sha256sum of every file)" if source.is_dir() else "file",
        },
        "classes": list(data.classes),
        "targets": ["labels", "votes"] if data.votes else ["labels"],
        "image_shape": [IMAGE_SIZE, IMAGE_SIZE],
        "splits": splits,
        "val_split": val_split,
        "skipped_rows": {"count": len(data.skipped), "rows": data.skipped},
        **_face_detection(data),
    }


def _face_detection(data: SourceData) -> dict[str, Any]:
    """What the manifest records of `--detect-faces`: nothing when it was off."""
    if data.faces_not_found is None:
        return {}
    images = sum(len(labels) for _, labels in data.splits.values())
    missing = data.faces_not_found
    return {"face_detection": {"images": images, "no_face": len(missing), "no_face_images": missing}}


def _check_destination(out: Path) -> None:
    """Refuses to replace anything but an empty directory or an earlier prepare's output."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise DataError(f"{out}: not empty and not a `fertrain prepare` output; choose another --out")


def _write_atomically(out: Path, data: SourceData, manifest: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        for split, (images, labels) in data.splits.items():
            votes = {"votes": data.votes[split]} if split in data.votes else {}
            np.savez(staging / f"{split}.npz", images=images, labels=labels, **votes)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        staging.chmod(0o755)
        if out.exists():
            retired = out.with_name(f".{out.name}.replaced-{os.getpid()}")
            out.rename(retired)
            staging.rename(out)
            shutil.rmtree(retired)
        else:
            staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def prepare(
    source: str | Path,
    out: str | Path,
    *,
    fmt: str = "auto",
    val_fraction: float = 0.1,
    seed: int = 42,
    skip_bad_rows: bool = False,
    ferplus: str | Path | None = None,
    classes: Sequence[str] | None = None,
    detect_faces: bool = False,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """Reads `source` in any accepted form (FER2013's, or image folders of any classes), writes
    `out`, returns its manifest.

    With `ferplus` (FER+'s fer2013new.csv, plain or .gz) the faces are labelled with FER+'s 8 classes
    and keep their 10 vote counts (`join_ferplus`). For image folders, `classes` names the classes
    in label order (default: the folder names sorted, or FER2013's 7 emotions when every folder names
    one) and `detect_faces` crops each image to the largest face found in it first (the manifest
    counts the images where none was found; they are kept whole)."""
    source, out = Path(source), Path(out)
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction {val_fraction}: expected a fraction in [0, 1)")
    _check_destination(out)
    if ferplus is not None and not Path(ferplus).is_file():
        raise DataError(f"{ferplus}: no such FER+ votes file (fer2013new.csv, plain or .gz)")
    folders = FolderOptions(None if classes is None else tuple(classes), detect_faces)
    data = read_source(source, fmt, skip_bad_rows, progress, folders)
    joined = join_ferplus(data, Path(ferplus), str(source)) if ferplus is not None else None
    if not any(len(labels) for _, labels in data.splits.values()):
        raise DataError(f"{source}: no usable images found")
    val_split = _carve_val(data, val_fraction, seed)
    manifest = _manifest(source, data, val_split)
    if joined is not None:
        manifest["ferplus"] = joined
    with writing(out):
        _write_atomically(out, data, manifest)
    return manifest
