"""PyTorch side: `load` (TorchScript, pickled modules, state_dicts with an architecture), `quantize` (qconfigs,
PTQ/QAT, PyTorch's quantized backends), `reference` (the PyTorch model parity is judged against), `models` (the
example's architecture).

May import torch, qdq_bridge.data and the base modules (errors, choices, outputs); never the ONNX or TensorRT
sides.
"""
