"""The runtimes exported models are served with, and what keeps an ONNX graph portable to them.

`fertrain export` checks its file in every runtime installed here: ONNX in onnxruntime and in OpenCV's
DNN module (`cv2.dnn.readNetFromONNX`, which fertrain's OpenCV dependency always brings), TFLite in
TensorFlow's interpreter and, when installed, in `ai_edge_litert`'s. A runtime that cannot read a
quantized (int8) graph is reported as such rather than failing the check: OpenCV 4.14's importer
has no DequantizeLinear for the QDQ graphs onnxruntime's quantizer writes.

tf2onnx ends a network that pools globally with `GlobalAveragePool -> Squeeze(axes 2, 3)`.
OpenCV's DNN module keeps a third axis after that Squeeze, so the Softmax after it normalizes over a
single value and every row of its output sums to the number of classes (13.7 % accuracy instead of
65.1 % for a FER2013 model). `portable_onnx` writes the same step as `Flatten(axis=1)`, which every
runtime reads as [N, C].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Predictor = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Runtime:
    """A runtime that can serve an export: its name and a predictor for the exported bytes, or why
    it cannot read them (`error`)."""

    name: str
    predict: Predictor | None
    error: str | None = None


def _squeezed_axes(graph, node) -> list[int] | None:
    """The axes a Squeeze node removes, from its attribute (opset < 13) or its constant input."""
    from onnx import numpy_helper

    for attribute in node.attribute:
        if attribute.name == "axes":
            return list(attribute.ints)
    if len(node.input) < 2:
        return None
    for initializer in graph.initializer:
        if initializer.name == node.input[1]:
            return numpy_helper.to_array(initializer).tolist()
    return None


def portable_onnx(model):
    """`model` (an onnx ModelProto, changed in place) with every `GlobalAveragePool -> Squeeze(2, 3)`
    written as `GlobalAveragePool -> Flatten(1)`, the same [N, C] in every runtime; initializers no
    node reads any more are dropped."""
    from onnx import helper

    graph = model.graph
    pooled = {output for node in graph.node if node.op_type == "GlobalAveragePool" for output in node.output}
    for index, node in enumerate(list(graph.node)):
        if node.op_type != "Squeeze" or node.input[0] not in pooled:
            continue
        if sorted(_squeezed_axes(graph, node) or []) != [2, 3]:
            continue
        flatten = helper.make_node("Flatten", [node.input[0]], list(node.output), name=node.name, axis=1)
        graph.node.remove(node)
        graph.node.insert(index, flatten)
    used = {name for node in graph.node for name in node.input}
    for initializer in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(initializer)
    return model


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}".rstrip(": ")


def onnx_runtimes(content: bytes) -> list[Runtime]:
    """onnxruntime (required by the `onnx` extra) and OpenCV's DNN module, on the ONNX bytes."""
    import onnxruntime

    session = onnxruntime.InferenceSession(content, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    runtimes = [Runtime("onnxruntime", lambda batch: session.run(None, {input_name: batch})[0])]
    try:
        import cv2
    except ImportError:
        return runtimes
    try:
        net = cv2.dnn.readNetFromONNX(np.frombuffer(content, np.uint8))
    except cv2.error as exc:
        return [*runtimes, Runtime("opencv-dnn", None, f"cannot read the model ({_first_line(exc)})")]

    def opencv(batch: np.ndarray) -> np.ndarray:
        net.setInput(np.ascontiguousarray(batch, np.float32))
        # Flattened per image: a graph OpenCV reads with an extra axis still shows its numbers.
        return net.forward().reshape(len(batch), -1)

    return [*runtimes, Runtime("opencv-dnn", opencv)]


def _interpreter_predictor(interpreter) -> Predictor:
    def predict(batch: np.ndarray) -> np.ndarray:
        source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        interpreter.resize_tensor_input(source["index"], batch.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(source["index"], batch.astype(source["dtype"]))
        interpreter.invoke()
        return interpreter.get_tensor(target["index"]).copy()

    return predict


def tflite_runtimes(content: bytes) -> list[Runtime]:
    """TensorFlow's TFLite interpreter, and LiteRT's (`ai_edge_litert`) when installed."""
    import warnings

    import tensorflow as tf

    with warnings.catch_warnings():
        # tf.lite.Interpreter is deprecated in favour of ai-edge-litert, which is not a dependency.
        warnings.simplefilter("ignore")
        runtimes = [Runtime("tflite", _interpreter_predictor(tf.lite.Interpreter(model_content=content)))]
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        return runtimes
    return [*runtimes, Runtime("litert", _interpreter_predictor(Interpreter(model_content=content)))]
