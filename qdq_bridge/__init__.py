"""qdq_bridge: PyTorch eager-mode quantized models -> TensorRT-legal Q/DQ ONNX, with parity checks.

Library API (the CLI is a thin layer over it):
    convert(model_path, output_dir, ConvertOptions(...))  the whole pipeline
    load_model, export_onnx, run_passes, lint_model        the stages one by one

Each name is imported on first use (PEP 562), so that `python -m qdq_bridge lint` and `passes`, and the ONNX side
(`qdq_bridge.passes`, `qdq_bridge.lint`), start without importing torch.
"""
from __future__ import annotations

import importlib

from .errors import BridgeError

_HOMES = {"ConvertOptions": "options", "ConvertResult": "pipeline", "convert": "pipeline", "PASSES": "passes",
          "run_passes": "passes", "Preprocessing": "preprocessing", "export_onnx": "export", "lint_model": "lint",
          "load_model": "load", "save_torchscript": "load"}

__all__ = ["BridgeError", *sorted(_HOMES)]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'qdq_bridge' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
