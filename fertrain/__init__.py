"""fertrain: train, evaluate and ship Xception-family facial-emotion classifiers on FER2013.

From Python (the functions the CLI calls; see README.md, "From Python"):

    import fertrain

    model = fertrain.load_model("bundled")        # or "ferplus", a run directory, a model file
    model.classes                                  # the names of its outputs
    model.predict(faces)                           # faces of any size, gray or RGB -> probabilities
    model.detect("photo.jpg")                      # every face found: box and probabilities
    fertrain.prepare(source, out)                  # -> the manifest
    run = fertrain.train("configs/quickstart.yaml", data=out, overrides={"train.epochs": 3})
    fertrain.evaluate(run.run_dir).summary         # the numbers `evaluate --json` prints

Errors are `fertrain.FertrainError`s (`ConfigError`, `DataError`, `ModelError`, ...), never SystemExit.
The functions load on first use, so `import fertrain` (and `fertrain --help`) stays quick.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from fertrain.api import DetectedFace, Model, evaluate, export, load_model, train
    from fertrain.data.prepare import prepare
    from fertrain.errors import (
        BelowThresholdError,
        ConfigError,
        DataError,
        FertrainError,
        FileSystemError,
        MissingDependencyError,
        ModelError,
        TrainingDivergedError,
    )

__all__ = [
    "__version__",
    "load_model",
    "Model",
    "DetectedFace",
    "prepare",
    "train",
    "evaluate",
    "export",
    "FertrainError",
    "ConfigError",
    "DataError",
    "ModelError",
    "MissingDependencyError",
    "TrainingDivergedError",
    "BelowThresholdError",
    "FileSystemError",
]
# Where each public name lives: imported on first use.
_MODULES = {"prepare": "fertrain.data.prepare"} | dict.fromkeys(
    ("load_model", "Model", "DetectedFace", "train", "evaluate", "export"), "fertrain.api"
)


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'fertrain' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_MODULES.get(name, "fertrain.errors")), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
