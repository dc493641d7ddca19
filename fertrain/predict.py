"""`fertrain predict`: the top emotions of photos or face crops, optionally per detected face.

48x48 images are taken as face crops as they are. Other images are converted to grayscale and
resized to 48x48 whole, or, with face detection, every face OpenCV's frontal-face Haar cascade finds
(the cascade ships inside opencv-python-headless) is cropped, resized and classified on its own.
With an explanation folder, each face also gets its Grad-CAM heat map (`fertrain.explain`), as a face
view of its own and, on a photo with detected faces, inside its box on the whole photo.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fertrain.errors import DataError, ModelError
from fertrain.inference import (
    BUNDLED_MODELS,
    FACE_SIZE,
    KERAS_SUFFIXES,
    RUN_MODEL_FILE,
    SAVED_MODEL_FILE,
    LoadedModel,
    load_classifier,
    predict_probabilities,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
BUNDLED_MODEL = BUNDLED_MODELS["bundled"]
TOP_K = 3
UNSAFE_IN_NAMES = re.compile(r"[^\w.-]+")
EXPLAINED_FACE_SIZE = 192  # pixels a side of each face's heat-map view: 48 is too small to look at
HAAR_CASCADE = "haarcascade_frontalface_default.xml"
CASCADE_WINDOW = 24  # the side of the window the cascade was trained on: the smallest face it finds


@dataclass(frozen=True)
class FaceExplanation:
    """A face's Grad-CAM: the class explained, the feature maps it was taken at (one per network of
    an ensemble) and the image written."""

    emotion: str
    layers: tuple[str, ...]
    file: Path

    def to_dict(self) -> dict[str, Any]:
        return {"emotion": self.emotion, "layers": list(self.layers), "file": str(self.file)}


@dataclass(frozen=True)
class FacePrediction:
    box: tuple[int, int, int, int] | None  # x, y, width, height in the image; None: the whole image
    top: list[tuple[str, float]]  # the TOP_K most probable emotions, most probable first
    explanation: FaceExplanation | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "box": None if self.box is None else list(self.box),
            "top": [{"emotion": name, "probability": p} for name, p in self.top],
            "explanation": None if self.explanation is None else self.explanation.to_dict(),
        }


@dataclass(frozen=True)
class ImagePrediction:
    image: Path
    faces: list[FacePrediction]
    annotated: Path | None = None
    explained: Path | None = None  # the whole photo with every face's heat map in its box

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": str(self.image),
            "faces": [face.to_dict() for face in self.faces],
            "annotated": None if self.annotated is None else str(self.annotated),
            "explained": None if self.explained is None else str(self.explained),
        }


def is_model_target(path: Path) -> bool:
    """True for what `load_classifier` accepts: a run dir, SavedModel dir, Keras model file or the
    short name of a bundled model."""
    if str(path) in BUNDLED_MODELS and not path.exists():
        return True
    if path.is_dir():
        return (path / RUN_MODEL_FILE).is_file() or (path / SAVED_MODEL_FILE).is_file()
    return path.suffix.lower() in KERAS_SUFFIXES


def default_model(runs_root: str | Path = "runs") -> Path:
    """The newest run directory under `runs_root`, else the model bundled with fertrain."""
    runs = sorted(Path(runs_root).glob(f"*/{RUN_MODEL_FILE}"), key=lambda p: p.stat().st_mtime)
    if runs:
        return runs[-1].parent
    if BUNDLED_MODEL.is_file():
        return BUNDLED_MODEL
    raise ModelError(
        f"no model given, no run directory in {runs_root}/ and no model bundled with fertrain: "
        "pass a run directory or a .keras/.h5 file before the images"
    )


def list_images(paths: Sequence[str | Path]) -> list[Path]:
    """Image files named directly or found (not recursively) in named directories, sorted per directory."""
    images: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise DataError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this directory")
            images.extend(found)
        elif path.is_file():
            images.append(path)
        else:
            raise DataError(f"{path}: no such image file or directory")
    return images


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 [H, W, 3]."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None


def to_gray(rgb: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def to_face(gray: np.ndarray) -> np.ndarray:
    """A 48x48 face: 48x48 crops as they are, anything else resized (area averaging when shrinking)."""
    import cv2

    if gray.shape == (FACE_SIZE, FACE_SIZE):
        return gray
    shrinking = gray.shape[0] > FACE_SIZE or gray.shape[1] > FACE_SIZE
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(gray, (FACE_SIZE, FACE_SIZE), interpolation=interpolation)


def face_detector():
    import cv2

    cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / HAAR_CASCADE))
    if cascade.empty():
        raise ModelError(f"OpenCV's {HAAR_CASCADE} is missing from opencv-python-headless {cv2.__version__}")
    return cascade


def detect_faces(detector, gray: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Face boxes (x, y, width, height), left to right."""
    min_side = max(CASCADE_WINDOW, min(gray.shape) // 20)
    boxes = detector.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side))
    return sorted((int(x), int(y), int(w), int(h)) for x, y, w, h in boxes)


def top_emotions(probabilities: np.ndarray, classes: tuple[str, ...]) -> list[tuple[str, float]]:
    """The TOP_K most probable classes (named as the model names them) with their probabilities."""
    order = np.argsort(-probabilities, kind="stable")[:TOP_K]
    return [(classes[i], float(probabilities[i])) for i in order]


def annotate(rgb: np.ndarray, faces: list[FacePrediction]) -> np.ndarray:
    """A copy with a box and the most probable emotion drawn for every face."""
    import cv2

    canvas = np.ascontiguousarray(rgb.copy())
    height, width = canvas.shape[:2]
    thickness = max(1, min(height, width) // 200)
    scale = max(0.4, min(height, width) / 600)
    for face in faces:
        x, y, w, h = face.box if face.box is not None else (0, 0, width, height)
        cv2.rectangle(canvas, (x, y), (x + w - 1, y + h - 1), (0, 255, 0), thickness)
        name, probability = face.top[0]
        label = f"{name} {probability:.0%}"
        baseline_y = y - 4 if y > 20 else y + h - 4
        cv2.putText(
            canvas, label, (x + 2, baseline_y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 255, 0), thickness
        )
    return canvas


def _annotated_path(directory: Path, image: Path, taken: set[Path]) -> Path:
    candidate = directory / image.name
    counter = 2
    while candidate in taken:
        candidate = directory / f"{image.stem}-{counter}{image.suffix}"
        counter += 1
    taken.add(candidate)
    return candidate


def _write_image(path: Path, rgb: np.ndarray) -> Path:
    import io

    from PIL import Image

    from fertrain.fileio import write_atomic

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"))
    return write_atomic(path, buffer.getvalue())


def _explained_face(rgb: np.ndarray, box: tuple[int, int, int, int] | None, heat: np.ndarray) -> np.ndarray:
    """The face as the model saw it (its box, or the whole image), resized to EXPLAINED_FACE_SIZE a
    side, its map laid over it."""
    import cv2

    from fertrain.explain import heat_overlay

    x, y, width, height = box if box is not None else (0, 0, rgb.shape[1], rgb.shape[0])
    size = (EXPLAINED_FACE_SIZE, EXPLAINED_FACE_SIZE)
    view = cv2.resize(
        np.ascontiguousarray(rgb[y : y + height, x : x + width]), size, interpolation=cv2.INTER_LINEAR
    )
    return heat_overlay(view, heat)


def _write_explanations(
    directory: Path,
    image: Path,
    rgb: np.ndarray,
    predictions: list[FacePrediction],
    maps: list[np.ndarray],
    emotions: list[str],
    layers: tuple[str, ...],
    taken: set[Path],
) -> tuple[list[FacePrediction], Path | None]:
    """Writes DIR/STEM-faceN-EMOTION.png per face and, when faces were detected, DIR/STEM-gradcam.png
    (the photo with each map in its box); returns the predictions with their explanations."""
    from fertrain.explain import heat_overlay

    base = _annotated_path(directory, Path(image.stem), taken)
    explained = []
    for number, (face, heat, emotion) in enumerate(zip(predictions, maps, emotions, strict=True), start=1):
        safe = UNSAFE_IN_NAMES.sub("_", emotion)  # class names come from folder names too
        target = base.with_name(f"{base.name}-face{number}-{safe}.png")
        written = _write_image(target, _explained_face(rgb, face.box, heat))
        explained.append(dataclasses.replace(face, explanation=FaceExplanation(emotion, layers, written)))
    boxed = [(face.box, heat) for face, heat in zip(predictions, maps, strict=True) if face.box is not None]
    if not boxed:
        return explained, None
    photo = rgb
    for box, heat in boxed:
        photo = heat_overlay(photo, heat, box)
    return explained, _write_image(base.with_name(f"{base.name}-gradcam.png"), photo)


def predict_images(
    model: str | Path | LoadedModel,
    images: Sequence[str | Path],
    detect: bool = False,
    annotate_dir: str | Path | None = None,
    normalize: str = "raw",
    tta: str = "none",
    explain_dir: str | Path | None = None,
    explain_class: str | None = None,
) -> list[ImagePrediction]:
    """Top-3 emotions for every image, or for every face found in it when `detect` is set.

    With `explain_dir`, every face's Grad-CAM map of its top emotion (or of `explain_class`) is written
    there; a model without a convolution to explain, an unknown class or no face at all is bad input.
    """
    classifier = load_classifier(model)
    explainer = None
    if explain_dir is not None:
        from fertrain.explain import GradCam, class_index

        explainer = GradCam(classifier)
        wanted = None if explain_class is None else class_index(explain_class, classifier.classes)
    paths = list_images(images)
    detector = face_detector() if detect else None
    pictures, boxes_per_image, faces = [], [], []
    for path in paths:
        rgb = read_image(path)
        gray = to_gray(rgb)
        is_crop = gray.shape == (FACE_SIZE, FACE_SIZE)
        boxes = detect_faces(detector, gray) if detector is not None and not is_crop else [None]
        faces.extend(
            to_face(gray if box is None else gray[box[1] : box[1] + box[3], box[0] : box[0] + box[2]])
            for box in boxes
        )
        pictures.append(rgb)
        boxes_per_image.append(boxes)
    stacked = np.stack(faces) if faces else np.zeros((0, FACE_SIZE, FACE_SIZE), np.uint8)
    probabilities = predict_probabilities([classifier], stacked, normalize=normalize, tta=tta)
    if explainer is not None:
        if not faces:
            raise DataError(f"nothing to explain: no face found in {', '.join(map(str, paths))}")
        targets = probabilities.argmax(axis=1) if wanted is None else np.full(len(faces), wanted)
        maps = iter(explainer.face_maps(stacked, targets, normalize))
        emotions = iter(classifier.classes[i] for i in targets)
    rows = iter(probabilities)
    results, taken, explain_taken = [], set(), set()
    for path, rgb, boxes in zip(paths, pictures, boxes_per_image, strict=True):
        predictions = [FacePrediction(box, top_emotions(next(rows), classifier.classes)) for box in boxes]
        annotated = explained = None
        if annotate_dir is not None:
            target = _annotated_path(Path(annotate_dir), path, taken)
            annotated = _write_image(target, annotate(rgb, predictions))
        if explainer is not None and boxes:
            face_maps = [next(maps) for _ in boxes]
            face_emotions = [next(emotions) for _ in boxes]
            predictions, explained = _write_explanations(
                Path(explain_dir),
                path,
                rgb,
                predictions,
                face_maps,
                face_emotions,
                explainer.layers,
                explain_taken,
            )
        results.append(ImagePrediction(path, predictions, annotated, explained))
    return results


def split_model_and_images(arguments: Sequence[str], inputs_required: bool = True) -> tuple[Path, list[str]]:
    """`MODEL IMAGE...` or just `IMAGE...` (the model then defaults, see `default_model`); without
    `inputs_required`, `MODEL` alone or nothing at all (a camera is the input)."""
    if arguments and is_model_target(Path(arguments[0])):
        if len(arguments) == 1 and inputs_required:
            raise DataError(f"{arguments[0]}: a model, but no image or image directory follows it")
        return Path(arguments[0]), list(arguments[1:])
    return default_model(), list(arguments)
