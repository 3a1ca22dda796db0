"""Export: PyTorch model -> ONNX with QuantizeLinear/DequantizeLinear. `exporter` picks and runs an exporter
(structural, or torch.onnx's TorchScript-based one), `structural` emits Q/DQ ONNX from a quantized module's
structure (TorchScript and eager frontends). Outputs are named as qdq_bridge.outputs says.

Imports the base modules, qdq_bridge.pytorch and qdq_bridge.graph.
"""
