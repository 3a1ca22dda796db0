"""Stage 3, graph surgery: rewrite the exported Q/DQ ONNX into the form TensorRT's explicit quantization takes.

Each pass is a small function `(gs.Graph) -> gs.Graph`, idempotent, registered in `PASSES` in the order
`run_passes` applies them. Two placements: `faithful` (the default) keeps every quantization point of the
PyTorch model; `fast` also runs the passes marked fast-only, which move Q/DQ to where TensorRT's documentation
places them so that it fuses residual Add+ReLU into convolutions and runs data movement in int8.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..choices import PLACEMENTS
from ..errors import BridgeError

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
FIXED_RANGE_OPS = ("Sigmoid", "HardSigmoid")
# Ops whose outputs are a selection or rearrangement of their input values: a value on a quantization grid stays
# on it, so requantizing their output at the input's scale changes nothing. Index 0 is their data input, except
# Concat, whose inputs are all data.
GRID_PRESERVING_OPS = ("MaxPool", "GlobalMaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze",
                       "Slice", "Identity", "Concat")
# The op whose weight input (index 1) a per-channel DQ feeds -> the axis of its output channels for a weight
# of rank r and the node's attributes (TensorRT's rule: per-channel scales run along output channels).
OUTPUT_CHANNEL_AXIS: dict[str, Callable[[int, dict], int]] = {
    "Conv": lambda rank, attrs: 0,
    "ConvTranspose": lambda rank, attrs: 1,
    "Gemm": lambda rank, attrs: 0 if attrs.get("transB", 0) else 1,
    "MatMul": lambda rank, attrs: rank - 1,
}


def constant_values(tensor: gs.Tensor) -> np.ndarray | None:
    return tensor.values if isinstance(tensor, gs.Constant) else None


def zero_point(node: gs.Node) -> np.ndarray:
    """The node's zero-point; ONNX's default (absent input) is uint8 zero."""
    if len(node.inputs) > 2 and node.inputs[2] is not None and node.inputs[2].name:
        values = constant_values(node.inputs[2])
        if values is not None:
            return values
    return np.zeros((), np.uint8)


def scale_of(node: gs.Node) -> float:
    """A per-tensor Q/DQ's constant scale."""
    return float(constant_values(node.inputs[1]).ravel()[0])


def axis_of(node: gs.Node, rank: int) -> int:
    axis = node.attrs.get("axis", 1)
    return axis + rank if axis < 0 else axis


TOP_LEVEL = "<top level>"


def module_path(node: gs.Node) -> str:
    """torch's exporter names nodes '/layer1/0/conv1/QuantizeLinear': the module is layer1.0.conv1."""
    parts = [p for p in node.name.split("/") if p][:-1]
    return ".".join(parts) or TOP_LEVEL


def in_module(module: str) -> str:
    """' (module NAME)' for a message, or nothing where the node names none (a PT2E program's)."""
    return f" (module {module})" if module != TOP_LEVEL else ""


def reroute(graph: gs.Graph, old: gs.Tensor, new: gs.Tensor) -> bool:
    """Point every consumer of `old` at `new`; graph outputs keep their names, so those are left alone."""
    if old in graph.outputs:
        return False
    for consumer in list(old.outputs):
        for index, tensor in enumerate(consumer.inputs):
            if tensor is old:
                consumer.inputs[index] = new
    return True


def producer(tensor: gs.Tensor, op: str) -> gs.Node | None:
    return tensor.inputs[0] if len(tensor.inputs) == 1 and tensor.inputs[0].op == op else None


def tidy(graph: gs.Graph) -> gs.Graph:
    return graph.cleanup().toposort()


# --- the passes -----------------------------------------------------------------------------------------------

def fold_constants(graph: gs.Graph) -> gs.Graph:
    """Fold Constant/ConstantOfShape/Cast chains into initializers, never folding Q/DQ (int8 weights stay int8)."""
    graph.fold_constants(should_exclude_node=lambda node: node.op in QDQ_OPS, error_ok=False)
    return tidy(graph)


def remove_cast_between_q_dq(graph: gs.Graph) -> gs.Graph:
    """Drop Cast nodes between QuantizeLinear and DequantizeLinear that cast to the type Q already produces."""
    for cast in [n for n in graph.nodes if n.op == "Cast"]:
        q = producer(cast.inputs[0], "QuantizeLinear")
        if q is None or cast.attrs.get("to") != onnx.helper.np_dtype_to_tensor_dtype(zero_point(q).dtype):
            continue
        if all(consumer.op == "DequantizeLinear" for consumer in cast.outputs[0].outputs):
            reroute(graph, cast.outputs[0], cast.inputs[0])
    return tidy(graph)


def _along_axis(param: np.ndarray, node: gs.Node, rank: int) -> np.ndarray:
    """A scale or zero-point shaped to broadcast against the node's data (per-channel along its axis)."""
    if param.size == 1:
        return param.reshape(())
    shape = [1] * rank
    shape[axis_of(node, rank)] = param.size
    return param.reshape(shape)


def dequantize_constant(dq: gs.Node, values: np.ndarray) -> np.ndarray:
    """What a DequantizeLinear computes on constant `values`, as float32."""
    scale = constant_values(dq.inputs[1]).astype(np.float64)
    zp = zero_point(dq).astype(np.float64)
    rank = values.ndim
    return ((values.astype(np.float64) - _along_axis(zp, dq, rank)) * _along_axis(scale, dq, rank)).astype(np.float32)


def fold_bias_dequantize(graph: gs.Graph) -> gs.Graph:
    """Replace DequantizeLinear of constant int32 tensors (quantized biases) with float32 constants."""
    for dq in [n for n in graph.nodes if n.op == "DequantizeLinear"]:
        values = constant_values(dq.inputs[0])
        if values is None or constant_values(dq.inputs[1]) is None or values.dtype != np.int32:
            continue
        reroute(graph, dq.outputs[0], gs.Constant(dq.outputs[0].name + "_float", dequantize_constant(dq, values)))
    return tidy(graph)


def fixed_range_outputs_on_pytorch_grid(graph: gs.Graph) -> gs.Graph:
    """The uint8 Q/DQ PyTorch forces on Sigmoid/HardSigmoid outputs as float ops on the same grid: Round, Clip.

    Eager-mode quantization gives these ops fixed qparams (scale 1/256, zero-point 0: [0, 255/256]), which int8 with
    zero-point 0 cannot hold at that scale. Left in float (as before 0.4), a squeeze-excite's gate differed from
    PyTorch's by up to half a grid step, and 4.3 % of the block's outputs by one output step (MobileNetV3's
    squeeze-excite alone, measured against all three CPU backends); on PyTorch's grid they agree. Round is
    half-to-even, as PyTorch's quantize.
    """
    for q in [n for n in graph.nodes if is_fixed_range_quantizer(n)]:
        scale = constant_values(q.inputs[1])
        steps = 1.0 / float(scale)
        scaled = _float_op(graph, "Mul", q, [q.inputs[0], gs.Constant(f"{q.name}_steps", np.array(steps, np.float32))])
        rounded = _float_op(graph, "Round", q, [scaled])
        clipped = _float_op(graph, "Clip", q, [rounded, gs.Constant(f"{q.name}_low", np.array(0, np.float32)),
                                               gs.Constant(f"{q.name}_high", np.array(255, np.float32))])
        on_grid = _float_op(graph, "Mul", q, [clipped, gs.Constant(f"{q.name}_scale", np.array(scale, np.float32))])
        for dq in [c for c in q.outputs[0].outputs if c.op == "DequantizeLinear"]:
            reroute(graph, dq.outputs[0], on_grid)
    return tidy(graph)


AVERAGE_POOLS = ("GlobalAveragePool", "AveragePool")


def average_pools_on_pytorch_grid(graph: gs.Graph) -> gs.Graph:
    """Average pools of a quantized tensor computed on its integer steps and rounded half to even, as PyTorch's.

    PyTorch's quantized average pools (avg_pool2d, adaptive_avg_pool2d) average the stored values less the
    zero-point and round the mean half to even (every backend, on the channels-last tensors its quantized
    convolutions give; x86, fbgemm and onednn round the stored values' mean on contiguous ones, the same wherever
    the zero-point is even). The float pool of dequantized values puts a tie on either side by float error, and
    ties are frequent on small maps: 1 in 4 outputs of a 2 x 2 window, 1 in 18 of a 4 x 4 mean (MobileNetV3's
    squeeze-excite at 64 pixels, where 3.4 % of the pooled values differed from PyTorch's by one step and moved
    every later layer). Here the pool reads the integer steps (DQ x / scale, rounded: exact), their mean is exact
    in float32 at a tie, and Round (half to even) and the scale put it on PyTorch's value, before the same Q/DQ.
    """
    for pool in [n for n in graph.nodes if n.op in AVERAGE_POOLS]:
        dq = producer(pool.inputs[0], "DequantizeLinear")
        quantizers = list(pool.outputs[0].outputs)
        if (dq is None or not _per_tensor(dq) or not quantizers or pool.outputs[0] in graph.outputs or
                not all(c.op == "QuantizeLinear" and _same_quantization(c, dq) for c in quantizers)):
            continue
        scale = scale_of(dq)
        steps = _float_op(graph, "Mul", pool, [pool.inputs[0], gs.Constant(f"{pool.name}_steps",
                                                                           np.array(1.0 / scale, np.float32))])
        pool.inputs[0] = _float_op(graph, "Round", pool, [steps])
        mean = gs.Variable(f"{pool.outputs[0].name}_steps", np.float32)
        pool.outputs = [mean]
        rounded = _float_op(graph, "Round", pool, [mean])
        on_grid = _float_op(graph, "Mul", pool, [rounded, gs.Constant(f"{pool.name}_scale",
                                                                      np.array(scale, np.float32))])
        for q in quantizers:
            q.inputs[0] = on_grid
    return tidy(graph)


def is_fixed_range_quantizer(node: gs.Node) -> bool:
    """A QuantizeLinear of a Sigmoid/HardSigmoid output onto eager mode's fixed uint8 grid (zero-point 0, one
    constant scale): PyTorch's, not the qconfig's, so no affine activation."""
    source = node.inputs[0].inputs[0] if node.op == "QuantizeLinear" and node.inputs[0].inputs else None
    if source is None or source.op not in FIXED_RANGE_OPS or len(node.inputs) < 3:
        return False
    zp, scale = constant_values(node.inputs[2]), constant_values(node.inputs[1])
    return zp is not None and zp.dtype == np.uint8 and not zp.any() and scale is not None and scale.size == 1


def _float_op(graph: gs.Graph, op: str, near: gs.Node, inputs: list) -> gs.Variable:
    """A float op named after the node it stands in for; its output."""
    output = gs.Variable(f"{near.name}/{op}_{len(graph.nodes)}_output", np.float32)
    graph.nodes.append(gs.Node(op, f"{near.name}/{op}_{len(graph.nodes)}", inputs=inputs, outputs=[output]))
    return output


def requantize_fix(program: bool = False) -> str:
    """The two ways out of full-range activations; quantizing again differs for an eager model and a PT2E program."""
    again = ("quantize the float program again with --calibrate DATA (qdq_bridge.pt2e.quantizer.TensorRTQuantizer)"
             if program else "quantize the float model again with --qconfig tensorrt")
    return ("pass --requantize-activations (each such tensor re-quantized to symmetric int8 over the same range, "
            f"its parity measured), or {again}")


def full_range_error(tensor: str, module: str, zp: int, scale: float, reason: str,
                     program: bool = False) -> BridgeError:
    return BridgeError(f"activation '{tensor}'{in_module(module)} is quantized affinely over the full uint8 range "
                       f"(zero_point={zp}, scale={scale:.4g}, qnnpack-style): {reason}", requantize_fix(program))


def below_int8(zp: int) -> str:
    return f"int8 at that scale stops at -128 steps, above its lowest value (-{zp} steps)"


def int8_zero_point(graph: gs.Graph) -> gs.Graph:
    """Map uint8 Q/DQ with zero-point z <= 128 onto int8 with zero-point 0 at the same scale: q_int8 = q_uint8 - z.

    128 (symmetric) is exact. A smaller z (PyTorch's x86/fbgemm default activations: reduce_range, 0..127 around z)
    is exact from -z to +127 steps: a Max at -z steps before the Q keeps PyTorch's lower saturation (none after a
    ReLU); above +127 steps int8 saturates where PyTorch would go on to 255 - z (beyond the calibrated range;
    `pipeline` counts such values on the data). z > 128 puts values below int8's -128 steps: refused, naming the
    tensor and the ways out, as is any int8 zero-point but 0.
    """
    for node in [n for n in graph.nodes if n.op in QDQ_OPS]:
        zp = zero_point(node)
        if zp.dtype == np.int8 and not zp.any() or zp.dtype not in (np.uint8, np.int8):
            continue
        if zp.dtype == np.int8 or zp.size != 1:
            raise BridgeError(
                f"node '{node.name}'{in_module(module_path(node))} quantizes affinely ({zp.dtype.name}, "
                f"zero_point={zp.ravel()[:4].tolist()}), which TensorRT's symmetric int8 cannot represent",
                "re-quantize with per_tensor_symmetric activations (qdq_bridge.pytorch.quantize.trt_qconfig())")
        shift = int(zp.ravel()[0])
        if shift > 128:
            raise full_range_error(node.inputs[0].name, module_path(node), shift, scale_of(node), below_int8(shift))
        zero = gs.Constant(f"{node.name}_zero_point_int8", np.zeros(zp.shape, np.int8))
        if len(node.inputs) > 2:
            node.inputs[2] = zero
        else:
            node.inputs.append(zero)
        if node.op == "QuantizeLinear":
            node.outputs[0].dtype = np.int8
            if shift < 128 and constant_values(node.inputs[0]) is None and producer(node.inputs[0], "Relu") is None:
                _floor_before(graph, node, -shift)
        elif (values := constant_values(node.inputs[0])) is not None:
            shifted = values.astype(np.int16) - shift
            node.inputs[0] = gs.Constant(node.inputs[0].name + "_int8", np.clip(shifted, -128, 127).astype(np.int8))
    return tidy(graph)


def _floor_before(graph: gs.Graph, q: gs.Node, low_steps: int) -> None:
    """x -> Max(x, low_steps of q's scale) -> q: PyTorch's lower saturation on q's grid (q saturates at +127 steps
    itself). A Max, not a Clip: TensorRT 8.6 moves a Q ahead of a Clip (or folds the Clip into the int8 epilogue
    before it), which put faithful affine engines at chance (benchmarks/results/h200_trt8.6.0_families_runs/
    affine_floor_layers.md); a Max it keeps in float (run4.json: 100 % agreement)."""
    floor = gs.Constant(f"{q.name}/floor", np.array(low_steps * scale_of(q), np.float32))
    floored = gs.Variable(f"{q.name}/floor_output", np.float32, q.inputs[0].shape)
    graph.nodes.append(gs.Node("Max", f"{q.name}/Max", inputs=[q.inputs[0], floor], outputs=[floored]))
    q.inputs[0] = floored


def is_grid_floor(node: gs.Node) -> bool:
    """A Max that only raises int8's floor on the grid of the Qs it feeds (what int8_zero_point adds)."""
    consumers = node.outputs[0].outputs if node.outputs else []
    if node.op != "Max" or len(node.inputs) != 2 or not consumers \
            or any(c.op != "QuantizeLinear" or zero_point(c).any() for c in consumers):
        return False
    bound = constant_values(node.inputs[1]) if node.inputs[1].name else None
    scales = {scale_of(c) for c in consumers if constant_values(c.inputs[1]) is not None}
    if bound is None or bound.size != 1 or len(scales) != 1:
        return False
    steps = float(bound) / scales.pop()
    return -128 <= round(steps) <= 0 and abs(steps - round(steps)) < 1e-3


def drop_activation_clamps(graph: gs.Graph) -> gs.Graph:
    """fast: drop the Maxes that keep PyTorch's floor of affine activations (see int8_zero_point).

    Not exact: TensorRT then saturates at int8's -128 steps where PyTorch stopped at -z, and the Q follows its
    layer directly, as TensorRT fuses it.
    """
    for floor in [n for n in graph.nodes if is_grid_floor(n)]:
        reroute(graph, floor.outputs[0], floor.inputs[0])
    return tidy(graph)


def quantize_weight_constants(graph: gs.Graph) -> gs.Graph:
    """Store weights as int8 initializers + DQ: fold QuantizeLinear of a constant float tensor into its int8 result."""
    for q in [n for n in graph.nodes if n.op == "QuantizeLinear"]:
        values, scale = constant_values(q.inputs[0]), constant_values(q.inputs[1])
        if values is None or scale is None:
            continue
        zp = zero_point(q)
        info = np.iinfo(zp.dtype)
        # ONNX QuantizeLinear rounds half to even, as np.rint does
        quantized = np.rint(values / _along_axis(scale, q, values.ndim)) + _along_axis(zp, q, values.ndim)
        weight = gs.Constant(q.outputs[0].name + "_quantized", np.clip(quantized, info.min, info.max).astype(zp.dtype))
        reroute(graph, q.outputs[0], weight)
    return tidy(graph)


def fold_weight_transpose(graph: gs.Graph) -> gs.Graph:
    """Fold Transpose after a constant weight's DQ into the int8 initializer and remap the DQ's per-channel axis.

    TensorRT wants the weight DQ directly on its Conv/Gemm/MatMul with scales along output channels; exporters
    emit DQ -> Transpose -> MatMul for Linear layers on N-d inputs. Negative axes are made non-negative.
    """
    for dq in [n for n in graph.nodes if n.op == "DequantizeLinear"]:
        values = constant_values(dq.inputs[0])
        if values is None:
            continue
        if dq.attrs.get("axis", 1) < 0:
            dq.attrs["axis"] = axis_of(dq, values.ndim)
        consumers = dq.outputs[0].outputs
        if len(consumers) != 1 or consumers[0].op != "Transpose" or dq.outputs[0] in graph.outputs:
            continue
        transpose = consumers[0]
        perm = transpose.attrs.get("perm", list(range(values.ndim))[::-1])
        scale = constant_values(dq.inputs[1])
        new_dq = gs.Node("DequantizeLinear", dq.name + "_transposed", dict(dq.attrs),
                         [gs.Constant(dq.inputs[0].name + "_transposed", np.ascontiguousarray(values.transpose(perm))),
                          *dq.inputs[1:]], [gs.Variable(dq.outputs[0].name + "_transposed", np.float32)])
        if scale is not None and scale.size > 1:
            new_dq.attrs["axis"] = list(perm).index(axis_of(dq, values.ndim))
        if reroute(graph, transpose.outputs[0], new_dq.outputs[0]):
            graph.nodes.append(new_dq)
    return tidy(graph)


REDUCE_OPS = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")


def reduce_axes(node: gs.Node) -> tuple[np.ndarray | None, bool]:
    """A Reduce op's constant axes and whether they come as an input (opset 18; ReduceSum from 13) rather than an
    attribute; (None, from_input) when they are not constant or not given (every axis)."""
    if "axes" in node.attrs:
        return np.asarray(node.attrs["axes"]), False
    given = len(node.inputs) > 1 and node.inputs[1].name
    return (constant_values(node.inputs[1]) if given else None), bool(given)


def _rank(tensor: gs.Tensor) -> int:
    """The tensor's rank, read through the Q/DQ it came through where it has no shape of its own; 0 if unknown."""
    while tensor.shape is None and tensor.inputs and tensor.inputs[0].op in QDQ_OPS:
        tensor = tensor.inputs[0].inputs[0]
    return len(tensor.shape) if tensor.shape is not None else 0


def spatial_mean_as_global_average_pool(graph: gs.Graph) -> gs.Graph:
    """Write a ReduceMean over every spatial axis as GlobalAveragePool, the same mean (then Flatten, without keepdims).

    TensorRT (8.6 and 10) cannot read a Reduce op's axes from an input, where opset 18 puts them: torch.onnx's
    dynamo exporter writes a PT2E program's adaptive_avg_pool2d so, and TensorRT 8.6 then averages every axis
    ("Reshaping [1,1,1,1] to [-1,2048]", measured on an H200 with a PT2E ResNet-50). As a pooling layer it also
    runs in INT8 between its Q/DQ, as the eager route's GlobalAveragePool does.
    """
    for node in [n for n in graph.nodes if n.op == "ReduceMean"]:
        axes, _ = reduce_axes(node)
        rank = _rank(node.inputs[0])
        if axes is None or rank < 3 or sorted(int(a) % rank for a in axes.ravel()) != list(range(2, rank)):
            continue
        keepdims = node.attrs.get("keepdims", 1)
        node.op, node.attrs, node.inputs = "GlobalAveragePool", {}, node.inputs[:1]
        if not keepdims:  # (N, C, 1, 1) -> (N, C)
            pooled = gs.Variable(f"{node.outputs[0].name}_pooled", node.outputs[0].dtype)
            graph.nodes.append(gs.Node("Flatten", f"{node.name}_flatten", {"axis": 1}, [pooled], node.outputs))
            node.outputs = [pooled]
    return tidy(graph)


def _same_quantization(a: gs.Node, b: gs.Node) -> bool:
    """Equal constant scales, zero-points (of one dtype) and axis: Q and DQ of one grid."""
    scales = constant_values(a.inputs[1]), constant_values(b.inputs[1])
    zps = zero_point(a), zero_point(b)
    return (all(s is not None for s in scales) and np.array_equal(*scales) and zps[0].dtype == zps[1].dtype
            and np.array_equal(*zps) and a.attrs.get("axis", 1) == b.attrs.get("axis", 1))


def _per_tensor(node: gs.Node) -> bool:
    scale = constant_values(node.inputs[1])
    return scale is not None and scale.size == 1


def drop_redundant_dq_q(graph: gs.Graph) -> gs.Graph:
    """DequantizeLinear followed by QuantizeLinear with equal scale, zero-point and axis is the identity: drop it."""
    for q in [n for n in graph.nodes if n.op == "QuantizeLinear"]:
        dq = producer(q.inputs[0], "DequantizeLinear")
        if dq is not None and _same_quantization(dq, q):
            reroute(graph, q.outputs[0], dq.inputs[0])
    return tidy(graph)


def requantized(tensor: gs.Tensor, op: str) -> tuple[gs.Node, gs.Node] | None:
    """For tensor = DQ(Q(output of an `op` node)) with no other consumers along the way: (that node, the Q); else
    None."""
    dq = producer(tensor, "DequantizeLinear")
    q = producer(dq.inputs[0], "QuantizeLinear") if dq is not None else None
    node = producer(q.inputs[0], op) if q is not None else None
    if node is None or len(tensor.outputs) != 1 or len(dq.inputs[0].outputs) != 1 or len(q.inputs[0].outputs) != 1:
        return None
    return node, q


def _requantized_conv_output(tensor: gs.Tensor) -> gs.Tensor | None:
    """For tensor = DQ(Q(conv output)) with no other consumers along the way: the conv output; else None."""
    found = requantized(tensor, "Conv")
    return found[1].inputs[0] if found is not None else None


def fuse_residual_add(graph: gs.Graph) -> gs.Graph:
    """fast: feed a residual Add its conv's float output (no requantization) so TensorRT fuses Add+ReLU into the conv.

    Only when the Add's other input is quantized (comes from a DQ), which TensorRT then reads in int8 as the
    fused residual. Of two eligible inputs the first (PyTorch's main branch) is chosen. Not exact: the Add sees
    the conv result before rounding, which is closer to the float model.
    """
    for add in [n for n in graph.nodes if n.op == "Add" and len(n.inputs) == 2]:
        for index in (0, 1):
            conv_output = _requantized_conv_output(add.inputs[index])
            if conv_output is not None and producer(add.inputs[1 - index], "DequantizeLinear") is not None:
                add.inputs[index] = conv_output
                break
    return tidy(graph)


def skip_grid_preserving_requantize(graph: gs.Graph) -> gs.Graph:
    """fast: drop the Q/DQ after MaxPool/Flatten/Reshape/Transpose/Concat/... whose inputs share its scale (exact).

    Such an op only selects or moves values, so its output is already on its inputs' grid; TensorRT then
    commutes the input DQ through it and runs it in int8. Concat qualifies only when all its inputs share
    the scale; the requantization stays where its DQs feed anything but weighted layers or more data movement
    (a residual Add's input must stay DQ'd for TensorRT to fuse it).
    """
    # last to first, so that a chain (MaxPool -> Concat -> Flatten) is freed from its end back to its start
    for q in [n for n in reversed(graph.nodes) if n.op == "QuantizeLinear"]:
        op = q.inputs[0].inputs[0] if len(q.inputs[0].inputs) == 1 else None
        if op is None or op.op not in GRID_PRESERVING_OPS or len(op.outputs) != 1 or not _per_tensor(q):
            continue
        data = op.inputs if op.op == "Concat" else op.inputs[:1]
        sources = [producer(t, "DequantizeLinear") for t in data]
        if not all(dq is not None and _same_quantization(dq, q) for dq in sources):
            continue
        dqs = q.outputs[0].outputs
        # a DQ'd residual-Add input must stay DQ'd for TensorRT to fuse it; weighted layers quantize their input
        if all(dq.op == "DequantizeLinear" and _same_quantization(dq, q) and dq.outputs[0] not in graph.outputs
               and all(c.op in OUTPUT_CHANNEL_AXIS or c.op in GRID_PRESERVING_OPS for c in dq.outputs[0].outputs)
               for dq in dqs):
            for dq in list(dqs):
                reroute(graph, dq.outputs[0], op.outputs[0])
    return tidy(graph)


def float_network_outputs(graph: gs.Graph) -> gs.Graph:
    """fast: drop a Q/DQ pair that only rounds a network output; the producing layer writes float directly.

    TensorRT would otherwise write int8 and add a reformat layer to dequantize it. Not exact: the output keeps
    the precision the rounding removed.
    """
    for index, output in enumerate(list(graph.outputs)):
        dq = producer(output, "DequantizeLinear")
        q = producer(dq.inputs[0], "QuantizeLinear") if dq is not None else None
        if q is None or constant_values(q.inputs[0]) is not None or len(q.outputs[0].outputs) != 1 \
                or q.inputs[0] in graph.inputs or q.inputs[0] in graph.outputs:
            continue
        unrounded = q.inputs[0]
        output.name, unrounded.name = f"{output.name}_rounded", output.name  # the network keeps its output name
        unrounded.dtype, unrounded.shape = output.dtype, unrounded.shape or output.shape
        graph.outputs[index] = unrounded
    return tidy(graph)


def conv_weight(conv: gs.Node) -> np.ndarray | None:
    """The constant weights of a Conv/ConvTranspose, read through their DequantizeLinear if they have one."""
    dq = producer(conv.inputs[1], "DequantizeLinear")
    return constant_values(dq.inputs[0] if dq is not None else conv.inputs[1])


def _float_source(tensor: gs.Tensor) -> gs.Tensor:
    """The float tensor a DQ'd input was quantized from (the exporter quantizes it once per consumer)."""
    dq = producer(tensor, "DequantizeLinear")
    q = producer(dq.inputs[0], "QuantizeLinear") if dq is not None else None
    return q.inputs[0] if q is not None else tensor


def _first_concats(graph: gs.Graph) -> dict[str, frozenset[str]]:
    """For each tensor, the Concats it reaches first along its paths (where an Inception block's branches meet);
    a residual Add ends a path, as the branches of a ResNet block meet there."""
    reached: dict[str, frozenset[str]] = {}
    for node in reversed(graph.toposort().nodes):
        for tensor in node.inputs:
            reached[tensor.name] = reached.get(tensor.name, frozenset()) | (
                {node.name} if node.op == "Concat" else frozenset() if node.op == "Add" else
                frozenset().union(*(reached.get(t.name, frozenset()) for t in node.outputs)))
    return reached


def separate_sibling_convs(graph: gs.Graph) -> gs.Graph:
    """Give Convs that read one tensor and meet at a Concat distinct dilations along their kernels' size-1 axes, so
    TensorRT does not merge them.

    A dilation along an axis where the kernel has size 1 does nothing (exact): both axes of a 1x1 kernel, the
    first of a 1x3, the second of a 3x1. TensorRT 8.6.0 merges sibling 1x1 convolutions (the branches of an
    Inception block) horizontally and then fails on the Concat's Q/DQ with "Assertion dt1 == kFLOAT || dt1 ==
    kHALF" in chooseHigherPrecision; measured on an H200 with a 3-branch block, GoogLeNet and Inception v3
    (benchmarks/results/h200_trt8.6.0_families_runs/concat_siblings.md). The branches may reach the Concat through
    further convolutions (Inception v3's Mixed_7a); Inception v3's Mixed_7b/7c read one tensor with a 1x3 and a 3x1
    convolution, where Polygraphy's bisection of the same assertion ends. Siblings that meet at no Concat (ResNet's
    conv1 and downsample, joined by an Add) are left to merge.
    """
    siblings: dict[str, list[tuple[gs.Node, tuple[int, ...]]]] = {}
    for conv in graph.nodes:
        weight = conv_weight(conv) if conv.op == "Conv" else None
        if weight is not None and 1 in weight.shape[2:] and all(d == 1 for d in conv.attrs.get("dilations", [1])):
            siblings.setdefault(_float_source(conv.inputs[0]).name, []).append((conv, weight.shape[2:]))
    first_concats = _first_concats(graph)
    for convs in siblings.values():
        concats = [first_concats.get(conv.outputs[0].name, frozenset()) for conv, _ in convs]
        if any(a & b for i, a in enumerate(concats) for b in concats[i + 1:]):
            for dilation, (conv, kernel) in enumerate(convs[1:], start=2):
                conv.attrs["dilations"] = [dilation if size == 1 else 1 for size in kernel]
    return tidy(graph)


def conv_kernel_shape(graph: gs.Graph) -> gs.Graph:
    """Set `kernel_shape` on Conv/ConvTranspose from their (DQ'd) constant weights; TensorRT 8.6's parser needs it."""
    for conv in [n for n in graph.nodes if n.op in ("Conv", "ConvTranspose") and "kernel_shape" not in n.attrs]:
        values = conv_weight(conv)
        if values is not None:
            conv.attrs["kernel_shape"] = list(values.shape[2:])
    return tidy(graph)


def deconv_bias_as_add(graph: gs.Graph) -> gs.Graph:
    """Add a Q/DQ ConvTranspose's bias after it; TensorRT 8.6 fails to build one with a bias input.

    Measured on an H100 (a UNet's 2x2 stride-2 ConvTranspose, per-tensor int8 weights): "Assertion engine failed"
    in refitUtils.cpp::buildRefitEngine with the bias input; without it, the same ConvTranspose builds in INT8 and
    the Add fuses into it."""
    for deconv in [n for n in graph.nodes if n.op == "ConvTranspose" and len(n.inputs) == 3 and
                   producer(n.inputs[1], "DequantizeLinear") is not None]:
        bias, weight = constant_values(deconv.inputs[2]), conv_weight(deconv)
        if bias is None or weight is None:
            continue
        output = deconv.outputs[0]
        unbiased = gs.Variable(f"{output.name}_unbiased", dtype=output.dtype, shape=output.shape)
        per_channel = gs.Constant(f"{deconv.inputs[2].name}_per_channel",
                                  bias.astype(np.float32).reshape(1, -1, *[1] * (weight.ndim - 2)))
        deconv.inputs.pop(2)
        deconv.outputs = [unbiased]
        graph.nodes.append(gs.Node("Add", f"{deconv.name}/bias", inputs=[unbiased, per_channel], outputs=[output]))
    return tidy(graph)


@dataclass(frozen=True)
class GraphPass:
    name: str
    run: Callable[[gs.Graph], gs.Graph]
    fast_only: bool = False

    @property
    def summary(self) -> str:
        return (self.run.__doc__ or "").strip().splitlines()[0]


FAST_ONLY = (drop_activation_clamps, fuse_residual_add, skip_grid_preserving_requantize, float_network_outputs)
PASSES: tuple[GraphPass, ...] = tuple(GraphPass(f.__name__, f, f in FAST_ONLY) for f in (
    fold_constants,
    remove_cast_between_q_dq,
    fold_bias_dequantize,
    fixed_range_outputs_on_pytorch_grid,
    spatial_mean_as_global_average_pool,
    average_pools_on_pytorch_grid,
    int8_zero_point,
    quantize_weight_constants,
    fold_weight_transpose,
    drop_redundant_dq_q,
    drop_activation_clamps,
    fuse_residual_add,
    skip_grid_preserving_requantize,
    float_network_outputs,
    separate_sibling_convs,
    conv_kernel_shape,
    deconv_bias_as_add,
))
PASS_NAMES = tuple(p.name for p in PASSES)


def run_passes(model: onnx.ModelProto, disabled: Iterable[str] = (),
               placement: str = "faithful") -> tuple[onnx.ModelProto, list[str]]:
    """Apply the registered passes of `placement` not in `disabled`, in order; returns the new model and the
    passes applied."""
    disabled = set(disabled)
    unknown = disabled - set(PASS_NAMES)
    if unknown:
        raise BridgeError(f"unknown pass {', '.join(sorted(unknown))}", f"choose from {', '.join(PASS_NAMES)}")
    if placement not in PLACEMENTS:
        raise BridgeError(f"unknown placement '{placement}'", f"choose from {', '.join(PLACEMENTS)}")
    graph = gs.import_onnx(model)
    applied = []
    for graph_pass in PASSES:
        if graph_pass.name not in disabled and (placement == "fast" or not graph_pass.fast_only):
            graph = graph_pass.run(graph)
            applied.append(graph_pass.name)
    return export_like(graph, model), applied


# the passes that make the graph round where PyTorch's quantized kernels round (the rest map its form for TensorRT)
PYTORCH_ARITHMETIC = ("spatial_mean_as_global_average_pool", "fixed_range_outputs_on_pytorch_grid",
                      "average_pools_on_pytorch_grid")


def pytorch_emulation(model: onnx.ModelProto) -> onnx.ModelProto:
    """The exported Q/DQ graph computing what PyTorch's kernels compute, in float (the reference's cross-check runs
    it on ONNX Runtime): only the PYTORCH_ARITHMETIC passes, so nothing is legalized or moved for TensorRT."""
    return run_passes(model, [name for name in PASS_NAMES if name not in PYTORCH_ARITHMETIC])[0]


def export_like(graph: gs.Graph, source: onnx.ModelProto) -> onnx.ModelProto:
    """The graph as a model with the source model's opsets and IR version (graphsurgeon picks its own)."""
    out = gs.export_onnx(graph)
    del out.opset_import[:]
    out.opset_import.extend(source.opset_import)
    out.ir_version = source.ir_version
    return out
