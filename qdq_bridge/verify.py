"""Stage 5, verify: run the PyTorch quantized model and the Q/DQ ONNX (ONNX Runtime) on the same inputs and
compare logits: top-1 agreement, accuracy of each where labels exist, max/mean absolute logit difference."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx
import torch
from torch import nn

from .data import Dataset
from .quantize import QUANT_ENGINE, quiet_torch_warnings


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
        gap = self.accuracy_gap_points
        return self.top1_agreement >= min_agreement and (gap is None or gap <= max_accuracy_gap_points + 1e-9)

    def as_dict(self) -> dict:
        return {**asdict(self), "accuracy_gap_points": self.accuracy_gap_points}


def run_torch(module: nn.Module, data: Dataset, batch_size: int = 64) -> np.ndarray:
    torch.backends.quantized.engine = QUANT_ENGINE
    with torch.no_grad(), quiet_torch_warnings():
        return np.concatenate([module(torch.from_numpy(b)).float().numpy() for b in data.batches(batch_size)])


def run_onnxruntime(model: onnx.ModelProto | str, data: Dataset, batch_size: int = 64) -> np.ndarray:
    import onnxruntime as ort

    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    static_batch = session.get_inputs()[0].shape[0]
    if isinstance(static_batch, int):  # a static-batch export runs one sample at a time
        batch_size = static_batch
    return np.concatenate([session.run(None, {name: b})[0] for b in data.batches(batch_size)])


def compare(reference: np.ndarray, candidate: np.ndarray, data: Dataset, reference_name: str,
            candidate_name: str) -> Comparison:
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    ref_top1, cand_top1 = reference.argmax(1), candidate.argmax(1)
    result = Comparison(data.name, reference_name, candidate_name, len(data), float((ref_top1 == cand_top1).mean()),
                        float(diff.max()), float(diff.mean()))
    if data.y is not None:
        result.reference_accuracy = float((ref_top1 == data.y).mean())
        result.candidate_accuracy = float((cand_top1 == data.y).mean())
    return result
