"""`fertrain benchmark`: what it measures and reports (never how fast: speed targets are not tests)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from cli_main import run_cli

from fertrain.benchmark import FER2013_TRAIN_IMAGES, benchmark, notebook_network, synthetic_faces
from fertrain.config import load_config
from fertrain.errors import ConfigError
from fertrain.models import build_model
from fertrain.models.summary import summarize

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
MINI = CONFIGS / "mini_xception.yaml"
# A quarter-width mini-Xception keeps each timed window to a fraction of a second on a CI box.
SMALL = ["model.width_multiplier=0.25"]


def test_synthetic_faces_are_seeded_uint8_with_every_class():
    images, labels = synthetic_faces(50, 48, 7, seed=3)
    again, again_labels = synthetic_faces(50, 48, 7, seed=3)
    assert images.shape == (50, 48, 48) and images.dtype == np.uint8
    assert np.array_equal(images, again) and np.array_equal(labels, again_labels)
    assert np.bincount(labels, minlength=7).min() >= 7


def test_notebook_network_is_the_same_architecture_in_stock_keras_layers():
    network = build_model(load_config(MINI).model)
    notebook = notebook_network(network)
    assert notebook.count_params() == network.count_params() == 58_423
    assert all(type(layer).__module__.startswith("keras.") for layer in notebook.layers)
    assert not any(isinstance(layer, keras.layers.Rescaling) for layer in notebook.layers)
    assert [layer.name for layer in notebook.layers] == [layer.name for layer in network.layers]


@pytest.mark.slow
def test_benchmark_reports_consistent_figures_beside_the_notebook():
    config = load_config(MINI, SMALL)
    result = benchmark(config, batch_size=16, steps=2, repeats=2, predict_images=64, compare_notebook=True)
    network_summary = summarize(build_model(config.model))
    assert (result.params, result.macs_per_image) == (network_summary.total_params, network_summary.macs)
    assert result.backend == keras.backend.backend()
    assert (result.steps, result.repeats, result.fertrain.batch_size) == (2, 2, 16)
    assert len(result.fertrain.train_windows) == 2 and len(result.notebook.train_windows) == 2
    for way in (result.fertrain, result.notebook):
        assert way.train_images_per_s == max(way.train_windows) > 0
        assert min(way.train_windows) <= way.train_images_per_s_median <= way.train_images_per_s
        assert way.predict_images_per_s > 0
        assert way.train_cpu_ms_per_image > 0
    assert result.notebook.batch_size == 64
    assert math.isclose(result.epoch_seconds, FER2013_TRAIN_IMAGES / result.fertrain.train_images_per_s)
    assert math.isclose(
        result.train_tflops, result.fertrain.train_images_per_s * 6 * result.macs_per_image / 1e12
    )
    assert math.isclose(
        result.train_speedup, result.fertrain.train_images_per_s / result.notebook.train_images_per_s
    )
    assert math.isclose(
        result.predict_speedup, result.fertrain.predict_images_per_s / result.notebook.predict_images_per_s
    )
    assert result.peak_rss_mb > 100  # TensorFlow/Keras alone take more than this
    assert result.gpu_peak_mb is None or result.gpu_peak_mb > 0


@pytest.mark.slow
def test_cli_json_has_every_field(capsys, monkeypatch):
    code, out, _ = run_cli(
        [
            "benchmark",
            "--config",
            MINI,
            *sum((["--set", s] for s in SMALL), []),
            "--batch-size",
            "8",
            "--steps",
            "2",
            "--repeats",
            "1",
            "--predict-images",
            "16",
            "--json",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0
    report = json.loads(out)
    assert report["config_name"] == "mini_xception" and report["notebook"] is None
    assert report["fertrain"]["batch_size"] == 8 and len(report["fertrain"]["train_windows"]) == 1
    assert report["epoch_seconds"] > 0 and report["train_speedup"] is None
    assert set(report["versions"]) >= {"python", "keras", "fertrain"}


@pytest.mark.slow
def test_benchmark_under_jax_fits_an_ema_trainer_again_after_warm_up():
    """Each window fits the same trainer again. With `train.ema` Keras ends every `fit` by assigning
    the averages to the weights, which under JAX left weight and average sharing one buffer: the
    next fit's donating step failed ("'NoneType' object is not callable" from Keras' cleanup)."""
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed")
    settings = [*SMALL, "train.ema=0.999"]
    done = subprocess.run(
        [sys.executable, "-m", "fertrain", "benchmark", "--config", str(MINI)]
        + sum((["--set", s] for s in settings), [])
        + ["--batch-size", "8", "--steps", "2", "--repeats", "2", "--predict-images", "16", "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "2"},
        timeout=600,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["backend"] == "jax" and report["jit_compile"] is True
    assert report["params"] == summarize(build_model(load_config(MINI, settings).model)).total_params
    ours = report["fertrain"]
    assert ours["batch_size"] == 8 and len(ours["train_windows"]) == 2
    assert all(window > 0 for window in ours["train_windows"])
    assert ours["predict_images_per_s"] > 0 and ours["train_cpu_ms_per_image"] > 0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"steps": 0}, "steps must be >= 1"),
        ({"repeats": 0}, "repeats must be >= 1"),
        ({"batch_size": 0}, "batch size must be >= 1"),
    ],
)
def test_bad_settings_raise_one_line_config_errors(arguments, message):
    with pytest.raises(ConfigError, match=message):
        benchmark(load_config(MINI), **arguments)


def test_cli_rejects_zero_steps_with_exit_2(capsys, monkeypatch):
    code, _, err = run_cli(["benchmark", "--config", MINI, "--steps", "0"], capsys, monkeypatch)
    assert code == 2 and "--steps" in err
