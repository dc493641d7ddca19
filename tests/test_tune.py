"""`fertrain tune`: trials are complete run directories, best.yaml reruns the best one, the seed
repeats the suggestions, pruning is recorded, a SIGKILLed worker's study continues without losing or
repeating a trial, two workers share a PostgreSQL study, and bad input is one line."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml
from browser import CHROMIUM, NO_CHROMIUM, load_in_chromium
from cli_main import run_cli

from fertrain.config import load_config
from fertrain.training import read_history

optuna = pytest.importorskip("optuna", reason="the tune extra is not installed: pip install -e '.[tune]'")

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
# A mini-Xception that trains an epoch of 448 faces in about a second; batch-norm statistics that
# follow the 14 steps of an epoch, so that the first epoch already validates what it learnt.
TINY = (
    "model.width_multiplier=0.25",
    "model.entry_widths=[16, 32]",
    "model.batchnorm_momentum=0.5",
    "train.early_stopping_patience=0",
)
POSTGRES_URL = os.environ.get("FERTRAIN_TEST_POSTGRES_URL")
NO_POSTGRES = "FERTRAIN_TEST_POSTGRES_URL is not set (.ci/run starts a PostgreSQL server and sets it)"
RANDOM_SPACE = """\
train.optimizer.learning_rate: {float: [0.001, 0.02], log: true}
model.dropout: {float: [0.0, 0.3], step: 0.1}
model.entry_widths: {categorical: [[16, 32], [8, 16]]}
"""


def brightness_dataset(directory: Path) -> Path:
    """Faces whose class is their brightness (36 grey levels apart, noise of 8): learnt in an epoch
    at a usable learning rate, never at 1e-8."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True)
    for split, size in (("train", 448), ("val", 70)):
        labels = np.arange(size, dtype="uint8") % 7
        faces = labels[:, None, None] * 36.0 + 20 + rng.normal(0, 8, (size, 48, 48))
        np.savez(directory / f"{split}.npz", images=np.clip(faces, 0, 255).astype("uint8"), labels=labels)
    (directory / "manifest.json").write_text("{}")
    return directory


def tune_args(space: Path, data: Path, out: Path, *options, epochs: int = 2) -> list:
    sets = [arg for override in (*TINY, f"train.epochs={epochs}") for arg in ("--set", override)]
    return ["tune", "--config", QUICKSTART, "--space", space, "--data", data, "--out", out, *sets, *options]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def tune_json(args, capsys, monkeypatch) -> dict:
    code, out, err = run_cli([*args, "--json"], capsys, monkeypatch)
    assert code == 0, err
    return json.loads(out)


def fertrain_process(*args, **popen) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen([sys.executable, "-m", "fertrain", *map(str, args)], env=env, cwd=REPO, **popen)


def study_trials(storage: str, name: str = "quickstart"):
    return optuna.load_study(study_name=name, storage=storage).get_trials()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return brightness_dataset(tmp_path_factory.mktemp("tune") / "data")


@pytest.fixture(scope="module")
def grid_study(tmp_path_factory, data):
    """Three trials over three learning rates, the grid's order fixed by --seed 3 so that 1e-8, which
    learns nothing, comes after the two that learn: the median pruner stops it after its first epoch.

    Run through the library (a module fixture has no capsys); its JSON is what `--json` prints."""
    from fertrain.tuning import tune

    base = tmp_path_factory.mktemp("grid")
    space = write(
        base / "space.yaml", "train.optimizer.learning_rate: {categorical: [0.01, 0.005, 1.0e-8]}\n"
    )
    args = tune_args(space, data, base / "study", "--sampler", "grid", "--seed", "3", "--trials", "3")
    result = tune(
        QUICKSTART,
        space,
        overrides=(*TINY, "train.epochs=2"),
        data_dir=data,
        out=base / "study",
        sampler="grid",
        seed=3,
        trials=3,
    )
    return base, args, json.loads(json.dumps(result.to_dict()))


def test_trials_are_complete_run_directories_and_the_pruned_one_says_so(grid_study):
    base, _, result = grid_study
    study = base / "study"
    trials = result["trials"]
    assert result["counts"] == {"complete": 2, "pruned": 1} and result["ran"] == [0, 1, 2]
    assert [t["params"]["train.optimizer.learning_rate"] for t in trials] == [0.005, 0.01, 1e-8]
    for trial in trials:
        run = study / trial["run_dir"]
        for name in ("config.yaml", "history.csv", "metrics.json", "model.keras", "last.keras"):
            assert (run / name).is_file(), (run, name)
        assert not (run / "backup").exists()
        config = load_config(run / "config.yaml")
        assert config.train.optimizer.learning_rate == trial["params"]["train.optimizer.learning_rate"]
        assert config.train.epochs == 2 and config.model.entry_widths == [16, 32]
        history = read_history(run / "history.csv")
        metrics = json.loads((run / "metrics.json").read_text())
        # A trial's value is its best epoch's validation accuracy.
        assert trial["value"] == pytest.approx(max(row["val_accuracy"] for row in history))
        assert metrics["status"] == "finished" and metrics["tune"]["trial"] == trial["number"]
        assert metrics["tune"]["state"] == trial["state"] and metrics["tune"]["value"] == trial["value"]
        assert trial["epochs"] == len(history) == metrics["epochs_run"]
    pruned = trials[2]
    assert pruned["state"] == "pruned" and pruned["epochs"] == 1
    tune_record = json.loads((study / pruned["run_dir"] / "metrics.json").read_text())["tune"]
    assert tune_record["pruned_after_epoch"] == 1
    # Pruned because its first epoch is below the median of the two complete trials' first epochs.
    firsts = [read_history(study / t["run_dir"] / "history.csv")[0]["val_accuracy"] for t in trials[:2]]
    assert pruned["value"] < float(np.median(firsts))
    assert all(t["epochs"] == 2 for t in trials[:2])


@pytest.mark.parametrize(
    ("epochs", "options", "first_prunable"),
    [(6, (), 2), (3, ("--min-epochs", "3"), 3)],
    ids=["default-a-third-of-the-epochs", "min-epochs-option"],
)
def test_no_trial_is_pruned_before_its_minimum_epochs(
    tmp_path, data, capsys, monkeypatch, epochs, options, first_prunable
):
    """The grid of `grid_study` with longer trials: 1e-8 learns nothing from its first epoch on, and is
    pruned at the first epoch the pruner may stop it, not before."""
    space = write(
        tmp_path / "space.yaml", "train.optimizer.learning_rate: {categorical: [0.01, 0.005, 1.0e-8]}\n"
    )
    args = tune_args(space, data, tmp_path / "study", "--sampler", "grid", "--seed", "3", epochs=epochs)
    trials = tune_json([*args, "--trials", "3", *options], capsys, monkeypatch)["trials"]
    assert [t["state"] for t in trials] == ["complete", "complete", "pruned"]
    assert [t["epochs"] for t in trials] == [epochs, epochs, first_prunable]
    history = read_history(tmp_path / "study" / trials[2]["run_dir"] / "history.csv")
    firsts = [read_history(tmp_path / "study" / t["run_dir"] / "history.csv")[0] for t in trials[:2]]
    # It was already below both complete trials at its first epoch.
    assert history[0]["val_accuracy"] < min(row["val_accuracy"] for row in firsts)
    # Every worker of the study prunes alike: one that names no --min-epochs takes the study's (with
    # --min-epochs 3 on 3 epochs, not the default 1); another value or pruner is refused in one line.
    assert tune_json([*args, "--trials", "3"], capsys, monkeypatch)["ran"] == []
    for other in (("--min-epochs", str(first_prunable + 1)), ("--pruner", "hyperband")):
        code, out, err = run_cli([*args, "--trials", "3", *other], capsys, monkeypatch)
        assert code == 2 and out == "", err
        assert err.strip() == (
            f"error: study quickstart was made with --pruner median --min-epochs {first_prunable}; "
            "give the same as its other workers, or a new --study name"
        )


def test_best_yaml_is_the_best_trials_config_and_trains_as_is(grid_study, capsys, monkeypatch):
    base, _, result = grid_study
    complete = [t for t in result["trials"] if t["state"] == "complete"]
    best = max(complete, key=lambda t: t["value"])
    assert result["best"] == best
    best_yaml = Path(result["best_config"])
    assert best_yaml == base / "study" / "best.yaml"
    assert load_config(best_yaml) == load_config(base / "study" / best["run_dir"] / "config.yaml")
    code, _, err = run_cli(["train", "--config", best_yaml, "--run-dir", base / "rerun"], capsys, monkeypatch)
    assert code == 0, err
    assert (base / "rerun" / "model.keras").is_file()


def test_the_report_embeds_history_effects_and_importances(grid_study):
    base, _, result = grid_study
    page = Path(result["report"]).read_text()
    assert Path(result["report"]) == base / "study" / "tune-report.html"
    assert page.count('src="data:image/png;base64,') == 3
    for title in ("Optimisation history", "Each parameter&#x27;s effect", "Parameter importances"):
        assert f'alt="{title}"' in page
    assert 'src="http' not in page and "href=" not in page


@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_the_report_loads_in_chromium_with_every_image_decoded(grid_study, tmp_path):
    _, _, result = grid_study
    loaded = load_in_chromium(Path(result["report"]), tmp_path / "profile")
    problems, images, tables = loaded.problems, loaded.images, loaded.tables

    assert problems == []
    assert [alt for alt, _, _ in images] == [
        "Optimisation history",
        "Each parameter's effect",
        "Parameter importances",
    ]
    assert all(complete and width > 0 for _, complete, width in images), images
    best = result["best"]
    assert tables["Summary"]["best value"] == [f"{best['value']:.4f}"]
    assert tables["Summary"]["pruned"] == ["1"] and tables["Summary"]["complete"] == ["2"]
    assert tables["Best parameters"] == {
        "train.optimizer.learning_rate": [str(best["params"]["train.optimizer.learning_rate"])]
    }
    assert [row[0] for row in tables["Trials"].values()] == ["complete", "complete", "pruned"]


def test_ctrl_c_fails_the_trial_and_the_rerun_resumes_its_run(tmp_path, data):
    from fertrain.tuning import tune

    class CtrlCAfterTheFirstEpoch:
        def trials_changed(self, rows):
            if any(row.state == "running" and row.epochs >= 1 for row in rows):
                raise KeyboardInterrupt

    space = write(tmp_path / "space.yaml", RANDOM_SPACE)
    out = tmp_path / "study"
    options = {"overrides": (*TINY, "train.epochs=2"), "data_dir": data, "out": out, "trials": 1, "seed": 2}
    with pytest.raises(KeyboardInterrupt):
        tune(
            QUICKSTART, space, sampler="random", pruner="none", reporter=CtrlCAfterTheFirstEpoch(), **options
        )
    interrupted, queued = study_trials(f"sqlite:///{out / 'study.db'}")
    assert (interrupted.state.name, queued.state.name) == ("FAIL", "WAITING")
    assert queued.params == interrupted.params and queued.user_attrs["run"] == "trial-0000"
    assert not list((out / "workers").iterdir())

    result = tune(QUICKSTART, space, sampler="random", pruner="none", **options)
    assert result.ran == (1,) and [row.state for row in result.trials] == ["failed", "complete"]
    assert result.trials[1].run_dir == "trial-0000" and result.trials[1].retry_of == 0
    assert [row["epoch"] for row in read_history(out / "trial-0000" / "history.csv")] == [1, 2]


def test_rerunning_a_finished_study_runs_nothing_and_another_space_is_refused(
    grid_study, capsys, monkeypatch
):
    base, args, result = grid_study
    again = tune_json(args, capsys, monkeypatch)
    assert again["ran"] == [] and again["trials"] == result["trials"]
    other = write(base / "other.yaml", "train.optimizer.learning_rate: {categorical: [0.01, 0.02]}\n")
    changed = [other if arg == base / "space.yaml" else arg for arg in args]
    code, out, err = run_cli(changed, capsys, monkeypatch)
    assert code == 2 and out == ""
    assert err.strip().startswith("error: study quickstart was made with another search space than")
    assert len(err.strip().splitlines()) == 1


def test_seed_repeats_the_suggestions_and_a_continued_study_draws_new_ones(
    tmp_path, data, capsys, monkeypatch
):
    space = write(tmp_path / "space.yaml", RANDOM_SPACE)

    def run(out: str, trials: int) -> list[dict]:
        args = tune_args(
            space, data, tmp_path / out, "--sampler", "random", "--seed", "5", "--pruner", "none", epochs=1
        )
        return tune_json([*args, "--trials", str(trials)], capsys, monkeypatch)["trials"]

    first, second = run("a", 2), run("b", 2)
    assert [t["params"] for t in first] == [t["params"] for t in second]
    assert first[0]["params"] != first[1]["params"]
    for trial in first:
        params = trial["params"]
        assert 0.001 <= params["train.optimizer.learning_rate"] <= 0.02
        assert params["model.dropout"] in (0.0, 0.1, 0.2, 0.3)
        config = load_config(tmp_path / "a" / trial["run_dir"] / "config.yaml")
        assert config.model.entry_widths == params["model.entry_widths"]
        assert config.model.dropout == params["model.dropout"]
    continued = run("a", 3)
    assert continued[:2] == first and continued[2]["state"] == "complete"
    assert continued[2]["params"]["train.optimizer.learning_rate"] not in {
        t["params"]["train.optimizer.learning_rate"] for t in first
    }


def test_stepped_floats_reach_the_config_as_the_steps_decimals():
    from fertrain.tuning.space import Param, config_with

    smoothing = Param("train.label_smoothing", "float", 0.0, 0.2, step=0.05)
    assert 0.0 + 3 * 0.05 == 0.15000000000000002  # what Optuna records for the fourth step
    assert smoothing.value(0.0 + 3 * 0.05) == 0.15
    assert Param("x", "float", 0.001, 0.01, log=True).value(0.0035384535909) == 0.0035384535909
    config = config_with(QUICKSTART, (), {"train.label_smoothing": smoothing.value(3 * 0.05)})
    assert "label_smoothing: 0.15\n" in yaml.safe_dump(config.model_dump(mode="json"))


def test_a_sigkilled_worker_leaves_a_study_that_the_rerun_continues(tmp_path, data, capsys, monkeypatch):
    space = write(tmp_path / "space.yaml", RANDOM_SPACE)
    out = tmp_path / "study"
    args = tune_args(
        space, data, out, "--sampler", "random", "--seed", "1", "--trials", "2", "--pruner", "none", epochs=3
    )
    victim = fertrain_process(*args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    backup = out / "trial-0001" / "backup" / "state.json"
    deadline = time.monotonic() + 300
    while not (backup.is_file() and json.loads(backup.read_text())["epoch"] >= 1):
        assert victim.poll() is None and time.monotonic() < deadline, (
            "the worker ended before trial 1's epoch 1"
        )
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    storage = f"sqlite:///{out / 'study.db'}"
    assert [t.state.name for t in study_trials(storage)] == ["COMPLETE", "RUNNING"]
    first_metrics = (out / "trial-0000" / "metrics.json").read_text()

    result = tune_json(args, capsys, monkeypatch)
    assert result["failed_dead_workers"] == [1] and result["ran"] == [2]
    states = [(t["number"], t["state"], t["run_dir"], t["retry_of"]) for t in result["trials"]]
    assert states == [(0, "complete", "trial-0000", None), (1, "failed", "trial-0001", None),
                      (2, "complete", "trial-0001", 1)]  # fmt: skip
    assert result["trials"][2]["params"] == result["trials"][1]["params"]
    # The retry continued the killed run: every epoch once, none lost, none repeated.
    history = read_history(out / "trial-0001" / "history.csv")
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert result["trials"][2]["value"] == pytest.approx(max(row["val_accuracy"] for row in history))
    assert result["trials"][2]["epochs"] == 3
    assert (out / "trial-0000" / "metrics.json").read_text() == first_metrics  # not trained again
    assert result["counts"] == {"complete": 2, "failed": 1}
    assert not list((out / "workers").iterdir())


@pytest.mark.skipif(POSTGRES_URL is None, reason=NO_POSTGRES)
def test_two_workers_share_one_postgresql_study(tmp_path, data, capsys, monkeypatch):
    space = write(tmp_path / "space.yaml", RANDOM_SPACE)
    name = f"shared-{uuid.uuid4().hex[:8]}"

    def worker_args(folder: str) -> list:
        options = ("--sampler", "random", "--pruner", "none", "--storage", POSTGRES_URL, "--study", name)
        return tune_args(space, data, tmp_path / folder, *options, "--trials", "4", epochs=1)

    workers = [
        fertrain_process(*worker_args(folder), "--json", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for folder in ("a", "b")
    ]
    outputs = [worker.communicate(timeout=600) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], [err[-2000:] for _, err in outputs]
    ran = [json.loads(out)["ran"] for out, _ in outputs]
    trials = study_trials(POSTGRES_URL, name)
    numbers = [trial.number for trial in trials]
    assert sorted(numbers) == list(range(len(trials)))
    assert sorted(ran[0] + ran[1]) == numbers and ran[0] and ran[1]
    assert all(trial.state.name == "COMPLETE" for trial in trials) and len(trials) >= 4
    for trial, folder in ((t, "a" if t.number in ran[0] else "b") for t in trials):
        assert (tmp_path / folder / trial.user_attrs["run"] / "model.keras").is_file()

    final = tune_json(worker_args("a"), capsys, monkeypatch)
    assert final["ran"] == []
    best = max(trials, key=lambda t: t.value)
    folder = "a" if best.number in ran[0] else "b"
    assert final["best"]["number"] == best.number and math.isclose(final["best"]["value"], best.value)
    run_config = tmp_path / folder / best.user_attrs["run"] / "config.yaml"
    assert load_config(tmp_path / "a" / "best.yaml") == load_config(run_config)


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ("model.dropot: {float: [0.0, 0.5]}\n", "model.dropot: unknown config path (model has"),
        ("train.seed.x: {int: [1, 3]}\n", "train.seed.x: unknown config path: train.seed has no fields"),
        (
            "model.dropout: {float: [0.5, 0.1]}\n",
            "model.dropout: float range [0.5, 0.1] is empty or inverted",
        ),
        ("train.epochs: {int: [3, 3]}\n", "train.epochs: int range [3, 3] is empty or inverted"),
        ("model.dropout: {uniform: [0.0, 0.5]}\n", "model.dropout: expected one distribution"),
        (
            "model.dropout: {float: [0.0, 1.0]}\n",
            "model.dropout: 1.0 is refused by the config (model.dropout: must be < 1.0, got 1.0)",
        ),  # fmt: skip
        ("train.epochs: {int: [0, 2]}\n", "train.epochs: 0 is refused by the config"),
        ("train.optimizer.learning_rate: {float: [0, 0.1], log: true}\n", "a log range needs low > 0"),
        ("model.entry_widths: {categorical: []}\n", "categorical needs a non-empty list of values"),
        ("model.dropout: {float: [0.0, 0.5], steps: 0.1}\n", "float takes log, step, got steps"),
        ("- model.dropout\n", "expected a mapping of config paths to distributions"),
        ("model.dropout: {float: [0.0, 0.5]\n", "not valid YAML"),
    ],
)
def test_bad_space_files_are_one_line_errors(tmp_path, space, message, capsys, monkeypatch):
    path = write(tmp_path / "space.yaml", space)
    code, out, err = run_cli(tune_args(path, tmp_path, tmp_path / "study"), capsys, monkeypatch)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: {path}: ") and message in err, err
    assert not (tmp_path / "study").exists()


def test_bad_options_databases_and_folders(tmp_path, data, capsys, monkeypatch):
    space = write(tmp_path / "space.yaml", RANDOM_SPACE)
    refused = "postgresql://fertrain:secret@127.0.0.1:9/nowhere"
    cases = [
        (["--storage", refused], 2, "--storage postgresql://fertrain:***@127.0.0.1:9/nowhere: cannot open"),
        (["--storage", "nosuchdb://x"], 2, "--storage nosuchdb://x: cannot open the database"),
        (["--sampler", "grid"], 2, "learning_rate: the grid sampler needs a step for a float range"),
    ]  # fmt: skip
    for options, expected, message in cases:
        code, out, err = run_cli([*tune_args(space, data, tmp_path / "study"), *options], capsys, monkeypatch)
        assert (code, len(err.strip().splitlines())) == (expected, 1), err
        assert message in err and "secret" not in err
    (tmp_path / "file").write_text("")
    code, _, err = run_cli(tune_args(space, data, tmp_path / "file" / "study"), capsys, monkeypatch)
    assert code == 5 and "a part of the path is a file" in err and len(err.strip().splitlines()) == 1
