"""fertrain from Python: the functions the CLI calls, with Python-friendly arguments.

`fertrain/__init__.py` exposes them lazily, so `import fertrain` stays cheap; Keras loads when a
model is first loaded or trained. Every problem is raised as one of `fertrain.errors`' typed
exceptions (`FertrainError` and its subclasses), never as `SystemExit`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fertrain.errors import ConfigError, DataError
from fertrain.inference import FACE_SIZE, TTA_MODES, LoadedModel, load_classifier, predict_probabilities

if TYPE_CHECKING:
    from fertrain.config import Config
    from fertrain.evaluation import Evaluation
    from fertrain.export import ExportResult
    from fertrain.training import TrainingResult

Target = str | Path


@dataclass(frozen=True)
class DetectedFace:
    """A face found in a photo: its box (x, y, width, height, in pixels of the photo) and the
    probability of each class, in the model's class order."""

    box: tuple[int, int, int, int]
    probabilities: dict[str, float]

    @property
    def top(self) -> tuple[str, float]:
        """The most probable class and its probability."""
        name = max(self.probabilities, key=self.probabilities.__getitem__)
        return name, self.probabilities[name]

    def to_dict(self) -> dict[str, Any]:
        """The form of `fer`'s `detect_emotions`: {"box": [x, y, w, h], "emotions": {class: p}}."""
        return {"box": list(self.box), "emotions": dict(self.probabilities)}


def _gray_uint8(image: np.ndarray, what: str) -> np.ndarray:
    """Gray uint8 [H, W] from gray, gray+1, RGB or RGBA pixels; floats in 0-1 (all values <= 1)
    or 0-255, integers 0-255."""
    import cv2

    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))) or 0 in array.shape:
        raise DataError(
            f"{what}: expected pixels [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got {array.shape}"
        )
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise DataError(f"{what}: pixels must be finite")
        scale = 255.0 if array.max() <= 1.0 else 1.0
        array = np.rint(array.astype(np.float64) * scale)
    elif array.dtype.kind not in "uib":
        raise DataError(f"{what}: pixels must be numbers, got {array.dtype}")
    if array.min() < 0 or array.max() > 255:
        raise DataError(
            f"{what}: pixels must lie in 0-255 (or 0-1 as floats), got {array.min()}..{array.max()}"
        )
    array = np.ascontiguousarray(array.astype(np.uint8))
    if array.ndim == 2:
        return array
    return cv2.cvtColor(array, cv2.COLOR_RGB2GRAY if array.shape[-1] == 3 else cv2.COLOR_RGBA2GRAY)


def _face_list(faces: Any) -> tuple[list[Any], bool]:
    """(the faces, whether one face was given) of an array or a sequence of arrays."""
    if isinstance(faces, np.ndarray):
        if faces.ndim not in (2, 3, 4):
            raise DataError(
                f"faces: expected a face [H, W(, C)] or faces [N, H, W(, C)], got shape {faces.shape}"
            )
        single = faces.ndim == 2 or (faces.ndim == 3 and faces.shape[-1] in (1, 3, 4))
        return ([faces] if single else list(faces)), single
    if isinstance(faces, Sequence) and not isinstance(faces, str | bytes):
        return list(faces), False
    raise DataError(f"faces: expected an array or a list of arrays, got {type(faces).__name__}")


def _stacked_faces(faces: Any) -> tuple[np.ndarray, bool]:
    """(uint8 faces [N, 48, 48], whether one face was given) of what `Model.predict` takes."""
    from fertrain.predict import to_face

    listed, single = _face_list(faces)
    stacked = np.zeros((len(listed), FACE_SIZE, FACE_SIZE), np.uint8)
    for index, face in enumerate(listed):
        stacked[index] = to_face(_gray_uint8(face, f"face {index}"))
    return stacked, single


class Model:
    """A loaded classifier: `classes` names its outputs; `predict` classifies faces, `detect` finds
    the faces in a photo and classifies each, `explain` maps where in a face the evidence for a class
    lies. `tta` is the default test-time augmentation (none, flip, crops, ten_crop) of `predict` and
    `detect`; `normalize` the pixel scaling a foreign model expects."""

    def __init__(self, loaded: LoadedModel, tta: str = "none", normalize: str = "raw"):
        if tta not in TTA_MODES:
            raise ConfigError(f"unknown TTA mode {tta!r}: expected one of {', '.join(TTA_MODES)}")
        self.loaded = loaded
        self.tta = tta
        self.normalize = normalize
        self._detector = None
        self._explainer = None

    @property
    def classes(self) -> tuple[str, ...]:
        return self.loaded.classes

    @property
    def path(self) -> Path:
        return self.loaded.path

    def __repr__(self) -> str:
        return f"fertrain.Model({str(self.path)!r}, classes={self.classes}, tta={self.tta!r})"

    def predict(self, faces: Any, tta: str | None = None, batch_size: int = 256) -> np.ndarray:
        """Class probabilities (float64, rows summing to 1) of face crops of any size: one face
        ([H, W] gray or [H, W, 1|3|4] gray/RGB/RGBA) gives [classes], a batch ([N, H, W], [N, H, W, C])
        or a list of faces of different sizes gives [N, classes]. uint8 pixels are 0-255; float
        pixels are 0-1 when a face's values are all <= 1, else 0-255. Each face is made gray and
        resized to 48x48 as `fertrain predict` does."""
        stacked, single = _stacked_faces(faces)
        probabilities = self._probabilities(stacked, tta, batch_size)
        return probabilities[0] if single else probabilities

    def explain(self, faces: Any, emotion: str | None = None) -> np.ndarray:
        """Grad-CAM maps with values in 0-1, [48, 48] for one face or [N, 48, 48], of faces as `predict`
        takes them (each made gray and 48x48 as there): where in the face the evidence lies for its
        most probable class (with the default TTA), or for class `emotion`. `fertrain.explain` says
        how; `explained_layers` names the feature maps it used."""
        from fertrain.explain import class_index

        stacked, single = _stacked_faces(faces)
        if emotion is None:
            targets = self._probabilities(stacked, None, 256).argmax(axis=1)
        else:
            targets = np.full(len(stacked), class_index(emotion, self.classes))
        maps = self._gradcam().face_maps(stacked, targets, self.normalize)
        return maps[0] if single else maps

    @property
    def explained_layers(self) -> tuple[str, ...]:
        """The feature maps `explain` weighs: one per network (an ensemble has several)."""
        return self._gradcam().layers

    def _gradcam(self):
        if self._explainer is None:
            from fertrain.explain import GradCam

            self._explainer = GradCam(self.loaded)
        return self._explainer

    def detect(self, image: Any, tta: str | None = None) -> list[DetectedFace]:
        """Every face OpenCV's Haar cascade finds in a photo (a file path, or pixels as `predict`
        takes them), left to right, with its class probabilities, like `fer`'s `detect_emotions`."""
        from fertrain.predict import detect_faces, face_detector, read_image, to_face

        pixels = read_image(Path(image)) if isinstance(image, str | Path) else image
        gray = _gray_uint8(pixels, str(image) if isinstance(image, str | Path) else "image")
        if self._detector is None:
            self._detector = face_detector()
        boxes = detect_faces(self._detector, gray)
        faces = np.zeros((len(boxes), FACE_SIZE, FACE_SIZE), np.uint8)
        for index, (x, y, w, h) in enumerate(boxes):
            faces[index] = to_face(gray[y : y + h, x : x + w])
        probabilities = self._probabilities(faces, tta, 256)
        return [
            DetectedFace(box, dict(zip(self.classes, map(float, row), strict=True)))
            for box, row in zip(boxes, probabilities, strict=True)
        ]

    def _probabilities(self, faces: np.ndarray, tta: str | None, batch_size: int) -> np.ndarray:
        return predict_probabilities(
            [self.loaded], faces, normalize=self.normalize, tta=tta or self.tta, batch_size=batch_size
        )


def load_model(target: Target, tta: str = "none", normalize: str = "raw") -> Model:
    """The classifier at `target`: `bundled` (FER2013's 7 emotions), `ferplus` (FER+'s 8 classes), a
    run directory, a `.keras`/`.h5` file or a SavedModel directory."""
    return Model(load_classifier(target), tta=tta, normalize=normalize)


def _override_strings(overrides: Mapping[str, Any] | None) -> list[str]:
    # JSON is YAML: each value reads back as the same string, number, list or mapping.
    return [f"{key}={json.dumps(value)}" for key, value in (overrides or {}).items()]


def resolve_config(
    config: Target | Config | Mapping[str, Any], overrides: Mapping[str, Any] | None = None
) -> Config:
    """A validated config from a YAML file, a `Config` or a mapping, with `overrides`
    ({"train.epochs": 3, ...}, as `--set` gives them) applied."""
    from fertrain.config import Config, apply_overrides, load_config, validate_config

    if isinstance(config, str | Path):
        return load_config(config, _override_strings(overrides))
    if isinstance(config, Config):
        if not overrides:
            return config
        # Fields the config left unset stay unset: `model.num_classes` then follows the data.
        data = config.model_dump(mode="json", exclude_unset=True)
        return validate_config(apply_overrides(data, _override_strings(overrides)), "config with overrides")
    if isinstance(config, Mapping):
        return validate_config(apply_overrides(dict(config), _override_strings(overrides)), "config")
    raise ConfigError(
        f"config: expected a YAML file, a fertrain Config or a mapping, got {type(config).__name__}"
    )


def train(
    config: Target | Config | Mapping[str, Any] | None = None,
    data: Target | None = None,
    overrides: Mapping[str, Any] | None = None,
    run_dir: Target | None = None,
    resume: Target | None = None,
    runs_root: Target = "runs",
) -> TrainingResult:
    """Trains `config` (a YAML file, a `Config` or a mapping; `overrides` as `--set` gives them) on
    `data` (default: the config's `data.dir`) into a new run directory, or continues the run in
    `resume`. Returns the run: its `run_dir` and `metrics` (metrics.json)."""
    from fertrain.training import train as run_training

    if resume is not None and (config is not None or overrides):
        raise ConfigError("resume continues a run with its own saved config; pass no config or overrides")
    resolved = None if config is None else resolve_config(config, overrides)
    return run_training(resolved, data_dir=data, run_dir=run_dir, resume=resume, runs_root=runs_root)


def evaluate(
    models: Target | Model | Sequence[Target | Model],
    data: Target | None = None,
    split: str = "test",
    tta: str = "none",
    normalize: str = "raw",
    batch_size: int = 256,
    out: Target | None = None,
) -> Evaluation:
    """Scores a model, or the mean of several (an ensemble), on a prepared split; `summary` holds
    the numbers `fertrain evaluate --json` prints. `data` defaults to the first run's data."""
    from fertrain.evaluation import evaluate as run_evaluation

    listed = [models] if isinstance(models, str | Path | Model) else list(models)
    targets = [model.loaded if isinstance(model, Model) else model for model in listed]
    return run_evaluation(
        targets, data, split=split, tta=tta, normalize=normalize, batch_size=batch_size, out=out
    )


def export(
    models: Target | Sequence[Target],
    format: str,
    quantize: str | None = None,
    out: Target | None = None,
    data: Target | None = None,
) -> ExportResult:
    """Exports a run or model file (several: one model averaging them) as savedmodel, tflite, onnx or
    keras, and checks the export against Keras; `check.passed` says whether it agreed."""
    from fertrain.export import export_model

    return export_model(models, format, quantize=quantize, out=out, data_dir=data)
