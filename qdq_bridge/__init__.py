"""qdq_bridge: PyTorch eager-mode quantized models -> TensorRT-legal Q/DQ ONNX, with parity checks.

Library API (the CLI is a thin layer over it):
    convert(model_path, output_dir, ConvertOptions(...))  the whole pipeline
    load_model, export_onnx, run_passes, lint_model        the stages one by one
"""
from .errors import BridgeError
from .export import export_onnx
from .images import Preprocessing
from .lint import lint_model
from .load import load_model, save_torchscript
from .passes import PASSES, run_passes
from .pipeline import ConvertOptions, ConvertResult, convert

__all__ = ["BridgeError", "ConvertOptions", "ConvertResult", "PASSES", "Preprocessing", "convert", "export_onnx",
           "lint_model", "load_model", "run_passes", "save_torchscript"]
__version__ = "0.1.0"
