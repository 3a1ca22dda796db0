"""qdq_bridge: PyTorch eager-mode quantized models -> TensorRT-legal Q/DQ ONNX, with parity checks.

Library API (the CLI is a thin layer over it):
    convert(model_path, output_dir, ConvertOptions(...))  the whole pipeline
    load_model, export_onnx, run_passes, lint_model        the stages one by one

Each name is imported on first use (PEP 562), so that `python -m qdq_bridge lint` and `passes`, and the ONNX side
(`qdq_bridge.graph.passes`, `qdq_bridge.graph.lint`), start without importing torch.
"""
from __future__ import annotations

import importlib

from .errors import BridgeError

_HOMES = {"ConvertOptions": "options", "ConvertResult": "pipeline", "convert": "pipeline", "PASSES": "graph.passes",
          "run_passes": "graph.passes", "Preprocessing": "data.preprocessing", "export_onnx": "export.exporter",
          "lint_model": "graph.lint", "load_model": "pytorch.load", "save_torchscript": "pytorch.load",
          "as_torch_module": "trt.engine", "assert_parity": "testing.parity"}

__all__ = ["BridgeError", *sorted(_HOMES)]
__version__ = "0.5.0"


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'qdq_bridge' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
