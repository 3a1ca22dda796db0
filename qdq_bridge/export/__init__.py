"""Export: PyTorch model -> ONNX with QuantizeLinear/DequantizeLinear. `exporter` picks and runs an exporter,
`structural` emits Q/DQ ONNX from a quantized module's structure (TorchScript and eager frontends), `outputs`
names every tensor of a model's outputs, the same in PyTorch, the ONNX and the engine.

May import torch, qdq_bridge.pytorch and qdq_bridge.graph.passes.
"""
