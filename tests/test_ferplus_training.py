"""FER+ end to end: `prepare --ferplus` on real vote rows, the four target modes, the distillation
loss, class names from the data into the saved model and out of evaluate/predict, and an exact resume."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import keras
import numpy as np
import pytest
from cli_main import run_cli

import fertrain.models  # noqa: F401  (registers fertrain's layers for load_model)
from fertrain.config import Config, load_config
from fertrain.data.dataset import dataset_classes, load_split, load_votes
from fertrain.data.ferplus import FERPLUS_CLASSES, argmax_labels, majority_mask
from fertrain.evaluation import evaluate
from fertrain.inference import load_classifier
from fertrain.models import build_model, saved_class_names
from fertrain.predict import predict_images
from fertrain.training import read_history, train
from fertrain.training.batches import ArrayBatches
from fertrain.training.callbacks import AtomicBackupAndRestore
from fertrain.training.targets import TEACHER_CACHE, TargetLoss, distillation_divergence, training_targets

FIXTURES = Path(__file__).resolve().parent / "fixtures"
VOTES_CSV = FIXTURES / "ferplus_rows.csv"
REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
TINY = ["model.width_multiplier=0.25", "model.entry_widths=[16, 32]", "train.early_stopping_patience=0"]


@pytest.fixture
def cli(capsys, monkeypatch):
    """`cli("prepare", ...)`: (exit code, stdout, stderr) of that `fertrain` command, in-process."""
    return lambda *args: run_cli(list(args), capsys, monkeypatch)


def fixture_usages() -> list[str]:
    return [line.split(",", 1)[0] for line in VOTES_CSV.read_text().splitlines()[1:] if line.strip()]


def fer2013_csv(path: Path, usages: list[str], seed: int = 0) -> Path:
    """A FER2013 CSV whose rows have `usages` in order (random faces, labels 0-6)."""
    rng = np.random.default_rng(seed)
    lines = ["emotion,pixels,Usage"]
    for row, usage in enumerate(usages):
        pixels = " ".join(map(str, rng.integers(0, 256, 48 * 48)))
        lines.append(f"{row % 7},{pixels},{usage}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def ferplus_sources(tmp_path_factory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("ferplus-sources")
    return fer2013_csv(directory / "fer2013.csv", fixture_usages()), VOTES_CSV


def test_prepare_joins_real_vote_rows_by_order(tmp_path, ferplus_sources, cli):
    fer_csv, votes_csv = ferplus_sources
    gzipped = tmp_path / "fer2013new.csv.gz"
    gzipped.write_bytes(gzip.compress(votes_csv.read_bytes()))
    out = tmp_path / "prepared"
    code, stdout, _ = cli("prepare", fer_csv, "--ferplus", gzipped, "--out", out, "--json")
    assert code == 0
    manifest = json.loads(stdout)
    assert manifest["classes"] == list(FERPLUS_CLASSES) == list(dataset_classes(out))
    assert manifest["targets"] == ["labels", "votes"]
    # 30 fixture rows: 28 Training, 2 PublicTest; lines 19 (10 NF) and 462 (unknown) are left out.
    assert manifest["ferplus"]["dropped_faces"] == {"train": 2, "val": 0}
    raw = np.loadtxt(votes_csv, delimiter=",", skiprows=1, usecols=range(2, 12), dtype=np.uint8)
    usages = np.array(fixture_usages())
    for split, usage in (("train", "Training"), ("val", "PublicTest")):
        images, labels = load_split(out, split)
        votes = load_votes(out, split)
        expected = raw[usages == usage]
        expected = expected[argmax_labels(expected) < 8]
        np.testing.assert_array_equal(votes, expected)
        np.testing.assert_array_equal(labels, argmax_labels(expected))
        assert len(images) == len(labels) == manifest["splits"][split]["count"]
    assert manifest["ferplus"]["majority_faces"]["train"] == int(
        majority_mask(load_votes(out, "train")).sum()
    )


def _one_line(code: int, stderr: str, expected_code: int, *parts: str) -> None:
    assert code == expected_code, stderr
    line = stderr.strip()
    assert "\n" not in line and "Traceback" not in line, stderr
    for part in parts:
        assert part in line, line


def test_prepare_refuses_votes_that_do_not_join(tmp_path, ferplus_sources, cli):
    fer_csv, votes_csv = ferplus_sources
    lines = votes_csv.read_text().splitlines()
    out = tmp_path / "prepared"

    short = tmp_path / "short.csv"
    short.write_text("\n".join(lines[:-1]) + "\n")
    code, _, err = cli("prepare", fer_csv, "--ferplus", short, "--out", out)
    _one_line(code, err, 2, "short.csv: 29 vote rows but", "30 rows")

    swapped = tmp_path / "swapped.csv"
    wrong = lines[1].replace("Training", "PublicTest", 1)
    swapped.write_text("\n".join([lines[0], wrong, *lines[2:]]) + "\n")
    code, _, err = cli("prepare", fer_csv, "--ferplus", swapped, "--out", out)
    _one_line(
        code, err, 2, "swapped.csv: line 2: Usage 'PublicTest'", "fer2013.csv: line 2: Usage 'Training'"
    )

    bad_cell = tmp_path / "bad.csv"
    cells = lines[5].split(",")
    cells[4] = "x"
    bad_cell.write_text("\n".join([*lines[:5], ",".join(cells), *lines[6:]]) + "\n")
    code, _, err = cli("prepare", fer_csv, "--ferplus", bad_cell, "--out", out)
    _one_line(code, err, 2, "bad.csv: line 6")
    assert not out.exists()

    code, _, err = cli("prepare", fer_csv, "--ferplus", tmp_path / "absent.csv", "--out", out)
    _one_line(code, err, 2, "absent.csv: no such FER+ votes file")
    assert not out.exists()


def test_prepare_refuses_votes_for_a_source_without_row_order(tmp_path, prepared_sample, cli):
    folder = tmp_path / "faces" / "train" / "happy"
    folder.mkdir(parents=True)
    from PIL import Image

    Image.fromarray(np.zeros((48, 48), np.uint8)).save(folder / "a.png")
    code, _, err = cli("prepare", tmp_path / "faces", "--ferplus", VOTES_CSV, "--out", tmp_path / "out")
    _one_line(code, err, 2, "--ferplus joins FER+ votes to FER2013's rows by order")


VOTES = np.array(
    [
        [0, 7, 0, 1, 1, 0, 1, 0, 0, 0],  # happiness 7, three single votes (outliers)
        [4, 4, 0, 2, 0, 0, 0, 0, 0, 0],  # a tie: no majority
        [5, 0, 3, 0, 0, 0, 0, 0, 2, 0],  # neutral 5 of 10: no strict majority
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 10],  # not a face
    ],
    dtype=np.uint8,
)


def ferplus_config(mode: str, **sets: str) -> Config:
    return load_config(QUICKSTART, [f"data.targets={mode}", *[f"{k}={v}" for k, v in sets.items()]])


@pytest.mark.parametrize(
    ("mode", "kept", "targets", "sample", "set_likelihood"),
    [
        ("ferplus_majority", [0], [[0, 1, 0, 0, 0, 0, 0, 0]], False, False),
        # Classes join by falling vote count until 75 % of the votes are in (at most 3 classes):
        # 4 + 4 of 10 stops before sadness's 2; 5 + 3 of 10 likewise.
        (
            "ferplus_crossentropy",
            [0, 1, 2],
            [[0, 1, 0, 0, 0, 0, 0, 0], [0.5, 0.5, 0, 0, 0, 0, 0, 0], [0.625, 0, 0.375, 0, 0, 0, 0, 0]],
            False,
            False,
        ),
        (
            "ferplus_probability",
            [0, 1, 2],
            [[0, 1, 0, 0, 0, 0, 0, 0], [0.5, 0.5, 0, 0, 0, 0, 0, 0], [0.625, 0, 0.375, 0, 0, 0, 0, 0]],
            True,
            False,
        ),
        # >= 30 % of the cleaned votes: happiness; neutral and happiness (4 + 4 of 10); neutral and
        # surprise (5 + 3 of 10): each set weighted evenly.
        (
            "ferplus_multi_target",
            [0, 1, 2],
            [[0, 1, 0, 0, 0, 0, 0, 0], [0.5, 0.5, 0, 0, 0, 0, 0, 0], [0.5, 0, 0.5, 0, 0, 0, 0, 0]],
            False,
            True,
        ),
    ],
)
def test_each_mode_keeps_the_hand_computed_faces_and_targets(mode, kept, targets, sample, set_likelihood):
    images = np.arange(len(VOTES), dtype=np.uint8)[:, None, None] * np.ones((1, 48, 48), np.uint8)
    chosen = training_targets(ferplus_config(mode), images, argmax_labels(VOTES), VOTES)
    np.testing.assert_array_equal(chosen.images[:, 0, 0], kept)
    np.testing.assert_allclose(chosen.targets, targets, atol=1e-6)
    assert (chosen.sample, chosen.set_likelihood, chosen.dropped) == (sample, set_likelihood, 4 - len(kept))
    np.testing.assert_array_equal(chosen.labels, np.argmax(targets, axis=1))


def test_labels_mode_needs_no_votes_and_ferplus_modes_refuse_data_without_them():
    images = np.zeros((4, 48, 48), np.uint8)
    labels = np.array([0, 1, 2, 3], np.uint8)
    plain = training_targets(ferplus_config("labels"), images, labels, None)
    assert plain.targets is None and plain.dropped == 0
    from fertrain.errors import DataError

    with pytest.raises(DataError, match="needs FER\\+'s votes; prepare the data with"):
        training_targets(ferplus_config("ferplus_crossentropy"), images, labels, None)


def test_probability_mode_draws_seeded_classes_in_proportion():
    distribution = np.array([[0.4, 0.4, 0.0, 0.2]], np.float32).repeat(64, axis=0)
    images = np.zeros((64, 48, 48), np.uint8)
    labels = np.zeros(64, np.uint8)

    def draws(batches, epoch):
        batches.set_epoch(epoch)
        return np.concatenate([batches[i][1] for i in range(len(batches))])

    batches = ArrayBatches(
        images, labels, 4, batch_size=16, shuffle_seed=3, targets=distribution, sample_targets=True
    )
    again = ArrayBatches(
        images, labels, 4, batch_size=16, shuffle_seed=3, targets=distribution, sample_targets=True
    )
    first = draws(batches, 2)
    np.testing.assert_array_equal(first, draws(again, 2))  # what a resumed run draws
    assert set(np.unique(first)) == {0.0, 1.0} and (first.sum(axis=1) == 1).all()
    assert not np.array_equal(first, draws(batches, 3))
    shares = np.mean([draws(batches, epoch).mean(axis=0) for epoch in range(60)], axis=0)
    np.testing.assert_allclose(shares, [0.4, 0.4, 0.0, 0.2], atol=0.03)


def test_teacher_probabilities_ride_after_the_targets_and_class_weights_average_over_soft_rows():
    targets = np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]], np.float32)
    teacher = np.array([[0.2, 0.3, 0.5], [0.1, 0.1, 0.8]], np.float32)
    weights = np.array([1.0, 3.0, 5.0])
    batches = ArrayBatches(
        np.zeros((2, 48, 48), np.uint8),
        np.array([0, 2], np.uint8),
        3,
        batch_size=2,
        class_weights=weights,
        targets=targets,
        teacher=teacher,
    )
    _, y, w = batches[0]
    np.testing.assert_allclose(y, np.concatenate([targets, teacher], axis=1))
    np.testing.assert_allclose(w, [2.0, 5.0])


def numpy_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_target_loss_matches_a_hand_computation():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], np.float32)
    t = np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]], np.float32)
    q = np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]], np.float32)
    smoothing, weight, temperature = 0.1, 0.3, 2.0
    t_smooth = t * (1 - smoothing) + smoothing / 3

    crossentropy = TargetLoss(3, label_smoothing=smoothing, reduction=None)(t, p)
    np.testing.assert_allclose(crossentropy, -(t_smooth * np.log(p)).sum(axis=1), rtol=1e-5)

    likelihood = TargetLoss(3, label_smoothing=smoothing, set_likelihood=True, reduction=None)(t, p)
    np.testing.assert_allclose(likelihood, -np.log((t_smooth * p).sum(axis=1)), rtol=1e-5)

    # Softened distributions: softmax(log p / T); KL(q_T || p_T) * T^2.
    p_t, q_t = numpy_softmax(np.log(p) / temperature), numpy_softmax(np.log(q) / temperature)
    kl = (q_t * (np.log(q_t) - np.log(p_t))).sum(axis=1) * temperature**2
    np.testing.assert_allclose(distillation_divergence(q, p, temperature), kl, rtol=1e-5)
    distilled = TargetLoss(
        3, label_smoothing=smoothing, distill_weight=weight, temperature=temperature, reduction=None
    )(np.concatenate([t, q], axis=1), p)
    expected = (1 - weight) * -(t_smooth * np.log(p)).sum(axis=1) + weight * kl
    np.testing.assert_allclose(distilled, expected, rtol=1e-5)
    # Validation batches carry no teacher: the data's own loss.
    np.testing.assert_allclose(
        TargetLoss(3, distill_weight=weight, temperature=temperature, reduction=None)(t, p),
        -(t * np.log(p)).sum(axis=1),
        rtol=1e-5,
    )


def make_ferplus_dataset(directory: Path, train_size: int = 96, val_size: int = 32, seed: int = 0) -> Path:
    """A prepared FER+ directory: random faces whose class is a bright band, random votes whose
    strict majority (most rows) is that class."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    for split, size in (("train", train_size), ("val", val_size)):
        labels = (np.arange(size) % 8).astype(np.uint8)
        votes = rng.integers(0, 3, (size, 10)).astype(np.uint8)
        votes[:, 8:] = 0
        votes[np.arange(size), labels] = 6
        images = rng.integers(0, 256, (size, 48, 48), dtype=np.uint8)
        for label in range(8):
            images[labels == label, label * 6 : label * 6 + 6] = 255
        np.savez(directory / f"{split}.npz", images=images, labels=argmax_labels(votes), votes=votes)
    (directory / "manifest.json").write_text(json.dumps({"classes": list(FERPLUS_CLASSES)}))
    return directory


def tiny_ferplus_config(data_dir: Path, *overrides: str) -> Config:
    return load_config(QUICKSTART, [*TINY, f"data.dir={data_dir}", "data.batch_size=16", *overrides])


@pytest.fixture(scope="module")
def ferplus_run(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("ferplus-run")
    data = make_ferplus_dataset(base / "data")
    result = train(
        tiny_ferplus_config(data, "train.epochs=2", "data.targets=ferplus_crossentropy"), run_dir=base / "run"
    )
    return data, result.run_dir


def test_class_names_travel_from_the_data_into_the_model_and_out_of_evaluate_and_predict(
    ferplus_run, tmp_path
):
    data, run_dir = ferplus_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["classes"] == list(FERPLUS_CLASSES) and metrics["targets"] == "ferplus_crossentropy"
    assert load_config(run_dir / "config.yaml").model.num_classes == 8
    model = keras.saving.load_model(run_dir / "model.keras", safe_mode=True)
    assert saved_class_names(model) == FERPLUS_CLASSES and model.outputs[0].shape[-1] == 8
    assert load_classifier(run_dir / "model.keras").classes == FERPLUS_CLASSES

    result = evaluate([run_dir], data, split="val")
    votes = load_votes(data, "val")
    _, labels = load_split(data, "val")
    majority = majority_mask(votes)
    assert result.summary["class_names"] == list(FERPLUS_CLASSES)
    assert result.summary["num_images"] == int(majority.sum())
    ferplus = result.summary["ferplus"]
    assert ferplus["majority_faces"] == int(majority.sum()) and ferplus["argmax_faces"] == len(labels)
    assert ferplus["majority_accuracy"] == pytest.approx(result.summary["accuracy"])
    assert len(result.summary["confusion_matrix"]) == 8
    correct = result.probabilities.argmax(axis=1) == result.labels
    assert ferplus["majority_accuracy"] == pytest.approx(correct.mean())

    image = tmp_path / "face.png"
    from PIL import Image

    Image.fromarray(load_split(data, "val")[0][0]).save(image)
    (prediction,) = predict_images(run_dir, [image])
    assert {name for name, _ in prediction.faces[0].top} <= set(FERPLUS_CLASSES)


def test_the_bundled_ferplus_model_names_fer_plus_classes_and_scores_fer_plus_data(ferplus_run):
    data, _ = ferplus_run
    assert load_classifier("ferplus").classes == FERPLUS_CLASSES
    result = evaluate(["ferplus"], data, split="val")
    assert result.summary["class_names"] == list(FERPLUS_CLASSES)
    assert result.probabilities.shape == (result.summary["num_images"], 8)
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_a_model_with_other_classes_is_refused_in_one_line(ferplus_run, prepared_sample, cli):
    data, run_dir = ferplus_run
    code, _, err = cli("evaluate", "bundled", "--data", data, "--split", "val")
    _one_line(
        code, err, 2, "predicts (angry, disgust, fear, happy, sad, surprise, neutral)", "(neutral, happiness"
    )
    code, _, err = cli("evaluate", run_dir, "--data", prepared_sample, "--split", "val")
    _one_line(code, err, 2, "predicts (neutral, happiness", "labelled (angry, disgust")
    code, _, err = cli("train", "--config", QUICKSTART, "--data", data, "--set", "model.num_classes=7")
    _one_line(code, err, 2, "model.num_classes is 7 but", "has 8 classes (neutral, happiness")


class Killed(Exception):
    """Stands for SIGKILL in-process: nothing after it runs, nothing is cleaned up."""


@pytest.mark.slow
def test_a_resumed_ferplus_run_with_a_teacher_equals_an_uninterrupted_one(ferplus_run, tmp_path, monkeypatch):
    data, teacher = ferplus_run
    overrides = (
        "train.epochs=3",
        "train.deterministic=true",
        "data.targets=ferplus_probability",
        "data.augment.mixup_alpha=0.4",
        "train.label_smoothing=0.1",
        "train.class_weights=balanced",
        "train.ema=0.9",
        f"train.distill.teachers=[{teacher}]",
        "train.distill.tta=flip",
    )
    whole = train(tiny_ferplus_config(data, *overrides), run_dir=tmp_path / "whole")
    assert (whole.run_dir / TEACHER_CACHE).is_file()

    save_backup = AtomicBackupAndRestore._save_model

    def killed_saving_epoch_2(self):
        if self._current_epoch == 2:
            raise Killed
        save_backup(self)

    monkeypatch.setattr(AtomicBackupAndRestore, "_save_model", killed_saving_epoch_2)
    killed = tmp_path / "killed"
    with pytest.raises(Killed):
        train(tiny_ferplus_config(data, *overrides), run_dir=killed)
    monkeypatch.setattr(AtomicBackupAndRestore, "_save_model", save_backup)
    cached = np.load(killed / TEACHER_CACHE)
    resumed = train(resume=killed)
    assert resumed.resumed_from_epoch == 1
    np.testing.assert_array_equal(np.load(killed / TEACHER_CACHE), cached)
    assert read_history(killed / "history.csv") == read_history(whole.run_dir / "history.csv")
    for name in ("last.keras", "model.keras"):
        whole_weights = keras.saving.load_model(whole.run_dir / name, safe_mode=True).get_weights()
        killed_weights = keras.saving.load_model(killed / name, safe_mode=True).get_weights()
        for a, b in zip(whole_weights, killed_weights, strict=True):
            np.testing.assert_array_equal(a, b)


def test_a_teacher_with_other_classes_is_refused(ferplus_run, tmp_path, cli):
    data, _ = ferplus_run
    code, _, err = cli(
        "train",
        "--config",
        QUICKSTART,
        "--data",
        data,
        "--set",
        "train.distill.teachers=[bundled]",
        "--run-dir",
        tmp_path / "run",
    )
    _one_line(code, err, 2, "train.distill.teachers:", "a teacher must name the same classes")
    assert not (tmp_path / "run").exists()


def test_build_model_names_its_outputs_and_an_ensemble_keeps_them():
    from fertrain.models.ensemble import average_ensemble

    config = load_config(QUICKSTART, [*TINY, "model.num_classes=8"]).model
    first, second = build_model(config, FERPLUS_CLASSES), build_model(config, FERPLUS_CLASSES)
    assert saved_class_names(first) == FERPLUS_CLASSES
    assert saved_class_names(average_ensemble([first, second])) == FERPLUS_CLASSES
    assert saved_class_names(build_model(config)) is None
