"""ONNX side: graph surgery on Q/DQ ONNX with onnx-graphsurgeon. `passes` (the registry of (gs.Graph) -> gs.Graph
rewrites), `lint` (TensorRT's explicit-quantization rules), `precision` (which float ops keep float32 in an FP16
engine), `activations` (what each activation quantizer is: symmetric, affine within int8, full range), `runtime`
(ONNX Runtime computing what a graph defines).

Imports onnx, onnx-graphsurgeon, onnxruntime, numpy and the base modules; never torch, so `lint` and `passes`
start without it.
"""
