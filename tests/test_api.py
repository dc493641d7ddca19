"""The Python API (`fertrain.load_model`, `prepare`, `train`, `evaluate`, `export`): the same numbers
as the commands, faces of any size and colour, typed errors instead of SystemExit, a cheap import,
and README's "From Python" example run as it stands."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fertrain
from fertrain.config import Config
from fertrain.data.dataset import load_split
from fertrain.predict import predict_images

REPO = Path(__file__).resolve().parents[1]
ASTRONAUT = REPO / "data" / "sample" / "astronaut.jpg"


@pytest.fixture(scope="module")
def bundled() -> fertrain.Model:
    return fertrain.load_model("bundled")


def test_import_fertrain_loads_nothing_heavy():
    code = (
        "import sys, fertrain; fertrain.ConfigError; "
        "print(sorted(m for m in ('keras', 'numpy', 'tensorflow', 'cv2') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    assert "load_model" in dir(fertrain)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        fertrain.nothing  # noqa: B018


def test_predict_gives_evaluates_probabilities(bundled, prepared_sample):
    faces, _ = load_split(prepared_sample, "test")
    probabilities = bundled.predict(faces)
    assert probabilities.shape == (len(faces), 7)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    evaluation = fertrain.evaluate("bundled", data=prepared_sample, split="test")
    np.testing.assert_array_equal(probabilities, evaluation.probabilities)
    assert evaluation.summary["accuracy"] == pytest.approx(
        np.mean(probabilities.argmax(axis=1) == evaluation.labels)
    )


def test_faces_of_any_size_colour_and_type(bundled, prepared_sample):
    faces = load_split(prepared_sample, "test")[0][:4]
    reference = bundled.predict(faces)
    # Twice the size by repeating pixels, as RGB: area averaging back to 48x48 restores each face exactly.
    big_rgb = np.repeat(np.repeat(faces, 2, axis=1), 2, axis=2)[..., None].repeat(3, axis=-1)
    np.testing.assert_array_equal(bundled.predict(big_rgb), reference)
    np.testing.assert_array_equal(bundled.predict(faces.astype(np.float32) / 255), reference)
    np.testing.assert_array_equal(bundled.predict(faces[..., None].astype(float)), reference)
    # One face: one row; a list of faces of different sizes: a batch. (Another batch size may round
    # differently in the last float32 bits.)
    single = bundled.predict(faces[0])
    assert single.shape == (7,)
    np.testing.assert_allclose(single, reference[0], atol=1e-6)
    mixed = bundled.predict([faces[0], big_rgb[1], np.dstack([faces[2]] * 3 + [np.full((48, 48), 255)])])
    np.testing.assert_allclose(mixed, reference[:3], atol=1e-6)


def test_tta_option_averages_the_views(prepared_sample):
    faces = load_split(prepared_sample, "test")[0][:3]
    plain = fertrain.load_model("bundled")
    flipped = fertrain.load_model("bundled", tta="flip")
    expected = (plain.predict(faces) + plain.predict(faces[:, :, ::-1])) / 2
    np.testing.assert_allclose(flipped.predict(faces), expected, atol=1e-12)
    np.testing.assert_allclose(plain.predict(faces, tta="flip"), expected, atol=1e-12)


def test_detect_finds_the_astronauts_face_as_predict_does(bundled):
    found = bundled.detect(ASTRONAUT)
    assert [face.box for face in found] == [(113, 66, 95, 95)]
    face = found[0]
    assert list(face.probabilities) == list(bundled.classes)
    assert sum(face.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    assert face.top[0] == "happy"
    assert face.to_dict() == {"box": [113, 66, 95, 95], "emotions": face.probabilities}
    (command,) = predict_images("bundled", [ASTRONAUT], detect=True)
    assert command.faces[0].box == face.box
    for name, probability in command.faces[0].top:
        assert face.probabilities[name] == pytest.approx(probability, abs=1e-12)
    # Pixels work as well as a path; an empty photo has no faces.
    assert bundled.detect(np.asarray(Image.open(ASTRONAUT)))[0].box == face.box
    assert bundled.detect(np.zeros((200, 300), np.uint8)) == []


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: fertrain.load_model("no/such/model"), "ModelError", "no such model file"),
        (lambda: fertrain.load_model("bundled", tta="sideways"), "ConfigError", "unknown TTA mode"),
        (lambda: fertrain.load_model("bundled").predict(np.zeros(3)), "DataError", "got shape (3,)"),
        (lambda: fertrain.load_model("bundled").predict(np.full((48, 48), 300)), "DataError", "0-255"),
        (lambda: fertrain.load_model("bundled").predict(np.full((48, 48), np.nan)), "DataError", "finite"),
        (lambda: fertrain.prepare("no/such.csv", "/tmp/never"), "DataError", "no such file"),
        (
            lambda: fertrain.train("configs/quickstart.yaml", overrides={"train.epochs": 0}),
            "ConfigError",
            "train.epochs: must be >= 1",
        ),
        (lambda: fertrain.train({"model": {"nonsense": 1}}), "ConfigError", "model.nonsense: unknown key"),
        (lambda: fertrain.evaluate("bundled"), "DataError", "pass the data"),
    ],
)
def test_errors_are_typed_never_system_exit(call, error, message, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(getattr(fertrain, error)) as raised:
        call()
    assert isinstance(raised.value, fertrain.FertrainError) and message in str(raised.value)


def test_a_config_object_with_overrides_keeps_the_data_deciding_the_classes(prepared_sample):
    from fertrain.api import resolve_config

    config = Config.model_validate(
        {"model": {"width_multiplier": 0.5}, "data": {"dir": str(prepared_sample)}}
    )
    resolved = resolve_config(config, {"train.epochs": 2, "model.entry_widths": [16, 32]})
    assert resolved.train.epochs == 2 and resolved.model.entry_widths == [16, 32]
    assert resolved.model.width_multiplier == 0.5
    assert "num_classes" not in resolved.model.model_fields_set


def from_python_example() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## From Python") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_example_runs(tmp_path, monkeypatch, capsys):
    for folder in ("data", "configs"):
        (tmp_path / folder).symlink_to(REPO / folder)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(from_python_example(), "README.md (From Python)", "exec"), namespace)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str(namespace["model"].classes) and out[1] == "happy"
    assert out[2].startswith("(113, 66, 95, 95) ('happy', ")
    assert namespace["probabilities"].sum() == pytest.approx(1.0)
    run = namespace["run"]
    assert run.run_dir.parent == Path("runs") and run.metrics["epochs_run"] == 1
    summary = json.loads((run.run_dir / "evaluation-test.json").read_text())
    assert namespace["evaluation"].summary["accuracy"] == summary["accuracy"] == float(out[-1])
    assert namespace["manifest"]["splits"]["train"]["count"] == 700
