"""Mixed precision: the float compute of a Q/DQ (or float) ONNX model in fp16, for strongly typed TensorRT.

TensorRT 10 strongly typed networks and TensorRT 11 (strongly typed only, no FP16 builder flag) take each
layer's precision from the ONNX tensor types, so FP16 for the float compute outside the Q/DQ pairs must be in
the graph itself. `mixed_precision` writes it there while keeping what TensorRT 8.6 parses and the linter
checks: opset unchanged (8.6 parses up to opset 17, and only opset 19 allows fp16 Q/DQ scales), every
QuantizeLinear/DequantizeLinear untouched (int8 weights, float32 scales on the exact grid PyTorch used), network
input and outputs float32.

What TensorRT runs in INT8 keeps the type its DequantizeLinear gives it: a convolution or matrix product whose
weights are dequantized, and the pointwise and data-movement ops TensorRT fuses into that kernel or runs on int8
data. A Cast between a DQ and its consumer stops those fusions: TensorRT 8.6 built DQ -> Cast(fp16) -> Conv
(ResNet-50, H200) with 53 weight layers computed at run time, 151 reformats, a third of the throughput and 5 %
top-1 agreement. Casts therefore sit only where INT8 compute meets float compute.

Which float ops stay float32 is measured, not guessed: ONNX Runtime runs the float32 model on sample inputs with
every intermediate tensor as an output, and an op whose input or output reaches |x| > max_abs keeps float32. So
does the float arithmetic that rounds onto PyTorch's grid (`grid_arithmetic`), which float16 would not keep exact.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import BridgeError
from .lint import INT8_COMPUTE_OPS, INT8_PASSTHROUGH_OPS, weight_dequantize
from .passes import AVERAGE_POOLS, QDQ_OPS, export_like
from .runtime import run_onnxruntime_tensors

# ModelOpt AutoCast's default `data_max`: 128x headroom below float16's largest value (65504) for inputs larger
# than the samples and for sums inside an op (a pooled or reduced value adds up many inputs).
DEFAULT_MAX_ABS = 512.0
FP16_MAX = float(np.finfo(np.float16).max)
# Left as they are: Q/DQ carry the int8 grid, Casts and Constants carry no compute of their own.
UNCONVERTED_OPS = (*QDQ_OPS, "Cast", "Constant")
LIBRARY = "qdq_bridge"
CAST_PREFIX = "mixed_precision/Cast/"  # names the Casts this module adds


def mixed_precision(model: onnx.ModelProto, sample: np.ndarray, *,
                    max_abs: float = DEFAULT_MAX_ABS) -> tuple[onnx.ModelProto, dict]:
    """A copy of `model` whose float ops outside the Q/DQ pairs compute in fp16, and a report: the library that
    made it, the bound, how many ops run fp16, and each op kept float32 with its reason.

    `sample` (N, C, H, W float32) should look like real inputs: the measured ranges decide what stays float32.
    Refuses a model that already carries float16 (converting twice would measure fp16 ranges as if fp32).
    """
    _refuse_float16(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    graph = gs.import_onnx(model)
    ranges = measured_ranges(model, sample)
    int8 = int8_compute(graph)
    grid = grid_arithmetic(graph, int8)
    kept: dict[str, str] = {}
    fp16_nodes = []
    for node in graph.nodes:
        if node.op in UNCONVERTED_OPS or id(node) in int8 or not _float32_outputs(node, ranges):
            continue
        reason = GRID_REASON if id(node) in grid else _fp32_reason(node, opset, ranges, max_abs)
        if reason:
            kept[node.name] = reason
        else:
            fp16_nodes.append(node)
    float32_names = {name for name, (dtype, _) in ranges.items() if dtype == np.float32} | \
        {t.name for t in graph.inputs if t.dtype == np.float32}
    casts = _convert(graph, fp16_nodes, float32_names, opset)
    report = {"library": LIBRARY, "max_abs": max_abs, "samples": len(sample), "fp16_nodes": len(fp16_nodes),
              "int8_nodes": len(int8), "kept_fp32": kept, "casts_added": casts}
    return export_like(graph.cleanup().toposort(), model), report


def int8_compute(graph: gs.Graph) -> set[int]:
    """ids of the float ops TensorRT runs in INT8 (the linter's lists): a convolution or matrix product whose
    input 1 (the weights) a DequantizeLinear writes, and an op TensorRT fuses into such a kernel's epilogue or runs
    on int8 data by moving the DQ past it, fed by a DequantizeLinear or by one of these."""
    found: set[int] = set()
    for node in graph.toposort().nodes:
        if node.op in INT8_COMPUTE_OPS:
            int8 = weight_dequantize(node) is not None
        else:
            producers = [t.inputs[0] for t in node.inputs if isinstance(t, gs.Variable) and t.inputs]
            int8 = node.op in INT8_PASSTHROUGH_OPS and node.op not in QDQ_OPS and \
                any(p.op == "DequantizeLinear" or id(p) in found for p in producers)
        if int8:
            found.add(id(node))
    return found


GRID_REASON = "rounds onto PyTorch's integer grid (Round): float16 holds neither 256 x a gate nor a pool's sum exactly"


def grid_islands(graph: gs.Graph, int8: set[int]) -> list[list[gs.Node]]:
    """The float islands (bounded by Q/DQ, Casts and INT8 compute) that hold a Round, each a list of its nodes: the
    passes that make the graph round as PyTorch does (a fixed 1/256 grid, average pools on integer steps) write
    them, and they are exact only in float32."""
    islands, seen = [], set()
    for start in [n for n in graph.nodes if n.op == "Round"]:
        island, pending = [], [start]
        while pending:
            node = pending.pop()
            if id(node) in seen or node.op in UNCONVERTED_OPS or id(node) in int8:
                continue
            seen.add(id(node))
            island.append(node)
            pending += [p for t in node.inputs if isinstance(t, gs.Variable) for p in t.inputs]
            pending += [c for t in node.outputs for c in t.outputs]
        if island:
            islands.append(island)
    return islands


def grid_arithmetic(graph: gs.Graph, int8: set[int]) -> set[int]:
    """ids of the nodes of every grid island."""
    return {id(node) for island in grid_islands(graph, int8) for node in island}


def grid_layers(model: onnx.ModelProto) -> list[str]:
    """The names of the grid islands' nodes that a weakly typed build with the FP16 flag keeps float32
    (BuildSettings.float32_layers): not an average pool's. Measured on an H100 with TensorRT 8.6.0 (MobileNetV3,
    session 16): with the pool islands constrained the build failed ("Could not find any implementation for node
    PWN(PWN(/x2.1/HardSigmoid, /x2.1/Mul), PWN(... GlobalAveragePool/Mul, .../Round))": TensorRT fuses the pool's
    first Mul and Round into the hardswish before it), it built without constraints, and with the 1/256 gates
    alone constrained it built and PASSed. A pool's integer steps are within float16's exact range (|x| <= 128)."""
    graph = gs.import_onnx(model)
    return [node.name for island in grid_islands(graph, int8_compute(graph))
            if not any(n.op in AVERAGE_POOLS for n in island) for node in island]


def _refuse_float16(model: onnx.ModelProto) -> None:
    fp16 = onnx.TensorProto.FLOAT16
    typed = [*model.graph.input, *model.graph.output, *model.graph.value_info]
    if any(t.type.tensor_type.elem_type == fp16 for t in typed) \
            or any(i.data_type == fp16 for i in model.graph.initializer) \
            or any(n.op_type == "Cast" and any(a.name == "to" and a.i == fp16 for a in n.attribute)
                   for n in model.graph.node):
        raise BridgeError("the model already carries float16 tensors (converted before?)",
                          "pass the float32 model: its ranges decide which ops stay float32")


def measured_ranges(model: onnx.ModelProto, sample: np.ndarray) -> dict[str, tuple[np.dtype, float]]:
    """(dtype, max |x|) of every node output over `sample` (inf where not finite), from ONNX Runtime runs: one
    for a dynamic-batch model, one per batch for a static one."""
    names = [name for node in model.graph.node for name in node.output if name]
    sample = np.ascontiguousarray(sample, np.float32)
    batch = model.graph.input[0].type.tensor_type.shape.dim[0].dim_value or len(sample)  # 0: dynamic batch
    ranges: dict[str, tuple[np.dtype, float]] = {}
    for start in range(0, len(sample), batch):
        for name, values in run_onnxruntime_tensors(model, names, sample[start:start + batch]).items():
            ranges[name] = (values.dtype, max(_max_abs(values), ranges.get(name, (None, 0.0))[1]))
    return ranges


def _max_abs(values: np.ndarray) -> float:
    if not np.issubdtype(values.dtype, np.floating) or values.size == 0:
        return 0.0
    largest = float(np.max(np.abs(values)))
    return largest if np.isfinite(largest) else float("inf")


def _float32_outputs(node: gs.Node, ranges: dict) -> bool:
    return any(t.name in ranges and ranges[t.name][0] == np.float32 for t in node.outputs)


def _typed_like_output(node: gs.Node, opset: int) -> tuple[list[int], list[int]] | None:
    """Indices of the inputs and outputs that share the type of output 0 in the op's schema (those turn fp16 with
    it; e.g. Resize's `scales` or MaxPool's `Indices` keep their own types); None if that type cannot be fp16 or
    no input carries it (ConstantOfShape and the like take their output type from an attribute)."""
    try:
        schema = onnx.defs.get_schema(node.op, opset, node.domain or "")
    except onnx.defs.SchemaError:
        return None
    type_str = schema.outputs[0].type_str
    allowed = {c.type_param_str: c.allowed_type_strs for c in schema.type_constraints}
    if "tensor(float16)" not in allowed.get(type_str, [type_str]):
        return None

    def same(formals, count):
        return [i for i in range(count) if formals[min(i, len(formals) - 1)].type_str == type_str]

    inputs = same(schema.inputs, len(node.inputs))
    return (inputs, same(schema.outputs, len(node.outputs))) if inputs else None


def _fp32_reason(node: gs.Node, opset: int, ranges: dict, max_abs: float) -> str | None:
    """Why `node` must stay float32, or None when it can run fp16."""
    if _typed_like_output(node, opset) is None:
        return f"ONNX opset {opset} has no {node.op} that computes on float16 inputs"
    for tensor in node.inputs:
        if isinstance(tensor, gs.Constant) and np.issubdtype(tensor.values.dtype, np.floating):
            largest = _max_abs(tensor.values)
            if largest > FP16_MAX:
                return f"constant {tensor.name} holds |x| = {largest:.4g}, beyond float16's {FP16_MAX:g}"
    for kind, tensors in (("input", node.inputs), ("output", node.outputs)):
        for tensor in tensors:
            largest = ranges.get(tensor.name, (None, 0.0))[1]
            if largest > max_abs:
                return f"{kind} {tensor.name} reaches |x| = {largest:.4g} > max_abs {max_abs:g} on the samples"
    return None


def _convert(graph: gs.Graph, fp16_nodes: list[gs.Node], float32_names: set[str], opset: int) -> int:
    """Retype `fp16_nodes` to float16 and put a Cast wherever a float32 and a float16 tensor meet; returns the
    number of Casts added. Each tensor gets at most one Cast per direction, shared by its readers."""
    fp16_inputs = {}
    fp16_tensors = set()
    for node in fp16_nodes:
        fp16_inputs[id(node)], outputs = _typed_like_output(node, opset)
        for index in outputs:
            node.outputs[index].dtype = np.float16
            fp16_tensors.add(node.outputs[index].name)
    casts: dict[tuple[str, type], gs.Tensor] = {}

    def as_type(tensor: gs.Tensor, dtype: type) -> gs.Tensor:
        key, name = (tensor.name, dtype), f"{tensor.name}_{np.dtype(dtype).name}"
        if key not in casts:  # constants are converted in place (range-checked: no value beyond float16's largest)
            casts[key] = gs.Constant(name, tensor.values.astype(dtype)) if isinstance(tensor, gs.Constant) \
                else _cast(graph, tensor, name, dtype)
        return casts[key]

    for node in list(graph.nodes):
        for index, tensor in enumerate(node.inputs):
            needs_fp16 = index in fp16_inputs.get(id(node), ())
            still_float32 = tensor.name in float32_names and tensor.name not in fp16_tensors
            if needs_fp16 and (isinstance(tensor, gs.Constant) or still_float32):
                node.inputs[index] = as_type(tensor, np.float16)
            elif not needs_fp16 and tensor.name in fp16_tensors:
                node.inputs[index] = as_type(tensor, np.float32)
    for index, output in enumerate(graph.outputs):
        if output.name in fp16_tensors:  # the network keeps its float32 output under its own name
            name, output.name = output.name, f"{output.name}_float16"
            graph.outputs[index] = _cast(graph, output, name, np.float32)
    return sum(1 for node in graph.nodes if node.name.startswith(CAST_PREFIX))


def _cast(graph: gs.Graph, tensor: gs.Tensor, name: str, dtype: type) -> gs.Variable:
    out = gs.Variable(name, dtype, tensor.shape)
    to = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph.nodes.append(gs.Node("Cast", CAST_PREFIX + name, {"to": to}, [tensor], [out]))
    return out

