"""`fertrain predict` on a video file or a live camera: faces found in every analysed frame by the
Haar cascade photos use, the emotions of every face, a table of them and an annotated video.

Faces are classified a batch of frames at a time: one model call for one face costs nearly as much as
one for sixteen (the bundled ensemble on 2 cores: ~10 ms for 1 face, ~22 ms for 16).
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fertrain.errors import DataError
from fertrain.fileio import removed_on_failure, write_atomic, writing
from fertrain.inference import FACE_SIZE, LoadedModel, load_classifier, predict_probabilities
from fertrain.predict import (
    CASCADE_WINDOW,
    FacePrediction,
    annotate,
    detect_faces,
    face_detector,
    split_model_and_images,
    to_face,
    top_emotions,
)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp")
TABLE_SUFFIXES = (".csv", ".json")
# Codecs opencv-python-headless's FFmpeg writes (H.264 is not among them).
ANNOTATED_CODECS = {".avi": "MJPG", ".mkv": "MJPG", ".mp4": "mp4v", ".mov": "mp4v"}
# A file is read as fast as it decodes, so a batch only adds throughput; a camera delivers ~30 frames/s,
# so a batch of 4 keeps the emotions within ~0.15 s of the picture.
FILE_BATCH_FRAMES = 16
CAMERA_BATCH_FRAMES = 4
CAMERA_FALLBACK_FPS = 30.0  # the annotated video's rate when a camera does not report its own


def table_columns(classes: tuple[str, ...]) -> tuple[str, ...]:
    """The header of `--out` CSV: one probability column per class the model names."""
    return ("frame", "time_s", "x", "y", "width", "height", *classes, "top")


Box = tuple[int, int, int, int]
Frame = tuple[int, np.ndarray]  # index among all frames read, BGR picture
STAGES = ("decode", "detect", "model", "write")
Progress = Callable[[int, int | None], None]  # (frames read, frames expected or None when unknown)


@dataclass(frozen=True)
class FaceRow:
    """One face in one frame: a row of the table."""

    frame: int  # index among all the frames read, 0 first
    time_s: float
    box: Box  # x, y, width, height in the frame
    probabilities: tuple[float, ...]  # in the order of `classes`
    classes: tuple[str, ...]  # the model's

    @property
    def top(self) -> str:
        return self.classes[int(np.argmax(self.probabilities))]

    def to_dict(self) -> dict[str, Any]:
        return {
            "frame": self.frame,
            "time_s": self.time_s,
            "box": list(self.box),
            "probabilities": dict(zip(self.classes, self.probabilities, strict=True)),
            "top": self.top,
        }


@dataclass(frozen=True)
class FrameResult:
    frame: int
    time_s: float
    faces: list[FaceRow]

    def predictions(self) -> list[FacePrediction]:
        """The faces in the form `fertrain.predict.annotate` draws."""
        return [
            FacePrediction(face.box, top_emotions(np.asarray(face.probabilities), face.classes))
            for face in self.faces
        ]


FrameCallback = Callable[[FrameResult, np.ndarray], None]  # an analysed frame and its BGR picture


@dataclass(frozen=True)
class VideoOptions:
    """What a video or camera analysis reads, how it classifies and where it writes."""

    every: int = 1  # analyse every `every`-th frame
    frames: int | None = None  # stop after this many frames read; None: the whole video, or until Ctrl-C
    out: str | Path | None = None  # the table of faces (.csv or .json)
    annotated: str | Path | None = None  # the analysed frames with boxes and emotions drawn (a video)
    normalize: str = "raw"
    tta: str = "none"
    on_frame: FrameCallback | None = None  # called after each analysed frame


@dataclass
class VideoSummary:
    source: str
    frames_read: int = 0
    frames_analysed: int = 0
    faces: int = 0
    # Analysed frames per top emotion of their largest face ("no face" when none was found).
    top_frames: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0  # wall time from the first frame read to the last row written
    # Wall seconds per stage: decode, detect (grayscale, cascade, crops), model, write (table, video).
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    stopped: str = "end"  # end of the video, `frames` reached, or `interrupted` (a camera's Ctrl-C)
    table: Path | None = None
    annotated: Path | None = None

    @property
    def frames_per_s(self) -> float:
        return self.frames_read / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "frames_read": self.frames_read,
            "frames_analysed": self.frames_analysed,
            "faces": self.faces,
            "top_frames": dict(self.top_frames.most_common()),
            "seconds": self.seconds,
            "frames_per_s": self.frames_per_s,
            "stage_seconds": self.stage_seconds,
            "stopped": self.stopped,
            "table": None if self.table is None else str(self.table),
            "annotated": None if self.annotated is None else str(self.annotated),
        }


def video_request(arguments: Sequence[str], camera: int | None) -> tuple[Path, Path | int] | None:
    """(model, video file or camera index) for `[MODEL] VIDEO` or `--camera`; None for images."""
    is_video = [Path(argument).suffix.lower() in VIDEO_SUFFIXES for argument in arguments]
    if camera is None and not any(is_video):
        return None
    model, inputs = split_model_and_images(arguments, inputs_required=camera is None)
    if camera is not None:
        if inputs:
            raise DataError(
                f"--camera reads no files, but got {', '.join(inputs)}: pass only an optional MODEL"
            )
        return model, camera
    if len(inputs) != 1:
        raise DataError(f"one video at a time, without images: got {', '.join(inputs)}")
    return model, Path(inputs[0])


def check_outputs(out: str | Path | None, annotated: str | Path | None) -> None:
    """Fails on an output format fertrain cannot write, before any frame is read."""
    if out is not None and Path(out).suffix.lower() not in TABLE_SUFFIXES:
        raise DataError(f"{out}: the table is written as {' or '.join(TABLE_SUFFIXES)}; name the file so")
    if annotated is not None and Path(annotated).suffix.lower() not in ANNOTATED_CODECS:
        raise DataError(f"{annotated}: annotated videos are written as {', '.join(ANNOTATED_CODECS)}")


def camera_capture(index: int):
    """OpenCV's capture of camera `index`; `predict_camera` takes another factory (tests feed a file)."""
    import cv2

    return cv2.VideoCapture(index)


def find_faces(detector, gray: np.ndarray) -> list[Box]:
    """Face boxes in a grayscale frame, as `fertrain.predict.detect_faces` finds them in a frame shrunk
    so that the smallest face looked for fills the cascade's window.

    Faces smaller than the model's 48-pixel input are not looked for, which skips the cascade's most
    expensive scales: on a 640x480 frame ~16 ms instead of ~55 ms for 24-pixel faces.
    """
    import cv2

    factor = max(FACE_SIZE, min(gray.shape) // 20) / CASCADE_WINDOW
    height, width = gray.shape
    small = cv2.resize(gray, (round(width / factor), round(height / factor)), interpolation=cv2.INTER_AREA)
    boxes = []
    for x, y, w, h in detect_faces(detector, small):
        left, top = round(x * factor), round(y * factor)
        right, bottom = min(width, round((x + w) * factor)), min(height, round((y + h) * factor))
        boxes.append((left, top, right - left, bottom - top))
    return boxes


class _Table:
    """The rows so far, in `path`: a CSV grows by each frame's rows as its batch is classified, flushed
    at once, so even a killed process leaves every frame classified; JSON, one list, is written whole
    when closed, also after an error."""

    def __init__(self, path: Path, classes: tuple[str, ...]):
        self.path = path
        self._json = path.suffix.lower() == ".json"
        self._rows: list[dict[str, Any]] = []
        self._file = None
        if not self._json:
            with writing(path):
                path.parent.mkdir(parents=True, exist_ok=True)
                self._file = path.open("w", encoding="utf-8", newline="")
            self._write_lines([table_columns(classes)])

    def add(self, rows: list[FaceRow]) -> None:
        if self._json:
            self._rows.extend(row.to_dict() for row in rows)
        elif rows:
            self._write_lines(
                [row.frame, f"{row.time_s:.3f}", *row.box, *(f"{p:.6f}" for p in row.probabilities), row.top]
                for row in rows
            )

    def _write_lines(self, lines) -> None:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(lines)
        with writing(self.path):
            self._file.write(buffer.getvalue())
            self._file.flush()

    def close(self) -> None:
        if self._json:
            write_atomic(self.path, "[\n" + ",\n".join(map(json.dumps, self._rows)) + "\n]\n")
        else:
            with writing(self.path):
                self._file.close()


class _AnnotatedVideo:
    """Written beside `path` and renamed into place when closed, also after an error: it then holds
    the frames the table holds."""

    def __init__(self, path: Path, fps: float, frame: np.ndarray):
        import cv2

        self.path = path
        self._partial = path.with_name(f".{path.stem}.partial{path.suffix}")
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            if not os.access(path.parent, os.W_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        codec = ANNOTATED_CODECS[path.suffix.lower()]
        height, width = frame.shape[:2]
        fourcc = cv2.VideoWriter_fourcc(*codec)
        self._writer = cv2.VideoWriter(str(self._partial), fourcc, fps, (width, height))
        if not self._writer.isOpened():
            self._partial.unlink(missing_ok=True)
            raise DataError(
                f"{path}: this OpenCV {cv2.__version__} has no {codec} encoder for {path.suffix} "
                f"videos; try {', '.join(s for s in ANNOTATED_CODECS if s != path.suffix.lower())}"
            )

    def add(self, frame: np.ndarray, result: FrameResult) -> None:
        self._writer.write(annotate(frame, result.predictions()))

    def close(self) -> None:
        self._writer.release()
        with writing(self.path), removed_on_failure(self._partial):
            if self._partial.stat().st_size == 0:
                raise OSError(errno.EIO, "the video encoder wrote nothing", str(self.path))
            os.replace(self._partial, self.path)


@dataclass
class _Pending:
    """Frames detected but not yet classified."""

    frames: list[tuple[int, float, np.ndarray, list[Box]]] = field(default_factory=list)
    faces: list[np.ndarray] = field(default_factory=list)


def _frames(capture, every: int, limit: int | None, summary: VideoSummary) -> Iterator[Frame]:
    """(index, BGR frame) of every `every`-th frame of the first `limit`; skipped frames are only
    grabbed, not converted to pictures."""
    index = 0
    while limit is None or index < limit:
        start = time.perf_counter()
        grabbed = capture.grab()
        frame = capture.retrieve()[1] if grabbed and index % every == 0 else None
        summary.stage_seconds["decode"] += time.perf_counter() - start
        if not grabbed:
            return
        summary.frames_read += 1
        if frame is not None:
            yield index, frame
        index += 1


def _analyse(
    classifier: LoadedModel,
    capture,
    summary: VideoSummary,
    options: VideoOptions,
    *,
    live: bool,
    progress: Progress | None,
) -> VideoSummary:
    import cv2

    every, frames, out, annotated = options.every, options.frames, options.out, options.annotated
    detector = face_detector()
    fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    expected = None if live or count <= 0 else min(count, frames or count)
    stages = summary.stage_seconds
    batch_frames = CAMERA_BATCH_FRAMES if live else FILE_BATCH_FRAMES
    pending = _Pending()
    table = video = None
    started = time.perf_counter()

    def frame_time(index: int) -> float:
        if live:
            return time.perf_counter() - started
        return index / fps if fps > 0 else capture.get(cv2.CAP_PROP_POS_MSEC) / 1000

    def classify() -> None:
        start = time.perf_counter()
        stacked = np.stack(pending.faces) if pending.faces else np.zeros((0, FACE_SIZE, FACE_SIZE), np.uint8)
        scored = predict_probabilities([classifier], stacked, normalize=options.normalize, tta=options.tta)
        probabilities = iter(scored)
        stages["model"] += time.perf_counter() - start
        start = time.perf_counter()
        for index, seconds, frame, boxes in pending.frames:
            rows = [
                FaceRow(index, seconds, box, tuple(map(float, next(probabilities))), classifier.classes)
                for box in boxes
            ]
            result = FrameResult(index, seconds, rows)
            summary.frames_analysed += 1
            summary.faces += len(rows)
            largest = max(rows, key=lambda row: row.box[2] * row.box[3], default=None)
            summary.top_frames["no face" if largest is None else largest.top] += 1
            if table is not None:
                table.add(rows)
            if video is not None:
                video.add(frame, result)
            if options.on_frame is not None:
                options.on_frame(result, frame)
        pending.frames.clear()
        pending.faces.clear()
        stages["write"] += time.perf_counter() - start

    try:
        try:
            for index, frame in _frames(capture, every, frames, summary):
                start = time.perf_counter()
                gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
                boxes = find_faces(detector, gray)
                pending.faces.extend(to_face(gray[y : y + h, x : x + w]) for x, y, w, h in boxes)
                pending.frames.append((index, frame_time(index), frame, boxes))
                stages["detect"] += time.perf_counter() - start
                # Outputs open at the first frame: an empty video or a silent camera leaves none behind.
                if out is not None and table is None:
                    table = _Table(Path(out), classifier.classes)
                    summary.table = table.path
                if annotated is not None and video is None:
                    video = _AnnotatedVideo(Path(annotated), (fps or CAMERA_FALLBACK_FPS) / every, frame)
                    summary.annotated = video.path
                if len(pending.frames) >= batch_frames:
                    classify()
                if progress is not None:
                    progress(summary.frames_read, expected)
        except KeyboardInterrupt:
            # A camera has no end: Ctrl-C is how it is stopped, and what it saw so far is the result.
            if not live:
                raise
            summary.stopped = "interrupted"
        if pending.frames:
            classify()
    finally:
        try:
            for output in (table, video):
                if output is not None:
                    output.close()
        finally:
            capture.release()
    if summary.stopped == "end" and frames is not None and summary.frames_read >= frames:
        summary.stopped = "frames"
    summary.seconds = time.perf_counter() - started
    if summary.frames_read == 0:
        raise DataError(f"{summary.source}: no frames could be read")
    return summary


def predict_video(
    model: str | Path | LoadedModel,
    video: str | Path,
    options: VideoOptions = VideoOptions(),
    progress: Progress | None = None,
) -> VideoSummary:
    """Emotions of the faces in every `options.every`-th of the first `options.frames` frames of a video
    file; the rows go to `options.out` (.csv/.json) and the analysed frames, annotated, to the video
    `options.annotated`."""
    import cv2

    check_outputs(options.out, options.annotated)
    path = Path(video)
    if not path.is_file():
        raise DataError(f"{path}: no such video file")
    classifier = load_classifier(model)
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise DataError(f"{path}: not a video OpenCV {cv2.__version__} can read")
    return _analyse(classifier, capture, VideoSummary(str(path)), options, live=False, progress=progress)


def predict_camera(
    model: str | Path | LoadedModel,
    index: int = 0,
    options: VideoOptions = VideoOptions(),
    capture_factory: Callable[[int], Any] | None = None,
) -> VideoSummary:
    """As `predict_video`, live from camera `index` until `options.frames` frames or Ctrl-C; times are
    seconds since the first frame."""
    check_outputs(options.out, options.annotated)
    classifier = load_classifier(model)
    capture = (capture_factory or camera_capture)(index)
    if not capture.isOpened():
        capture.release()
        raise DataError(f"camera {index}: cannot be opened (no such camera, or it is in use)")
    return _analyse(classifier, capture, VideoSummary(f"camera {index}"), options, live=True, progress=None)


class Window:
    """An on-screen window showing annotated frames (`--show`)."""

    NAME = "fertrain"

    def __init__(self):
        import cv2

        if sys.platform.startswith("linux") and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
        ):
            raise DataError("--show needs a display (neither DISPLAY nor WAYLAND_DISPLAY is set)")
        try:
            cv2.namedWindow(self.NAME)
        except cv2.error:
            raise DataError(
                "--show needs OpenCV with windows: pip install opencv-python (not -headless)"
            ) from None

    def show(self, result: FrameResult, frame: np.ndarray) -> None:
        import cv2

        cv2.imshow(self.NAME, annotate(frame, result.predictions()))
        cv2.waitKey(1)  # lets the window draw

    def close(self) -> None:
        import cv2

        cv2.destroyWindow(self.NAME)
