"""`fertrain predict` on a video file and a camera (fed by a file through the capture factory)."""

from __future__ import annotations

import csv
import errno
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from boxes import iou
from cli_main import run_cli

import fertrain.video
from fertrain.data.dataset import FER2013_CLASSES
from fertrain.inference import load_classifier
from fertrain.predict import BUNDLED_MODEL, read_image
from fertrain.video import VideoOptions, predict_camera, predict_video

pytestmark = pytest.mark.slow

DEMO_PHOTO = Path(__file__).resolve().parents[1] / "data" / "sample" / "astronaut.jpg"
FRAMES, FPS = 24, 25
# The photo is 320x320, its face at (113, 66, 95, 95); padded to 640x480 the face moves by the padding.
PAD_X, PAD_Y = 160, 80
FACE = (113 + PAD_X, 66 + PAD_Y, 95, 95)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """FRAMES frames of the demo photo edge-padded to 640x480, MJPG in .avi."""
    bgr = cv2.cvtColor(read_image(DEMO_PHOTO), cv2.COLOR_RGB2BGR)
    frame = cv2.copyMakeBorder(bgr, PAD_Y, PAD_Y, PAD_X, PAD_X, cv2.BORDER_REPLICATE)
    path = tmp_path_factory.mktemp("video") / "astronaut.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (640, 480))
    for _ in range(FRAMES):
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture(scope="module")
def classifier():
    return load_classifier(BUNDLED_MODEL)


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _decoded_frames(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame)


def _file_camera(video: Path):
    """A capture factory that opens `video` whatever camera index is asked for."""
    return lambda index: cv2.VideoCapture(str(video))


def test_every_frame_has_the_face_its_probabilities_and_an_annotated_copy(video, classifier, tmp_path):
    seen = []
    summary = predict_video(
        classifier,
        video,
        VideoOptions(out=tmp_path / "faces.csv", annotated=tmp_path / "annotated.avi"),
        progress=lambda done, total: seen.append((done, total)),
    )
    assert (summary.frames_read, summary.frames_analysed, summary.faces) == (FRAMES, FRAMES, FRAMES)
    assert seen[-1] == (FRAMES, FRAMES)
    rows = _csv_rows(tmp_path / "faces.csv")
    assert [int(row["frame"]) for row in rows] == list(range(FRAMES))  # one face per frame
    for row in rows:
        assert float(row["time_s"]) == pytest.approx(int(row["frame"]) / FPS, abs=1e-3)
        box = tuple(int(row[key]) for key in ("x", "y", "width", "height"))
        assert iou(box, FACE) > 0.6
        probabilities = [float(row[name]) for name in FER2013_CLASSES]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)
        assert row["top"] == FER2013_CLASSES[int(np.argmax(probabilities))]
    assert sum(summary.top_frames.values()) == FRAMES
    assert summary.top_frames[rows[0]["top"]] >= FRAMES // 2  # a still picture keeps its emotion

    annotated = _decoded_frames(tmp_path / "annotated.avi")
    assert len(annotated) == FRAMES
    assert annotated[0].shape == (480, 640, 3)
    assert not list(tmp_path.glob(".*"))  # no partial file left beside the outputs


def test_every_nth_frame_to_json(video, classifier, tmp_path):
    summary = predict_video(classifier, video, VideoOptions(every=5, out=tmp_path / "faces.json"))
    rows = json.loads((tmp_path / "faces.json").read_text())
    assert [row["frame"] for row in rows] == list(range(0, FRAMES, 5))
    assert summary.frames_read == FRAMES and summary.frames_analysed == len(rows)
    assert all(sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-4) for row in rows)


def test_a_failure_keeps_the_rows_of_the_frames_analysed_before_it(video, classifier, tmp_path):
    def disk_full_at_frame_20(result, frame):
        if result.frame == 20:
            raise OSError(errno.ENOSPC, "No space left on device")

    for table in (tmp_path / "faces.csv", tmp_path / "faces.json"):
        with pytest.raises(OSError):
            predict_video(classifier, video, VideoOptions(out=table, on_frame=disk_full_at_frame_20))
        rows = _csv_rows(table) if table.suffix == ".csv" else json.loads(table.read_text())
        assert [int(row["frame"]) for row in rows] == list(range(21))


def test_camera_reads_through_the_capture_factory_until_frames(video, classifier, tmp_path):
    shown = []
    summary = predict_camera(
        classifier,
        0,
        VideoOptions(frames=6, out=tmp_path / "camera.csv", on_frame=lambda result, _: shown.append(result)),
        capture_factory=_file_camera(video),
    )
    assert summary.stopped == "frames" and summary.source == "camera 0"
    assert [result.frame for result in shown] == list(range(6))
    assert all(len(result.faces) == 1 for result in shown)
    times = [result.time_s for result in shown]
    assert times == sorted(times)
    assert len(_csv_rows(tmp_path / "camera.csv")) == 6


def test_ctrl_c_stops_a_camera_cleanly_with_every_frame_read(video, classifier, tmp_path):
    class InterruptedAfterSeven:
        def __init__(self, index):
            self.capture = cv2.VideoCapture(str(video))
            self.grabs = 0

        def grab(self):
            self.grabs += 1
            if self.grabs > 7:
                raise KeyboardInterrupt
            return self.capture.grab()

        def __getattr__(self, name):
            return getattr(self.capture, name)

    summary = predict_camera(
        classifier, 0, VideoOptions(out=tmp_path / "camera.csv"), capture_factory=InterruptedAfterSeven
    )
    assert summary.stopped == "interrupted"
    assert summary.frames_analysed == 7
    assert [int(row["frame"]) for row in _csv_rows(tmp_path / "camera.csv")] == list(range(7))


def test_cli_video_summary_and_camera_lines(video, tmp_path, capsys, monkeypatch):
    code, out, err = run_cli(
        ["predict", BUNDLED_MODEL, video, "--frames", "4", "--out", tmp_path / "t.csv", "--json"],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["frames_read"], summary["faces"], summary["stopped"]) == (4, 4, "frames")
    assert summary["table"] == str(tmp_path / "t.csv")

    monkeypatch.setattr(fertrain.video, "camera_capture", _file_camera(video))
    code, out, err = run_cli(["predict", "--camera", "0", "--frames", "3"], capsys, monkeypatch)
    assert code == 0, err
    assert out.count("frame ") >= 3 and "at 0." in out
    assert "faces found" in out


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda tmp: (tmp / "notes.mp4").write_text("not a video") and [tmp / "notes.mp4"], "notes.mp4: "),
        (lambda tmp: [tmp / "missing.avi"], "missing.avi: no such video file"),
        (lambda tmp: ["--camera", "0"], "camera 0: cannot be opened"),
        (lambda tmp: ["--camera", "0", "--show"], "--show needs"),
        (
            lambda tmp: ["--camera", "0", "--out", tmp / "t.txt"],
            "t.txt: the table is written as .csv or .json",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(make, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(
        fertrain.video, "camera_capture", lambda index: cv2.VideoCapture(str(tmp_path / "no.avi"))
    )
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    code, _, err = run_cli(["predict", BUNDLED_MODEL, *make(tmp_path)], capsys, monkeypatch)
    assert code == 2, err
    assert expected in err
    assert len(err.strip().splitlines()) == 1


def test_an_empty_video_is_bad_input(tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty.avi"
    cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (640, 480)).release()
    code, _, err = run_cli(
        ["predict", BUNDLED_MODEL, empty, "--out", tmp_path / "t.csv"], capsys, monkeypatch
    )
    assert code == 2, err
    assert "empty.avi: " in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "t.csv").exists()


def test_a_codec_the_writer_lacks_is_exit_2_and_an_unwritable_table_exit_5(
    video, tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(fertrain.video.ANNOTATED_CODECS, ".mp4", "avc1")  # H.264: not in opencv-headless
    code, _, err = run_cli(
        ["predict", BUNDLED_MODEL, video, "--annotate", tmp_path / "a.mp4"], capsys, monkeypatch
    )
    assert code == 2, err
    assert "a.mp4: this OpenCV" in err and "no avc1 encoder" in err
    assert not list(tmp_path.iterdir())

    (tmp_path / "file").write_text("")
    code, _, err = run_cli(
        ["predict", BUNDLED_MODEL, video, "--out", tmp_path / "file" / "t.csv"], capsys, monkeypatch
    )
    assert code == 5, err
    assert f"{tmp_path / 'file'}: exists and is not a folder" in err and len(err.strip().splitlines()) == 1
