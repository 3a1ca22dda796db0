"""Stage 2, export: the quantized model to ONNX with QuantizeLinear/DequantizeLinear.

torch 2.11 and 2.14 both still carry the TorchScript-based exporter (`dynamo=False`), the only torch exporter
that understands eager-mode quantized modules. What it produces for quint8-symmetric models (seen on 2.14):
uint8 Q/DQ with zero-point 128, a no-op Cast(to=uint8) between every Q and DQ, int32 biases behind a
DequantizeLinear whose zero-point is a ConstantOfShape->Cast chain, per-channel weight DQ on axis 0, and the
scales/zero-points as Constant nodes. The passes turn that into what TensorRT wants.
"""
from __future__ import annotations

import inspect
import io

import onnx
import torch
from torch import nn

from ..choices import DEFAULT_OPSET, EXPORTERS
from ..errors import BridgeError, first_line
from ..outputs import flatten_outputs
from ..pytorch.load import LoadedModel
from ..pytorch.quantize import quiet_torch_warnings
from .structural import export_structural

INPUT_NAME = "input"
EXPORTER_KEY = "qdq_bridge.exporter"


def _quantized_constant_chunk(g, tensor, chunks, dim):
    """`x.chunk(n, dim)` on a quantized tensor (ShuffleNetV2's channel split), which torch's own symbolic rejects:
    dequantize, Split, and quantize each part with the input's scale and zero-point (exact)."""
    from torch.onnx import symbolic_helper, symbolic_opset9

    if not symbolic_helper._is_tuple_construct(tensor):
        return symbolic_opset9.prim_constant_chunk(g, tensor, chunks, dim)
    value, scale, zero_point, _ = symbolic_helper.dequantize_helper(g, tensor)
    size = symbolic_helper._get_tensor_dim_size(next(tensor.node().inputs()), dim)
    part = (size + chunks - 1) // chunks
    sizes = g.op("Constant", value_t=torch.tensor([part] * (chunks - 1) + [size - part * (chunks - 1)]))
    parts = g.op("Split", value, sizes, axis_i=dim, outputs=chunks)
    return [symbolic_helper.quantize_helper(g, p, scale, zero_point) for p in parts]


def _register_symbolics(opset: int) -> None:
    torch.onnx.register_custom_op_symbolic("prim::ConstantChunk", _quantized_constant_chunk, opset)


def infer_input_shape(module: nn.Module) -> tuple[int, ...] | None:
    """(1, C, 224, 224) from the first 2-d convolution, or (1, in_features) from a leading Linear."""
    for sub in module.modules():
        weight = getattr(sub, "weight", None)
        weight = weight() if callable(weight) else weight
        if not isinstance(weight, torch.Tensor):
            continue
        if weight.dim() == 4:
            return (1, weight.shape[1] * getattr(sub, "groups", 1), 224, 224)
        if weight.dim() == 2:
            return (1, weight.shape[1])
        return None
    return None


def resolve_input_shape(loaded: LoadedModel, override: tuple[int, ...] | None) -> tuple[int, ...]:
    shape = override or loaded.input_shape
    if shape is None and not isinstance(loaded.module, torch.jit.ScriptModule):
        shape = infer_input_shape(loaded.module)
    if shape is None:
        raise BridgeError("the input shape of this model is unknown (no metadata in the file)",
                          "pass --input-shape N,C,H,W, e.g. --input-shape 1,3,224,224")
    return tuple(int(d) for d in shape)


def export_onnx(module: nn.Module, input_shape: tuple[int, ...], opset: int = DEFAULT_OPSET,
                dynamic_batch: bool = True, exporter: str = "auto") -> onnx.ModelProto:
    """The quantized model as Q/DQ ONNX (nothing written to disk), by `exporter`:
    structural: built from the model's structure and quantization parameters (qdq_bridge.export.structural; torch.fx
    for eager modules, the graph for TorchScript), no quantized kernel runs;
    torch: torch.onnx's TorchScript-based exporter, which runs the model;
    auto: structural, and torch.onnx where the structural exporter does not know an op.
    `exported_by(model)` says which one made it."""
    if opset < DEFAULT_OPSET:
        raise BridgeError(f"opset {opset} cannot express per-channel weight quantization",
                          f"use --opset {DEFAULT_OPSET} or newer")
    if exporter not in EXPORTERS:
        raise BridgeError(f"unknown exporter '{exporter}'", f"choose from {', '.join(EXPORTERS)}")
    used = "torch.onnx"
    if exporter != "torch":
        try:
            model = export_structural(module, input_shape, opset, dynamic_batch, INPUT_NAME)
            frontend = "TorchScript graph" if isinstance(module, torch.jit.ScriptModule) else "torch.fx"
            return stamped(model, f"structural ({frontend})")
        except BridgeError as exc:
            if exporter == "structural":
                raise
            used = f"torch.onnx (the structural exporter could not: {exc.problem})"
    return stamped(_export_torch(module, input_shape, opset, dynamic_batch), used)


def stamped(model: onnx.ModelProto, exporter: str) -> onnx.ModelProto:
    """The model, saying which exporter made it (`exported_by`)."""
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, EXPORTER_KEY: exporter})
    return model


def exported_by(model: onnx.ModelProto) -> str:
    return next((p.value for p in model.metadata_props if p.key == EXPORTER_KEY), "unknown")


def _export_torch(module: nn.Module, input_shape: tuple[int, ...], opset: int, dynamic_batch: bool) -> onnx.ModelProto:
    _register_symbolics(opset)
    buffer = io.BytesIO()
    example = torch.zeros(input_shape)
    # torch >= 2.5 takes `dynamo` (and from 2.9 defaults to the torch.export-based exporter, which cannot
    # express eager quantized modules); older releases have only the TorchScript-based one
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    try:
        with torch.no_grad(), quiet_torch_warnings():
            # torch.onnx flattens the outputs in the order qdq_bridge.outputs does, leaving None out: named alike
            names = list(flatten_outputs(module(example), lambda value: isinstance(value, torch.Tensor)))
            axes = {name: {0: "batch"} for name in (INPUT_NAME, *names)} if dynamic_batch else None
            torch.onnx.export(module, (example,), buffer, opset_version=opset, **legacy,
                              input_names=[INPUT_NAME], output_names=names, dynamic_axes=axes)
    except Exception as exc:  # the exporter raises many types; each is a model it cannot express
        raise BridgeError(f"torch.onnx could not export this model ({first_line(exc)})",
                          "quantized modules must be eager-mode torch.ao.nn.quantized ones; see the README's list of "
                          "supported modules") from None
    return onnx.load_from_string(buffer.getvalue())


def float_twin(model: onnx.ModelProto) -> onnx.ModelProto:
    """The Q/DQ model without quantization: weights dequantized into float initializers, activation Q/DQ pairs
    and the passes' rounding onto PyTorch's grids (Round) removed. It is the FP32/FP16 baseline with the very same
    weights, for engines built for comparison."""
    import onnx_graphsurgeon as gs

    from ..graph.passes import constant_values, dequantize_constant, export_like, reroute

    graph = gs.import_onnx(model)
    for dq in [n for n in graph.nodes if n.op == "DequantizeLinear"]:
        values = constant_values(dq.inputs[0])
        if values is not None:
            reroute(graph, dq.outputs[0], gs.Constant(dq.outputs[0].name + "_float", dequantize_constant(dq, values)))
        elif dq.inputs[0].inputs and dq.inputs[0].inputs[0].op == "QuantizeLinear":
            source = dq.inputs[0].inputs[0].inputs[0]
            if not reroute(graph, dq.outputs[0], source):  # a graph output keeps its name through an Identity
                dq.op, dq.attrs, dq.inputs = "Identity", {}, [source]
    for rounding in [n for n in graph.nodes if n.op == "Round"]:
        if not reroute(graph, rounding.outputs[0], rounding.inputs[0]):
            rounding.op = "Identity"
    return export_like(graph.cleanup().toposort(), model)
