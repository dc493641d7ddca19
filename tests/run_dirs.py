"""Small trained models and run directories for the evaluate/report/predict/export tests.

Several test modules share them: each builder trains once per session under pytest's base temp
dir and reuses the result afterwards, so every module's fixture can call it cheaply.
"""

from __future__ import annotations

from pathlib import Path

from fertrain.config import Config
from fertrain.data.dataset import load_split


def tiny_config(data_dir: Path, seed: int = 0, epochs: int = 2) -> Config:
    return Config.model_validate(
        {
            "name": f"tiny{seed}",
            "model": {"width_multiplier": 0.5, "entry_widths": [16, 32], "l2": 0.0},
            "data": {"dir": str(data_dir), "batch_size": 32},
            "train": {"epochs": epochs, "seed": seed, "early_stopping_patience": 0},
        }
    )


def tiny_run(base_temp: Path, data_dir: Path) -> Path:
    """A run directory written by the real `fertrain.training.train` (2 epochs on `data_dir`)."""
    from fertrain.training import train

    run_dir = base_temp / "tiny-run"
    if not (run_dir / "metrics.json").is_file():
        train(tiny_config(data_dir), run_dir=run_dir)
    return run_dir


def tiny_model_file(base_temp: Path, data_dir: Path, seed: int) -> Path:
    """A `.keras` file of a tiny fertrain model fitted for one epoch with another seed."""
    import keras

    from fertrain.models import build_model

    path = base_temp / f"tiny-model-{seed}.keras"
    if not path.is_file():
        keras.utils.set_random_seed(seed)
        model = build_model(tiny_config(data_dir, seed).model)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        images, labels = load_split(data_dir, "train")
        model.fit(images, labels, epochs=1, batch_size=32, verbose=0)
        model.save(path)
    return path
