"""TensorRT worker: builds engines and runs them, in a process of its own.

It imports only the standard library, numpy and `tensorrt`, so it runs under any interpreter that has TensorRT
(a TensorRT container, a separate virtualenv, the Python 3.9 of this project's GPU kit), which need not have
torch or onnx. The main process (`qdq_bridge.engine`) talks to it through files:

    python trt_worker.py REQUEST.json     -> writes the response JSON to request["response"]

Requests: {"command": "probe" | "build" | "infer", ...}; see the handlers below. Arrays travel as .npy files.
A crash or hang here can only take this process down; the main process reports it with this process's log.
Supports TensorRT 8.6 through 10.x by feature detection (no `X | Y` annotations: Python 3.9 runs this file).
"""
from __future__ import annotations

import ctypes
import json
import sys
import time

import numpy as np

try:
    import tensorrt as trt
except ImportError as exc:  # reported as a normal response so the main process can say how to fix it
    trt = None
    TRT_IMPORT_ERROR = str(exc)


# --- CUDA memory through the driver API (libcuda ships with the driver; no torch or cuda-python needed) -------

class Cuda:
    def __init__(self):
        self.lib = ctypes.CDLL("libcuda.so.1")
        self._check(self.lib.cuInit(0), "cuInit")
        device = ctypes.c_int()
        self._check(self.lib.cuDeviceGet(ctypes.byref(device), 0), "cuDeviceGet")
        self.context = ctypes.c_void_p()
        # the primary context is the one the CUDA runtime inside TensorRT uses
        self._check(self.lib.cuDevicePrimaryCtxRetain(ctypes.byref(self.context), device), "cuDevicePrimaryCtxRetain")
        self._check(self.lib.cuCtxSetCurrent(self.context), "cuCtxSetCurrent")
        self.stream = ctypes.c_void_p()
        self._check(self.lib.cuStreamCreate(ctypes.byref(self.stream), 0), "cuStreamCreate")

    @staticmethod
    def _check(status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"{what} failed with CUDA error {status}")

    def alloc(self, nbytes: int) -> int:
        pointer = ctypes.c_uint64()
        self._check(self.lib.cuMemAlloc_v2(ctypes.byref(pointer), ctypes.c_size_t(max(nbytes, 1))), "cuMemAlloc")
        return pointer.value

    def free(self, pointer: int) -> None:
        self.lib.cuMemFree_v2(ctypes.c_uint64(pointer))

    def to_device(self, pointer: int, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        self._check(self.lib.cuMemcpyHtoD_v2(ctypes.c_uint64(pointer), array.ctypes.data_as(ctypes.c_void_p),
                                             ctypes.c_size_t(array.nbytes)), "cuMemcpyHtoD")

    def to_host(self, array: np.ndarray, pointer: int) -> None:
        self._check(self.lib.cuMemcpyDtoH_v2(array.ctypes.data_as(ctypes.c_void_p), ctypes.c_uint64(pointer),
                                             ctypes.c_size_t(array.nbytes)), "cuMemcpyDtoH")

    def synchronize(self) -> None:
        self._check(self.lib.cuStreamSynchronize(self.stream), "cuStreamSynchronize")


# --- helpers ---------------------------------------------------------------------------------------------------

def _logger():
    return trt.Logger(trt.Logger.WARNING)


def features() -> dict:
    """What this TensorRT offers, by feature detection rather than version numbers."""
    creation = trt.NetworkDefinitionCreationFlag
    return {
        "version": trt.__version__,
        "explicit_batch_flag": hasattr(creation, "EXPLICIT_BATCH"),  # default and deprecated from TensorRT 10
        "strongly_typed": hasattr(creation, "STRONGLY_TYPED"),  # 9.1+
        "int8_flag": hasattr(trt.BuilderFlag, "INT8"),
        "fp16_flag": hasattr(trt.BuilderFlag, "FP16"),
        "execute_v3": hasattr(trt.IExecutionContext, "execute_async_v3"),
        "engine_inspector": hasattr(trt.ICudaEngine, "create_engine_inspector"),
    }


def _io_tensors(engine) -> list:
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    return [(n, engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT) for n in names]


def _layer_report(engine) -> dict:
    inspector = engine.create_engine_inspector()
    text = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    return json.loads(text, strict=False)  # TensorRT 8.6 can put control characters in layer names


# --- handlers --------------------------------------------------------------------------------------------------

def probe(request: dict) -> dict:
    builder = trt.Builder(_logger())
    return {"features": features(), "fast_int8": bool(builder.platform_has_fast_int8),
            "fast_fp16": bool(builder.platform_has_fast_fp16)}


def build(request: dict) -> dict:
    """ONNX -> serialized engine (+ layer report JSON, + timing cache)."""
    logger = _logger()
    builder = trt.Builder(logger)
    feats = features()
    flags = 0
    if feats["explicit_batch_flag"]:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    precision = request["precision"]
    strongly_typed = precision == "int8" and request.get("strongly_typed", False) and feats["strongly_typed"]
    if strongly_typed:  # types come from the Q/DQ graph itself; precision flags are then not allowed
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    with open(request["onnx"], "rb") as f:
        if not parser.parse(f.read()):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            return {"error": "TensorRT's ONNX parser rejected the model: " + "; ".join(errors)}
    for name in request.get("mark_outputs", []):
        tensor = _find_tensor(network, name)
        if tensor is not None and not tensor.is_network_output:
            network.mark_output(tensor)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(request.get("workspace_mib", 4096)) << 20)
    if not strongly_typed:
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
        if precision == "fp16" or request.get("fp16_fallback"):
            config.set_flag(trt.BuilderFlag.FP16)
    if feats["engine_inspector"]:
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = list(tensor.shape)
        if any(d < 0 for d in shape):
            pick = lambda batch: tuple(batch if d < 0 else d for d in shape)  # noqa: E731
            profile.set_shape(tensor.name, pick(request["min_batch"]), pick(request["opt_batch"]),
                              pick(request["max_batch"]))
    config.add_optimization_profile(profile)
    cache_path = request.get("timing_cache")
    cache_bytes = b""
    if cache_path:
        try:
            with open(cache_path, "rb") as f:
                cache_bytes = f.read()
        except FileNotFoundError:
            pass
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)

    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        return {"error": "TensorRT could not build the engine (see the worker log above)"}
    with open(request["engine"], "wb") as f:
        f.write(serialized)
    if cache_path:
        with open(cache_path, "wb") as f:
            f.write(memoryview(config.get_timing_cache().serialize()))
    response = {"build_seconds": seconds, "strongly_typed": bool(strongly_typed), "features": feats,
                "engine_bytes": int(serialized.nbytes)}
    if feats["engine_inspector"] and request.get("layers"):
        engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
        with open(request["layers"], "w") as f:
            json.dump(_layer_report(engine), f, indent=1)
    return response


def _find_tensor(network, name: str):
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for j in range(layer.num_outputs):
            if layer.get_output(j).name == name:
                return layer.get_output(j)
    return None


def infer(request: dict) -> dict:
    """Run the engine on a .npy batch file, in chunks of at most max_batch; write each output as .npy."""
    logger = _logger()
    with open(request["engine"], "rb") as f:
        engine = trt.Runtime(logger).deserialize_cuda_engine(f.read())
    if engine is None:
        return {"error": "TensorRT could not deserialize the engine (built by another TensorRT version or GPU?)"}
    cuda = Cuda()
    context = engine.create_execution_context()
    inputs = np.load(request["inputs"])
    tensors = _io_tensors(engine)
    input_name = next(n for n, is_input in tensors if is_input)
    output_names = [n for n, is_input in tensors if not is_input]
    chunk = int(request.get("batch_size", 64))
    results = {name: [] for name in output_names}
    elapsed = 0.0
    for start in range(0, len(inputs), chunk):
        batch = np.ascontiguousarray(inputs[start:start + chunk], dtype=np.float32)
        context.set_input_shape(input_name, batch.shape)
        pointers = {input_name: cuda.alloc(batch.nbytes)}
        cuda.to_device(pointers[input_name], batch)
        host = {}
        for name in output_names:
            shape = tuple(context.get_tensor_shape(name))
            dtype = trt.nptype(engine.get_tensor_dtype(name))
            host[name] = np.empty(shape, dtype)
            pointers[name] = cuda.alloc(host[name].nbytes)
        for name, pointer in pointers.items():
            context.set_tensor_address(name, pointer)
        began = time.perf_counter()
        if not context.execute_async_v3(cuda.stream.value or 0):
            return {"error": "TensorRT execution failed"}
        cuda.synchronize()
        elapsed += time.perf_counter() - began
        for name in output_names:
            cuda.to_host(host[name], pointers[name])
            results[name].append(host[name].astype(np.float32))
        for pointer in pointers.values():
            cuda.free(pointer)
    files = {}
    for index, name in enumerate(output_names):
        path = f"{request['outputs']}.{index}.npy"
        np.save(path, np.concatenate(results[name]))
        files[name] = path
    return {"outputs": files, "output_order": output_names, "seconds": elapsed}


HANDLERS = {"probe": probe, "build": build, "infer": infer}


def main(argv: list) -> int:
    with open(argv[1]) as f:
        request = json.load(f)
    if trt is None:
        response = {"error": f"cannot import tensorrt ({TRT_IMPORT_ERROR})", "missing_tensorrt": True}
    else:
        response = HANDLERS[request["command"]](request)
    with open(request["response"], "w") as f:
        json.dump(response, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
