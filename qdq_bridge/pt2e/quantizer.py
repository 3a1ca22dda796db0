"""A PT2E quantizer whose Q/DQ TensorRT takes as it is: per-channel symmetric int8 weights, per-tensor symmetric
int8 activations, and quantization points where TensorRT's explicit quantization fuses.

    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, convert_pt2e
    from qdq_bridge.pt2e.quantizer import TensorRTQuantizer
    batch = ({0: torch.export.Dim("batch", min=1)},)   # a dynamic batch, from 1
    graph = torch.export.export(model.eval(), (example,), dynamic_shapes=batch, strict=True).module()
    prepared = prepare_pt2e(graph, TensorRTQuantizer(placement="fast"))   # prepare_qat_pt2e(..., is_qat=True)
    for x in calibration_batches: prepared(x)
    torch.export.save(torch.export.export(convert_pt2e(prepared), (example,), dynamic_shapes=batch), "model.pt2")

Placements, as `--placement` says of eager models: "faithful" quantizes every convolution's and residual Add's
output, as PyTorch's eager modules do (FloatFunctional.add requantizes); "fast" leaves a convolution's output that
only feeds a residual Add float, so that TensorRT fuses convolution + Add (+ ReLU) into one INT8 layer with the
Add's other input dequantized from int8. Either way a ReLU or ReLU6 after a convolution or an Add takes the
quantization point (its bounds mean the same in float and int8), and pooling and reshaping share their input's scale (int8 in,
int8 out). Operators outside these stay float: TensorRT runs them in FP16 or FP32.
"""
from __future__ import annotations

import operator
from typing import Callable, Iterable

import torch
from torch.fx import GraphModule, Node
from torchao.quantization.pt2e import (FusedMovingAvgObsFakeQuantize, HistogramObserver,
                                       MovingAveragePerChannelMinMaxObserver, PerChannelMinMaxObserver,
                                       allow_exported_model_train_eval, move_exported_model_to_eval)
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e
from torchao.quantization.pt2e.quantizer import (QuantizationAnnotation, QuantizationSpec, Quantizer,
                                                 SharedQuantizationSpec)

from ..choices import PLACEMENTS

aten = torch.ops.aten
WEIGHTED = {aten.conv2d.default, aten.linear.default}
# ReLU and ReLU6: TensorRT fuses them into the convolution's epilogue; their bounds hold in float and in int8
RELUS = {aten.relu.default, aten.relu_.default, aten.hardtanh.default, aten.hardtanh_.default}
ADDS = {aten.add.Tensor, aten.add_.Tensor, operator.add}
BATCH_NORMS = {aten.batch_norm.default, aten._native_batch_norm_legit.default}  # QAT keeps them until convert
# int8 in, int8 out at the input's scale
SCALE_SHARING = {aten.max_pool2d.default, aten.adaptive_avg_pool2d.default, aten.avg_pool2d.default,
                 aten.flatten.using_ints, aten.reshape.default, aten.view.default}


def activation_spec(is_qat: bool) -> QuantizationSpec:
    """Per-tensor symmetric int8 over -128..127, zero-point 0: TensorRT's activation Q/DQ."""
    observer = FusedMovingAvgObsFakeQuantize if is_qat else HistogramObserver
    return QuantizationSpec(dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_symmetric,
                            observer_or_fake_quant_ctr=observer.with_args(eps=2 ** -12))


def weight_spec(is_qat: bool) -> QuantizationSpec:
    """Per-output-channel symmetric int8 over -127..127 (TensorRT's weight range: -128 has no positive twin)."""
    observer = (FusedMovingAvgObsFakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver, eps=2 ** -12)
                if is_qat else PerChannelMinMaxObserver.with_args(eps=2 ** -12))
    return QuantizationSpec(dtype=torch.int8, quant_min=-127, quant_max=127, qscheme=torch.per_channel_symmetric,
                            ch_axis=0, observer_or_fake_quant_ctr=observer)


class TensorRTQuantizer(Quantizer):
    """Annotates a `torch.export` graph for prepare_pt2e / prepare_qat_pt2e (module docstring)."""

    def __init__(self, placement: str = "fast", is_qat: bool = False):
        super().__init__()
        if placement not in PLACEMENTS:
            raise ValueError(f"placement '{placement}' is not one of {', '.join(PLACEMENTS)}")
        self.placement, self.is_qat = placement, is_qat
        self.activation, self.weight = activation_spec(is_qat), weight_spec(is_qat)

    def annotate(self, model: GraphModule) -> GraphModule:
        for node in list(model.graph.nodes):
            if node.op != "call_function":
                continue
            if node.target in WEIGHTED:
                self._weighted(node)
            elif node.target in ADDS and all(isinstance(a, Node) for a in node.args[:2]):
                self._add(node)
            elif node.target in SCALE_SHARING and isinstance(node.args[0], Node):
                self._share(node)
        return model

    def validate(self, model: GraphModule) -> None:
        pass

    def _weighted(self, node: Node) -> None:
        source, weight = node.args[0], node.args[1]
        _annotate(node, {source: self.activation, weight: self.weight})
        add = _only_user(node, ADDS)
        if self.placement == "fast" and add is not None and _fused_conv(add) is node:
            return  # float into the residual Add, which TensorRT fuses into this convolution
        _annotate(_fused_end(node), output=self.activation)

    def _add(self, node: Node) -> None:
        # in the fast placement one input may stay float: the convolution the Add fuses into; every other input
        # comes in int8 (faithful: both)
        fused = _fused_conv(node) if self.placement == "fast" else None
        inputs = {arg: self.activation for arg in node.args[:2] if arg is not fused}
        _annotate(node, inputs)
        _annotate(_fused_end(node), output=self.activation)

    def _share(self, node: Node) -> None:
        source = node.args[0]
        _annotate(node, {source: self.activation}, SharedQuantizationSpec((source, node)))


def _only_user(node: Node, targets: set) -> Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 and users[0].op == "call_function" and users[0].target in targets else None


def _fused_end(node: Node) -> Node:
    """The last node TensorRT fuses into `node`: its batch norm (QAT) and then its ReLU, each its only user."""
    end = node
    for targets in (BATCH_NORMS, RELUS):
        end = _only_user(end, targets) or end
    return end


def _fused_conv(add: Node) -> Node | None:
    """The convolution TensorRT can fuse a residual Add into: the first input that is a convolution (or linear)
    with nothing after it (no ReLU, no batch norm) and no other user. A second such input, as in a downsampling
    block, comes in int8."""
    return next((arg for arg in add.args[:2] if isinstance(arg, Node) and arg.op == "call_function"
                 and arg.target in WEIGHTED and _fused_end(arg) is arg and _only_user(arg, ADDS) is add), None)


def _annotate(node: Node, inputs: dict | None = None, output=None) -> None:
    """Merges into the node's annotation: input specs already there stay, an output spec is set once."""
    annotation = node.meta.setdefault("quantization_annotation", QuantizationAnnotation())
    for arg, spec in (inputs or {}).items():
        annotation.input_qspec_map.setdefault(arg, spec)
    if output is not None and annotation.output_qspec is None:
        annotation.output_qspec = output
    annotation._annotated = True


BATCH_LIMIT = 4096  # the largest batch of the programs made here: dynamic from 1, where the engine's profile starts


def _dynamic_batch(limit: int | None = None) -> tuple[dict]:
    return ({0: torch.export.Dim("batch", min=1, max=min(limit or BATCH_LIMIT, BATCH_LIMIT))},)


def quantize_pt2e(model: torch.nn.Module, example: torch.Tensor, batches: Iterable[torch.Tensor],
                  placement: str = "fast", train: Callable[[torch.nn.Module], None] | None = None
                  ) -> torch.export.ExportedProgram:
    """The module docstring's lines: PTQ on `batches`, or QAT where `train` is given (it runs on the prepared
    graph, which then calibrates on `batches` in eval mode); the converted program, batch dynamic, ready for
    torch.export.save and `convert`. `example` is a batch of at least 2 (torch.export takes 1 for a constant)."""
    qat = train is not None
    graph = torch.export.export(model.train(qat), (example,), dynamic_shapes=_dynamic_batch(), strict=True).module()
    prepared = (prepare_qat_pt2e if qat else prepare_pt2e)(graph, TensorRTQuantizer(placement, is_qat=qat))
    if qat:
        allow_exported_model_train_eval(prepared)  # training loops call model.train()
        train(prepared)
        move_exported_model_to_eval(prepared)
    return _calibrated_program(prepared, batches, example)


def quantize_program(program: torch.export.ExportedProgram, example: torch.Tensor, batches: Iterable[torch.Tensor],
                     placement: str = "fast", batch_limit: int | None = None) -> torch.export.ExportedProgram:
    """A float program (as torch.export.save wrote it, batch dynamic up to `batch_limit`, its own bound: export
    refuses a wider one) quantized by PTQ on `batches`."""
    return _calibrated_program(prepare_pt2e(program.module(), TensorRTQuantizer(placement)), batches, example,
                               batch_limit)


def _calibrated_program(prepared: GraphModule, batches: Iterable[torch.Tensor], example: torch.Tensor,
                        batch_limit: int | None = None) -> torch.export.ExportedProgram:
    with torch.no_grad():
        for batch in batches:
            prepared(batch)
    return torch.export.export(convert_pt2e(prepared), (example,), dynamic_shapes=_dynamic_batch(batch_limit))
