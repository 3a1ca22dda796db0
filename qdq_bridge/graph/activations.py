"""What the exported model's activation quantization is, and what int8 can hold of it (ONNX side, before passes).

PyTorch's default eager qconfigs quantize activations affinely as quint8 around a zero-point z: x86/fbgemm with
reduce_range (calibrated onto 0..127), qnnpack over the full 0..255. The exporters keep PyTorch's uint8 Q/DQ for
them (symmetric ones, z = 128, come out as int8 with zero-point 0). Per quantizer:

- symmetric (z = 128, or int8 with zero-point 0): int8 at the same scale, exact;
- affine within int8 (z <= 127, and few values on the data above +127 steps: FULL_RANGE_SHARE): int8 at the same
  scale, exact up to those outliers (`passes.int8_zero_point` maps it and keeps PyTorch's floor at -z steps with
  a Max);
- full range (z > 128, or many values on the data above +127 steps, where PyTorch's uint8 goes on to 255 - z):
  int8 at that scale would clip what PyTorch keeps. Refused, unless re-quantized (`requantize`) to symmetric int8 over
  the same range: scale x max(z, 255 - z) / 127, a grid about twice as coarse.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

from .passes import (below_int8, constant_values, export_like, full_range_error, in_module, is_fixed_range_quantizer,
                     module_path, scale_of, zero_point)

INT8_MAX = 127
# A reduce_range calibration puts an activation's largest value at 127 - z steps, so values past +127 steps are
# data beyond the calibration's range (measured: 0.003 % on the digits example's x86 model, 0.12 % at a pooled
# Inception branch of GoogLeNet under x86 on 200 images, calibrated on 64); a full-range one puts its largest
# values up to 255 - z steps, and with them a share from tenths of a percent (a ReLU output's long tail) to 30 %
# (the digits model's input under qnnpack). One model has one qconfig: past FULL_RANGE_SHARE (or with z > 128) an
# activation is plainly full range, and in a model that has one, every activation past OUTLIER_SHARE is taken for
# full range too; in a model that has none, values past +127 steps are outliers, which the report counts and the
# parity checks judge.
FULL_RANGE_SHARE = 1e-2
OUTLIER_SHARE = 1e-3


@dataclass
class AffineActivation:
    node: str  # the QuantizeLinear
    tensor: str  # what it quantizes
    module: str
    scale: float
    zero_point: int  # uint8
    values_above_int8: int = 0  # on the data: values past +127 steps, which int8 at this scale saturates
    values_measured: int = 0
    full_range: bool = False  # set by `_classify`, over the whole model

    @property
    def share_above_int8(self) -> float:
        return self.values_above_int8 / max(self.values_measured, 1)

    @property
    def symmetric_scale(self) -> float:
        """Symmetric int8's scale over PyTorch's whole uint8 range around the zero-point."""
        return self.scale * max(self.zero_point, 255 - self.zero_point) / INT8_MAX


def _activation_qs(graph: gs.Graph) -> list[gs.Node]:
    """The qconfig's activation quantizers (not Sigmoid/Hardsigmoid's fixed grid, which a pass keeps in float)."""
    return [n for n in graph.nodes if n.op == "QuantizeLinear" and constant_values(n.inputs[0]) is None
            and len(n.inputs) > 2 and constant_values(n.inputs[2]) is not None and not is_fixed_range_quantizer(n)]


def scheme_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Activation quantizers by scheme: symmetric | affine (uint8 zero-point <= 127) | full_range (> 128)."""
    counts = {"symmetric": 0, "affine": 0, "full_range": 0}
    for q in _activation_qs(gs.import_onnx(model)):
        zp = zero_point(q)
        if zp.dtype == np.int8 or int(zp.ravel()[0]) == 128:
            counts["symmetric"] += 1
        else:
            counts["affine" if int(zp.ravel()[0]) <= 128 else "full_range"] += 1
    return counts


def affine_activations(model: onnx.ModelProto, batches: Iterable[np.ndarray]) -> list[AffineActivation]:
    """Every uint8 activation quantizer with a zero-point other than 128, with how many of its values on
    `batches` lie past int8's +127 steps (measured where the zero-point is <= 127; beyond 128 it is full range
    whatever the data)."""
    graph = gs.import_onnx(model)
    found = []
    for q in _activation_qs(graph):
        zp = zero_point(q)
        if zp.dtype == np.uint8 and zp.size == 1 and int(zp.ravel()[0]) != 128:
            found.append(AffineActivation(q.name, q.inputs[0].name, module_path(q), scale_of(q), int(zp.ravel()[0])))
    measured = [a for a in found if a.zero_point <= 128]
    if measured:
        _count_values_above_int8(model, measured, batches)
    _classify(found)
    return found


def _classify(activations: list[AffineActivation]) -> None:
    """Which activations are full range (see FULL_RANGE_SHARE)."""
    plainly = [a.zero_point > 128 or a.share_above_int8 > FULL_RANGE_SHARE for a in activations]
    full_range_model = any(plainly)
    for activation, plain in zip(activations, plainly):
        activation.full_range = plain or (full_range_model and activation.share_above_int8 > OUTLIER_SHARE)


def _count_values_above_int8(model: onnx.ModelProto, activations: list[AffineActivation],
                             batches: Iterable[np.ndarray]) -> None:
    """Run the model (unoptimized ONNX Runtime: PyTorch's arithmetic) with each quantizer's uint8 output exposed."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    nodes = {n.name: n for n in probe.graph.node}
    outputs = [nodes[a.node].output[0] for a in activations]
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.UINT8, None)
                              for name in outputs)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3  # an all-affine model leaves the exporter's int8 zero-point unused: not news
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    for batch in batches:
        values = session.run(outputs, {feed: batch})
        for activation, q in zip(activations, values):
            activation.values_above_int8 += int(np.count_nonzero(q.astype(np.int16) - activation.zero_point > INT8_MAX))
            activation.values_measured += q.size


def refuse_full_range(activations: list[AffineActivation], program: bool = False) -> None:
    """One line naming the first full-range activation, how many more there are, and the two ways out (`program`:
    those for a PT2E program)."""
    full = [a for a in activations if a.full_range]
    if not full:
        return
    first = full[0]
    why = below_int8(first.zero_point) if first.zero_point > 128 else (
        f"{first.values_above_int8:,} of {first.values_measured:,} values on the data lie past int8's +127 steps, "
        f"where PyTorch's uint8 goes on to {255 - first.zero_point}")
    more = f" ({len(full) - 1} more such activations)" if len(full) > 1 else ""
    raise full_range_error(first.tensor, first.module, first.zero_point, first.scale, why + more, program)


def requantize(model: onnx.ModelProto, activations: list[AffineActivation]) -> onnx.ModelProto:
    """Each full-range activation's Q/DQ (and every other Q/DQ on the same uint8 grid: the same values re-gridded
    after pooling or reshaping) re-quantized to symmetric int8 over the same range."""
    grids = {(a.scale, a.zero_point): a.symmetric_scale for a in activations if a.full_range}
    graph = gs.import_onnx(model)
    for node in [n for n in graph.nodes if n.op in ("QuantizeLinear", "DequantizeLinear")]:
        scale, zp = constant_values(node.inputs[1]), zero_point(node) if len(node.inputs) > 2 else None
        if scale is None or zp is None or zp.dtype != np.uint8 or scale.size != 1 or zp.size != 1:
            continue
        new_scale = grids.get((float(scale.ravel()[0]), int(zp.ravel()[0])))
        if new_scale is not None and constant_values(node.inputs[0]) is None:
            node.inputs[1] = gs.Constant(f"{node.name}_requantized_scale", np.array(new_scale, np.float32))
            node.inputs[2] = gs.Constant(f"{node.name}_requantized_zero_point", np.zeros((), np.int8))
            if node.op == "QuantizeLinear":
                node.outputs[0].dtype = np.int8
    return export_like(graph.cleanup().toposort(), model)


def as_report(activations: list[AffineActivation], counts: dict[str, int], requantized: bool) -> dict:
    """report.json's "activations": the scheme counts of the exported model, and each affine activation."""
    return {"schemes": counts, "requantized": requantized,
            "affine": [asdict(a) | {"requantized_scale": a.symmetric_scale if requantized and a.full_range else None}
                       for a in activations]}


def notes(activations: list[AffineActivation], data: str, placement: str) -> list[str]:
    """What the report's notes say of the affine activations: how each kind was mapped, measured on `data`."""
    held = [a for a in activations if not a.full_range]
    full = [a for a in activations if a.full_range]
    lines = []
    if held:
        zero_points = sorted({a.zero_point for a in held})
        lines.append(f"{len(held)} affine activations (quint8, zero-points {', '.join(map(str, zero_points[:6]))}"
                     f"{'...' if len(zero_points) > 6 else ''}: as PyTorch's reduce_range defaults make them) map onto "
                     f"int8 at the same scale up to +127 steps; past it TensorRT saturates where PyTorch goes on to "
                     f"255 - zero-point: {sum(a.values_above_int8 for a in held):,} of "
                     f"{sum(a.values_measured for a in held):,} values on {data}; "
                     + ("the fast placement drops their floor at -zero-point steps (TensorRT saturates at -128)"
                        if placement == "fast" else "a Max keeps PyTorch's floor at -zero-point steps"))
    for a in full:
        lines.append(f"activation '{a.tensor}'{in_module(a.module)} re-quantized: full-range uint8 (zero_point="
                     f"{a.zero_point}, scale {a.scale:.4g}) -> symmetric int8, scale {a.symmetric_scale:.4g}; parity "
                     "below is against the unchanged PyTorch model")
    return lines
