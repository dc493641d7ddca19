"""Xception-family models built from `ModelConfig`, and their parameter/MAC summary.

Importing this package registers fertrain's layers (`FusedBatchNormalization`, `SeparableConv2D`,
`ClassNames`), so
`keras.saving.load_model(path, safe_mode=True)` loads any saved fertrain model afterwards.
"""

from fertrain.models.class_names import ClassNames, saved_class_names
from fertrain.models.layers import FusedBatchNormalization
from fertrain.models.summary import ModelSummary, summarize
from fertrain.models.xception import build_model

__all__ = [
    "ClassNames",
    "FusedBatchNormalization",
    "ModelSummary",
    "build_model",
    "saved_class_names",
    "summarize",
]
