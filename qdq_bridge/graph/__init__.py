"""ONNX side: graph surgery on Q/DQ ONNX with onnx-graphsurgeon. `passes` (the registry of (gs.Graph) -> gs.Graph
rewrites), `lint` (TensorRT's explicit-quantization rules), `precision` (which float ops keep float32 in an FP16
engine), `activations` (what each activation quantizer is: symmetric, affine within int8, full range).

Imports onnx, onnx-graphsurgeon, onnxruntime and numpy, never torch: `lint` and `passes` start without it.
"""
