"""Small trained run directories for the evaluate/report/predict/export tests.

Several test modules share one run directory: `tiny_run` builds it once per session under pytest's
base temp dir and reuses it afterwards, so each module's fixture can call it cheaply.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from fertrain.config import Config, dump_config
from fertrain.data.dataset import load_split


def tiny_config(data_dir: Path, seed: int = 0) -> Config:
    return Config.model_validate(
        {
            "name": f"tiny{seed}",
            "model": {"width_multiplier": 0.5, "entry_widths": [16, 32], "l2": 0.0},
            "data": {"dir": str(data_dir), "batch_size": 32},
            "train": {"epochs": 2, "seed": seed},
        }
    )


def train_tiny_run(run_dir: Path, data_dir: Path, seed: int = 0) -> Path:
    """A run directory with the layout `fertrain train` writes, from 2 short epochs on `data_dir`."""
    import keras

    from fertrain.models import build_model

    config = tiny_config(data_dir, seed)
    keras.utils.set_random_seed(seed)
    model = build_model(config.model)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    train_x, train_y = load_split(data_dir, "train")
    val_x, val_y = load_split(data_dir, "val")
    fit = model.fit(
        train_x,
        train_y,
        validation_data=(val_x, val_y),
        epochs=config.train.epochs,
        batch_size=config.data.batch_size,
        verbose=0,
    )
    run_dir.mkdir(parents=True)
    model.save(run_dir / "model.keras")
    model.save(run_dir / "last.keras")
    history = pd.DataFrame(fit.history)
    history.insert(0, "epoch", np.arange(1, len(history) + 1))
    history["learning_rate"] = 1e-3
    history.to_csv(run_dir / "history.csv", index=False)
    best = int(history["val_accuracy"].idxmax())
    metrics = {
        "best_epoch": best + 1,
        "best_val_accuracy": float(history["val_accuracy"][best]),
        "best_val_loss": float(history["val_loss"][best]),
        "epochs_run": len(history),
        "wall_time_s": 3.25,
        "train_images_per_s": 1234.5,
        "backend": keras.backend.backend(),
        "devices": ["CPU:0"],
        "versions": {"python": sys.version.split()[0], "keras": keras.__version__},
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / "config.yaml").write_text(dump_config(config))
    return run_dir


def tiny_run(base_temp: Path, data_dir: Path, seed: int = 0) -> Path:
    run_dir = base_temp / f"tiny-run-{seed}"
    if not (run_dir / "config.yaml").is_file():
        train_tiny_run(run_dir, data_dir, seed)
    return run_dir
