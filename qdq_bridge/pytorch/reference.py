"""The PyTorch reference: which quantized CPU backend packs and runs the model, and a check that it computes
what the model means.

A quantized model's weights are packed for the backend in force when it is loaded or converted, and that
backend's kernels run it whatever backend is set later. Backends differ: on CPUs without AVX-512 VNNI, PyTorch's
x86/fbgemm kernels sum pairs of u8 x s8 products in int16 and saturate with full-range activations (the
examples' model fell to 10 % accuracy that way), and qnnpack refuses some Add scale ratios. So the backend is
chosen before anything is packed (`packing_backend`), every run sets it only for its own duration
(`using_backend`), and the reference is cross-checked (`cross_check`).

Exact integer semantics of a quantized convolution or linear layer (what TensorRT computes):
    acc = sum((x_q - x_zero_point) * w_q), accumulated in int32 without intermediate saturation
    y_q = clamp(round_half_to_even(acc * x_scale * w_scale / y_scale) + y_zero_point, 0, 255)
(`exact_quantized_linear`). Kernels multiply in float32, so an exact backend stays within one step of it.
Whole models are judged against ONNX Runtime running the exported Q/DQ graph with its graph optimizations
off: float32 arithmetic on dequantized values, within rounding of those semantics, and computed by neither
PyTorch backend.
"""
from __future__ import annotations

import copy
import io
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
import torch
from torch import nn

from ..data.arrays import Dataset
from ..data.sources import random_inputs
from ..errors import BridgeError, first_line
from .quantize import available_backends, first_conv_channels, quiet_torch_warnings, using_backend
from .runner import run_torch

# a reference backend deviates when its outputs sit this many output steps (mean) from the emulation...
DEVIATION_STEPS = 1.0
# ...and this many times further than the other backend's (legitimate backends differ by rounding only:
# 0.05-0.22 steps on the examples' model; fbgemm saturating: 74)
DEVIATION_RATIO = 2.0
CHECK_SAMPLES = 64  # labelled rows the cross-check runs, besides random inputs


def repack(module: nn.Module, backend: str) -> nn.Module:
    """A copy of a quantized model with its weights packed for `backend` (unpacked and packed again)."""
    with using_backend(backend), quiet_torch_warnings():
        if isinstance(module, torch.jit.ScriptModule):
            buffer = io.BytesIO()
            torch.jit.save(module, buffer)
            buffer.seek(0)
            return torch.jit.load(buffer, map_location="cpu")
        return copy.deepcopy(module)


def exact_quantized_linear(x_q: np.ndarray, x_zero_point: int, x_scale: float, w_q: np.ndarray, w_scale: float,
                           y_scale: float, y_zero_point: int) -> np.ndarray:
    """The exact integer semantics of a quantized linear layer without bias (module docstring), in int64."""
    acc = (x_q.astype(np.int64) - x_zero_point) @ w_q.astype(np.int64).T
    return np.clip(np.rint(acc * (x_scale * w_scale / y_scale)) + y_zero_point, 0, 255).astype(np.int64)


def probe_exactness(backend: str, seed: int = 0) -> int:
    """Largest distance, in output steps, between `backend`'s quantized linear layer and the exact integer
    semantics, on full-range uint8 activations and int8 weights (where int16 pair sums overflow)."""
    rng = np.random.default_rng(seed)
    w_q = rng.integers(-127, 128, (64, 256))
    x_q = rng.integers(0, 256, (32, 256))
    x_scale, w_scale, y_scale = 0.02, 0.01, 0.5
    with using_backend(backend), torch.no_grad(), quiet_torch_warnings():
        weight = torch.quantize_per_channel(torch.from_numpy(w_q * w_scale).float(),
                                            torch.full((64,), w_scale, dtype=torch.double),
                                            torch.zeros(64, dtype=torch.long), 0, torch.qint8)
        layer = torch.ao.nn.quantized.Linear(256, 64)
        layer.set_weight_bias(weight, None)
        layer.scale, layer.zero_point = y_scale, 128
        x = torch._make_per_tensor_quantized_tensor(torch.from_numpy(x_q.astype(np.uint8)), x_scale, 128)
        y_q = layer(x).int_repr().numpy().astype(np.int64)
    exact = exact_quantized_linear(x_q, 128, x_scale, w_q, w_scale, y_scale, 128)
    return int(np.abs(y_q - exact).max())


# ops whose outputs stay on their (first) input's grid: data movement, selection, clamping
GRID_PRESERVING = ("Flatten", "Reshape", "Identity", "Squeeze", "Unsqueeze", "Transpose", "DepthToSpace", "MaxPool",
                   "Relu", "Clip")


def output_step(model: onnx.ModelProto, output: str | None = None) -> float | None:
    """The quantization step of the network's output `output` (default: the first): the scale of the
    DequantizeLinear it comes from, through ops that keep its grid (GRID_PRESERVING); None when the output
    is computed in float."""
    scales = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    scales.update({node.output[0]: onnx.numpy_helper.to_array(node.attribute[0].t) for node in model.graph.node
                   if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value"})
    producers = {out: node for node in model.graph.node for out in node.output}
    node = producers.get(output or model.graph.output[0].name)
    while node is not None:
        if node.op_type == "DequantizeLinear":
            scale = scales.get(node.input[1])
            return float(scale) if scale is not None and scale.size == 1 else None
        if node.op_type not in GRID_PRESERVING:
            return None
        node = producers.get(node.input[0])
    return None


@dataclass
class Reference:
    """The PyTorch quantized model as the reference runs it: the module, the backend its weights are packed
    for and that runs it, and what the cross-check found (for the report)."""

    module: nn.Module
    backend: str
    packed_by: str
    notes: list[str] = field(default_factory=list)
    check: dict = field(default_factory=dict)
    # PyTorch's second quantized backend, which parity runs beside the candidates to show PyTorch's own spread:
    # (backend, the module repacked for it), where the cross-check found neither backend deviating
    peer: tuple[str, nn.Module] | None = None

    def run(self, data: Dataset, batch_size: int = 64, logits: str | None = None) -> np.ndarray:
        """The logits output (see runner.run_torch) on `data`."""
        return run_torch(self.module, data, batch_size, self.backend, logits)

    def as_dict(self) -> dict:
        return {"backend": self.backend, "packed_by": self.packed_by, "peer": self.peer[0] if self.peer else None,
                **self.check}


PROBE_BATCH = 8  # the checks run at most this many rows: the example batch of --input-shape may be any size


def _runs(module: nn.Module, backend: str, shape: tuple[int, ...]) -> str | None:
    """None when the model runs a zero batch of `shape` (at most PROBE_BATCH rows) on `backend`, else the error's
    reason: TorchScript's last line (its first only says that the interpreter failed), or the first line with
    what an internal assert says."""
    rows = min(shape[0], PROBE_BATCH)
    try:
        run_torch(module, Dataset("zeros", np.zeros((rows, *shape[1:]), np.float32)), rows, backend)
    except Exception as exc:  # kernel limits come as RuntimeErrors, TorchScript's own checks as torch.jit.Error
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        if len(lines) > 1 and "TorchScript interpreter" in lines[0]:
            return lines[-1].removeprefix("builtins.")
        return first_line(exc).split("please report a bug to PyTorch.")[-1].strip()
    return None


def runnable_reference(module: nn.Module, packed_by: str, input_shape: tuple[int, ...],
                       backends: tuple[str, ...] | None = None) -> Reference:
    """The reference on the backend the model was packed for, or, where that backend cannot run it (qnnpack's
    Add scale-ratio limits), on the next backend that can, repacked for it and said so. When no backend runs
    the model, the input shape does not fit it."""
    failures = {packed_by: _runs(module, packed_by, input_shape)}
    if failures[packed_by] is None:
        return Reference(module, packed_by, packed_by)
    for backend in available_backends(backends):
        if backend in failures:
            continue
        try:
            candidate = repack(module, backend)
        except RuntimeError as exc:
            failures[backend] = first_line(exc)
            continue
        failures[backend] = _runs(candidate, backend, input_shape)
        if failures[backend] is None:
            return Reference(candidate, backend, packed_by, notes=[
                f"PyTorch's {packed_by} backend cannot run this model ({failures[packed_by]}): the reference runs "
                f"on {backend}, the weights repacked for it"])
    channels = first_conv_channels(module, len(input_shape))
    if channels is not None and input_shape[1] != channels:
        raise BridgeError(f"input shape {input_shape} has {input_shape[1]} channels, and the model's first "
                          f"convolution takes {channels}-channel inputs", f"pass --input-shape N,{channels},H,W")
    raise BridgeError(f"input shape {input_shape} does not fit the model ({failures[packed_by]})",
                      "pass the right --input-shape N,C,H,W")


def check_sample(checks: list[Dataset], input_shape: tuple[int, ...]) -> Dataset:
    """What the cross-check runs: the first rows of the labelled data (where there is some) and 16 random
    inputs."""
    parts = [d.x[:CHECK_SAMPLES] for d in checks if d.y is not None][:1]
    parts.append(random_inputs(input_shape, 16, seed=7).x)
    return Dataset("reference check", np.concatenate(parts))


def cross_check(reference: Reference, sample: Dataset, emulate: Callable[[np.ndarray], np.ndarray],
                step: float | None, backends: tuple[str, ...] | None = None, logits: str | None = None) -> Reference:
    """Run the sample on the reference's backend and on the next backend of `backends` that runs the model, measure both
    against the emulation (ONNX Runtime, no graph optimizations, on the exported Q/DQ graph), and take the
    second backend when the first deviates and the second does not. Distances are in output quantization steps
    (`step`; 1 % of the largest emulated output where the output is float), on the `logits` output (`emulate`
    gives that one)."""
    emulated = emulate(sample.x)
    step = step or float(np.abs(emulated).max()) / 100 or 1.0
    primary = reference.run(sample, logits=logits)
    runs = {reference.backend: (reference.module, primary)}
    for backend in available_backends(backends):
        if backend == reference.backend:
            continue
        try:
            module = repack(reference.module, backend)
            runs[backend] = (module, run_torch(module, sample, 64, backend, logits))
            break
        except RuntimeError:
            continue  # that backend cannot run this model: try the next
    distances = {backend: _distance(outputs, emulated, step) for backend, (_, outputs) in runs.items()}
    reference.check = {"cross_check": {"samples": len(sample), "step": step, "backends": distances,
                                       "exactness_probe_steps": {e: probe_exactness(e) for e in runs}}}
    if len(runs) == 1:
        reference.notes.append(f"the PyTorch reference ({reference.backend}) was not cross-checked: no second "
                               "quantized backend runs this model")
        probe = reference.check["cross_check"]["exactness_probe_steps"][reference.backend]
        if probe > 1:
            reference.notes.append(f"{reference.backend}'s kernels are {probe} steps off exact int32 accumulation on "
                                   "a full-range int8 layer on this CPU: where PyTorch and ONNX Runtime disagree, "
                                   "suspect the reference, not the ONNX")
        return reference
    (first, first_d), (second, second_d) = list(distances.items())
    if _deviates(first_d, second_d):
        reference.notes.append(_deviation_note(first, first_d, second, second_d, reference.check, taken=True))
        reference.module, reference.backend = runs[second][0], second
        reference.check["deviating_backend"] = first
    elif _deviates(second_d, first_d):
        reference.notes.append(_deviation_note(second, second_d, first, first_d, reference.check, taken=False))
        reference.check["deviating_backend"] = second
    else:
        reference.peer = (second, runs[second][0])
    return reference


def _distance(outputs: np.ndarray, emulated: np.ndarray, step: float) -> dict:
    diff = np.abs(outputs.astype(np.float64) - emulated) / step
    return {"mean_steps": float(diff.mean()), "max_steps": float(diff.max()),
            "top1_agreement": float((outputs.argmax(1) == emulated.argmax(1)).mean()) if outputs.ndim == 2 else None}


def _deviates(mine: dict, other: dict) -> bool:
    return mine["mean_steps"] > DEVIATION_STEPS and mine["mean_steps"] > DEVIATION_RATIO * other["mean_steps"]


def _deviation_note(bad: str, bad_d: dict, good: str, good_d: dict, check: dict, taken: bool) -> str:
    probe = check["cross_check"]["exactness_probe_steps"]
    return (f"PyTorch's {bad} backend deviates from the model's exact integer semantics on this CPU: its outputs sit "
            f"{bad_d['mean_steps']:.1f} output steps (mean) from the Q/DQ graph's float emulation, {good}'s "
            f"{good_d['mean_steps']:.2f}; on a full-range int8 layer it is {probe[bad]} steps off exact int32 "
            f"accumulation ({good}: {probe[good]})" + (f"; the reference runs on {good}" if taken else ""))
