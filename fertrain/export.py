"""`fertrain export`: a run's model (or any Keras model file, a calibrated one among them) as a TensorFlow
SavedModel, TFLite or ONNX file, checked after export.

Several runs export as one model averaging their probabilities (`fertrain.models.ensemble`); the
`keras` format writes such an ensemble as a single `.keras` file.

Every export is checked on the first 200 images of the run's test split, in every runtime installed
that serves its format (`fertrain.runtimes`: onnxruntime and OpenCV's DNN module for ONNX, the TFLite
interpreter for TFLite): a float export must give the Keras model's probabilities within 1e-4 (max
absolute difference) in each, a float16 one within 1e-2, an int8 export must agree on the top-1
emotion for at least 98% of the images in each; a runtime that disagrees fails the check, named. int8
quantizes weights and activations, calibrated on 200 training images; float16 stores the weights in
half the bytes (keras, tflite) and computes in float32 as before; inputs and outputs stay float32 so
callers feed the same raw 0-255 pixels.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from fertrain.data.dataset import load_split
from fertrain.errors import ConfigError, MissingDependencyError, ModelError
from fertrain.fileio import write_atomic
from fertrain.inference import (
    BUNDLED_MODELS,
    RUN_CONFIG_FILE,
    RUN_MODEL_FILE,
    SAVED_MODEL_CLASS_NAMES,
    load_classifier,
    load_keras_model,
    model_inputs,
    resolve_model_path,
    run_data_dir,
)
from fertrain.runtimes import Runtime, onnx_runtimes, portable_onnx, tflite_runtimes

ExportFormat = Literal["savedmodel", "tflite", "onnx", "keras"]
Quantization = Literal["int8", "float16"]
QUANTIZATIONS: tuple[str, ...] = get_args(Quantization)
# The formats each quantization is written for: int8 needs a runtime's integer kernels, float16 only
# halves the stored weights (the Keras and TFLite runtimes widen them to float32 when they load).
QUANTIZED_FORMATS = {"int8": ("tflite", "onnx"), "float16": ("keras", "tflite")}
EXPORT_FORMATS: tuple[str, ...] = get_args(ExportFormat)
CHECK_IMAGES = 200
CALIBRATION_IMAGES = 200
FLOAT_TOLERANCE = 1e-4
# Half precision keeps 11 significant bits of each weight: it moved a three-network FER+ ensemble's
# PublicTest probabilities by 3e-3 at most (2 of 3,553 predictions changed), measured.
FLOAT16_TOLERANCE = 1e-2
INT8_MIN_AGREEMENT = 0.98
ONNX_OPSET = 17
EXPORT_DIR = "export"
DEFAULT_NAMES = {
    "savedmodel": "saved_model",
    "tflite": "model.tflite",
    "onnx": "model.onnx",
    "keras": "model.keras",
}


@dataclass(frozen=True)
class RuntimeCheck:
    """One runtime's agreement with Keras; `error` says why it could not run the export (then the
    numbers are None)."""

    runtime: str
    max_abs_difference: float | None
    top1_agreement: float | None
    criterion: str
    passed: bool
    error: str | None = None


@dataclass(frozen=True)
class ExportCheck:
    """The check over every runtime: the worst difference and agreement among them, passed when
    each passed."""

    images: int
    max_abs_difference: float
    top1_agreement: float
    criterion: str
    passed: bool
    runtimes: tuple[RuntimeCheck, ...] = ()
    split: str = "test"  # whose faces were checked (`_check_faces`)


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: str
    quantize: str | None
    size_bytes: int
    check: ExportCheck

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


def _require_tensorflow_backend() -> None:
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ConfigError(
            f"export converts TensorFlow graphs: run it with KERAS_BACKEND=tensorflow "
            f"(now {keras.backend.backend()})"
        )


def _import_onnx_tools():
    try:
        import onnxruntime
        import tf2onnx
    except ImportError as exc:
        raise MissingDependencyError(
            f"ONNX export needs tf2onnx and onnxruntime ({exc.name} is missing): pip install fertrain[onnx]"
        ) from None
    return tf2onnx, onnxruntime


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _replace_dir(staged: Path, out: Path) -> None:
    """Moves a finished directory over `out`; an old `out` is removed only after the new one is in place."""
    old = out.with_name(f".{out.name}.old")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    staged.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def _export_savedmodel(model, out: Path) -> list[Runtime]:
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staged.chmod(out.parent.stat().st_mode & 0o777)  # mkdtemp's 0700 would hide it from a serving user
    try:
        model.export(staged, format="tf_saved_model", verbose=False)
        from fertrain.models.class_names import saved_class_names

        classes = saved_class_names(model)
        if classes is not None:
            (staged / "assets").mkdir(exist_ok=True)
            (staged / "assets" / SAVED_MODEL_CLASS_NAMES).write_text(json.dumps(list(classes)) + "\n")
        _replace_dir(staged, out)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return [Runtime("tensorflow", load_classifier(out).forward)]


def _export_keras(model, out: Path, quantize: str | None) -> list[Runtime]:
    from fertrain.training.callbacks import save_atomic

    out.parent.mkdir(parents=True, exist_ok=True)
    if quantize == "float16":
        with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as scratch:
            full = Path(scratch) / "float32.keras"
            save_atomic(model, full)
            write_atomic(out, _float16_weights(full))
    else:
        save_atomic(model, out)
    return [Runtime("keras", load_classifier(out).forward)]


def _float16_weights(path: Path) -> bytes:
    """The .keras file at `path` with every float32 weight stored as float16. Keras casts a stored
    weight to its variable's dtype when it loads one, so the model computes in float32 as before."""
    import zipfile

    import h5py

    def copy(source: h5py.Group, target: h5py.Group) -> None:
        target.attrs.update(source.attrs)
        for name, item in source.items():
            if isinstance(item, h5py.Group):
                copy(item, target.create_group(name))
            else:
                values = item[()]
                halved = values.astype(np.float16) if values.dtype == np.float32 else values
                target.create_dataset(name, data=halved)

    packed = io.BytesIO()
    with zipfile.ZipFile(path) as original, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as halved:
        for entry in original.namelist():
            content = original.read(entry)
            if entry.endswith(".weights.h5"):
                weights = io.BytesIO()
                with h5py.File(io.BytesIO(content), "r") as source, h5py.File(weights, "w") as target:
                    copy(source, target)
                content = weights.getvalue()
            halved.writestr(entry, content)
    return packed.getvalue()


def _export_tflite(model, out: Path, calibration: np.ndarray | None, quantize: str | None) -> list[Runtime]:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif calibration is not None:

        def representative() -> Iterator[list[np.ndarray]]:
            for image in calibration:
                yield [image[None]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    with contextlib.redirect_stdout(io.StringIO()):  # Keras prints "Saved artifact at ..." there
        content = converter.convert()
    write_atomic(out, content)
    return tflite_runtimes(content)


def _onnx_calibration_reader(input_name: str, calibration: np.ndarray):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(calibration[i : i + 1] for i in range(len(calibration)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

    return Reader()


def _export_onnx(model, out: Path, calibration: np.ndarray | None) -> list[Runtime]:
    import tensorflow as tf

    tf2onnx, _ = _import_onnx_tools()
    size = int(model.inputs[0].shape[1])
    signature = (tf.TensorSpec((None, size, size, 1), tf.float32, name="pixels"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=ONNX_OPSET)
    portable_onnx(proto)
    from fertrain.models.class_names import saved_class_names

    classes = saved_class_names(model)
    if classes is not None:
        entry = proto.metadata_props.add()
        entry.key, entry.value = "class_names", json.dumps(list(classes))
    content = proto.SerializeToString()
    if calibration is not None:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        with tempfile.TemporaryDirectory() as scratch:
            float_path, int8_path = Path(scratch) / "float.onnx", Path(scratch) / "int8.onnx"
            float_path.write_bytes(content)
            reader = _onnx_calibration_reader("pixels", calibration)
            quantize_static(
                float_path,
                int8_path,
                reader,
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
            )
            content = int8_path.read_bytes()
    write_atomic(out, content)
    return onnx_runtimes(content)


def _criterion(difference: float, agreement: float, quantize: str | None) -> tuple[str, bool]:
    if quantize == "int8":
        return (
            f"top-1 agreement {agreement:.2%} (needs >= {INT8_MIN_AGREEMENT:.0%})",
            agreement >= INT8_MIN_AGREEMENT,
        )
    tolerance = FLOAT16_TOLERANCE if quantize == "float16" else FLOAT_TOLERANCE
    return (
        f"max |p_export - p_keras| {difference:.2e} (needs <= {tolerance:.0e})",
        difference <= tolerance,
    )


def _runtime_check(
    runtime: Runtime, reference: np.ndarray, inputs: np.ndarray, quantize: str | None
) -> RuntimeCheck:
    """How `runtime` agrees with Keras' `reference` probabilities. One that cannot read the export
    fails a float check (the float graph is written to be portable) and is only noted for int8,
    whose quantized graphs not every runtime reads."""
    if runtime.predict is None:
        int8 = quantize == "int8"
        note = f"{runtime.error}{'; skipped for an int8 model' if int8 else ''}"
        return RuntimeCheck(runtime.name, None, None, note, int8, runtime.error)
    try:
        exported = np.asarray(runtime.predict(inputs), dtype=np.float64)
    except Exception as exc:  # noqa: BLE001  (each runtime raises its own types; the check names it)
        return RuntimeCheck(runtime.name, None, None, f"failed to run ({exc})", False, str(exc))
    if exported.shape != reference.shape:
        criterion = f"output shape {exported.shape}, expected {reference.shape}"
        return RuntimeCheck(runtime.name, None, None, criterion, False)
    difference = float(np.abs(exported - reference.astype(np.float64)).max())
    agreement = float(np.mean(exported.argmax(axis=1) == reference.argmax(axis=1)))
    return RuntimeCheck(runtime.name, difference, agreement, *_criterion(difference, agreement, quantize))


def _check(
    reference: np.ndarray, runtimes: list[Runtime], inputs: np.ndarray, quantize: str | None
) -> ExportCheck:
    """Every runtime's check; the criterion names the runtimes that failed, else gives the worst
    numbers and the runtimes they held in."""
    checks = tuple(_runtime_check(runtime, reference, inputs, quantize) for runtime in runtimes)
    ran = [check for check in checks if check.max_abs_difference is not None]
    difference = max((check.max_abs_difference for check in ran), default=float("inf"))
    agreement = min((check.top1_agreement for check in ran), default=0.0)
    failed = [check for check in checks if not check.passed]
    if failed:
        passed_in = [check.runtime for check in checks if check.passed]
        criterion = "; ".join(f"{check.criterion} in {check.runtime}" for check in failed)
        if passed_in:
            criterion += f"; passed in {', '.join(passed_in)}"
    else:
        criterion = f"{_criterion(difference, agreement, quantize)[0]} in {', '.join(c.runtime for c in ran)}"
        criterion += "".join(f"; {c.runtime}: {c.criterion}" for c in checks if c.error is not None)
    return ExportCheck(len(reference), difference, agreement, criterion, not failed, checks)


def default_export_path(source: Path, export_format: str, quantize: str | None) -> Path:
    """RUN/export/model.onnx (or saved_model, ...) for a run's model.keras; for any other model file the
    same beside it, its stem first (RUN/calibrated.keras: RUN/export/calibrated-model.onnx)."""
    name = DEFAULT_NAMES[export_format]
    if quantize:
        stem, dot, suffix = name.partition(".")
        name = f"{stem}-{quantize}{dot}{suffix}"
    if source.name != RUN_MODEL_FILE:
        name = f"{source.stem}-{name}"
    return source.parent / EXPORT_DIR / name


def _export_source(target: str | Path) -> tuple[Path, Path | None]:
    """(the Keras model file, the run directory it belongs to or None) of a run directory or model file."""
    path, run_dir = resolve_model_path(target)
    if path.is_dir():
        raise ModelError(f"{path}: already a SavedModel; export the run or .keras file it was made from")
    if run_dir is None and (path.parent / RUN_CONFIG_FILE).is_file():
        run_dir = path.parent
    return path, run_dir


def _check_faces(data_dir: Path) -> tuple[str, np.ndarray]:
    """(split, faces) the exported model is checked on: the test split's, or the validation split's
    when the data has no test split (FER2013 copies without PrivateTest)."""
    split = "test" if (data_dir / "test.npz").is_file() else "val"
    return split, load_split(data_dir, split)[0][:CHECK_IMAGES]


def export_model(
    targets: str | Path | Sequence[str | Path],
    export_format: str,
    quantize: str | None = None,
    out: str | Path | None = None,
    data_dir: str | Path | None = None,
    junit_path: str | Path | None = None,
) -> ExportResult:
    """Exports a run's model.keras or a Keras model file (several: their average) to `export_format`,
    then checks it against the Keras models. The data is the first target's run's unless given; the
    default output path is beside the first target's model file."""
    targets = [targets] if isinstance(targets, str | Path) else list(targets)
    if export_format not in EXPORT_FORMATS:
        raise ConfigError(
            f"unknown export format {export_format!r}: expected one of {', '.join(EXPORT_FORMATS)}"
        )
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ConfigError(f"unknown quantization {quantize!r}: expected one of {', '.join(QUANTIZATIONS)}")
    if quantize is not None and export_format not in QUANTIZED_FORMATS[quantize]:
        raise ConfigError(
            f"--quantize {quantize} needs --format {' or '.join(QUANTIZED_FORMATS[quantize])} "
            f"({export_format} exports stay float32)"
        )
    sources = [_export_source(target) for target in targets]
    source, run_dir = sources[0]
    _require_tensorflow_backend()
    if export_format == "onnx":
        _import_onnx_tools()  # fail before any work when the extra is missing
    if data_dir is None and run_dir is None:
        raise ConfigError(f"{source}: not in a run directory, so pass the data to check on with --data DIR")
    data_dir = Path(data_dir) if data_dir is not None else run_data_dir(run_dir)
    check_split, check_faces = _check_faces(data_dir)

    members = [load_keras_model(path) for path, _ in sources]
    size = int(members[0].inputs[0].shape[1])
    check_inputs = model_inputs(check_faces, size, "raw")
    calibration = None
    if quantize == "int8":
        calibration = model_inputs(load_split(data_dir, "train")[0][:CALIBRATION_IMAGES], size, "raw")

    # Each member's own predictions, before the ensemble wraps (and renames) them.
    reference = np.mean([np.asarray(member.predict(check_inputs, verbose=0)) for member in members], axis=0)
    if len(members) == 1:
        model = members[0]
    else:
        from fertrain.models.ensemble import average_ensemble  # Keras: `prepare` and `--help` stay quick

        model = average_ensemble(members)
    if out is None:
        # A bundled model's default goes to ./export/, named after it, not into the installed package.
        bundled = str(targets[0]) in BUNDLED_MODELS and source == BUNDLED_MODELS[str(targets[0])]
        anchor = Path(f"{targets[0]}.keras") if bundled else source
        out = default_export_path(anchor, export_format, quantize)
    out = Path(out)
    if export_format == "keras":
        runtimes = _export_keras(model, out, quantize)
    elif export_format == "savedmodel":
        runtimes = _export_savedmodel(model, out)
    elif export_format == "tflite":
        runtimes = _export_tflite(model, out, calibration, quantize)
    else:
        runtimes = _export_onnx(model, out, calibration)

    check = replace(_check(reference, runtimes, check_inputs, quantize), split=check_split)
    size_bytes = _dir_size(out) if out.is_dir() else out.stat().st_size
    result = ExportResult(out, export_format, quantize, size_bytes, check)
    if junit_path is not None:  # written whether the check passed or not: CI shows why it failed
        from fertrain.gate import export_junit

        write_atomic(junit_path, export_junit(result))
    return result
