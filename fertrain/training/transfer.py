"""Starting from a trained model (`train.init_from`) and training only the new head first
(`train.freeze_epochs`).

Weights are copied layer by layer: a layer of the new network takes the source's weights when the
source has a layer of the same name whose weights all have the same shapes. fertrain names every
layer after its place in the network (`stem1_conv`, `entry2_1_sepconv`, `head_conv`, ...), so a
network built from the source's config takes every weight, and a wider or deeper one the layers the
two share. The head (the `head_*` layers, whose shapes follow the number of classes) is copied only
when the data's classes are the source's, in the same order; otherwise it starts anew.

An averaging ensemble (the bundled model: two networks whose probabilities are averaged,
`fertrain.models.ensemble`) is fine-tuned as one of its members: the one sharing the most weights
with the network the config builds (the first on a tie). The members share their layer names, so
one network cannot take both, and a run trains one network. The bundled model's members are
`configs/fer2013_cpu.yaml`'s network (618,215 parameters) and the same without its two middle blocks
(`--set model.middle_repeats=0`, 205,031 parameters).

While frozen, a layer's weights get no update and its BatchNormalization statistics stay as the
source left them: the new head learns on the features the source computes. The switch happens at
the start of an epoch and depends only on the epoch's number, so a resumed run repeats it exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras

from fertrain.errors import ModelError
from fertrain.inference import load_keras_model, resolve_model_path

# xception.classifier names its layers head_dense / head_conv (and head_pool, head_dropout).
HEAD_PREFIX = "head_"


@dataclass(frozen=True)
class TransferReport:
    """What `train.init_from` did, layer by layer (names of the layers that have weights)."""

    source: str
    path: str
    member: str | None  # the ensemble member taken, None for a single network
    source_classes: tuple[str, ...]
    new_head: bool  # the data's classes differ from the source's
    copied: tuple[str, ...]
    new: tuple[str, ...]  # no layer of that name in the source, or the head for other classes
    skipped: tuple[str, ...]  # "layer: shapes here vs in the source"
    copied_parameters: int
    parameters: int
    frozen: tuple[str, ...] = field(default=())  # kept as they are during train.freeze_epochs
    freeze_epochs: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "path": self.path,
            "member": self.member,
            "source_classes": list(self.source_classes),
            "new_head": self.new_head,
            "copied": list(self.copied),
            "new": list(self.new),
            "skipped": list(self.skipped),
            "copied_parameters": self.copied_parameters,
            "parameters": self.parameters,
            "freeze_epochs": self.freeze_epochs,
            "frozen_layers": list(self.frozen),
        }

    def summary(self) -> str:
        """One line for the console."""
        member = f" ({self.member})" if self.member else ""
        why = " (the data's classes differ from the source's)" if self.new_head else ""
        frozen = (
            f"; the first {self.freeze_epochs} epochs train only the other layers ({len(self.frozen)} frozen)"
            if self.freeze_epochs
            else ""
        )
        return (
            f"init_from {self.source}{member}: copied {len(self.copied)} layers "
            f"({self.copied_parameters:,} of {self.parameters:,} parameters); "
            f"new: {', '.join(self.new) or 'none'}{why}; skipped: {', '.join(self.skipped) or 'none'}{frozen}"
        )


def source_networks(target: str) -> tuple[list[keras.Model], Path, tuple[str, ...]]:
    """(networks, file, classes) of `train.init_from`: an ensemble's members, else the model itself."""
    from fertrain.models.class_names import default_class_names, saved_class_names

    try:
        path, _ = resolve_model_path(target)
    except ModelError as exc:
        raise ModelError(f"train.init_from: {exc}") from None
    if path.is_dir():
        raise ModelError(
            f"train.init_from: {path}: a SavedModel; start from a .keras file or a run directory"
        )
    model = load_keras_model(path)
    members = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    outputs = int(model.outputs[0].shape[-1])
    classes = saved_class_names(model) or default_class_names(outputs)
    if classes is None:
        classes = tuple(f"class {index}" for index in range(outputs))
    return members or [model], path, tuple(classes)


def _shapes(layer: keras.layers.Layer) -> list[tuple[int, ...]]:
    return [tuple(weight.shape) for weight in layer.weights]


@dataclass(frozen=True)
class _Match:
    """How `network`'s layers match one source network."""

    pairs: tuple[tuple[keras.layers.Layer, keras.layers.Layer], ...]  # (ours, theirs) to copy
    new: tuple[str, ...]
    skipped: tuple[str, ...]

    @property
    def parameters(self) -> int:
        return sum(math.prod(weight.shape) for ours, _ in self.pairs for weight in ours.weights)


def _match(network: keras.Model, source: keras.Model, new_head: bool) -> _Match:
    by_name = {layer.name: layer for layer in source.layers}
    pairs, new, skipped = [], [], []
    for layer in network.layers:
        if not layer.weights:
            continue
        theirs = by_name.get(layer.name)
        if theirs is None or (new_head and layer.name.startswith(HEAD_PREFIX)):
            new.append(layer.name)
        elif _shapes(theirs) != _shapes(layer):
            skipped.append(f"{layer.name}: {_shapes(layer)} here vs {_shapes(theirs)}")
        else:
            pairs.append((layer, theirs))
    return _Match(tuple(pairs), tuple(new), tuple(skipped))


def copy_weights(network: keras.Model, target: str, classes: tuple[str, ...]) -> TransferReport:
    """Copies into `network` the weights of every layer of `target` (see the module) that matches;
    `classes` are the data's. Of an ensemble's members, the one sharing the most weights is taken
    (the first on a tie). A source with no layer in common is an error."""
    sources, path, source_classes = source_networks(target)
    new_head = source_classes != tuple(classes)
    matches = [_match(network, source, new_head) for source in sources]
    best = max(range(len(matches)), key=lambda index: (matches[index].parameters, -index))
    match = matches[best]
    if not match.pairs:
        raise ModelError(
            f"train.init_from {target}: no layer in common with this network (none of "
            f"{len(match.new) + len(match.skipped)} layers matches by name and weight shapes); start "
            "from a model of the same architecture"
        )
    for ours, theirs in match.pairs:
        ours.set_weights(theirs.get_weights())
    return TransferReport(
        source=target,
        path=str(path),
        member=sources[best].name if len(sources) > 1 else None,
        source_classes=source_classes,
        new_head=new_head,
        copied=tuple(ours.name for ours, _ in match.pairs),
        new=match.new,
        skipped=match.skipped,
        copied_parameters=match.parameters,
        parameters=int(network.count_params()),
    )


def frozen_layers(network: keras.Model, report: TransferReport, unfrozen: list[str]) -> tuple[str, ...]:
    """The copied layers kept as they are during `train.freeze_epochs`: all but the head and the
    layers `train.unfrozen_layers` names by prefix."""
    keep_training = (HEAD_PREFIX, *unfrozen)
    return tuple(name for name in report.copied if not name.startswith(keep_training))


class HeadOnlyEpochs(keras.callbacks.Callback):
    """Freezes `layers` of `network` for epochs 0..epochs-1 and frees them from then on.

    The optimizer leaves their weights alone (`FreezableUpdates`) and their BatchNormalization
    layers normalize with, and keep, their moving statistics. Both are read when the training step
    is traced, so the step is traced again at each switch.
    """

    def __init__(self, network: keras.Model, layers: tuple[str, ...], epochs: int):
        super().__init__()
        self.layers = [network.get_layer(name) for name in layers]
        self.epochs = epochs
        self.frozen = False

    def on_epoch_begin(self, epoch, logs=None):
        frozen = epoch < self.epochs
        if frozen == self.frozen:
            return
        optimizer = getattr(self.model.optimizer, "inner_optimizer", self.model.optimizer)
        weights = [weight for layer in self.layers for weight in layer.trainable_weights]
        optimizer.freeze(weights if frozen else [])
        for layer in self.layers:
            if hasattr(layer, "statistics_frozen"):
                layer.statistics_frozen = frozen
        self.frozen = frozen
        self.model.make_train_function(force=True)
