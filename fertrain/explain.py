"""Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks", 2017): where in a
face the evidence for a class lies.

For a network, the last convolutional feature map A (found by walking back from the output to the
first map with a spatial extent, the one the head pools) and the class's score y (the logit before the
softmax, else the log-probability): each channel k is weighted by the mean over positions of dy/dA_k,
and the map is ReLU(sum_k w_k A_k), upsampled to the network's input (inside the centre crop of a
network trained on crops), normalised to a maximum of 1. One forward and one backward pass per batch.
An ensemble (a model averaging networks, the bundled one among them) gets each network's map, averaged
with weights equal to each network's probability of the class, as the ensemble averages those
probabilities. Gradients come from TensorFlow's GradientTape, so Grad-CAM needs the TensorFlow backend.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fertrain.errors import ConfigError, DataError, ModelError
from fertrain.inference import FACE_SIZE, LoadedModel, model_inputs
from fertrain.models.class_names import PROBABILITY_FLOOR

OVERLAY_OPACITY = 0.6  # of the heat colour where the map is 1; where it is 0 the face shows as it is
BATCH_SIZE = 128


def class_index(name: str, classes: Sequence[str]) -> int:
    """The column of class `name`; an unknown name is bad input."""
    if name not in classes:
        raise DataError(f"{name!r} is not a class of the model: expected one of {', '.join(classes)}")
    return list(classes).index(name)


def _producer(tensor) -> tuple[Any, list]:
    """The layer that made a symbolic tensor, and the tensors it was called on."""
    history = tensor._keras_history
    node = history.operation._inbound_nodes[history.node_index]
    return history.operation, list(node.input_tensors)


def _is_convolution(layer) -> bool:
    import keras

    if isinstance(layer, keras.Model):
        return any(map(_is_convolution, layer.layers))
    return isinstance(
        layer,
        keras.layers.Conv2D
        | keras.layers.SeparableConv2D
        | keras.layers.DepthwiseConv2D
        | keras.layers.Conv2DTranspose,
    )


def _has_spatial_extent(tensor) -> bool:
    return len(tensor.shape) == 4 and (tensor.shape[1] or 0) * (tensor.shape[2] or 0) > 1


def _feature_map(network, where: str):
    """The last 4-D map with a spatial extent before the output, and the layer that made it; it must
    come from a convolution (a model that flattens its pixels into dense layers has no map to explain).
    `where` names the network in the error."""
    import keras

    tensor = network.outputs[0]
    layer, inputs = _producer(tensor)
    while not _has_spatial_extent(tensor):
        if not inputs:
            break
        tensor = inputs[0]
        layer, inputs = _producer(tensor)
    pending, seen = [(layer, inputs)], set()
    while pending:  # a convolution at or upstream of the map
        current, parents = pending.pop()
        if id(current) in seen or isinstance(current, keras.layers.InputLayer):
            continue
        if _is_convolution(current):
            return tensor, layer
        seen.add(id(current))
        pending.extend(_producer(parent) for parent in parents)
    raise ModelError(
        f"{where}: no convolutional feature map to explain (Grad-CAM needs a convolution whose map the "
        "classifier head pools)"
    )


def _class_scores(network) -> tuple[Any, bool]:
    """(scores, are_logits): the input of the final softmax when there is one, else the output
    probabilities (whose log the explanation then uses). `ClassNames` layers are stepped over."""
    import keras

    from fertrain.models.class_names import ClassNames

    tensor = network.outputs[0]
    layer, inputs = _producer(tensor)
    while isinstance(layer, ClassNames):
        tensor = inputs[0]
        layer, inputs = _producer(tensor)
    softmax = isinstance(layer, keras.layers.Softmax) or (
        isinstance(layer, keras.layers.Activation) and getattr(layer.activation, "__name__", "") == "softmax"
    )
    return (inputs[0], True) if softmax else (tensor, False)


def _networks(model) -> list:
    """The networks whose maps make the model's: nested models producing the same [N, classes] output
    as the model (ensemble members, recursively), else the model itself."""
    import keras

    shape = tuple(model.outputs[0].shape[1:])
    members = [
        layer
        for layer in model.layers
        if isinstance(layer, keras.Model)
        and len(layer.outputs) == 1
        and tuple(layer.outputs[0].shape[1:]) == shape
    ]
    return [network for member in members for network in _networks(member)] if members else [model]


def _crop_margin(network, input_size: int) -> int:
    from fertrain.models.xception import CROP_LAYER

    crop = next((layer for layer in network.layers if layer.name == CROP_LAYER), None)
    return 0 if crop is None else (input_size - int(crop.height)) // 2


@dataclass(frozen=True)
class _Probe:
    """One network: `maps` takes (pixels, class indices) to (raw Grad-CAM maps at the feature map's
    resolution, each face's probability of its class)."""

    name: str  # the feature map's layer, prefixed with the network's name inside an ensemble
    maps: Any
    crop_margin: int


def _compiled_maps(body, head, logits: bool):
    """Grad-CAM of a network cut at its feature map (`body`: pixels to the map, `head`: the map to
    class scores and probabilities) as one TensorFlow graph; the backward pass runs through the head
    only. Compiled, it costs about two forward passes (eager: five, from per-op overhead)."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def maps(pixels, targets):
        features = body(pixels, training=False)
        with tf.GradientTape() as tape:
            tape.watch(features)
            scores, probabilities = head(features, training=False)
            scores = tf.cast(scores, tf.float32)
            if not logits:
                scores = tf.math.log(tf.maximum(scores, PROBABILITY_FLOOR))
            chosen = tf.gather(scores, targets, axis=1, batch_dims=1)
        # Faces are independent at inference, so the gradient of the sum is each face's own gradient.
        gradients = tf.cast(tape.gradient(chosen, features), tf.float32)
        weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
        heat = tf.nn.relu(tf.reduce_sum(weights * tf.cast(features, tf.float32), axis=-1))
        return heat, tf.gather(tf.cast(probabilities, tf.float32), targets, axis=1, batch_dims=1)

    return maps


def _resize(maps: np.ndarray, size: int) -> np.ndarray:
    import keras

    if maps.shape[1:3] == (size, size):
        return maps
    resized = keras.ops.image.resize(maps[..., None], (size, size), interpolation="bilinear")
    return np.maximum(keras.ops.convert_to_numpy(resized)[..., 0], 0.0)


def _normalised(maps: np.ndarray) -> np.ndarray:
    peaks = maps.reshape(len(maps), -1).max(axis=1)
    return maps / np.where(peaks > 0, peaks, 1.0)[:, None, None]


class GradCam:
    """Grad-CAM for a loaded Keras classifier: `face_maps` gives one [48, 48] map in [0, 1] per face."""

    def __init__(self, model: LoadedModel):
        import keras

        if keras.backend.backend() != "tensorflow":
            raise ConfigError(
                f"Grad-CAM takes its gradients from TensorFlow: run with KERAS_BACKEND=tensorflow "
                f"(now {keras.backend.backend()})"
            )
        if model.keras_model is None:
            raise ModelError(f"{model.path}: a SavedModel keeps no layers to explain; use the .keras model")
        self.classes = model.classes
        self.input_size = model.input_size
        networks = _networks(model.keras_model)
        self._probes = []
        for network in networks:
            where = str(model.path) if len(networks) == 1 else f"{model.path} ({network.name})"
            features, layer = _feature_map(network, where)
            scores, logits = _class_scores(network)
            name = layer.name if len(networks) == 1 else f"{network.name}/{layer.name}"
            body = keras.Model(network.inputs[0], features)
            try:
                head = keras.Model(features, [scores, network.outputs[0]])
            except ValueError:  # Keras refuses a head that also reads tensors from before the map
                raise ModelError(
                    f"{where}: its output depends on more than the feature map {layer.name}, so Grad-CAM "
                    "cannot weigh that map alone"
                ) from None
            margin = _crop_margin(network, self.input_size)
            self._probes.append(_Probe(name, _compiled_maps(body, head, logits), margin))

    @property
    def layers(self) -> tuple[str, ...]:
        """The feature maps explained, one per network."""
        return tuple(probe.name for probe in self._probes)

    def _network_maps(self, probe: _Probe, inputs, targets) -> tuple[np.ndarray, np.ndarray]:
        """(maps [N, S, S] at the network's input, each normalised; each face's probability of its class)."""
        heat, probabilities = probe.maps(inputs, targets)
        margin = probe.crop_margin
        maps = _resize(heat.numpy(), self.input_size - 2 * margin)
        maps = np.pad(maps, ((0, 0), (margin, margin), (margin, margin)))
        return _normalised(maps), probabilities.numpy()

    def face_maps(
        self, faces: np.ndarray, targets: Sequence[int] | np.ndarray, normalize: str = "raw"
    ) -> np.ndarray:
        """Maps [N, 48, 48] in [0, 1] of uint8 faces [N, 48, 48], each for its class index in `targets`."""
        targets = np.asarray(targets, dtype=np.int32)
        out = np.zeros((len(faces), FACE_SIZE, FACE_SIZE), dtype=np.float32)
        for start in range(0, len(faces), BATCH_SIZE):
            rows = slice(start, start + BATCH_SIZE)
            inputs = model_inputs(faces[rows], self.input_size, normalize)
            total, weight = 0.0, 0.0
            for probe in self._probes:
                maps, probabilities = self._network_maps(probe, inputs, targets[rows])
                total = total + maps * probabilities[:, None, None]
                weight = weight + probabilities[:, None, None]
            out[rows] = _normalised(_resize(total / np.maximum(weight, PROBABILITY_FLOOR), FACE_SIZE))
        return out


def heat_overlay(rgb: np.ndarray, heat: np.ndarray, box: Sequence[int] | None = None) -> np.ndarray:
    """A copy of RGB uint8 `rgb` with map `heat` (values in [0, 1]) resized into `box` (x, y, width,
    height; None: the whole image) as jet colours, each pixel's opacity OVERLAY_OPACITY * its value, so
    that where the map is 0 the image is unchanged."""
    import cv2

    canvas = np.array(rgb, dtype=np.uint8, copy=True)
    x, y, width, height = box if box is not None else (0, 0, canvas.shape[1], canvas.shape[0])
    resized = np.clip(
        cv2.resize(heat.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR), 0, 1
    )
    colours = cv2.applyColorMap(np.round(resized * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    opacity = OVERLAY_OPACITY * resized[..., None]
    region = canvas[y : y + height, x : x + width].astype(np.float32)
    canvas[y : y + height, x : x + width] = np.round(region * (1 - opacity) + colours * opacity).astype(
        np.uint8
    )
    return canvas


@dataclass(frozen=True)
class ClassMaps:
    """For one class: the mean face and mean map over the faces predicted correctly as it, and its most
    confident mistakes (faces of other classes predicted as it), each with its own map."""

    name: str
    correct: int
    mean_face: np.ndarray | None  # None when no face was predicted correctly as this class
    mean_map: np.ndarray | None
    mistakes: list[tuple[np.ndarray, np.ndarray, str, float]]  # face, map, true class, probability


def class_maps(
    explainer: GradCam,
    faces: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    mistakes: int = 4,
    normalize: str = "raw",
) -> Iterator[ClassMaps]:
    """Per class (in the model's order), what `report` shows: Grad-CAM of the predicted class over the
    correct faces, averaged, and over the `mistakes` most confident wrong predictions of it."""
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    for index, name in enumerate(explainer.classes):
        right = np.flatnonzero((predicted == index) & (labels == index))
        wrong = np.flatnonzero((predicted == index) & (labels != index))
        wrong = wrong[np.argsort(-confidence[wrong], kind="stable")][:mistakes]
        chosen = np.concatenate([right, wrong])
        maps = explainer.face_maps(faces[chosen], np.full(len(chosen), index), normalize)
        right_maps, wrong_maps = maps[: len(right)], maps[len(right) :]
        yield ClassMaps(
            name,
            len(right),
            faces[right].mean(axis=0) if len(right) else None,
            _normalised(right_maps.mean(axis=0, keepdims=True))[0] if len(right) else None,
            [
                (faces[i], heat, explainer.classes[labels[i]], float(confidence[i]))
                for i, heat in zip(wrong, wrong_maps, strict=True)
            ],
        )
