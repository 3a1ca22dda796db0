"""PyTorch side: `load` (TorchScript, pickled modules, state_dicts with an architecture), `quantize` (qconfigs,
PTQ/QAT, PyTorch's quantized backends), `reference` (the PyTorch model parity is judged against), `models` (the
example's architecture).

May import torch, qdq_bridge.data and the base modules (errors, choices, outputs); never the ONNX or TensorRT
sides.
"""
import torch

from ..errors import BridgeError

try:
    import torch.ao.quantization  # noqa: F401 - eager-mode quantization, which this side reads
except ImportError as exc:  # a PyTorch past its removal (deprecated since 2.10; still present in 2.15)
    raise BridgeError(f"this PyTorch ({torch.__version__}) has no eager-mode quantization ({exc})",
                      "for eager-quantized models install torch 2.11 to 2.15, the versions qdq_bridge is tested on "
                      "(pip install 'torch<2.16'); PyTorch's successor is PT2E quantization (torchao.quantization."
                      "pt2e), which qdq_bridge does not read yet") from None
