"""Calibration: ECE and the reliability bins by hand, temperature fitting against scipy and a known
temperature, the temperature inside `ClassNames`, and `fertrain calibrate` end to end, through saving,
loading, evaluating and every export format."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from cli_main import run_cli
from run_dirs import tiny_model_file, tiny_run
from scipy.optimize import minimize_scalar
from test_export import _onnx_probabilities, _tflite_probabilities

from fertrain.calibration import fit_temperature, tempered
from fertrain.data.dataset import FER2013_CLASSES, load_split
from fertrain.export import CHECK_IMAGES, export_model
from fertrain.inference import load_classifier
from fertrain.metrics import classification_metrics, expected_calibration_error, reliability_bins
from fertrain.models.class_names import ClassNames, saved_class_names


def _softmax(logits):
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _nll(labels, probabilities):
    return float(-np.mean(np.log(probabilities[np.arange(len(labels)), labels])))


def test_ece_equals_a_hand_computation():
    # Top-1 confidences 0.95 (right), 0.95 (wrong), 0.5, 0.5 (both right), 0.45 (wrong).
    probabilities = np.array(
        [
            [0.95, 0.03, 0.02],
            [0.95, 0.03, 0.02],
            [0.25, 0.5, 0.25],
            [0.25, 0.25, 0.5],
            [0.45, 0.35, 0.2],
        ]
    )
    labels = np.array([0, 1, 1, 2, 2])
    bins = reliability_bins(labels, probabilities)
    assert len(bins) == 15 and bins[0]["lower"] == 0 and bins[-1]["upper"] == 1
    filled = {
        m: (row["count"], row["accuracy"], row["confidence"]) for m, row in enumerate(bins) if row["count"]
    }
    # 0.95 falls in (14/15, 1], 0.5 in (7/15, 8/15], 0.45 in (6/15, 7/15].
    assert filled == {
        14: (2, 0.5, pytest.approx(0.95)),
        7: (2, 1.0, pytest.approx(0.5)),
        6: (1, 0.0, pytest.approx(0.45)),
    }
    by_hand = 2 / 5 * abs(0.5 - 0.95) + 2 / 5 * abs(1.0 - 0.5) + 1 / 5 * abs(0.0 - 0.45)  # 0.47
    assert expected_calibration_error(bins) == pytest.approx(by_hand)
    summary = classification_metrics(labels, probabilities, ("a", "b", "c"))
    assert summary["ece"] == pytest.approx(0.47)
    assert summary["nll"] == summary["loss"] == pytest.approx(_nll(labels, probabilities))
    assert summary["reliability"] == bins


def test_a_model_right_as_often_as_it_says_has_zero_ece():
    # 10 faces at 0.8 confidence, 8 right; 4 at 0.5, 2 right.
    probabilities = np.array([[0.8, 0.2]] * 10 + [[0.5, 0.5]] * 4)
    labels = np.array([0] * 8 + [1] * 2 + [0, 0, 1, 1])
    assert classification_metrics(labels, probabilities, ("a", "b"))["ece"] == pytest.approx(0.0)


def test_temperature_fit_recovers_a_known_temperature_and_keeps_the_argmax():
    rng = np.random.default_rng(0)
    logits = 3.0 * rng.normal(size=(20000, 7))
    # Labels drawn from softmax(logits / 2.5): the model's softmax(logits) is overconfident by T = 2.5.
    truth = _softmax(logits / 2.5)
    labels = (rng.random((len(truth), 1)) > truth.cumsum(axis=1)).sum(axis=1)
    probabilities = _softmax(logits)

    temperature = fit_temperature(labels, probabilities)
    assert temperature == pytest.approx(2.5, rel=0.03)
    reference = minimize_scalar(
        lambda t: _nll(labels, _softmax(logits / t)),
        bounds=(0.1, 10),
        method="bounded",
        options={"xatol": 1e-8},
    )
    assert temperature == pytest.approx(reference.x, rel=1e-5)
    calibrated = tempered(probabilities, temperature)
    np.testing.assert_array_equal(calibrated.argmax(axis=1), probabilities.argmax(axis=1))
    before = classification_metrics(labels, probabilities, FER2013_CLASSES)
    after = classification_metrics(labels, calibrated, FER2013_CLASSES)
    assert after["accuracy"] == before["accuracy"]
    assert after["nll"] < before["nll"] and after["ece"] < before["ece"] / 4


def test_class_names_layer_is_the_identity_at_temperature_one_and_tempers_otherwise():
    probabilities = _softmax(np.random.default_rng(1).normal(size=(5, 7)) * 4).astype("float32")
    plain = ClassNames(FER2013_CLASSES)
    assert plain.temperature == 1.0
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(plain(probabilities)), probabilities)
    hot = ClassNames.from_config({**plain.get_config(), "temperature": 2.0})
    expected = tempered(probabilities, 2.0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(hot(probabilities)), expected, atol=1e-6)
    old_config = {key: value for key, value in plain.get_config().items() if key != "temperature"}
    assert ClassNames.from_config(old_config).temperature == 1.0  # files saved before calibration existed
    with pytest.raises(ValueError, match="temperature must be > 0"):
        ClassNames(FER2013_CLASSES, temperature=0.0)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, prepared_sample):
    return tiny_run(tmp_path_factory.getbasetemp(), prepared_sample)


@pytest.fixture(scope="module")
def check_batch(prepared_sample):
    return load_split(prepared_sample, "test")[0][:CHECK_IMAGES, ..., None].astype(np.float32)


@pytest.mark.slow
def test_calibrated_run_model_is_saved_loaded_evaluated_and_exported_with_its_temperature(
    run_dir, prepared_sample, check_batch, tmp_path, capsys, monkeypatch
):
    code, out, err = run_cli(["calibrate", run_dir, "--data", prepared_sample, "--json"], capsys, monkeypatch)
    assert code == 0, err
    result = json.loads(out)
    temperature = result["temperature"]
    assert abs(np.log(temperature)) > 0.01  # a real change to test, not the identity
    calibrated_file = run_dir / "calibrated.keras"
    assert result["model"] == str(calibrated_file)
    record = json.loads((run_dir / "calibration.json").read_text())
    assert record["temperature"] == temperature and record["split"] == "val"
    assert record["before"]["accuracy"] == record["after"]["accuracy"]
    assert record["after"]["nll"] < record["before"]["nll"]

    original = load_classifier(run_dir).forward(check_batch)
    expected = tempered(original, temperature)
    calibrated = load_classifier(calibrated_file)
    assert calibrated.keras_model.layers[-1].temperature == pytest.approx(temperature)
    assert calibrated.classes == FER2013_CLASSES
    np.testing.assert_allclose(calibrated.forward(check_batch), expected, atol=1e-5)

    code, out, err = run_cli(
        ["evaluate", calibrated_file, "--data", prepared_sample, "--split", "val", "--json"],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    evaluated = json.loads(out)
    assert evaluated["ece"] == pytest.approx(record["after"]["ece"], abs=1e-5)
    assert evaluated["nll"] == pytest.approx(record["after"]["nll"], rel=1e-4)

    exports = {"keras": "m.keras", "savedmodel": "saved_model", "tflite": "m.tflite"}
    for export_format, name in exports.items():
        exported = export_model(calibrated_file, export_format, out=tmp_path / name)
        assert exported.check.passed, exported.check.criterion
        read = _tflite_probabilities if export_format == "tflite" else _classifier_probabilities
        np.testing.assert_allclose(read(tmp_path / name, check_batch), expected, atol=1e-5)
    pytest.importorskip("tf2onnx")
    exported = export_model(calibrated_file, "onnx")  # default path: beside calibrated.keras
    assert exported.path == run_dir / "export" / "calibrated-model.onnx" and exported.check.passed
    np.testing.assert_allclose(_onnx_probabilities(exported.path, check_batch), expected, atol=1e-5)


def _classifier_probabilities(path, batch):
    return load_classifier(path).forward(batch)


@pytest.mark.slow
def test_a_model_without_class_names_is_wrapped_and_calibrating_twice_multiplies_temperatures(
    tmp_path_factory, prepared_sample, check_batch, tmp_path, capsys, monkeypatch
):
    bare = tiny_model_file(tmp_path_factory.getbasetemp(), prepared_sample, seed=1)
    assert saved_class_names(keras.saving.load_model(bare, safe_mode=True)) is None
    once, twice = tmp_path / "once.keras", tmp_path / "twice.keras"
    code, out, err = run_cli(
        ["calibrate", bare, "--data", prepared_sample, "--out", once, "--json"], capsys, monkeypatch
    )
    assert code == 0, err
    first = json.loads(out)
    assert first["record"] is None  # a model file has no run to record it in
    model = load_classifier(once)
    assert model.classes == FER2013_CLASSES  # 7 outputs without names: FER2013's, now saved
    expected = tempered(load_classifier(bare).forward(check_batch), first["temperature"])
    np.testing.assert_allclose(model.forward(check_batch), expected, atol=1e-5)

    code, out, err = run_cli(
        ["calibrate", once, "--data", prepared_sample, "--out", twice, "--json"], capsys, monkeypatch
    )
    assert code == 0, err
    refined = json.loads(out)["temperature"]
    assert refined == pytest.approx(1.0, abs=1e-3)  # already calibrated on the same faces
    layer = load_classifier(twice).keras_model.layers[-1]
    assert layer.temperature == pytest.approx(first["temperature"] * refined, rel=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["MODEL"], "not a run directory, so name the calibrated file with --out"),
        (["MODEL", "--out", "x.h5"], "x.h5: the calibrated model is a Keras file; give it the .keras suffix"),
        (["MODEL", "--out", "x.keras"], "not a run directory, so pass the data with --data DIR"),
        (
            ["no-such-model.keras", "--out", "x.keras"],
            "no-such-model.keras: no such model file or run directory",
        ),
    ],
)
def test_bad_calibrate_input_is_one_line_and_exit_2(
    args, message, tmp_path_factory, prepared_sample, tmp_path, capsys, monkeypatch
):
    bare = tiny_model_file(tmp_path_factory.getbasetemp(), prepared_sample, seed=1)
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(
        ["calibrate", *(str(bare) if a == "MODEL" else a for a in args)], capsys, monkeypatch
    )
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
