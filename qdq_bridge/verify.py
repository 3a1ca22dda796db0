"""Stage 5, verify: run the PyTorch quantized model and the Q/DQ ONNX (ONNX Runtime) on the same inputs and
compare logits: top-1 agreement, accuracy of each where labels exist, max/mean absolute logit difference."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx
import torch
from torch import nn

from .data import Dataset
from .quantize import available_engines, quiet_torch_warnings, using_engine


@dataclass
class Comparison:
    """How far a candidate backend's logits are from the reference's on one dataset."""

    dataset: str
    reference: str
    candidate: str
    samples: int
    top1_agreement: float
    max_abs_diff: float
    mean_abs_diff: float
    reference_accuracy: float | None = None
    candidate_accuracy: float | None = None

    @property
    def accuracy_gap_points(self) -> float | None:
        """|accuracy difference| in percentage points, where the dataset has labels."""
        if self.reference_accuracy is None:
            return None
        return abs(self.reference_accuracy - self.candidate_accuracy) * 100

    def within(self, min_agreement: float, max_accuracy_gap_points: float) -> bool:
        return not self.failures(min_agreement, max_accuracy_gap_points)

    def failures(self, min_agreement: float, max_accuracy_gap_points: float) -> list[str]:
        """Each criterion this comparison misses, with its numbers, e.g. 'pytorch vs onnxruntime on digits-test:
        top-1 agreement 10.44% < 99.50%'."""
        pair = f"{self.reference} vs {self.candidate} on {self.dataset}"
        found = []
        if self.top1_agreement < min_agreement:
            found.append(f"{pair}: top-1 agreement {self.top1_agreement * 100:.2f}% < {min_agreement * 100:.2f}%")
        gap = self.accuracy_gap_points
        if gap is not None and gap > max_accuracy_gap_points + 1e-9:
            found.append(f"{pair}: accuracy gap {gap:.2f} points > {max_accuracy_gap_points:g} ({self.reference} "
                         f"{self.reference_accuracy * 100:.2f}%, {self.candidate} {self.candidate_accuracy * 100:.2f}%)")
        return found

    def as_dict(self) -> dict:
        return {**asdict(self), "accuracy_gap_points": self.accuracy_gap_points}


def run_torch(module: nn.Module, data: Dataset, batch_size: int = 64, engine: str | None = None) -> np.ndarray:
    """The model's float outputs, run with `engine`'s quantized kernels (default: the first of
    quantize.ENGINE_ORDER; use the engine the weights were packed for, as `LoadedModel.engine` says)."""
    with using_engine(engine or available_engines()[0]), torch.no_grad(), quiet_torch_warnings():
        return np.concatenate([module(torch.from_numpy(b)).float().numpy() for b in data.batches(batch_size)])


def run_onnxruntime(model: onnx.ModelProto | str, data: Dataset, batch_size: int = 64,
                    optimize: bool = True) -> np.ndarray:
    """The model's first output on ONNX Runtime's CPU. optimize=False turns graph optimizations off, so Q/DQ
    pairs are not fused into integer kernels and every op computes in float on dequantized values."""
    import onnxruntime as ort

    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    static_batch = session.get_inputs()[0].shape[0]
    if isinstance(static_batch, int):  # a static-batch export runs one sample at a time
        batch_size = static_batch
    return np.concatenate([session.run(None, {name: b})[0] for b in data.batches(batch_size)])


def compare(reference: np.ndarray, candidate: np.ndarray, data: Dataset, reference_name: str,
            candidate_name: str) -> Comparison:
    """Top-1 agreement counts a candidate's class as agreeing when it is one of the reference's largest logits:
    int8 logits often tie exactly, and then the reference's own top-1 is just the lowest tied index."""
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    ref_top1, cand_top1 = reference.argmax(1), candidate.argmax(1)
    agrees = reference[np.arange(len(reference)), cand_top1] == reference.max(1)
    result = Comparison(data.name, reference_name, candidate_name, len(data), float(agrees.mean()),
                        float(diff.max()), float(diff.mean()))
    if data.y is not None:
        result.reference_accuracy = float((ref_top1 == data.y).mean())
        result.candidate_accuracy = float((cand_top1 == data.y).mean())
    return result


def quantized_tensors(model: onnx.ModelProto) -> list[tuple[str, float]]:
    """(tensor, scale) for every activation entering a QuantizeLinear, in graph order, each tensor once (a
    tensor read by two Qs, as a faithful ResNet's MaxPool output is, would be marked as an engine output twice,
    which TensorRT refuses): the points where backends should agree to within a quantization step or so."""
    constants = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    graph_inputs = {i.name for i in model.graph.input}
    found: dict[str, float] = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in constants and node.input[0] not in graph_inputs:
            scale = constants.get(node.input[1])
            if scale is not None and scale.size == 1:
                found.setdefault(node.input[0], float(scale))
    return list(found.items())


def run_onnxruntime_tensors(model: onnx.ModelProto, names: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
    """Values of intermediate tensors, made graph outputs for one ONNX Runtime run."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend([onnx.ValueInfoProto(name=name) for name in names])
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    values = session.run(names, {session.get_inputs()[0].name: x})
    return dict(zip(names, values))


def first_divergences(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                      tensors: list[tuple[str, float]], steps: float = 2.0, limit: int = 5) -> list[dict]:
    """The first tensors (graph order) where candidate and reference differ by more than `steps` quantization
    steps: where to look when an engine disagrees."""
    found = []
    for name, scale in tensors:
        if name not in reference or name not in candidate or reference[name].shape != candidate[name].shape:
            continue
        diff = np.abs(reference[name].astype(np.float64) - candidate[name].astype(np.float64))
        if diff.max() > steps * scale:
            found.append({"tensor": name, "max_abs_diff": float(diff.max()), "steps": float(diff.max() / scale),
                          "fraction_over": float((diff > steps * scale).mean())})
            if len(found) == limit:
                break
    return found
