"""`fertrain evaluate`: numbers against direct predictions, ensembles, TTA, foreign models, exit codes."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from cli_main import run_cli
from run_dirs import tiny_model_file, tiny_run
from sklearn import metrics as skm

from fertrain.data.dataset import FER2013_CLASSES, load_split
from fertrain.errors import ModelError
from fertrain.evaluation import evaluate
from fertrain.metrics import classification_metrics

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, prepared_sample):
    return tiny_run(tmp_path_factory.getbasetemp(), prepared_sample)


@pytest.fixture(scope="module")
def second_model(tmp_path_factory, prepared_sample):
    return tiny_model_file(tmp_path_factory.getbasetemp(), prepared_sample, seed=1)


@pytest.fixture(scope="module")
def test_split(prepared_sample):
    return load_split(prepared_sample, "test")


@pytest.fixture(scope="module")
def direct_probabilities(run_dir):
    """Probabilities straight from the run's Keras model, bypassing fertrain.inference."""
    model = keras.saving.load_model(run_dir / "model.keras", safe_mode=True)

    def predict(faces):
        return model.predict(faces[..., None].astype("float32"), verbose=0).astype(np.float64)

    return predict


def _shifted(faces, dy, dx):
    """Each face moved by (dy, dx) pixels, border pixels repeated."""
    rows = np.clip(np.arange(48) - dy, 0, 47)
    cols = np.clip(np.arange(48) - dx, 0, 47)
    return faces[:, rows][:, :, cols]


@pytest.mark.filterwarnings("ignore:The y_prob values do not sum to one")  # float32 rows, summed in float64
def test_run_dir_metrics_match_direct_prediction_and_files_are_written(
    run_dir, test_split, direct_probabilities
):
    faces, labels = test_split
    result = evaluate([run_dir])  # data dir comes from the run's config.yaml

    expected = direct_probabilities(faces)
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-6)
    summary = result.summary
    assert summary["num_images"] == len(labels) == 196
    predictions = expected.argmax(axis=1)
    assert summary["accuracy"] == pytest.approx(skm.accuracy_score(labels, predictions), abs=1e-12)
    assert summary["macro_f1"] == pytest.approx(skm.f1_score(labels, predictions, average="macro"))
    assert summary["loss"] == pytest.approx(skm.log_loss(labels, expected, labels=range(7)), rel=1e-5)
    assert np.sum(summary["confusion_matrix"]) == 196

    saved = json.loads((run_dir / "evaluation-test.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert (run_dir / "confusion-test.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(result.written) == {run_dir / "evaluation-test.json", run_dir / "confusion-test.png"}


def test_ensemble_is_the_mean_of_its_members(run_dir, second_model, prepared_sample):
    first = evaluate([run_dir], prepared_sample, split="val").probabilities
    second = evaluate([second_model], prepared_sample, split="val").probabilities
    assert np.abs(first - second).max() > 1e-3  # two different models
    ensemble = evaluate([run_dir, second_model], prepared_sample, split="val")
    np.testing.assert_allclose(ensemble.probabilities, (first + second) / 2, atol=1e-7)
    assert ensemble.written == ()  # an ensemble belongs to no single run directory
    assert ensemble.summary["models"] == [str(run_dir / "model.keras"), str(second_model)]


def test_tta_flip_and_crops_average_the_documented_views(
    run_dir, prepared_sample, test_split, direct_probabilities
):
    faces, labels = test_split
    model_path = run_dir / "model.keras"
    flip = evaluate([model_path], prepared_sample, tta="flip")
    expected_flip = (direct_probabilities(faces) + direct_probabilities(faces[:, :, ::-1])) / 2
    np.testing.assert_allclose(flip.probabilities, expected_flip, atol=1e-6)
    assert flip.summary["tta"] == "flip"
    expected = classification_metrics(labels, flip.probabilities, FER2013_CLASSES)
    assert flip.summary == {**flip.summary, **expected}

    crops = evaluate([model_path], prepared_sample, tta="crops")
    shifts = [(0, 0), (3, 3), (3, -3), (-3, 3), (-3, -3)]
    expected_crops = np.mean([direct_probabilities(_shifted(faces, *s)) for s in shifts], axis=0)
    np.testing.assert_allclose(crops.probabilities, expected_crops, atol=1e-6)


def _foreign_model(size: int) -> keras.Model:
    """Another project's classifier: 64x64 input, expects pixels in [-1, 1], no internal rescaling."""
    keras.utils.set_random_seed(7)
    inputs = keras.Input((size, size, 1))
    x = keras.layers.Conv2D(8, 5, strides=2, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(7, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def test_foreign_h5_model_with_64px_input_and_symmetric_scaling(tmp_path, prepared_sample, test_split):
    faces, labels = test_split
    model = _foreign_model(64)
    path = tmp_path / "foreign.h5"
    model.save(path)

    result = evaluate([path], prepared_sample, normalize="symmetric")

    resized = tf.image.resize(faces[..., None].astype("float32"), (64, 64), method="bilinear").numpy()
    expected = model.predict(resized / 127.5 - 1.0, verbose=0).astype(np.float64)
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-6)
    predictions = expected.argmax(axis=1)
    assert result.summary["accuracy"] == pytest.approx(skm.accuracy_score(labels, predictions), abs=1e-12)
    assert result.summary["weighted_f1"] == pytest.approx(
        skm.f1_score(labels, predictions, average="weighted")
    )
    assert result.written == ()
    raw = evaluate([path], prepared_sample, normalize="raw")
    assert np.abs(raw.probabilities - result.probabilities).max() > 1e-3  # the scaling matters


def test_saved_model_directory_is_evaluated_like_its_keras_model(tmp_path, run_dir, prepared_sample):
    model = keras.saving.load_model(run_dir / "model.keras", safe_mode=True)
    model.export(tmp_path / "saved", format="tf_saved_model", verbose=False)
    from_keras = evaluate([run_dir / "model.keras"], prepared_sample, split="val")
    from_saved = evaluate([tmp_path / "saved"], prepared_sample, split="val")
    np.testing.assert_allclose(from_saved.probabilities, from_keras.probabilities, atol=1e-5)


def test_models_that_cannot_be_classifiers_are_refused(tmp_path, prepared_sample):
    inputs = keras.Input((48, 48, 3))
    rgb = keras.Model(inputs, keras.layers.Dense(7, activation="softmax")(keras.layers.Flatten()(inputs)))
    rgb.save(tmp_path / "rgb.keras")
    with pytest.raises(
        ModelError, match=r"rgb.keras: input shape \(None, 48, 48, 3\) is not a square grayscale"
    ):
        evaluate([tmp_path / "rgb.keras"], prepared_sample)

    inputs = keras.Input((48, 48, 1))
    scaled = keras.layers.Lambda(lambda pixels: pixels / 255.0)(inputs)
    unsafe = keras.Model(inputs, keras.layers.Dense(7, activation="softmax")(keras.layers.Flatten()(scaled)))
    unsafe.save(tmp_path / "lambda.h5")
    with pytest.raises(ModelError, match="lambda.h5: cannot load as a Keras model .*Lambda"):
        evaluate([tmp_path / "lambda.h5"], prepared_sample)  # safe_mode refuses to run pickled code

    (tmp_path / "junk.keras").write_text("not a model")
    with pytest.raises(ModelError, match="junk.keras: not a .keras file"):
        evaluate([tmp_path / "junk.keras"], prepared_sample)

    logits = keras.Model(inputs, keras.layers.Dense(7)(keras.layers.Flatten()(inputs)))
    logits.save(tmp_path / "logits.keras")
    with pytest.raises(ModelError, match="logits.keras: outputs are not probabilities"):
        evaluate([tmp_path / "logits.keras"], prepared_sample)


def test_exit_codes_and_json(run_dir, prepared_sample, tmp_path, capsys, monkeypatch):
    code, out, _ = run_cli(["evaluate", run_dir, "--json", "--out", tmp_path / "e.json"], capsys, monkeypatch)
    assert code == 0
    summary = json.loads(out)
    assert json.loads((tmp_path / "e.json").read_text()) == summary
    accuracy = summary["accuracy"]

    code, out, _ = run_cli(["evaluate", run_dir, "--min-accuracy", accuracy], capsys, monkeypatch)
    assert code == 0
    assert "per class" in out and "confusion matrix" in out

    above = min(1.0, accuracy + 0.01)
    code, _, err = run_cli(["evaluate", run_dir, "--min-accuracy", above, "--json"], capsys, monkeypatch)
    assert code == 3
    assert "below --min-accuracy" in err

    code, _, err = run_cli(
        ["evaluate", tmp_path / "missing.keras", "--data", prepared_sample], capsys, monkeypatch
    )
    assert code == 2
    assert "missing.keras: no such model file or run directory" in err
    assert "Traceback" not in err

    code, _, err = run_cli(["evaluate", run_dir, "--data", tmp_path / "nowhere"], capsys, monkeypatch)
    assert code == 2
    assert "nowhere" in err
