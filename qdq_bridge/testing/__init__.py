"""Helpers for users' tests and this project's tests and benchmarks: `parity` (assert_parity: a module and its
ONNX agree), `zoo` (torchvision's quantizable families, trained and quantized on the digits).
"""
