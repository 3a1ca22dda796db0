"""Stage 4, lint: check an ONNX graph against TensorRT's explicit-quantization rules and name each violating node.

Rules follow NVIDIA's TensorRT documentation on explicit quantization (Q/DQ): int8 with zero-point 0, constant
positive scales, per-tensor activations, per-channel weight scales along output channels, Q always paired with
DQ, and (TensorRT 8.6) `kernel_shape` on convolutions whose weights come through a DQ.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import external_data_helper

from ..errors import BridgeError, first_line, readable_file
from .passes import OUTPUT_CHANNEL_AXIS, QDQ_OPS, REDUCE_OPS, reduce_axes

# Ops TensorRT computes in int8 when fed by DQ, and ops it moves Q/DQ across or fuses into its neighbours.
INT8_COMPUTE_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
INT8_PASSTHROUGH_OPS = {
    "Add", "Mul", "Sub", "Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid",
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Concat", "Reshape", "Flatten",
    "Transpose", "Squeeze", "Unsqueeze", "Slice", "Pad", "Resize", "Identity", "Split", "Gather",
    "ReduceMean", "BatchNormalization", "Shape", *QDQ_OPS,  # Shape reads only metadata
}


@dataclass(frozen=True)
class Violation:
    rule: str
    severity: str  # "error": TensorRT rejects or mis-builds the graph; "warning": legal but slow or lossy
    node: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity.upper():7} {self.rule} node '{self.node}': {self.message}"


def _constant(tensor: gs.Tensor | None) -> np.ndarray | None:
    """Values of an initializer or of a Constant node's output; None for anything computed at run time."""
    if isinstance(tensor, gs.Constant):
        return tensor.values
    if tensor is not None and len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        value = tensor.inputs[0].attrs.get("value")
        return value.values if isinstance(value, gs.Constant) else None
    return None


def _lint_qdq(node: gs.Node, opset: int) -> list[Violation]:
    found = []

    def add(rule, message, severity="error"):
        found.append(Violation(rule, severity, node.name or node.op, message))

    scale = _constant(node.inputs[1])
    has_zp = len(node.inputs) > 2 and node.inputs[2] is not None and node.inputs[2].name
    zp = _constant(node.inputs[2]) if has_zp else np.zeros((), np.uint8)
    if scale is None:
        add("QDQ003", "scale is computed at run time; TensorRT needs a constant scale")
    elif not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
        add("QDQ003", f"scale has non-positive or non-finite values (min {float(np.min(scale)):g})")
    if zp is None:
        add("QDQ001", "zero-point is computed at run time; TensorRT needs a constant 0")
    else:
        if zp.dtype != np.int8:
            add("QDQ002", f"quantizes to {zp.dtype.name}; TensorRT's explicit quantization is int8 "
                          "(run the int8_zero_point and fold_bias_dequantize passes)")
        if np.any(zp != 0):
            add("QDQ001", f"zero-point {zp.ravel()[:4].tolist()} is not 0; TensorRT quantizes symmetrically")
    per_channel = scale is not None and scale.size > 1
    if per_channel and opset < 13:
        add("QDQ009", f"per-channel scales need opset 13 or newer (model is opset {opset})")
    data = _constant(node.inputs[0])
    if per_channel and data is None and node.op == "QuantizeLinear":
        add("QDQ004", f"activation quantized per channel ({scale.size} scales); TensorRT quantizes activations "
                      "per tensor")
    if node.op == "QuantizeLinear":
        consumers = node.outputs[0].outputs
        if not consumers or any(c.op not in ("DequantizeLinear", "Cast") for c in consumers):
            add("QDQ007", "QuantizeLinear output does not go only to DequantizeLinear; TensorRT needs Q/DQ pairs")
        if any(c.op == "Cast" for c in consumers):
            add("QDQ006", "Cast between QuantizeLinear and DequantizeLinear (run remove_cast_between_q_dq)")
    return found


def weight_dequantize(consumer: gs.Node) -> gs.Node | None:
    """The DequantizeLinear writing input 1 (the weights) of a Conv/ConvTranspose/Gemm/MatMul, if one does."""
    if len(consumer.inputs) < 2:
        return None
    weight = consumer.inputs[1]
    return weight.inputs[0] if len(weight.inputs) == 1 and weight.inputs[0].op == "DequantizeLinear" else None


def _lint_weight(consumer: gs.Node, opset_ok: bool) -> list[Violation]:
    """The weight input of Conv/ConvTranspose/Gemm/MatMul: DQ of constant int8, scales along output channels."""
    dq = weight_dequantize(consumer)
    if dq is None:
        return []
    name = consumer.name or consumer.op
    values = _constant(dq.inputs[0])
    found = []
    if values is None:
        q = dq.inputs[0].inputs[0] if dq.inputs[0].inputs else None
        if not (q is not None and q.op == "QuantizeLinear" and _constant(q.inputs[0]) is not None):
            found.append(Violation("QDQ010", "error", name, "weights reach the DequantizeLinear at run time; "
                                   "TensorRT needs constant weights"))
        else:
            found.append(Violation("QDQ010", "warning", name, "weights are float constants quantized by a "
                                   "QuantizeLinear; store int8 initializers (run quantize_weight_constants)"))
        return found
    scale = _constant(dq.inputs[1])
    if consumer.op in ("Conv", "ConvTranspose") and "kernel_shape" not in consumer.attrs:
        found.append(Violation("QDQ008", "error", name, "no kernel_shape attribute on a convolution with DQ'd "
                               "weights; TensorRT 8.6's parser fails on it (run conv_kernel_shape)"))
    if scale is not None and scale.size > 1 and opset_ok:
        want = OUTPUT_CHANNEL_AXIS[consumer.op](values.ndim, consumer.attrs)
        axis = dq.attrs.get("axis", 1)
        axis = axis + values.ndim if axis < 0 else axis
        if axis != want or values.shape[want] != scale.size:
            found.append(Violation("QDQ005", "error", name, f"per-channel weight scales run along axis {axis} "
                                   f"({scale.size} scales, weight shape {list(values.shape)}); TensorRT needs them "
                                   f"along the output channels, axis {want}"))
    return found


def _lint_unquantizable(node: gs.Node) -> list[Violation]:
    if node.op in INT8_COMPUTE_OPS or node.op in INT8_PASSTHROUGH_OPS:
        return []
    if any(t.inputs and t.inputs[0].op == "DequantizeLinear" for t in node.inputs if t is not None):
        return [Violation("QDQ011", "warning", node.name or node.op, f"TensorRT runs {node.op} in floating point; "
                          "the Q/DQ feeding it only adds a dequantize")]
    return []


def _lint_reduce_axes(node: gs.Node) -> list[Violation]:
    """TensorRT's ONNX parser reads a Reduce op's axes from its attribute only, ReduceSum's excepted (its input
    since opset 13): TensorRT 8.6 reduces every axis instead, 10 refuses the model (NVIDIA/TensorRT issue 3467)."""
    if node.op in REDUCE_OPS and node.op != "ReduceSum" and reduce_axes(node)[1]:
        return [Violation("QDQ012", "error", node.name or node.op, f"{node.op} takes its axes as an input (opset 18 "
                          "form), which TensorRT does not read; export at opset 17, or average the spatial axes "
                          "with GlobalAveragePool (the pass spatial_mean_as_global_average_pool does)")]
    return []


def _holds_no_data(tensor: onnx.TensorProto) -> bool:
    """An initializer claiming elements it does not hold (no raw or typed data, not stored externally)."""
    size = int(np.prod(tensor.dims, dtype=np.float64)) if tensor.dims else 1
    typed = (tensor.float_data, tensor.int32_data, tensor.int64_data, tensor.double_data, tensor.uint64_data,
             tensor.string_data)
    return size > 0 and not tensor.raw_data and not any(len(field) for field in typed) and \
        tensor.data_location != onnx.TensorProto.EXTERNAL


def _lint_structure(graph: onnx.GraphProto) -> list[Violation]:
    """QDQ013, a graph that can be read at all: every node input is produced before the node (a graph input, an
    initializer or an earlier node's output), as ONNX requires, so a cycle shows as an input produced only
    later; every initializer holds the data its shape claims; every Q/DQ has its input and scale."""
    defined = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    produced = {out for node in graph.node for out in node.output}
    found = [Violation("QDQ013", "error", tensor.name, f"initializer claims {int(np.prod(tensor.dims)):,} elements "
                       "and holds no data") for tensor in graph.initializer if _holds_no_data(tensor)]
    found += [Violation("QDQ013", "error", node.name or node.op_type, f"has {len(node.input)} input(s); {node.op_type} "
                        "takes x, a scale and a zero-point") for node in graph.node
              if node.op_type in QDQ_OPS and len(node.input) < 2]
    for node in graph.node:
        for name in node.input:
            if name not in defined:
                why = "before it is produced (a cycle, or nodes out of topological order)" if name in produced \
                    else "which no node, graph input or initializer produces"
                found.append(Violation("QDQ013", "error", node.name or node.op_type, f"reads '{name}' {why}"))
        defined.update(node.output)
    return found


def lint_model(model: onnx.ModelProto) -> list[Violation]:
    """Every violation of TensorRT's explicit-quantization rules in the model, errors first."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    malformed = _lint_structure(model.graph)
    if malformed:  # ONNX rejects the graph, and the other rules cannot read it
        return malformed
    graph = gs.import_onnx(model)
    found = []
    if not any(node.op in QDQ_OPS for node in graph.nodes):
        found.append(Violation("QDQ000", "error", graph.name or "graph", "no QuantizeLinear/DequantizeLinear "
                               "nodes: the model is not quantized"))
    for node in graph.nodes:
        if node.op in QDQ_OPS:
            found += _lint_qdq(node, opset)
        elif node.op in OUTPUT_CHANNEL_AXIS:
            found += _lint_weight(node, opset >= 13)
        found += _lint_unquantizable(node) + _lint_reduce_axes(node)
    return sorted(found, key=lambda v: v.severity != "error")


def lint_file(path: str | Path) -> list[Violation]:
    return lint_model(read_onnx(path))


def read_onnx(path: str | Path) -> onnx.ModelProto:
    """An ONNX file with its external data, or a BridgeError naming what is wrong with it (a missing external-data
    file, which onnx reports as a ValidationError about a tensor, named as the file it is)."""
    path = readable_file(path, "ONNX file")
    if path.stat().st_size == 0:
        raise BridgeError(f"ONNX file '{path}' is empty (0 bytes)", "pass an .onnx model file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and others for corrupt files
        raise BridgeError(f"'{path}' is not a readable ONNX file ({type(exc).__name__})",
                          "pass an .onnx model file") from None
    for tensor in model.graph.initializer:
        if external_data_helper.uses_external_data(tensor):
            location = external_data_helper.ExternalDataInfo(tensor).location
            if not (path.parent / location).is_file():
                raise BridgeError(f"'{path}' keeps tensor '{tensor.name}' in '{location}', which is not beside it",
                                  f"put '{location}' in '{path.parent}' (ONNX reads external data from the model's "
                                  "folder)")
    try:
        external_data_helper.load_external_data_for_model(model, str(path.parent))
    except Exception as exc:  # a short or unreadable data file
        raise BridgeError(f"the external data of '{path}' cannot be read ({first_line(exc)})",
                          "save the model and its data again (onnx.save with save_as_external_data)") from None
    return model


def error_violations(violations: list[Violation]) -> list[Violation]:
    return [v for v in violations if v.severity == "error"]


def to_json(violations: list[Violation]) -> str:
    return json.dumps([asdict(v) for v in violations], indent=2)
