"""Stage 2, export without running the model: Q/DQ ONNX built from an eager quantized module's structure.

torch.fx traces the module symbolically (quantized modules stay leaves; QFunctional's methods trace into
`torch.ops.quantized.*` calls with their scales as constants), and each node becomes ONNX: quantized
convolutions and linears as DequantizeLinear(int8 per-channel weights) -> Conv/Gemm -> QuantizeLinear/
DequantizeLinear at the module's output scale, quantized add/mul/cat as float ops followed by their
requantization, data movement as itself. Activations come out int8 with zero-point 0 directly (quint8's 128
and qint8's 0 are the same values), biases on PyTorch's int32 grid (scale = input scale x weight scale), as
PyTorch's kernels round them. No quantized kernel runs, so models PyTorch cannot execute (qint8 activations)
export too; static sizes (reshapes, adaptive pooling) come from ONNX shape inference of the graph so far.
"""
from __future__ import annotations

import collections
import operator
from dataclasses import dataclass

import numpy as np
import onnx
import torch
import torch.fx
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from ..errors import BridgeError
from ..outputs import flatten_outputs, named_tuple_fields
from ..pytorch.quantize import activation_dtype, quiet_torch_warnings

INT8_ZERO = "int8_zero_point"
UNSUPPORTED_FIX = ("use --exporter torch, or express it with the modules listed in the README (quantized conv, "
                   "linear, batch norm, QFunctional add/mul/cat, pooling, flatten/reshape)")


class Batch(int):
    """The batch dimension's size: kept symbolic (0 = 'copy from the input') when it lands in a Reshape."""


@dataclass(frozen=True)
class Grid:
    """A quantized activation's scale and its quint8 zero-point. 128 is symmetric: emitted as int8 with zero-point 0
    at once. Any other is affine: emitted as PyTorch has it (uint8, zero-point z), for `passes.int8_zero_point`
    to map onto int8 or refuse."""
    scale: float
    zero_point: int = 128


# eager mode's fixed qparams of Sigmoid and Hardsigmoid outputs: quint8 at scale 1/256, zero-point 0 ([0, 255/256])
FIXED_GRID = Grid(1 / 256, 0)


def _grid(scale: float | Grid) -> Grid:
    return scale if isinstance(scale, Grid) else Grid(float(scale))


@dataclass
class Value:
    name: str  # a float32 ONNX tensor
    scale: float | None = None  # the int8 grid its values lie on; None for plain float
    dequantized: bool = False  # it is a DequantizeLinear output (what TensorRT wants before a conv or GEMM)
    zero_point: int = 128  # PyTorch's quint8 zero-point for it (see Grid)

    @property
    def grid(self) -> Grid:
        return Grid(self.scale, self.zero_point)


def _is_quantized(module: nn.Module) -> bool:
    kind = type(module).__module__
    return kind.startswith("torch.ao.nn.quantized") or kind.startswith("torch.ao.nn.intrinsic.quantized")


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return _is_quantized(module) or super().is_leaf_module(module, qualified_name)


class _Builder:
    """Accumulates ONNX nodes and initializers; names nodes after the module they come from."""

    def __init__(self, input_shape: tuple[int, ...], input_name: str, dynamic_batch: bool, opset: int,
                 bias_rounding: str):
        self.bias_rounding = bias_rounding
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = [numpy_helper.from_array(np.zeros((), np.int8), INT8_ZERO)]
        self.opset = opset
        dims = ["batch" if dynamic_batch else input_shape[0], *input_shape[1:]]
        self.input = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, dims)
        self.batch = Batch(input_shape[0])
        self._used: set[str] = set()

    def unique(self, name: str) -> str:
        candidate, index = name, 0
        while candidate in self._used:
            index += 1
            candidate = f"{name}_{index}"
        self._used.add(candidate)
        return candidate

    def constant(self, where: str, values: np.ndarray) -> str:
        name = self.unique(f"{where}/const")
        self.initializers.append(numpy_helper.from_array(np.asarray(values), name))
        return name

    def node(self, where: str, op: str, inputs: list[str], **attrs) -> str:
        name = self.unique(f"{where}/{op}")
        self.nodes.append(helper.make_node(op, inputs, [f"{name}_output_0"], name=name, **attrs))
        return f"{name}_output_0"

    def quantized(self, where: str, tensor: str, scale: float | Grid) -> Value:
        """tensor -> QuantizeLinear -> DequantizeLinear on the grid of `scale`: int8 with zero-point 0 where it is
        symmetric, PyTorch's uint8 and zero-point where it is affine."""
        grid = _grid(scale)
        s = self.constant(where, np.array(grid.scale, np.float32))
        zero = INT8_ZERO if grid.zero_point == 128 else self.constant(where, np.array(grid.zero_point, np.uint8))
        q = self.node(where, "QuantizeLinear", [tensor, s, zero])
        return Value(self.node(where, "DequantizeLinear", [q, s, zero]), grid.scale, True, grid.zero_point)

    def dequantized_input(self, where: str, value: Value) -> str:
        """The value as a DQ output (re-gridding at its own scale is exact); refuses plain floats."""
        if value.dequantized:
            return value.name
        if value.scale is None:
            raise BridgeError(f"module '{where.strip('/').replace('/', '.')}' takes a float tensor where a quantized "
                              "one is expected", "add a QuantStub before it")
        return self.quantized(where, value.name, value.grid).name

    def weight(self, where: str, qweight: torch.Tensor) -> tuple[str, np.ndarray]:
        """int8 initializer + DequantizeLinear (per channel along the tensor's own axis); returns the DQ output and
        the float scales (one per output channel or a single one)."""
        values = qweight.int_repr().numpy().astype(np.int8)
        if qweight.qscheme() in (torch.per_channel_symmetric, torch.per_channel_affine):
            scales = qweight.q_per_channel_scales().numpy().astype(np.float32)
            zero_points = qweight.q_per_channel_zero_points().numpy()
            attrs = {"axis": int(qweight.q_per_channel_axis())}
        else:
            scales, zero_points, attrs = np.array(qweight.q_scale(), np.float32), np.array(qweight.q_zero_point()), {}
        if np.any(zero_points != 0):
            raise BridgeError(f"module '{where.strip('/').replace('/', '.')}' has affine int8 weights (zero-points "
                              f"{zero_points.ravel()[:4].tolist()})", "quantize weights per-channel symmetric "
                                                                      "(qdq_bridge.pytorch.quantize.trt_qconfig())")
        zeros = self.constant(where, np.zeros(scales.shape, np.int8))
        dq = self.node(where, "DequantizeLinear", [self.constant(where, values), self.constant(where, scales), zeros],
                       **attrs)
        return dq, scales

    def bias(self, where: str, bias: torch.Tensor | None, input_scale: float, weight_scales: np.ndarray,
             channels: int) -> str:
        """The float bias on the int32 grid of scale input scale x weight scale (float32, as ONNX computes it),
        rounded to nearest as PyTorch's kernels do, or toward zero as torch.onnx's exporter does (its Cast)."""
        values = np.zeros(channels, np.float32) if bias is None else bias.detach().float().numpy()
        grid = (np.float32(input_scale) * weight_scales.astype(np.float32)).reshape(-1)
        steps = np.rint(values / grid) if self.bias_rounding == "nearest" else np.trunc(values / grid)
        return self.constant(where, (steps * grid).astype(np.float32))

    def model(self, outputs: dict[str, str]) -> onnx.ModelProto:
        """The graph with `outputs` (ONNX output name -> tensor) as its outputs: each tensor takes its output's
        name, or is copied by an Identity where it is already an output or is the input."""
        batch = self.input.type.tensor_type.shape.dim[0].dim_param
        dims = {name: [batch or d if isinstance(d, Batch) else d for d in self.shape_of(tensor)]
                for name, tensor in outputs.items()}
        renamed = {}
        for name, tensor in outputs.items():
            if tensor in renamed or tensor == self.input.name:
                self.nodes.append(helper.make_node("Identity", [renamed.get(tensor, tensor)], [name],
                                                   name=self.unique(f"/{name}/Identity")))
                continue
            renamed[tensor] = name
            for node in self.nodes:
                for names in (node.input, node.output):
                    names[:] = [name if n == tensor else n for n in names]
        graph_outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, dims[name]) for name in outputs]
        graph = helper.make_graph(self.nodes, "qdq_bridge_structural", [self.input], graph_outputs, self.initializers)
        opsets = [helper.make_opsetid("", self.opset)]
        # the oldest IR version the opset allows: a newer onnx package writes a newer one than runtimes read
        return helper.make_model(graph, opset_imports=opsets, producer_name="qdq_bridge.structural",
                                 ir_version=helper.find_min_ir_version_for(opsets))

    def shape_of(self, tensor: str) -> list[int]:
        """Static dims of a tensor so far, by ONNX shape inference (the batch dim comes back as `Batch`)."""
        partial = helper.make_graph(self.nodes, "partial", [self.input],
                                    [helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None)], self.initializers)
        inferred = onnx.shape_inference.infer_shapes(helper.make_model(
            partial, opset_imports=[helper.make_opsetid("", self.opset)]))
        for info in [*inferred.graph.value_info, *inferred.graph.output]:
            if info.name == tensor and info.type.tensor_type.HasField("shape"):
                dims = info.type.tensor_type.shape.dim
                return [self.batch if d.dim_param or i == 0 and d.dim_value == self.batch else d.dim_value
                        for i, d in enumerate(dims)]
        raise BridgeError(f"the shape of '{tensor}' cannot be inferred", UNSUPPORTED_FIX)


def _where(dotted: str) -> str:
    return "/" + dotted.replace(".", "/")


def _module_name(where: str) -> str:
    return where.strip("/").replace("/", ".")


def _pair(value) -> list[int]:
    return list(value) if isinstance(value, (tuple, list)) else [value, value]


class _Ops(_Builder):
    """The ONNX of each quantized operation, whichever frontend found it."""

    # qint8 activations (zero-point 0) hold the same values as quint8 with zero-point 128
    zero_point_offset = 0

    def grid(self, scale, zero_point) -> Grid:
        """A quantized activation's grid from PyTorch's scale and zero-point, as quint8."""
        return Grid(float(scale), int(zero_point) + self.zero_point_offset)

    def weighted(self, where: str, x: Value, qweight: torch.Tensor, bias: torch.Tensor | None, scale: float | Grid,
                 relu: bool, conv: dict | None = None) -> Value:
        """Quantized conv (conv = its stride/padding/dilation/groups/transposed/output_padding) or linear."""
        x_name = self.dequantized_input(where, x)
        weight, weight_scales = self.weight(where, qweight)
        if conv is None:
            out = self.node(where, "Gemm", [x_name, weight, self.bias(where, bias, x.scale, weight_scales,
                                                                      qweight.shape[0])], transB=1)
        else:
            transposed, rank = conv["transposed"], qweight.dim() - 2
            channels = qweight.shape[1] * conv["groups"] if transposed else qweight.shape[0]
            # [-rank:]: TorchScript packs a Conv1d as a 2-d conv whose first spatial dim is 1
            attrs = dict(kernel_shape=list(qweight.shape[2:]), strides=list(conv["stride"])[-rank:],
                         dilations=list(conv["dilation"])[-rank:], pads=list(conv["padding"])[-rank:] * 2,
                         group=int(conv["groups"]))
            if transposed:
                attrs["output_padding"] = list(conv["output_padding"])[-rank:]
            out = self.node(where, "ConvTranspose" if transposed else "Conv",
                            [x_name, weight, self.bias(where, bias, x.scale, weight_scales, channels)], **attrs)
        return self.quantized(where, self.node(where, "Relu", [out]) if relu else out, scale)

    def batch_norm(self, where: str, x: Value, params: list[torch.Tensor], eps: float, scale: float | Grid,
                   relu: bool) -> Value:
        """params: weight, bias, running mean, running variance."""
        bn = self.node(where, "BatchNormalization", [self.dequantized_input(where, x), *(
            self.constant(where, t.detach().float().numpy()) for t in params)], epsilon=float(eps))
        return self.quantized(where, self.node(where, "Relu", [bn]) if relu else bn, scale)

    def activation(self, where: str, kind: str, x: Value, scale: float | Grid | None, alpha: float = 0.0) -> Value:
        """Hardswish/ELU/LeakyReLU (requantized at `scale`), ReLU/ReLU6 (on the input's grid), Sigmoid/Hardsigmoid
        (on eager mode's fixed uint8 grid, scale 1/256 and zero-point 0, as the torch exporter writes them; the pass
        fixed_range_outputs_on_pytorch_grid puts that grid in float ops, which int8 cannot hold)."""
        if kind == "Hardswish":  # opset 13 has no HardSwish: x * HardSigmoid(x) with PyTorch's 1/6 and 1/2
            out = self.node(where, "Mul", [x.name, self.node(where, "HardSigmoid", [x.name], alpha=1 / 6, beta=0.5)])
        elif kind == "ELU":
            out = self.node(where, "Elu", [x.name], alpha=float(alpha))
        elif kind == "LeakyReLU":
            out = self.node(where, "LeakyRelu", [x.name], alpha=float(alpha))
        elif kind == "ReLU":
            return Value(self.node(where, "Relu", [x.name]), x.scale, zero_point=x.zero_point)  # still grid values
        elif kind == "ReLU6":
            return self.clip(where, x, 0.0, 6.0)
        elif kind == "Hardsigmoid":
            return self.quantized(where, self.node(where, "HardSigmoid", [x.name], alpha=1 / 6, beta=0.5), FIXED_GRID)
        elif kind == "Sigmoid":
            return self.quantized(where, self.node(where, "Sigmoid", [x.name]), FIXED_GRID)
        else:
            raise BridgeError(f"activation {kind} at '{_module_name(where)}' has no structural ONNX translation",
                              UNSUPPORTED_FIX)
        return self.quantized(where, out, scale) if scale else Value(out)

    def clip(self, where: str, x: Value, low: float | None, high: float | None) -> Value:
        """ReLU6, hardtanh and clamp: PyTorch clamps a quantized tensor on its own grid, each bound first rounded
        onto that grid (and into uint8's range), so the result stays on the input's grid."""
        bounds = []
        for bound in (low, high):
            if bound is not None and x.scale:
                bound = (np.clip(np.rint(bound / x.scale) + x.zero_point, 0, 255) - x.zero_point) * x.scale
            bounds.append("" if bound is None else self.constant(where, np.array(bound, np.float32)))
        return Value(self.node(where, "Clip", [x.name, *bounds]), x.scale, zero_point=x.zero_point)

    def scalar_op(self, where: str, op: str, x: Value, other: float) -> Value:
        """QFunctional's add_scalar and mul_scalar as PyTorch's kernels compute them: no observer, the output grid
        derived from the input's. add_scalar shifts the zero-point by the scalar in steps (exact), or where that
        leaves uint8's range requantizes onto a wider grid; mul_scalar scales the grid (exact), mirrored for a
        negative factor."""
        if x.scale is None:
            raise BridgeError(f"{op} at '{_module_name(where)}' takes a float tensor", "add a QuantStub before it")
        low, high, z, s = 0, 255, x.zero_point, x.scale
        if op == "add_scalar":
            steps = int(np.rint(other / s))
            out = self.node(where, "Add", [x.name, self.constant(where, np.array(steps * s, np.float32))])
            if low <= z - steps <= high:
                return Value(out, s, zero_point=z - steps)
            shifted = z - steps
            wide = Grid((high - shifted) / (high - low) * s, low) if shifted < low else \
                Grid((shifted - low) / (high - low) * s, high)
            return self.quantized(where, out, wide)
        if op == "mul_scalar":
            out = self.node(where, "Mul", [x.name, self.constant(where, np.array(other, np.float32))])
            if other == 0:
                return Value(out, 1.0, zero_point=0)
            return Value(out, abs(other) * s, zero_point=z if other > 0 else high - (z - low))
        raise BridgeError(f"quantized op '{op}' at '{_module_name(where)}' has no structural ONNX translation",
                          UNSUPPORTED_FIX)

    def permute(self, where: str, x: Value, dims) -> Value:
        return Value(self.node(where, "Transpose", [x.name], perm=[int(d) for d in dims]), x.scale,
                     zero_point=x.zero_point)

    def pixel_shuffle(self, where: str, x: Value, factor: int, inverse: bool = False) -> Value:
        """pixel_shuffle as DepthToSpace in PyTorch's channel order (CRD); pixel_unshuffle as the reshape,
        transpose and reshape that invert it (ONNX's SpaceToDepth orders channels the other way)."""
        if not inverse:
            out = self.node(where, "DepthToSpace", [x.name], blocksize=int(factor), mode="CRD")
            return Value(out, x.scale, zero_point=x.zero_point)
        channels, height, width = self.shape_of(x.name)[1:]
        split = self.node(where, "Reshape", [x.name, self.constant(where, np.array(
            [0, channels, height // factor, factor, width // factor, factor], np.int64))])
        moved = self.node(where, "Transpose", [split], perm=[0, 1, 3, 5, 2, 4])
        out = self.node(where, "Reshape", [moved, self.constant(where, np.array(
            [0, channels * factor * factor, height // factor, width // factor], np.int64))])
        return Value(out, x.scale, zero_point=x.zero_point)

    def max_pool(self, where: str, x: Value, kernel, stride, padding, dilation, ceil_mode) -> Value:
        out = self.node(where, "MaxPool", [x.name], kernel_shape=_pair(kernel), strides=_pair(stride or kernel),
                        pads=_pair(padding) * 2, dilations=_pair(dilation), ceil_mode=int(ceil_mode))
        return Value(out, x.scale, zero_point=x.zero_point)  # a selection of grid values

    def requantized_like(self, where: str, x: Value, averaged: str) -> Value:
        """PyTorch's quantized averages round back onto their input's grid."""
        return self.quantized(where, averaged, x.grid) if x.scale else Value(averaged)

    def avg_pool(self, where: str, x: Value, kernel, stride, padding, ceil_mode, count_include_pad) -> Value:
        return self.requantized_like(where, x, self.node(
            where, "AveragePool", [x.name], kernel_shape=_pair(kernel), strides=_pair(stride or kernel),
            pads=_pair(padding) * 2, ceil_mode=int(ceil_mode), count_include_pad=int(count_include_pad)))

    def adaptive_avg_pool(self, where: str, x: Value, output_size) -> Value:
        size = _pair(output_size)
        if size == [1, 1]:
            return self.requantized_like(where, x, self.node(where, "GlobalAveragePool", [x.name]))
        height, width = self.shape_of(x.name)[2:]
        if height % size[0] or width % size[1]:
            raise BridgeError(f"adaptive average pooling at '{_module_name(where)}' from {height}x{width} to "
                              f"{size[0]}x{size[1]} is not a fixed-window pooling", UNSUPPORTED_FIX)
        window = [height // size[0], width // size[1]]
        return self.requantized_like(where, x, self.node(where, "AveragePool", [x.name], kernel_shape=window,
                                                         strides=window))

    def mean(self, where: str, x: Value, dims, keepdim) -> Value:
        axes = [dims] if isinstance(dims, int) else list(dims)
        return self.requantized_like(where, x, self.node(where, "ReduceMean", [x.name], axes=axes,
                                                         keepdims=int(bool(keepdim))))

    def flatten(self, where: str, x: Value, start: int = 0, end: int = -1) -> Value:
        if end != -1:
            raise BridgeError(f"flatten at '{_module_name(where)}' ends at dim {end}", UNSUPPORTED_FIX)
        if start == 0:
            return self.reshape(where, x, [-1])
        return Value(self.node(where, "Flatten", [x.name], axis=start), x.scale, zero_point=x.zero_point)

    def reshape(self, where: str, x: Value, sizes) -> Value:
        # the batch dim, where it stays first, is copied from the input (0) so the batch stays dynamic
        shape = [0 if i == 0 and isinstance(d, Batch) else int(d) for i, d in enumerate(sizes)]
        return Value(self.node(where, "Reshape", [x.name, self.constant(where, np.array(shape, np.int64))]), x.scale,
                     zero_point=x.zero_point)

    def transpose(self, where: str, x: Value, dim0: int, dim1: int) -> Value:
        perm = list(range(len(self.shape_of(x.name))))
        perm[dim0], perm[dim1] = perm[dim1], perm[dim0]
        return Value(self.node(where, "Transpose", [x.name], perm=perm), x.scale, zero_point=x.zero_point)

    def chunk(self, where: str, x: Value, chunks: int, dim: int) -> list[Value]:
        total = self.shape_of(x.name)[dim]
        name = self.unique(f"{where}/Split")
        outputs = [f"{name}_output_{i}" for i in range(chunks)]
        split = self.constant(where, np.array([total // chunks] * chunks, np.int64))
        self.nodes.append(helper.make_node("Split", [x.name, split], outputs, name=name, axis=int(dim)))
        return [Value(o, x.scale, zero_point=x.zero_point) for o in outputs]

    def quantized_op(self, where: str, op: str, inputs: list[Value], scale: float | Grid, dim: int = 0) -> Value:
        """QFunctional's add/add_relu/mul/mul_relu/cat: the float op on DQ'd inputs (TensorRT fuses a residual
        Add only with a DQ'd input), then requantization at `scale`."""
        names = [self.dequantized_input(where, v) if v.scale else v.name for v in inputs]
        if op in ("add", "add_relu", "mul", "mul_relu"):
            out = self.node(where, "Add" if op.startswith("add") else "Mul", names)
        elif op == "cat":
            out = self.node(where, "Concat", names, axis=int(dim))
        else:
            raise BridgeError(f"quantized op '{op}' at '{_module_name(where)}' has no structural ONNX translation",
                              UNSUPPORTED_FIX)
        return self.quantized(where, self.node(where, "Relu", [out]) if op.endswith("_relu") else out, scale)


# --- frontend 1: torch.fx, for eager modules --------------------------------------------------------------------

class _FxFrontend:
    """Each fx node through `_Ops`; quantized modules are leaves, QFunctional traces into torch.ops.quantized."""

    def __init__(self, module: nn.Module, ops: _Ops):
        self.module, self.ops = module, ops
        self.values: dict[torch.fx.Node, object] = {}

    def arg(self, a):
        if isinstance(a, torch.fx.Node):
            return self.values[a]
        if isinstance(a, (list, tuple)):
            return type(a)(self.arg(x) for x in a)
        if isinstance(a, dict):
            return {key: self.arg(x) for key, x in a.items()}
        return a

    def run(self, graph: torch.fx.Graph, input_value: Value) -> Value:
        for node in graph.nodes:
            if node.op == "placeholder":
                self.values[node] = input_value
            elif node.op == "output":
                return self.arg(node.args[0])
            else:
                handler = getattr(self, f"_{node.op}")
                self.values[node] = handler(node, *self.arg(tuple(node.args)), **self.arg(dict(node.kwargs)))
        raise BridgeError("the traced model has no output", UNSUPPORTED_FIX)

    def _call_module(self, node: torch.fx.Node, x, *rest):
        sub, ops = self.module.get_submodule(node.target), self.ops
        kind, where = type(sub).__name__, _where(node.target)
        quantized = _is_quantized(sub)
        if kind == "Quantize":
            return ops.quantized(where, x.name, ops.grid(sub.scale, sub.zero_point))
        if kind == "DeQuantize":
            return Value(x.name)
        if kind in ("Identity", "Dropout"):
            return x
        if quantized and kind.startswith(("Conv", "Linear")):
            if getattr(sub, "padding_mode", "zeros") != "zeros":
                raise BridgeError(f"module '{node.target}' pads with '{sub.padding_mode}'", "use zero padding")
            conv = None if kind.startswith("Linear") else dict(
                stride=sub.stride, padding=sub.padding, dilation=sub.dilation, groups=sub.groups,
                transposed=kind.startswith("ConvTranspose"), output_padding=getattr(sub, "output_padding", ()))
            return ops.weighted(where, x, sub.weight(), sub.bias(), ops.grid(sub.scale, sub.zero_point), "ReLU" in kind,
                                conv)
        if quantized and kind.startswith(("BatchNorm", "BNReLU")):
            return ops.batch_norm(where, x, [sub.weight, sub.bias, sub.running_mean, sub.running_var], sub.eps,
                                  ops.grid(sub.scale, sub.zero_point), "ReLU" in kind)
        if kind in ("Hardswish", "ELU", "LeakyReLU", "ReLU", "ReLU6", "Hardsigmoid", "Sigmoid"):
            alpha = getattr(sub, "alpha", getattr(sub, "negative_slope", 0.0))
            # nnq.ReLU6 keeps its input's grid: no qparams of its own
            grid = ops.grid(sub.scale, sub.zero_point) if quantized and hasattr(sub, "scale") else None
            return ops.activation(where, kind, x, grid, alpha)
        if kind.startswith("MaxPool"):
            return ops.max_pool(where, x, sub.kernel_size, sub.stride, sub.padding, sub.dilation, sub.ceil_mode)
        if kind.startswith("AdaptiveAvgPool"):
            return ops.adaptive_avg_pool(where, x, sub.output_size)
        if kind.startswith("AvgPool"):
            return ops.avg_pool(where, x, sub.kernel_size, sub.stride, sub.padding, sub.ceil_mode,
                                sub.count_include_pad)
        if kind == "Flatten":
            return ops.flatten(where, x, sub.start_dim, sub.end_dim)
        if kind == "Hardtanh":
            return ops.clip(where, x, sub.min_val, sub.max_val)
        if kind in ("PixelShuffle", "PixelUnshuffle"):
            return ops.pixel_shuffle(where, x, getattr(sub, "upscale_factor", getattr(sub, "downscale_factor", 1)),
                                     inverse=kind == "PixelUnshuffle")
        raise BridgeError(f"module '{node.target}' ({kind}) has no structural ONNX translation", UNSUPPORTED_FIX)

    def _call_function(self, node: torch.fx.Node, *args, **kwargs):
        target, where, ops = node.target, _where(node.name), self.ops
        op_name = getattr(target, "_qualified_op_name", "")
        if op_name.startswith("quantized::"):
            op = op_name.split("::")[-1]
            if op in ("add_scalar", "mul_scalar"):  # (x, scalar): no qparams, the kernel derives them
                return ops.scalar_op(where, op, args[0], float(args[1]))
            # quantized::cat(tensors, dim, scale, zero_point), quantized::add(a, b, scale, zero_point)
            first_qparam = 2
            grid = ops.grid(kwargs.get("scale", args[first_qparam] if len(args) > first_qparam else None),
                            kwargs.get("zero_point", args[first_qparam + 1] if len(args) > first_qparam + 1 else 128))
            if op == "cat":
                return ops.quantized_op(where, op, args[0], grid, kwargs.get("dim", args[1] if len(args) > 1 else 0))
            return ops.quantized_op(where, op, list(args[:2]), grid)
        if target is operator.getitem:
            return args[0][args[1]]
        if isinstance(target, type) and issubclass(target, tuple) and hasattr(target, "_fields"):
            return target(*args, **kwargs)  # a named tuple of outputs
        if target in (operator.floordiv, operator.mul, operator.add, operator.sub):
            return target(*args)
        if target is torch.flatten:
            return ops.flatten(where, *args, **kwargs)
        if target is torch.transpose:
            return ops.transpose(where, *args)
        if target is nn.functional.adaptive_avg_pool2d:
            return ops.adaptive_avg_pool(where, *args)
        if target is nn.functional.relu:
            return ops.activation(where, "ReLU", args[0], None)
        if target in (torch.clamp, torch.clip):
            return ops.clip(where, args[0], *_clamp_bounds(args[1:], kwargs))
        if target is nn.functional.hardtanh:
            return ops.clip(where, args[0], *(list(args[1:3]) + [-1.0, 1.0][len(args) - 1:])[:2])
        if target is nn.functional.relu6:
            return ops.clip(where, args[0], 0.0, 6.0)
        if target is torch.permute:
            return ops.permute(where, args[0], args[1] if len(args) == 2 else kwargs["dims"])
        if target in (nn.functional.pixel_shuffle, nn.functional.pixel_unshuffle):
            return ops.pixel_shuffle(where, args[0], args[1], inverse=target is nn.functional.pixel_unshuffle)
        raise BridgeError(f"function {getattr(target, '__name__', target)} at '{node.name}' has no structural ONNX "
                          "translation", UNSUPPORTED_FIX)

    def _call_method(self, node: torch.fx.Node, x, *args, **kwargs):
        method, where, ops = node.target, _where(node.name), self.ops
        if method == "size":
            shape = ops.shape_of(x.name)
            return shape[args[0]] if args else tuple(shape)
        if method in ("contiguous", "detach"):
            return x
        if method in ("view", "reshape"):
            return ops.reshape(where, x, args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args)
        if method == "flatten":
            return ops.flatten(where, x, *args, **kwargs)
        if method == "transpose":
            return ops.transpose(where, x, *args)
        if method == "chunk":
            return ops.chunk(where, x, args[0], kwargs.get("dim", args[1] if len(args) > 1 else 0))
        if method == "mean":
            return ops.mean(where, x, args[0] if args else kwargs["dim"],
                            kwargs.get("keepdim", args[1] if len(args) > 1 else False))
        if method == "dequantize":
            return Value(x.name)
        if method == "permute":
            return ops.permute(where, x, args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args)
        if method in ("clamp", "clip"):
            return ops.clip(where, x, *_clamp_bounds(args, kwargs))
        raise BridgeError(f"method .{method}() at '{node.name}' has no structural ONNX translation", UNSUPPORTED_FIX)


# --- frontend 2: the TorchScript graph, for .pt files ------------------------------------------------------------

# TorchScript's quantized ops: (ONNX op kind in `_Ops.quantized_op`, or None for the weighted ones)
_TS_CONV = {f"quantized::conv{d}d{relu}": bool(relu) for d in (1, 2, 3) for relu in ("", "_relu")}
_TS_CONV_TRANSPOSE = {f"quantized::conv_transpose{d}d" for d in (1, 2, 3)}
_TS_LINEAR = {"quantized::linear": False, "quantized::linear_relu": True}
_TS_ELEMENTWISE = {"quantized::add", "quantized::add_relu", "quantized::mul", "quantized::mul_relu"}
_TS_PASSTHROUGH = {"aten::contiguous", "aten::dropout", "aten::detach", "aten::clone"}


class _TorchScriptFrontend:
    """Each node of the frozen, inlined TorchScript graph through `_Ops`. Quantization parameters are constants
    there (freezing folds attributes), weights come out of the packed parameters; the shape checks that the
    quantized modules raise from (prim::If without outputs) are skipped."""

    def __init__(self, ops: _Ops):
        self.ops = ops
        self.values: dict[str, object] = {}

    def get(self, value: torch._C.Value):
        if value.debugName() in self.values:
            return self.values[value.debugName()]
        return value.toIValue()  # a constant

    def run(self, graph: torch._C.Graph, input_value: Value) -> Value:
        inputs = list(graph.inputs())
        self.values[inputs[-1].debugName()] = input_value  # inputs[0] is the module itself
        for node in self._needed(graph):
            outputs = self._node(node, node.kind(), [self.get(v) for v in node.inputs()])
            results = outputs if node.outputsSize() > 1 else [outputs]
            for value, result in zip(node.outputs(), results):
                self.values[value.debugName()] = result
        return self.get(next(iter(graph.outputs())))

    @staticmethod
    def _needed(graph: torch._C.Graph) -> list[torch._C.Node]:
        """The non-constant nodes the output depends on, in order: the modules' input checks (size/len/ne feeding
        a prim::If that raises) drop out."""
        needed = {v.debugName() for v in graph.outputs()}
        kept = []
        for node in reversed(list(graph.nodes())):
            if any(v.debugName() in needed for v in node.outputs()):
                needed.update(v.debugName() for v in node.inputs())
                if node.kind() != "prim::Constant":
                    kept.append(node)
        return kept[::-1]

    def _node(self, node: torch._C.Node, kind: str, args: list):
        ops, where = self.ops, self._where(node)
        if kind == "aten::quantize_per_tensor":
            return ops.quantized(where, args[0].name, ops.grid(args[1], args[2]))
        if kind == "aten::dequantize":
            return Value(args[0].name)
        if kind in _TS_CONV or kind in _TS_CONV_TRANSPOSE:
            packed = args[1]
            weight, bias = getattr(torch.ops.quantized, kind.split("::")[1].replace("_relu", "") + "_unpack")(packed)
            conv = dict(stride=packed.stride(), padding=packed.padding(), dilation=packed.dilation(),
                        groups=packed.groups(), transposed=bool(packed.transpose()),
                        output_padding=packed.output_padding())
            return ops.weighted(where, args[0], weight, bias, ops.grid(args[2], args[3]), _TS_CONV.get(kind, False),
                                conv)
        if kind in _TS_LINEAR:
            weight, bias = torch.ops.quantized.linear_unpack(args[1])
            return ops.weighted(where, args[0], weight, bias, ops.grid(args[2], args[3]), _TS_LINEAR[kind])
        if kind in _TS_ELEMENTWISE:
            return ops.quantized_op(where, kind.split("::")[1], args[:2], ops.grid(args[2], args[3]))
        if kind == "quantized::cat":
            return ops.quantized_op(where, "cat", args[0], ops.grid(args[2], args[3]), args[1])
        if kind in ("quantized::batch_norm2d", "quantized::batch_norm3d", "quantized::batch_norm2d_relu",
                    "quantized::batch_norm3d_relu"):
            return ops.batch_norm(where, args[0], args[1:5], args[5], ops.grid(args[6], args[7]),
                                  kind.endswith("_relu"))
        if kind == "quantized::hardswish":
            return ops.activation(where, "Hardswish", args[0], ops.grid(args[1], args[2]))
        if kind == "quantized::elu":
            return ops.activation(where, "ELU", args[0], ops.grid(args[1], args[2]), args[3])
        if kind in ("quantized::leaky_relu", "aten::leaky_relu"):
            return ops.activation(where, "LeakyReLU", args[0],
                                  ops.grid(args[3], args[4]) if len(args) > 4 else None, args[1])
        if kind in ("aten::relu", "aten::relu_"):
            return ops.activation(where, "ReLU", args[0], None)
        if kind in ("aten::hardtanh", "aten::hardtanh_", "aten::clamp", "aten::clamp_", "aten::clip"):
            return ops.clip(where, args[0], args[1], args[2])
        if kind == "quantized::relu6":
            return ops.clip(where, args[0], 0.0, 6.0)
        if kind in ("quantized::add_scalar", "quantized::mul_scalar"):
            return ops.scalar_op(where, kind.split("::")[1], args[0], float(args[1]))
        if kind == "aten::permute":
            return ops.permute(where, args[0], args[1])
        if kind in ("aten::pixel_shuffle", "aten::pixel_unshuffle"):
            return ops.pixel_shuffle(where, args[0], args[1], inverse=kind.endswith("unshuffle"))
        if kind in ("aten::hardsigmoid", "aten::hardsigmoid_", "aten::sigmoid", "aten::sigmoid_"):
            return ops.activation(where, "Hardsigmoid" if "hard" in kind else "Sigmoid", args[0], None)
        if kind in ("aten::max_pool1d", "aten::max_pool2d", "aten::max_pool3d"):
            return ops.max_pool(where, *args[:6])
        if kind in ("aten::avg_pool2d", "aten::avg_pool3d"):
            return ops.avg_pool(where, *args[:6])
        if kind in ("aten::adaptive_avg_pool2d", "aten::adaptive_avg_pool3d"):
            return ops.adaptive_avg_pool(where, args[0], args[1])
        if kind == "aten::mean":
            return ops.mean(where, args[0], args[1], args[2])
        if kind == "aten::flatten":
            return ops.flatten(where, *args[:3])
        if kind in ("aten::view", "aten::reshape"):
            return ops.reshape(where, args[0], args[1])
        if kind == "aten::transpose":
            return ops.transpose(where, *args[:3])
        if kind == "aten::chunk":
            return ops.chunk(where, args[0], args[1], args[2])
        if kind in _TS_PASSTHROUGH:
            return args[0]
        if kind == "aten::size":
            shape = ops.shape_of(args[0].name)
            return shape[args[1]] if len(args) > 1 else list(shape)
        if kind == "aten::__getitem__":
            return args[0][args[1]]
        if kind in ("aten::floordiv", "aten::mul", "aten::add", "aten::sub") and all(isinstance(a, int) for a in args):
            return {"aten::floordiv": operator.floordiv, "aten::mul": operator.mul, "aten::add": operator.add,
                    "aten::sub": operator.sub}[kind](*args)
        if kind in ("aten::Float", "aten::FloatImplicit", "aten::Int", "aten::IntImplicit", "aten::ScalarImplicit") \
                and isinstance(args[0], torch.Tensor):  # a frozen scale or zero-point tensor read as a number
            return (float if "Float" in kind else int)(args[0])
        if kind == "prim::TupleConstruct":
            fields = named_tuple_fields(node.output().type().str())
            return collections.namedtuple("Outputs", fields)(*args) if fields else tuple(args)
        if kind == "prim::ListConstruct":
            return list(args)
        if kind == "prim::DictConstruct":
            return dict(zip(args[::2], args[1::2]))
        if kind in ("prim::ListUnpack", "prim::TupleUnpack"):
            return tuple(args[0])
        if kind == "prim::TupleIndex":
            return args[0][args[1]]
        raise BridgeError(f"TorchScript op {kind} at '{_module_name(where)}' has no structural ONNX translation",
                          UNSUPPORTED_FIX)

    def _where(self, node: torch._C.Node) -> str:
        """The module path from the node's scope, or its output's name."""
        scope = node.scopeName().replace("__module.", "")
        return _where(scope) if scope else f"/{next(node.outputs()).debugName() if node.outputsSize() else node.kind()}"


def _clamp_bounds(args: tuple, kwargs: dict) -> tuple[float | None, float | None]:
    """clamp's (min, max), given by position or keyword, either possibly None."""
    bounds = list(args[:2]) + [None] * (2 - len(args[:2]))
    return kwargs.get("min", bounds[0]), kwargs.get("max", bounds[1])


BIAS_ROUNDINGS = ("nearest", "toward_zero")


def export_structural(module: nn.Module, input_shape: tuple[int, ...], opset: int = 13, dynamic_batch: bool = True,
                      input_name: str = "input", bias_rounding: str = "nearest") -> onnx.ModelProto:
    """Q/DQ ONNX of a quantized model (eager: torch.fx; TorchScript: its graph) from its structure and
    quantization parameters; no quantized kernel runs. Every tensor the model returns is an output, named as
    `qdq_bridge.outputs` says. Biases go onto their int32 grid rounding to nearest,
    as PyTorch's kernels do (measured closer to PyTorch), or toward zero, which reproduces torch.onnx's
    exporter bit for bit."""
    if bias_rounding not in BIAS_ROUNDINGS:
        raise BridgeError(f"unknown bias rounding '{bias_rounding}'", f"choose from {', '.join(BIAS_ROUNDINGS)}")
    ops = _Ops(input_shape, input_name, dynamic_batch, opset, bias_rounding)
    if activation_dtype(module) == "qint8":
        ops.zero_point_offset = 128
    try:
        with quiet_torch_warnings():
            if isinstance(module, torch.jit.ScriptModule):
                frozen = torch.jit.freeze(module.eval())
                graph = frozen.graph
                torch._C._jit_pass_inline(graph)
                output = _TorchScriptFrontend(ops).run(graph, Value(input_name))
            else:
                output = _FxFrontend(module, ops).run(_Tracer().trace(module), Value(input_name))
    except BridgeError:
        raise
    except Exception as exc:  # fx and TorchScript raise many types for code they cannot read symbolically
        raise BridgeError(f"the structural exporter cannot read this model ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''})", UNSUPPORTED_FIX) from None
    outputs = flatten_outputs(output, lambda value: isinstance(value, Value))
    if not outputs:
        raise BridgeError("the model returns no tensor", "return the logits (and any other outputs) as tensors")
    model = ops.model({name: value.name for name, value in outputs.items()})
    onnx.checker.check_model(model)
    return model
