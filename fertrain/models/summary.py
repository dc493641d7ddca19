"""Parameter, size and multiply-accumulate counts of a built model, and its graph drawing.

MACs are counted per image from each layer's input and output shapes:

- Conv (1D/2D/3D): output positions x filters x (kernel area x input channels / groups)
- DepthwiseConv2D: output positions x input channels x depth multiplier x kernel area
- SeparableConv2D: its depthwise part, plus output positions x depthwise channels x filters
- Dense: positions (all axes but batch and last) x input features x units

Everything else (bias adds, BatchNormalization, activations, pooling, Add, Rescaling) is
elementwise or a reduction and is not counted, as is usual for MAC figures.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np

from fertrain.config import Config
from fertrain.errors import MissingDependencyError, ModelError
from fertrain.models.xception import build_model

PLOT_FORMATS = (".png", ".svg", ".pdf", ".jpg", ".jpeg", ".dot")
_CONVS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
_SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)


@dataclass(frozen=True)
class LayerSummary:
    name: str
    kind: str
    output_shape: list[int | None]
    params: int
    macs: int


@dataclass(frozen=True)
class ModelSummary:
    name: str
    layers: list[LayerSummary]
    total_params: int
    trainable_params: int
    non_trainable_params: int
    size_mb: float
    macs: int

    def to_dict(self) -> dict:
        return asdict(self)


def _positions(shape: tuple[int | None, ...]) -> int:
    """Number of output positions per image: every axis except batch and channels."""
    return math.prod(shape[1:-1])


def layer_macs(layer: keras.layers.Layer) -> int:
    """Multiply-accumulates per image of one layer (0 for layers that are not counted)."""
    if isinstance(layer, keras.Model):
        return sum(layer_macs(inner) for inner in layer.layers)
    if isinstance(layer, keras.layers.Dense):
        return _positions(layer.output.shape) * layer.input.shape[-1] * layer.units
    if not isinstance(layer, _DEPTHWISE + _SEPARABLE + _CONVS):
        return 0
    in_channels = layer.input.shape[-1]
    positions = _positions(layer.output.shape)
    kernel_area = math.prod(layer.kernel_size)
    if isinstance(layer, _DEPTHWISE):
        return positions * in_channels * layer.depth_multiplier * kernel_area
    if isinstance(layer, _SEPARABLE):
        depthwise_channels = in_channels * layer.depth_multiplier
        return positions * depthwise_channels * (kernel_area + layer.filters)
    return positions * layer.filters * kernel_area * in_channels // layer.groups


def _count(weights: list) -> int:
    return sum(math.prod(w.shape) for w in weights)


def summarize(model: keras.Model) -> ModelSummary:
    """Per-layer and total parameters and MACs of a built functional or Sequential model."""
    if not model.built:
        raise ModelError(f"model {model.name} is not built; give it an input shape first")
    layers = [
        LayerSummary(
            name=layer.name,
            kind=type(layer).__name__,
            output_shape=list(layer.output.shape),
            params=layer.count_params(),
            macs=layer_macs(layer),
        )
        for layer in model.layers
    ]
    size_bytes = sum(math.prod(w.shape) * np.dtype(w.dtype).itemsize for w in model.weights)
    return ModelSummary(
        name=model.name,
        layers=layers,
        total_params=_count(model.weights),
        trainable_params=_count(model.trainable_weights),
        non_trainable_params=_count(model.non_trainable_weights),
        size_mb=size_bytes / 1e6,
        macs=sum(layer.macs for layer in layers),
    )


def plot(model: keras.Model, path: str | Path) -> Path:
    """Draws the layer graph with shapes (like the notebook's `plot_model`); format from the suffix."""
    path = Path(path)
    if path.suffix.lower() not in PLOT_FORMATS:
        raise ModelError(f"{path}: the graph file name must end in {', '.join(PLOT_FORMATS)}")
    if not path.parent.is_dir():
        raise ModelError(f"{path}: folder {path.parent} does not exist")
    if shutil.which("dot") is None:
        raise MissingDependencyError(
            "--plot needs Graphviz's `dot` program: install graphviz "
            "(apt-get install graphviz, brew install graphviz or conda install graphviz)"
        )
    # Drawn next to the target, then renamed, so an existing file is never left half-written.
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        keras.utils.plot_model(model, to_file=str(partial), show_shapes=True, show_layer_names=True, dpi=96)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def summarize_config(config: Config, plot_path: str | Path | None = None) -> ModelSummary:
    """Builds `config.model`, summarizes it and, when `plot_path` is given, draws its graph."""
    model = build_model(config.model)
    if plot_path is not None:
        plot(model, plot_path)
    return summarize(model)
