"""Helpers for users' own pytest parity checks (the project's tests use them too)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from torch import nn

from ..choices import SIGNIFICANCE
from ..data.arrays import Dataset
from ..graph.runtime import onnxruntime_runner
from ..pytorch.runner import torch_runner
from ..measures import Judging
from ..verify import Comparison, RunningComparison


def assert_parity(module: nn.Module, onnx_model: onnx.ModelProto | str | Path, data: Dataset | np.ndarray, *,
                  min_agreement: float = 0.995, max_accuracy_gap_points: float = 0.2,
                  significance: float = SIGNIFICANCE, logits: str | None = None, batch_size: int = 64,
                  judging: Judging | None = None, min_position_agreement: float = 0.99) -> Comparison:
    """Assert ONNX Runtime on `onnx_model` matches the PyTorch quantized `module` on `data`, every output judged by
    its kind (`judging`: kinds, class axes, steps; by default from the shapes, with labels and the headline taken on
    `logits`, default the first 2-D output) as `convert` judges them; return the numbers."""
    if isinstance(data, np.ndarray):
        data = Dataset("inputs", data.astype(np.float32))
    if isinstance(onnx_model, Path):
        onnx_model = str(onnx_model)
    reference, candidate = torch_runner(module), onnxruntime_runner(onnx_model)
    running = RunningComparison(data.name, "pytorch", "onnxruntime", judging or Judging(logits=logits), len(data))
    for x, labels in data.labelled_batches(batch_size):
        running.add(reference(x), candidate(x), labels)
    result = running.result()
    failures = result.failures(min_agreement, max_accuracy_gap_points, significance, min_position_agreement)
    assert not failures, "; ".join(failures) + f" (max |diff| {result.max_abs_diff})"
    return result
