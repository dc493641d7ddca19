"""`fertrain predict`: face crops, whole photos, Haar-cascade face detection and annotated copies."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest
from boxes import iou
from cli_main import run_cli
from PIL import Image
from run_dirs import tiny_run

import fertrain.models  # noqa: F401  (registers fertrain's layers for loading the bundled model)
import fertrain.predict
from fertrain.data.dataset import FER2013_CLASSES, load_split
from fertrain.predict import detect_faces, face_detector, predict_images

pytestmark = pytest.mark.slow

FACE_SIDE = 192  # sample faces are pasted 4x enlarged, a face size the Haar cascade finds easily
DEMO_PHOTO = Path(__file__).resolve().parents[1] / "data" / "sample" / "astronaut.jpg"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, prepared_sample):
    return tiny_run(tmp_path_factory.getbasetemp(), prepared_sample)


@pytest.fixture(scope="module")
def model_probabilities(run_dir):
    """Probabilities straight from the run's Keras model for uint8 48x48 faces."""
    model = keras.saving.load_model(run_dir / "model.keras", safe_mode=True)
    return lambda faces: model.predict(np.asarray(faces)[..., None].astype("float32"), verbose=0)


@pytest.fixture(scope="module")
def test_faces(prepared_sample):
    return load_split(prepared_sample, "test")[0]


def _photo(faces: list[np.ndarray], corners: list[tuple[int, int]]) -> np.ndarray:
    """A 640x480 RGB photo: gray noise with the faces pasted, enlarged, at (x, y) corners."""
    rng = np.random.default_rng(0)
    background = np.clip(rng.normal(190, 12, (480, 640)), 0, 255).astype(np.uint8)
    for face, (x, y) in zip(faces, corners, strict=True):
        enlarged = cv2.resize(face, (FACE_SIDE, FACE_SIDE), interpolation=cv2.INTER_CUBIC)
        background[y : y + FACE_SIDE, x : x + FACE_SIDE] = enlarged
    return np.repeat(background[..., None], 3, axis=2)


def _found_alone(detector, face: np.ndarray, corner: tuple[int, int]) -> bool:
    boxes = detect_faces(detector, _photo([face], [corner])[..., 0])
    return len(boxes) == 1 and iou(boxes[0], (*corner, FACE_SIDE, FACE_SIDE)) > 0.6


def _detectable_faces(faces: np.ndarray, corners: list[tuple[int, int]]) -> list[np.ndarray]:
    """For each corner, the first unused sample face the cascade finds when pasted there alone: it
    misses some FER crops, and which ones depends on where a face lands on the noise."""
    detector = face_detector()
    chosen: list[int] = []
    for corner in corners:
        found = (i for i in range(30) if i not in chosen and _found_alone(detector, faces[i], corner))
        chosen.append(next(found, -1))
        assert chosen[-1] >= 0, "the Haar cascade should find most enlarged sample faces"
    return [faces[i] for i in chosen]


def _expected_top3(probabilities):
    order = np.argsort(-probabilities)[:3]
    return [(FER2013_CLASSES[i], pytest.approx(float(probabilities[i]), abs=1e-5)) for i in order]


def test_48px_crops_are_classified_as_they_are(run_dir, test_faces, model_probabilities, tmp_path):
    for index in range(3):
        Image.fromarray(test_faces[index]).save(tmp_path / f"face{index}.png")
    results = predict_images(run_dir, [tmp_path], detect=True)  # crops skip detection
    assert [r.image.name for r in results] == ["face0.png", "face1.png", "face2.png"]
    expected = model_probabilities(test_faces[:3])
    for result, probabilities in zip(results, expected, strict=True):
        assert len(result.faces) == 1 and result.faces[0].box is None
        assert result.faces[0].top == _expected_top3(probabilities)


def test_other_images_are_made_gray_and_resized_whole(run_dir, test_faces, model_probabilities, tmp_path):
    rgb = np.repeat(cv2.resize(test_faces[5], (100, 100))[..., None], 3, axis=2)
    Image.fromarray(rgb).save(tmp_path / "big.png")
    (result,) = predict_images(run_dir, [tmp_path / "big.png"])
    resized = cv2.resize(rgb[..., 0], (48, 48), interpolation=cv2.INTER_AREA)
    assert result.faces[0].top == _expected_top3(model_probabilities([resized])[0])


def test_faces_are_found_in_a_photo_classified_and_annotated(
    run_dir, test_faces, model_probabilities, tmp_path, capsys, monkeypatch
):
    corners = [(40, 60), (380, 220)]
    photo = _photo(_detectable_faces(test_faces, corners), corners)
    Image.fromarray(photo).save(tmp_path / "photo.png")

    args = [
        "predict",
        run_dir,
        tmp_path / "photo.png",
        "--detect-faces",
        "--json",
        "--annotate",
        tmp_path / "out",
    ]
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    (result,) = json.loads(out)
    assert len(result["faces"]) == 2
    gray = photo[..., 0]
    for face, (x, y) in zip(result["faces"], corners, strict=True):
        assert iou(face["box"], (x, y, FACE_SIDE, FACE_SIDE)) > 0.6
        bx, by, bw, bh = face["box"]
        crop = cv2.resize(gray[by : by + bh, bx : bx + bw], (48, 48), interpolation=cv2.INTER_AREA)
        top = [(t["emotion"], t["probability"]) for t in face["top"]]
        assert top == _expected_top3(model_probabilities([crop])[0])

    annotated = np.asarray(Image.open(result["annotated"]).convert("RGB"))
    assert result["annotated"] == str(tmp_path / "out" / "photo.png")
    assert annotated.shape == photo.shape
    bx, by, bw, bh = result["faces"][0]["box"]
    assert tuple(annotated[by + bh // 2, bx]) == (0, 255, 0)  # the box's left edge
    assert np.array_equal(annotated[-5:, -5:], photo[-5:, -5:])  # untouched far from faces


def test_the_demo_photo_has_one_face_and_an_annotated_copy(tmp_path):
    bundled = fertrain.predict.BUNDLED_MODEL
    (result,) = predict_images(bundled, [DEMO_PHOTO], detect=True, annotate_dir=tmp_path)
    (face,) = result.faces
    assert iou(face.box, (113, 66, 95, 95)) > 0.6  # where the astronaut's face is in the photo
    assert result.annotated == tmp_path / DEMO_PHOTO.name
    assert Image.open(result.annotated).size == Image.open(DEMO_PHOTO).size


def test_model_defaults_to_the_newest_run_then_the_bundled_model(
    run_dir, test_faces, tmp_path, capsys, monkeypatch
):
    Image.fromarray(test_faces[0]).save(tmp_path / "face.png")
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["predict", "face.png", "--json"], capsys, monkeypatch)
    assert code == 0, err
    bundled = keras.saving.load_model(fertrain.predict.BUNDLED_MODEL, safe_mode=True)
    expected = _expected_top3(bundled.predict_on_batch(test_faces[:1, :, :, None])[0])
    assert [(t["emotion"], t["probability"]) for t in json.loads(out)[0]["faces"][0]["top"]] == expected

    monkeypatch.setattr(fertrain.predict, "BUNDLED_MODEL", tmp_path / "no-such-model.keras")
    code, _, err = run_cli(["predict", "face.png"], capsys, monkeypatch)
    assert code == 2
    assert "no model given, no run directory in runs/ and no model bundled" in err

    (tmp_path / "runs").mkdir()
    os.symlink(run_dir, tmp_path / "runs" / "tiny")
    code, out, err = run_cli(["predict", "face.png", "--json"], capsys, monkeypatch)
    assert code == 0, err
    assert len(json.loads(out)[0]["faces"][0]["top"]) == 3


def test_unreadable_image_is_a_one_line_error(run_dir, tmp_path, capsys, monkeypatch):
    (tmp_path / "notes.png").write_text("not an image")
    code, _, err = run_cli(["predict", run_dir, tmp_path / "notes.png"], capsys, monkeypatch)
    assert code == 2
    assert f"{tmp_path / 'notes.png'}: not a readable image" in err
    assert len(err.strip().splitlines()) == 1
