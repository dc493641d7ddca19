"""Xception-family models built from `ModelConfig`, and their parameter/MAC summary.

Every layer is a built-in Keras 3 layer, so `keras.saving.load_model(path, safe_mode=True)`
loads any saved fertrain model without custom objects.
"""

from fertrain.models.summary import ModelSummary, summarize
from fertrain.models.xception import build_model

__all__ = ["ModelSummary", "build_model", "summarize"]
