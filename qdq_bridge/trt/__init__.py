"""TensorRT side: `engine` is the client (builds and runs engines through the worker, layer reports, an engine as
a torch module); `trt_worker` is the worker, a script that imports only the standard library, numpy and tensorrt,
so that it runs under any interpreter that has TensorRT (Python 3.9 on the GPU machine).
"""
