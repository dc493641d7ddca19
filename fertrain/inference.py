"""Loading any classifier fertrain can evaluate or serve, and running it on 48x48 grayscale faces.

A model is a run directory (its `model.keras`), a `.keras` file, a legacy `.h5`/`.hdf5` file or a
TensorFlow SavedModel directory. Foreign models may take any square grayscale input size (faces are
resized from 48x48, bilinear) and their own pixel scaling (`normalize`).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from fertrain.config import load_config
from fertrain.errors import DataError, ModelError

# Files of a run directory: `fertrain train` writes them, evaluate, report, export and predict read them.
RUN_MODEL_FILE = "model.keras"  # the best epoch's network
RUN_CONFIG_FILE = "config.yaml"
RUN_HISTORY_FILE = "history.csv"
RUN_METRICS_FILE = "metrics.json"
SAVED_MODEL_FILE = "saved_model.pb"
# Where `fertrain export --format savedmodel` keeps the model's class names (JSON list).
SAVED_MODEL_CLASS_NAMES = "class_names.json"
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
Normalization = Literal["raw", "unit", "symmetric"]
TtaMode = Literal["none", "flip", "crops", "ten_crop"]
NORMALIZATIONS: tuple[str, ...] = get_args(Normalization)
TTA_MODES: tuple[str, ...] = get_args(TtaMode)
# `crops` TTA: the face plus four copies shifted this many pixels diagonally (edges replicated), for
# a model without a centre-crop layer; a model that crops is shifted by its crop margin instead.
CROP_SHIFT = 3
FACE_SIZE = 48
# Models shipped inside the package, which every command takes by these short names.
ASSETS = Path(__file__).parent / "assets"
BUNDLED_MODELS = {"bundled": ASSETS / "model.keras", "ferplus": ASSETS / "ferplus.keras"}


# Batches a TensorFlow graph runs at once. One batch is a chain of small ops, each split over the
# cores, and the cores idle at every op boundary; a second batch in flight fills those gaps. For
# mini-Xception at batch 256 on 2 cores: 3-33 % more images/s (median 8 %, seven paired
# `fertrain benchmark` runs), the same CPU time per image, identical outputs; a third batch gained
# nothing more.
TF_BATCHES_IN_FLIGHT = 2


@dataclass(frozen=True)
class LoadedModel:
    """A classifier taking float32 [N, S, S, 1] pixels and returning probabilities [N, len(classes)].

    `classes` names the output columns: the names saved in the model, else FER2013's emotions for a
    7-output model saved without names. `forward` may be called from `batches_in_flight` threads at
    once. `crop_margin` is the border a fertrain network trained on random crops cuts off each side
    (its `model.crop_size`), 0 if none. `keras_model` is the Keras model behind `forward` (what
    calibration and Grad-CAM work on), None for a SavedModel.
    """

    path: Path
    run_dir: Path | None
    input_size: int
    forward: Callable[[np.ndarray], np.ndarray]
    classes: tuple[str, ...]
    batches_in_flight: int = 1
    crop_margin: int = 0
    keras_model: Any = None

    @property
    def tta_shift(self) -> int:
        return self.crop_margin or CROP_SHIFT


def resolve_model_path(target: str | Path) -> tuple[Path, Path | None]:
    """(model file or SavedModel directory, run directory or None) for a user-given target: a path, or
    a bundled model's short name (`bundled`: FER2013's 7 emotions, `ferplus`: FER+'s 8 classes)."""
    path = Path(target)
    if str(target) in BUNDLED_MODELS and not path.exists():
        path = BUNDLED_MODELS[str(target)]
        if not path.is_file():
            raise ModelError(f"{target}: the bundled model {path} is missing from this installation")
    if path.is_dir():
        if (path / RUN_MODEL_FILE).is_file():
            return path / RUN_MODEL_FILE, path
        if (path / SAVED_MODEL_FILE).is_file():
            return path, None
        raise ModelError(
            f"{path}: not a run directory (no {RUN_MODEL_FILE}) "
            f"nor a SavedModel directory (no {SAVED_MODEL_FILE})"
        )
    if not path.exists():
        raise ModelError(f"{path}: no such model file or run directory")
    if path.suffix.lower() not in KERAS_SUFFIXES:
        raise ModelError(
            f"{path}: unsupported model file; expected .keras, .h5/.hdf5, a SavedModel directory "
            "or a run directory"
        )
    return path, None


def run_data_dir(run_dir: Path) -> Path:
    """The prepared data directory a run was trained on, from its resolved config."""
    config_path = run_dir / RUN_CONFIG_FILE
    if not config_path.is_file():
        raise DataError(f"{run_dir}: no {RUN_CONFIG_FILE} to take the data directory from; pass --data DIR")
    return Path(load_config(config_path).data.dir)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _square_grayscale_size(path: Path, shape: Sequence[int | None]) -> int:
    if len(shape) != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] != 1:
        raise ModelError(
            f"{path}: input shape {tuple(shape)} is not a square grayscale image (expected (None, S, S, 1))"
        )
    return int(shape[1])


def _output_classes(
    path: Path, shape: Sequence[int | None], saved: tuple[str, ...] | None
) -> tuple[str, ...]:
    from fertrain.models.class_names import default_class_names

    if len(shape) != 2 or shape[1] is None:
        raise ModelError(f"{path}: output shape {tuple(shape)} is not (None, classes) class scores")
    if saved is not None:
        return saved
    classes = default_class_names(int(shape[1]))
    if classes is None:
        raise ModelError(
            f"{path}: {shape[1]} outputs and no class names saved in the model; a model without names "
            "must have FER2013's 7 emotion outputs (fertrain saves the names of every model it trains)"
        )
    return classes


def load_keras_model(path: Path):
    """A Keras model from a .keras/.h5 file, deserialized with safe_mode=True (no arbitrary code)."""
    import keras

    import fertrain.models  # noqa: F401  (fertrain's layers must be known before deserializing)

    if path.suffix.lower() == ".keras" and not zipfile.is_zipfile(path):
        raise ModelError(f"{path}: not a .keras file (expected the zip archive `model.save` writes)")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types for corrupt, foreign or unsafe files
        raise ModelError(f"{path}: cannot load as a Keras model ({_first_line(exc)})") from None


def _keras_classifier(path: Path, run_dir: Path | None) -> LoadedModel:
    model = load_keras_model(path)
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelError(
            f"{path}: expected one input and one output, got {len(model.inputs)} and {len(model.outputs)}"
        )
    size = _square_grayscale_size(path, tuple(model.inputs[0].shape))
    from fertrain.models.class_names import saved_class_names

    classes = _output_classes(path, tuple(model.outputs[0].shape), saved_class_names(model))
    import keras

    in_flight = 1
    if keras.backend.backend() == "tensorflow":
        # Concurrent calls of one tf.function are safe, but each first call of `predict_on_batch`
        # would build its own; JAX's `predict_on_batch` writes the model's state back after every
        # batch, so other backends run one batch at a time.
        model.make_predict_function()
        in_flight = TF_BATCHES_IN_FLIGHT

    def forward(batch: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict_on_batch(batch))

    return LoadedModel(path, run_dir, size, forward, classes, in_flight, _crop_margin(model, size), model)


def _crop_margin(model, input_size: int) -> int:
    """The margin the network's centre-crop layer cuts off each side (the same in every member of an
    ensemble), else 0."""
    import keras

    from fertrain.models.xception import CROP_LAYER

    members = [layer for layer in model.layers if isinstance(layer, keras.Model)] or [model]
    heights = set()
    for member in members:
        crop = next((layer for layer in member.layers if layer.name == CROP_LAYER), None)
        heights.add(None if crop is None else int(crop.height))
    if len(heights) != 1 or None in heights:
        return 0
    return (input_size - heights.pop()) // 2


def _saved_model_classifier(path: Path) -> LoadedModel:
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # TensorFlow raises several types for unreadable SavedModels
        raise ModelError(f"{path}: cannot load as a SavedModel ({_first_line(exc)})") from None
    signature = loaded.signatures.get("serving_default") or loaded.signatures.get("serve")
    if signature is None:
        raise ModelError(f"{path}: SavedModel has no 'serving_default' signature")
    inputs = signature.structured_input_signature[1]
    outputs = signature.structured_outputs
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelError(f"{path}: SavedModel signature must have one input and one output")
    (input_name, input_spec), (output_name, output_spec) = *inputs.items(), *outputs.items()
    size = _square_grayscale_size(path, tuple(input_spec.shape))
    classes = _output_classes(path, tuple(output_spec.shape), _saved_model_class_names(path))

    def forward(batch: np.ndarray) -> np.ndarray:
        return signature(**{input_name: tf.constant(batch, input_spec.dtype)})[output_name].numpy()

    return LoadedModel(path, None, size, forward, classes, TF_BATCHES_IN_FLIGHT)


def _saved_model_class_names(path: Path) -> tuple[str, ...] | None:
    """The class names `fertrain export` keeps in a SavedModel's assets, if any."""
    names_file = path / "assets" / SAVED_MODEL_CLASS_NAMES
    if not names_file.is_file():
        return None
    try:
        names = json.loads(names_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{names_file}: not a JSON list of class names ({exc})") from None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ModelError(f"{names_file}: not a JSON list of class names")
    return tuple(names)


def load_classifier(target: str | Path | LoadedModel) -> LoadedModel:
    """The classifier at `target`; an already loaded one is returned as it is."""
    if isinstance(target, LoadedModel):
        return target
    path, run_dir = resolve_model_path(target)
    if path.is_dir():
        return _saved_model_classifier(path)
    return _keras_classifier(path, run_dir)


def scale_pixels(pixels: np.ndarray, normalize: str) -> np.ndarray:
    """float32 0-255 pixels to the scaling a model expects: raw 0-255, unit x/255, symmetric x/127.5-1."""
    if normalize == "raw":
        return pixels
    if normalize == "unit":
        return pixels / np.float32(255.0)
    if normalize == "symmetric":
        return pixels / np.float32(127.5) - np.float32(1.0)
    raise ModelError(f"unknown normalization {normalize!r}: expected one of {', '.join(NORMALIZATIONS)}")


def model_inputs(faces: np.ndarray, input_size: int, normalize: str) -> np.ndarray:
    """uint8 faces [N, 48, 48] to float32 [N, S, S, 1], resized bilinearly, then scaled."""
    pixels = faces.astype(np.float32)[..., None]
    if pixels.shape[1:3] != (input_size, input_size):
        import keras

        resized = keras.ops.image.resize(pixels, (input_size, input_size), interpolation="bilinear")
        pixels = keras.ops.convert_to_numpy(resized)
    return scale_pixels(pixels, normalize)


def tta_views(faces: np.ndarray, tta: str, shift: int = CROP_SHIFT) -> list[np.ndarray]:
    """The copies of each face whose probabilities are averaged: none 1, flip 2, crops 5, ten_crop 10.

    `crops` is the face and four copies shifted `shift` pixels diagonally (edges replicated); for a
    network that centre-crops a margin of `shift`, the crop then cuts exactly the face's four corner
    crops and its centre crop, as in the ten-crop testing of Krizhevsky et al. `ten_crop` adds the
    mirror of each.
    """
    if tta == "none":
        return [faces]
    if tta == "flip":
        return [faces, faces[:, :, ::-1]]
    if tta in ("crops", "ten_crop"):
        s, size = shift, faces.shape[1]
        padded = np.pad(faces, ((0, 0), (s, s), (s, s)), mode="edge")
        offsets = [(s, s), (0, 0), (0, 2 * s), (2 * s, 0), (2 * s, 2 * s)]
        crops = [padded[:, y : y + size, x : x + size] for y, x in offsets]
        return crops if tta == "crops" else crops + [crop[:, :, ::-1] for crop in crops]
    raise ModelError(f"unknown TTA mode {tta!r}: expected one of {', '.join(TTA_MODES)}")


def _model_probabilities(
    model: LoadedModel, faces: np.ndarray, normalize: str, batch_size: int
) -> np.ndarray:
    if len(faces) == 0:
        return np.zeros((0, len(model.classes)), dtype=np.float64)

    def forward(start: int) -> np.ndarray:
        return model.forward(model_inputs(faces[start : start + batch_size], model.input_size, normalize))

    starts = range(0, len(faces), batch_size)
    if model.batches_in_flight == 1:
        batches = [forward(start) for start in starts]
    else:
        with ThreadPoolExecutor(model.batches_in_flight) as pool:
            batches = list(pool.map(forward, starts))
    probabilities = np.concatenate(batches).astype(np.float64)
    row_sums = probabilities.sum(axis=1)
    if np.any(probabilities < 0) or not np.allclose(row_sums, 1.0, atol=1e-3):
        raise ModelError(
            f"{model.path}: outputs are not probabilities (row sums "
            f"{row_sums.min():.3g}..{row_sums.max():.3g}); fertrain expects a softmax output"
        )
    return probabilities


def ensemble_classes(models: Sequence[LoadedModel]) -> tuple[str, ...]:
    """The classes every model of an ensemble shares; averaging differently named outputs is an error."""
    for model in models[1:]:
        if model.classes != models[0].classes:
            raise ModelError(
                f"{model.path}: classes ({', '.join(model.classes)}) differ from those of "
                f"{models[0].path} ({', '.join(models[0].classes)}); an ensemble must share one class list"
            )
    return models[0].classes


def predict_probabilities(
    models: Sequence[LoadedModel],
    faces: np.ndarray,
    normalize: str = "raw",
    tta: str = "none",
    batch_size: int = 256,
) -> np.ndarray:
    """Mean probabilities [N, classes] over every model (an ensemble) and every TTA view of uint8
    faces [N, 48, 48]. The models must name the same classes in the same order."""
    classes = ensemble_classes(models)
    total = np.zeros((len(faces), len(classes)), dtype=np.float64)
    for model in models:
        views = tta_views(faces, tta, model.tta_shift)
        for view in views:
            probabilities = _model_probabilities(model, np.ascontiguousarray(view), normalize, batch_size)
            total += probabilities / len(views)
    return total / len(models)
