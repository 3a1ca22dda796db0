"""Helpers for users' own pytest parity checks (the project's tests use them too)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from torch import nn

from .data import Dataset
from .verify import Comparison, compare, run_onnxruntime, run_torch


def assert_parity(module: nn.Module, onnx_model: onnx.ModelProto | str | Path, data: Dataset | np.ndarray, *,
                  min_agreement: float = 0.995, max_accuracy_gap_points: float = 0.2,
                  batch_size: int = 64) -> Comparison:
    """Assert ONNX Runtime on `onnx_model` matches the PyTorch quantized `module` on `data`; return the numbers."""
    if isinstance(data, np.ndarray):
        data = Dataset("inputs", data.astype(np.float32))
    if isinstance(onnx_model, Path):
        onnx_model = str(onnx_model)
    result = compare(run_torch(module, data, batch_size), run_onnxruntime(onnx_model, data, batch_size), data,
                     "pytorch", "onnxruntime")
    assert result.within(min_agreement, max_accuracy_gap_points), (
        f"parity on {data.name}: top-1 agreement {result.top1_agreement:.4f} (min {min_agreement}), accuracy gap "
        f"{result.accuracy_gap_points} points (max {max_accuracy_gap_points}), max |diff| {result.max_abs_diff:.4g}")
    return result
