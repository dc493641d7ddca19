"""`fertrain export`: round trips through SavedModel, TFLite and ONNX, float and int8, and their checks."""

from __future__ import annotations

import io
import json
import re
import shutil
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import tensorflow as tf
from cli_main import run_cli
from run_dirs import tiny_model_file, tiny_run

import fertrain.export
from fertrain.config import load_config
from fertrain.data.dataset import load_split
from fertrain.export import CHECK_IMAGES, _check, export_model
from fertrain.inference import load_classifier
from fertrain.models import build_model
from fertrain.runtimes import Runtime

pytestmark = pytest.mark.slow
QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, prepared_sample):
    return tiny_run(tmp_path_factory.getbasetemp(), prepared_sample)


@pytest.fixture(scope="module")
def check_batch(prepared_sample):
    """The float32 pixels the export check uses: the first CHECK_IMAGES test faces, raw 0-255."""
    return load_split(prepared_sample, "test")[0][:CHECK_IMAGES, ..., None].astype(np.float32)


@pytest.fixture(scope="module")
def keras_probabilities(run_dir, check_batch):
    return load_classifier(run_dir).forward(check_batch)


def _tflite_probabilities(path, batch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=str(path))
    source = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(source["index"], batch.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(source["index"], batch)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def _onnx_probabilities(path, batch):
    onnxruntime = pytest.importorskip("onnxruntime")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


def test_savedmodel_round_trip(run_dir, check_batch, keras_probabilities, capsys, monkeypatch):
    code, out, err = run_cli(["export", run_dir, "--format", "savedmodel"], capsys, monkeypatch)
    assert code == 0, err
    path = run_dir / "export" / "saved_model"
    assert f"wrote savedmodel to {path}" in out
    assert f"check on {len(check_batch)} test images: max |p_export - p_keras|" in out and "passed" in out
    reloaded = tf.saved_model.load(str(path)).signatures["serving_default"]
    (output,) = reloaded(pixels=tf.constant(check_batch)).values()
    np.testing.assert_allclose(output.numpy(), keras_probabilities, atol=1e-5)


def test_tflite_float_round_trip(run_dir, check_batch, keras_probabilities, tmp_path):
    result = export_model(run_dir, "tflite", out=tmp_path / "m.tflite")
    exported = _tflite_probabilities(tmp_path / "m.tflite", check_batch)
    np.testing.assert_allclose(exported, keras_probabilities, atol=1e-5)
    assert result.check.images == len(check_batch) and result.check.passed
    assert result.check.max_abs_difference == pytest.approx(
        float(np.abs(exported - keras_probabilities).max())
    )
    assert result.size_bytes == (tmp_path / "m.tflite").stat().st_size


def test_tflite_int8_check_reports_top1_agreement(run_dir, check_batch, keras_probabilities, tmp_path):
    result = export_model(run_dir, "tflite", quantize="int8", out=tmp_path / "m8.tflite")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=str(tmp_path / "m8.tflite"))
    tensor_types = {detail["dtype"] for detail in interpreter.get_tensor_details()}
    assert np.int8 in tensor_types  # weights and activations really are int8
    exported = _tflite_probabilities(tmp_path / "m8.tflite", check_batch)
    agreement = float(np.mean(exported.argmax(1) == keras_probabilities.argmax(1)))
    assert result.check.top1_agreement == pytest.approx(agreement)
    assert result.check.passed == (agreement >= 0.98)


def test_keras_float16_stores_half_the_bytes_and_computes_with_the_rounded_weights(
    run_dir, check_batch, keras_probabilities, tmp_path
):
    import zipfile

    import h5py

    full = export_model(run_dir, "keras", out=tmp_path / "full.keras")
    half = export_model(run_dir, "keras", quantize="float16", out=tmp_path / "half.keras")
    assert half.check.passed and half.check.criterion.endswith("(needs <= 1e-02) in keras")
    with zipfile.ZipFile(tmp_path / "half.keras") as archive:
        weights = archive.read("model.weights.h5")
    stored = []
    with h5py.File(io.BytesIO(weights)) as h5:
        h5.visititems(
            lambda name, item: stored.append(item.dtype) if isinstance(item, h5py.Dataset) else None
        )
    assert stored and set(stored) == {np.dtype("float16")}
    assert half.size_bytes < 0.6 * full.size_bytes
    # Loaded (safe mode), it computes in float32 with every weight rounded to float16: the run's own
    # model given those rounded weights gives the same probabilities.
    loaded = load_classifier(tmp_path / "half.keras")
    assert {w.dtype for w in loaded.keras_model.weights} == {"float32"}
    rounded = load_classifier(run_dir)
    rounded.keras_model.set_weights(
        [w.astype(np.float16).astype(np.float32) for w in rounded.keras_model.get_weights()]
    )
    np.testing.assert_allclose(loaded.forward(check_batch), rounded.forward(check_batch), atol=1e-6)
    difference = float(np.abs(loaded.forward(check_batch) - keras_probabilities).max())
    assert 0 < difference <= 1e-2 and half.check.max_abs_difference == pytest.approx(difference, abs=1e-6)


def test_tflite_float16_stores_float16_weights(run_dir, check_batch, keras_probabilities, tmp_path):
    result = export_model(run_dir, "tflite", quantize="float16", out=tmp_path / "m16.tflite")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=str(tmp_path / "m16.tflite"))
    assert np.float16 in {detail["dtype"] for detail in interpreter.get_tensor_details()}
    exported = _tflite_probabilities(tmp_path / "m16.tflite", check_batch)
    assert result.check.passed
    assert result.check.max_abs_difference == pytest.approx(
        float(np.abs(exported - keras_probabilities).max())
    )


def test_onnx_float_and_int8_round_trip(
    run_dir, check_batch, keras_probabilities, tmp_path, capsys, monkeypatch
):
    pytest.importorskip("tf2onnx")
    code, out, err = run_cli(
        ["export", run_dir, "--format", "onnx", "--out", tmp_path / "m.onnx", "--json"], capsys, monkeypatch
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["check"]["passed"] and report["check"]["images"] == len(check_batch)
    exported = _onnx_probabilities(tmp_path / "m.onnx", check_batch)
    np.testing.assert_allclose(exported, keras_probabilities, atol=1e-5)

    result = export_model(run_dir, "onnx", quantize="int8", out=tmp_path / "m8.onnx")
    exported = _onnx_probabilities(tmp_path / "m8.onnx", check_batch)
    agreement = float(np.mean(exported.argmax(1) == keras_probabilities.argmax(1)))
    runtimes = {r.runtime: r for r in result.check.runtimes}
    assert runtimes["onnxruntime"].top1_agreement == pytest.approx(agreement)
    # OpenCV 4.14 reads no QDQ graph: noted, not held against the export.
    assert runtimes["opencv-dnn"].error.startswith("cannot read the model") and runtimes["opencv-dnn"].passed


def returning(name: str, probabilities: np.ndarray) -> Runtime:
    return Runtime(name, lambda batch: probabilities)


def test_check_thresholds():
    reference = np.tile(np.eye(7)[:2] * 0.9 + 0.1 / 7, (50, 1))  # 100 rows, top-1 alternating 0 and 1
    inputs = np.zeros((100, 48, 48, 1), np.float32)
    assert _check(reference, [returning("a", reference + 1e-4)], inputs, quantize=None).passed
    assert not _check(reference, [returning("a", reference + 2e-4)], inputs, quantize=None).passed
    flipped = reference.copy()
    flipped[:2] = flipped[:2, ::-1]  # 2 of 100 rows change their top-1
    assert _check(reference, [returning("a", flipped)], inputs, quantize="int8").passed  # 98% agreement
    flipped[:3] = reference[:3, ::-1]
    assert not _check(reference, [returning("a", flipped)], inputs, quantize="int8").passed  # 97%
    # float16 weights: probabilities within 1e-2, whatever the top-1 does.
    assert _check(reference, [returning("a", reference + 9e-3)], inputs, quantize="float16").passed
    assert not _check(reference, [returning("a", reference + 2e-2)], inputs, quantize="float16").passed


def test_check_fails_naming_each_runtime_that_disagrees():
    reference = np.full((10, 7), 1 / 7)
    inputs = np.zeros((10, 48, 48, 1), np.float32)
    good, off = returning("good", reference + 5e-5), returning("off", reference + 3e-3)
    check = _check(reference, [good, off], inputs, quantize=None)
    assert not check.passed
    assert check.criterion == "max |p_export - p_keras| 3.00e-03 (needs <= 1e-04) in off; passed in good"
    assert check.max_abs_difference == pytest.approx(3e-3) and check.top1_agreement == 1.0
    assert [(r.runtime, r.passed) for r in check.runtimes] == [("good", True), ("off", False)]
    check = _check(reference, [good, returning("rows", np.ones((10, 1, 7)))], inputs, quantize=None)
    assert not check.passed and "output shape (10, 1, 7), expected (10, 7) in rows" in check.criterion
    # A runtime that cannot read the export fails a float check; an int8 one only notes it.
    unread = Runtime("reader", None, "cannot read the model (DequantizeLinear)")
    assert not _check(reference, [good, unread], inputs, quantize=None).passed
    int8 = _check(reference, [good, unread], inputs, quantize="int8")
    assert int8.passed and int8.criterion == (
        "top-1 agreement 100.00% (needs >= 98%) in good; "
        "reader: cannot read the model (DequantizeLinear); skipped for an int8 model"
    )


def opencv_probabilities(path, batch):
    net = cv2.dnn.readNetFromONNX(str(path))
    net.setInput(batch)
    return net.forward()


def test_onnx_runs_in_opencv_dnn_as_in_keras(run_dir, check_batch, keras_probabilities, tmp_path):
    """OpenCV's DNN module read tf2onnx's GlobalAveragePool -> Squeeze -> Softmax tail with a third
    axis and normalized over it: every row summed to 7."""
    pytest.importorskip("tf2onnx")
    result = export_model(run_dir, "onnx", out=tmp_path / "m.onnx")
    assert [r.runtime for r in result.check.runtimes] == ["onnxruntime", "opencv-dnn"]
    assert result.check.passed and result.check.criterion.endswith("in onnxruntime, opencv-dnn")
    opencv = opencv_probabilities(tmp_path / "m.onnx", check_batch)
    assert opencv.shape == keras_probabilities.shape
    np.testing.assert_allclose(opencv, keras_probabilities, atol=1e-5)
    np.testing.assert_allclose(opencv.sum(axis=1), 1.0, atol=1e-5)
    node_types = [node.op_type for node in onnx.load(tmp_path / "m.onnx").graph.node]
    assert "Squeeze" not in node_types and node_types[-3:-1] == ["GlobalAveragePool", "Flatten"]


def test_a_runtime_that_disagrees_fails_the_export_naming_it(run_dir, tmp_path, capsys, monkeypatch):
    """The graph as tf2onnx writes it, unchanged: onnxruntime agrees, OpenCV does not."""
    pytest.importorskip("tf2onnx")
    monkeypatch.setattr(fertrain.export, "portable_onnx", lambda proto: proto)
    code, out, err = run_cli(
        ["export", run_dir, "--format", "onnx", "--out", tmp_path / "raw.onnx"], capsys, monkeypatch
    )
    assert code == 3
    assert re.search(
        r"max \|p_export - p_keras\| [0-9.e+-]+ \(needs <= 1e-04\) in opencv-dnn; passed in onnxruntime", err
    ), err
    assert len(err.strip().splitlines()) == 1 and (tmp_path / "raw.onnx").is_file()  # kept for inspection


def test_a_dense_head_and_a_model_file_export_to_opencv(
    prepared_sample, check_batch, tmp_path, capsys, monkeypatch
):
    """Xception's head (pool, then Dense) has the same tail to fix; a .keras file outside a run
    exports with --data."""
    pytest.importorskip("tf2onnx")
    config = load_config(
        QUICKSTART, ["model.head=dense", "model.width_multiplier=0.25", f"data.dir={prepared_sample}"]
    )
    model_file = tmp_path / "dense.keras"
    build_model(config.model, ("a", "b", "c", "d", "e", "f", "g")).save(model_file)
    code, out, err = run_cli(
        ["export", model_file, "--format", "onnx", "--data", prepared_sample, "--json"], capsys, monkeypatch
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["path"] == str(tmp_path / "export" / "dense-model.onnx") and report["check"]["passed"]
    keras_probabilities = load_classifier(model_file).forward(check_batch)
    opencv = opencv_probabilities(tmp_path / "export" / "dense-model.onnx", check_batch)
    np.testing.assert_allclose(opencv, keras_probabilities, atol=1e-5)


def test_bundled_short_name_exports_into_the_working_directory(
    prepared_sample, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(
        ["export", "bundled", "--format", "tflite", "--data", prepared_sample, "--json"], capsys, monkeypatch
    )
    assert code == 0, err
    report = json.loads(out)  # nothing else on stdout
    assert (
        report["path"] == "export/bundled-model.tflite"
        and (tmp_path / "export" / "bundled-model.tflite").is_file()
    )
    assert [r["runtime"] for r in report["check"]["runtimes"]] == ["tflite"] and report["check"]["passed"]
    code, _, err = run_cli(["export", "bundled", "--format", "onnx"], capsys, monkeypatch)
    assert code == 2 and "pass the data to check on with --data DIR" in err


def test_bad_requests_exit_2(run_dir, tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(
        ["export", run_dir, "--format", "savedmodel", "--quantize", "int8"], capsys, monkeypatch
    )
    assert code == 2 and "--quantize int8 needs --format tflite or onnx" in err
    code, _, err = run_cli(
        ["export", run_dir, "--format", "onnx", "--quantize", "float16"], capsys, monkeypatch
    )
    assert code == 2 and err.strip() == (
        "error: --quantize float16 needs --format keras or tflite (onnx exports stay float32)"
    )

    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # as if the onnx extra were not installed
    code, _, err = run_cli(["export", run_dir, "--format", "onnx"], capsys, monkeypatch)
    assert code == 2 and "pip install fertrain[onnx]" in err
    assert len(err.strip().splitlines()) == 1

    code, _, err = run_cli(["export", tmp_path, "--format", "tflite"], capsys, monkeypatch)
    assert code == 2 and f"{tmp_path}: not a run directory" in err


def test_two_runs_export_as_one_keras_file_averaging_their_probabilities(
    run_dir,
    tmp_path,
    tmp_path_factory,
    prepared_sample,
    check_batch,
    keras_probabilities,
    capsys,
    monkeypatch,
):
    other = tmp_path / "other-run"
    other.mkdir()
    shutil.copy(
        tiny_model_file(tmp_path_factory.getbasetemp(), prepared_sample, seed=1), other / "model.keras"
    )
    shutil.copy(run_dir / "config.yaml", other / "config.yaml")
    out = tmp_path / "ensemble.keras"
    code, stdout, err = run_cli(
        ["export", run_dir, other, "--format", "keras", "--out", out], capsys, monkeypatch
    )
    assert code == 0, err
    assert str(out) in stdout.replace("\n", "") and "passed" in stdout
    other_probabilities = load_classifier(other).forward(check_batch)
    assert np.abs(other_probabilities - keras_probabilities).max() > 1e-3  # two different models
    ensemble = load_classifier(out)
    np.testing.assert_allclose(
        ensemble.forward(check_batch), (keras_probabilities + other_probabilities) / 2, atol=1e-6
    )
    code, _, err = run_cli(
        ["export", run_dir, other, "--format", "keras", "--quantize", "int8"], capsys, monkeypatch
    )
    assert code == 2 and "needs --format tflite or onnx" in err
