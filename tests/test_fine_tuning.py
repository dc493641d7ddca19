"""`train.init_from` and `train.freeze_epochs`: weights copied layer by layer (equal to the source's),
a new head for other classes, frozen layers unchanged during the head-only epochs and changing after,
exact resume across the switch, what metrics.json and the console say, and the bad sources."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
from cli_main import run_cli
from run_dirs import tiny_model_file

import fertrain.models  # noqa: F401  (registers fertrain's layers for load_model)
from fertrain.config import load_config
from fertrain.data.dataset import load_split
from fertrain.errors import ModelError
from fertrain.models import build_model
from fertrain.training import read_history, train
from fertrain.training.callbacks import AtomicBackupAndRestore
from fertrain.training.transfer import copy_weights, source_networks

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
# tests/run_dirs.py's tiny network, which the source model file is.
TINY = ["model.width_multiplier=0.5", "model.entry_widths=[16, 32]", "model.l2=0.0", "data.batch_size=32"]


class Killed(Exception):
    """Stands for SIGKILL in-process: nothing after it runs, nothing is cleaned up."""


def relabelled(prepared: Path, out: Path, classes: list[str]) -> Path:
    """The sample with its labels folded into `classes` (label mod len(classes)), named in the manifest."""
    shutil.copytree(prepared, out)
    for split in ("train", "val", "test"):
        with np.load(out / f"{split}.npz") as arrays:
            images, labels = arrays["images"], arrays["labels"]
        np.savez(out / f"{split}.npz", images=images, labels=(labels % len(classes)).astype(np.uint8))
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "classes": classes}))
    return out


@pytest.fixture(scope="module")
def source(tmp_path_factory, prepared_sample) -> Path:
    """A tiny network fitted one epoch on the sample, saved without class names (so: FER2013's 7)."""
    return tiny_model_file(tmp_path_factory.getbasetemp(), prepared_sample, seed=3)


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory, prepared_sample) -> Path:
    return relabelled(prepared_sample, tmp_path_factory.mktemp("three") / "data", ["a", "b", "c"])


def config(data: Path, *overrides: str):
    return load_config(QUICKSTART, [*TINY, f"data.dir={data}", "train.early_stopping_patience=0", *overrides])


def train_args(data: Path, source: Path, run_dir: Path, *overrides: str) -> list:
    """`fertrain train` on the tiny network from `source` (the arguments after `fertrain`)."""
    sets = [arg for item in (*TINY, *overrides) for arg in ("--set", item)]
    return [
        "train",
        "--config",
        QUICKSTART,
        "--data",
        data,
        *sets,
        "--init-from",
        source,
        "--run-dir",
        run_dir,
    ]


def weights_by_layer(model: keras.Model) -> dict[str, list[np.ndarray]]:
    return {
        layer.name: [np.asarray(w) for w in layer.get_weights()] for layer in model.layers if layer.weights
    }


def assert_layers_equal(a: dict, b: dict, names) -> None:
    for name in names:
        for x, y in zip(a[name], b[name], strict=True):
            np.testing.assert_array_equal(x, y, err_msg=name)


def test_matching_layers_are_copied_and_other_classes_get_a_new_head(source, prepared_sample, tmp_path):
    theirs = weights_by_layer(source_networks(str(source))[0][0])
    # Seven classes, but not FER2013's: the head has the source's shape, yet starts anew.
    classes = ("a", "b", "c", "d", "e", "f", "g")
    network = build_model(config(prepared_sample).model, classes)
    report = copy_weights(network, str(source), classes)
    ours = weights_by_layer(network)
    assert report.new_head and report.new == ("head_conv",) and report.skipped == ()
    assert set(report.copied) == set(theirs) - {"head_conv"}
    assert_layers_equal(ours, theirs, report.copied)
    assert not np.array_equal(ours["head_conv"][0], theirs["head_conv"][0])
    assert ours["head_conv"][0].shape == theirs["head_conv"][0].shape
    assert report.copied_parameters + sum(w.size for w in ours["head_conv"]) == report.parameters
    # FER2013's classes: the head is copied too.
    fer2013 = build_model(config(prepared_sample).model, source_networks(str(source))[2])
    report = copy_weights(fer2013, str(source), source_networks(str(source))[2])
    assert not report.new_head and report.new == () and "head_conv" in report.copied
    assert_layers_equal(weights_by_layer(fer2013), theirs, theirs)


def test_layers_of_other_shapes_are_skipped_and_named(source, prepared_sample):
    wider = config(prepared_sample, "model.entry_widths=[16, 48]").model
    network = build_model(wider)
    report = copy_weights(
        network, str(source), ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    )
    skipped = {entry.split(":")[0] for entry in report.skipped}
    # entry2's widths change, and with them the convolution reading its output.
    assert skipped == {
        "entry2_1_sepconv",
        "entry2_1_bn",
        "entry2_2_sepconv",
        "entry2_2_bn",
        "entry2_skip_conv",
        "entry2_skip_bn",
        "head_conv",
    }
    assert "entry2_skip_conv: [(1, 1, 8, 24)] here vs [(1, 1, 8, 16)]" in report.skipped
    assert "stem1_conv" in report.copied and "entry1_1_sepconv" in report.copied


def test_the_bundled_ensemble_starts_the_member_that_shares_most(prepared_sample):
    members, path, classes = source_networks("bundled")
    assert path.name == "model.keras" and [m.count_params() for m in members] == [205_031, 618_215]
    assert classes == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    cpu = load_config(REPO / "configs" / "fer2013_cpu.yaml", [f"data.dir={prepared_sample}"]).model
    for model, member, parameters in (
        (cpu, "member2", 618_215),
        (cpu.model_copy(update={"middle_repeats": 0}), "member1", 205_031),
    ):
        network = build_model(model, classes)
        report = copy_weights(network, "bundled", classes)
        assert report.member.startswith(member) and report.new == report.skipped == ()
        assert report.copied_parameters == report.parameters == parameters
        assert_layers_equal(
            weights_by_layer(network), weights_by_layer(members[int(member[-1]) - 1]), report.copied
        )


def test_head_only_epochs_keep_the_frozen_layers_then_train_them(source, three_classes, tmp_path):
    theirs = weights_by_layer(source_networks(str(source))[0][0])
    overrides = (f"train.init_from={source}", "train.freeze_epochs=2", "train.deterministic=true")
    head_only = train(config(three_classes, "train.epochs=2", *overrides), run_dir=tmp_path / "frozen")
    frozen = head_only.metrics["init_from"]["frozen_layers"]
    assert set(frozen) == set(theirs) - {"head_conv"}
    after_two = weights_by_layer(keras.saving.load_model(tmp_path / "frozen" / "last.keras", safe_mode=True))
    # Every weight of a frozen layer, BatchNormalization's moving statistics included, is the source's.
    assert_layers_equal(after_two, theirs, frozen)
    assert after_two["head_conv"][0].shape == (3, 3, 16, 3)

    thawed = train(config(three_classes, "train.epochs=3", *overrides), run_dir=tmp_path / "thawed")
    history = read_history(tmp_path / "thawed" / "history.csv")
    assert history[:2] == read_history(tmp_path / "frozen" / "history.csv")
    after_three = weights_by_layer(
        keras.saving.load_model(tmp_path / "thawed" / "last.keras", safe_mode=True)
    )
    for name in frozen:
        assert any(not np.array_equal(a, b) for a, b in zip(after_three[name], theirs[name], strict=True)), (
            name
        )
    assert thawed.metrics["init_from"]["freeze_epochs"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("killed_in_epoch", [2, 3])
def test_resume_across_the_unfreeze_equals_an_uninterrupted_run(
    source, three_classes, tmp_path, monkeypatch, killed_in_epoch
):
    """Killed in epoch 2 (backup after epoch 1, still frozen) or in epoch 3 (backup after epoch 2,
    the switch already made): the resumed run ends where the uninterrupted one does."""
    run_config = config(
        three_classes,
        "train.epochs=4",
        f"train.init_from={source}",
        "train.freeze_epochs=2",
        "train.deterministic=true",
        "model.dropout=0.2",
        "train.ema=0.9",
    )
    whole = train(run_config, run_dir=tmp_path / "whole")
    save_backup = AtomicBackupAndRestore._save_model

    def killed(self):
        if self._current_epoch == killed_in_epoch:
            raise Killed
        save_backup(self)

    monkeypatch.setattr(AtomicBackupAndRestore, "_save_model", killed)
    with pytest.raises(Killed):
        train(run_config, run_dir=tmp_path / "killed")
    monkeypatch.setattr(AtomicBackupAndRestore, "_save_model", save_backup)
    resumed = train(resume=tmp_path / "killed")
    assert resumed.resumed_from_epoch == killed_in_epoch - 1
    assert read_history(tmp_path / "killed" / "history.csv") == read_history(whole.run_dir / "history.csv")
    for name in ("last.keras", "model.keras"):
        for a, b in zip(
            keras.saving.load_model(whole.run_dir / name, safe_mode=True).get_weights(),
            keras.saving.load_model(tmp_path / "killed" / name, safe_mode=True).get_weights(),
            strict=True,
        ):
            np.testing.assert_array_equal(a, b)


def test_cli_init_from_says_what_was_copied(source, three_classes, tmp_path, capsys, monkeypatch):
    args = train_args(
        three_classes, source, tmp_path / "run", "train.epochs=1", "train.early_stopping_patience=0"
    )
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    copied = len(weights_by_layer(source_networks(str(source))[0][0])) - 1  # all but the head
    assert f"init_from {source}: copied {copied} layers" in out
    assert "new: head_conv (the data's classes differ from the source's); skipped: none" in out
    recorded = json.loads((tmp_path / "run" / "metrics.json").read_text())["init_from"]
    assert recorded["new"] == ["head_conv"] and len(recorded["copied"]) == copied and recorded["new_head"]
    assert recorded["source_classes"][0] == "angry"
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert saved.train.init_from == str(source)


def one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def test_bad_sources_are_one_line_exit_2_and_write_no_run(three_classes, tmp_path, capsys, monkeypatch):
    foreign = tmp_path / "foreign.keras"
    inputs = keras.Input((48, 48, 1))
    keras.Model(inputs, keras.layers.Dense(7, activation="softmax")(keras.layers.Flatten()(inputs))).save(
        foreign
    )
    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"not a model")
    cases = [
        (foreign, "no layer in common with this network"),
        (garbage, f"{garbage}: not a .keras file"),
        (
            tmp_path / "absent",
            "train.init_from: " + str(tmp_path / "absent") + ": no such model file or run directory",
        ),
    ]
    for target, message in cases:
        run_dir = tmp_path / "run"
        code, _, err = run_cli(train_args(three_classes, target, run_dir), capsys, monkeypatch)
        one_line_error(code, err, message)
        assert not run_dir.exists()
    code, _, err = run_cli(
        ["train", "--config", QUICKSTART, "--data", three_classes, "--set", "train.freeze_epochs=1"],
        capsys,
        monkeypatch,
    )
    one_line_error(code, err, "train.freeze_epochs: needs train.init_from")
    (tmp_path / "sm").mkdir()
    (tmp_path / "sm" / "saved_model.pb").write_bytes(b"")
    with pytest.raises(ModelError, match="a SavedModel"):
        source_networks(str(tmp_path / "sm"))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_head_only_epochs_on_other_backends(source, three_classes, tmp_path, backend):
    import importlib.util
    import os
    import subprocess
    import sys

    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    args = train_args(three_classes, source, tmp_path / "run", "train.epochs=1", "train.freeze_epochs=1")
    done = subprocess.run(
        [sys.executable, "-m", "fertrain", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "KERAS_BACKEND": backend},
        cwd=REPO,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    frozen = json.loads((tmp_path / "run" / "metrics.json").read_text())["init_from"]["frozen_layers"]
    ours = weights_by_layer(keras.saving.load_model(tmp_path / "run" / "last.keras", safe_mode=True))
    assert_layers_equal(ours, weights_by_layer(source_networks(str(source))[0][0]), frozen)


@pytest.mark.slow
def test_image_folder_round_trip_fine_tunes_the_bundled_model(prepared_sample, tmp_path):
    """The sample's faces as PNG folders of 3 made-up classes, prepared, fine-tuned from `bundled`
    (its smaller member) and scored: the copied features separate them from the first epochs."""
    from PIL import Image

    made_up = {3: "smiling", 5: "startled", 2: "startled"}  # FER2013 labels; the rest are "other"
    for split in ("train", "test"):
        images, labels = load_split(prepared_sample, split)
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = tmp_path / "faces" / split / made_up.get(int(label), "other")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{index}.png")
    manifest = fertrain.prepare(tmp_path / "faces", tmp_path / "prepared")
    assert manifest["classes"] == ["other", "smiling", "startled"]
    run = fertrain.train(
        REPO / "configs" / "fer2013_cpu.yaml",
        data=tmp_path / "prepared",
        overrides={
            "model.middle_repeats": 0,
            "train.init_from": "bundled",
            "train.freeze_epochs": 1,
            "train.epochs": 3,
            "train.optimizer.learning_rate": 0.001,
            "train.mixed_precision": "off",
        },
        run_dir=tmp_path / "run",
    )
    assert (
        run.metrics["init_from"]["member"].startswith("member1") and run.metrics["init_from"]["skipped"] == []
    )
    summary = fertrain.evaluate(run.run_dir, split="test").summary
    test_labels = load_split(tmp_path / "prepared", "test")[1]
    majority = np.bincount(test_labels).max() / len(test_labels)
    assert summary["class_names"] == ["other", "smiling", "startled"]
    assert summary["accuracy"] > majority + 0.05, (summary["accuracy"], majority)
