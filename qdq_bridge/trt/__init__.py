"""TensorRT side. `engine` is the client: it builds and runs engines through the worker, reads layer reports and
wraps an engine as a torch module. `stage` is a conversion's TensorRT stage (probe, the ONNX each engine is built
from, the INT8 and float engines), `divergence` the locator run when an engine fails parity that ONNX Runtime
passes. `trt_worker` is the worker: a script that imports only the standard library, numpy and tensorrt, so that
it runs under any interpreter that has TensorRT (Python 3.9 on the GPU machine).

Imports the base modules, qdq_bridge.data, qdq_bridge.graph and qdq_bridge.export.
"""
