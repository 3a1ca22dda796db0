"""PT2E side: PyTorch's successor to eager-mode quantization, a `torch.export` program quantized by torchao's
`prepare_pt2e` / `convert_pt2e`. `quantizer`: a TensorRT-legal quantizer for it; `program`: a saved program read,
checked and exported to Q/DQ ONNX.

Needs torchao (`pip install -e ".[pt2e]"`). May import torch, torchao and the base modules; never the ONNX or
TensorRT sides.
"""
