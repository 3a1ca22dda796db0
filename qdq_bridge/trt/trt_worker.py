"""TensorRT worker: builds engines and runs them, in processes of its own.

It imports only the standard library, numpy and `tensorrt`, so it runs under any interpreter that has TensorRT
(a TensorRT container, a separate virtualenv, the Python 3.9 of this project's GPU kit), which need not have
torch or onnx. The main process (`qdq_bridge.trt.engine`) talks to it through files and a pipe:

    python trt_worker.py --loop     each line of input names a REQUEST.json; the worker writes the response JSON
                                    to request["response"] and answers with an empty line; it ends with its input

Requests: {"command": "probe" | "build" | "benchmark", ...}; see the handlers below. One process takes them all,
so TensorRT's import, CUDA's start and the builder's libraries are paid once a conversion. Running an engine is a
session instead (`serve`): one process keeps the engine, its execution context and device buffers, and takes
batch after batch through shared-memory files the two processes map, with a few bytes on a pipe per batch.
A crash or hang here can only take this process down; the main process reports it with this process's log.
Supports TensorRT 8.6 through 11.x by feature detection, and acts on it: a build is weakly typed (precision
builder flags: 8.6 to 10.x) or strongly typed (precisions from the ONNX itself: 9.1+, the only way from 11.x),
see `typings` and `_route`. No `X | Y` annotations: Python 3.9 runs this file.
"""
from __future__ import annotations

import ctypes
import importlib
import json
import os
import queue
import sys
import threading
import time
import traceback

import numpy as np
from trt_protocol import BATCH, COUNT, CUDA_ENV, BenchmarkResponse, BuildResponse, ProbeResponse  # the file beside this one

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

    def device_name(self) -> str:
        """The GPU's name and compute capability, e.g. "NVIDIA H100 80GB HBM3 sm_90": what a timing cache is
        valid for, with the TensorRT version."""
        device, name = ctypes.c_int(), ctypes.create_string_buffer(256)
        self._check(self.lib.cuCtxGetDevice(ctypes.byref(device)), "cuCtxGetDevice")
        self._check(self.lib.cuDeviceGetName(name, 256, device), "cuDeviceGetName")
        major, minor = ctypes.c_int(), ctypes.c_int()
        for value, attribute in ((major, 75), (minor, 76)):  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR/MINOR
            self._check(self.lib.cuDeviceGetAttribute(ctypes.byref(value), attribute, device), "cuDeviceGetAttribute")
        return f"{name.value.decode()} sm_{major.value}{minor.value}"

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

    def pin(self, array: np.ndarray) -> bool:
        """Page-locks host memory the process already has (a mapped file) so copies to and from it are DMA at
        full speed; False where the driver refuses (the copies then go through a staging buffer)."""
        return self.lib.cuMemHostRegister_v2(array.ctypes.data_as(ctypes.c_void_p), ctypes.c_size_t(array.nbytes),
                                             0) == 0

    def unpin(self, array: np.ndarray) -> None:
        self.lib.cuMemHostUnregister(array.ctypes.data_as(ctypes.c_void_p))

    def new_stream(self) -> ctypes.c_void_p:
        stream = ctypes.c_void_p()
        self._check(self.lib.cuStreamCreate(ctypes.byref(stream), 1), "cuStreamCreate")  # 1: CU_STREAM_NON_BLOCKING
        return stream

    def to_device_async(self, pointer: int, array: np.ndarray, stream: ctypes.c_void_p | None = None) -> None:
        self._check(self.lib.cuMemcpyHtoDAsync_v2(ctypes.c_uint64(pointer), array.ctypes.data_as(ctypes.c_void_p),
                                                  ctypes.c_size_t(array.nbytes), stream or self.stream),
                    "cuMemcpyHtoDAsync")

    def to_host_async(self, array: np.ndarray, pointer: int, stream: ctypes.c_void_p | None = None) -> None:
        self._check(self.lib.cuMemcpyDtoHAsync_v2(array.ctypes.data_as(ctypes.c_void_p), ctypes.c_uint64(pointer),
                                                  ctypes.c_size_t(array.nbytes), stream or self.stream),
                    "cuMemcpyDtoHAsync")

    def synchronize(self) -> None:
        self._check(self.lib.cuStreamSynchronize(self.stream), "cuStreamSynchronize")

    def event(self, timed: bool = True) -> ctypes.c_void_p:
        """A CUDA event; `timed=False` for one that only orders streams (cheaper: CU_EVENT_DISABLE_TIMING)."""
        event = ctypes.c_void_p()
        self._check(self.lib.cuEventCreate(ctypes.byref(event), 0 if timed else 2), "cuEventCreate")
        return event

    def record(self, event: ctypes.c_void_p, stream: ctypes.c_void_p | None = None) -> None:
        self._check(self.lib.cuEventRecord(event, stream or self.stream), "cuEventRecord")

    def wait(self, stream: ctypes.c_void_p | None, event: ctypes.c_void_p) -> None:
        """Work put on `stream` from now on starts after the event's last recording (at once if it has none)."""
        self._check(self.lib.cuStreamWaitEvent(stream or self.stream, event, 0), "cuStreamWaitEvent")

    def wait_host(self, event: ctypes.c_void_p) -> None:
        """Blocks this thread (not the process: ctypes releases the GIL) until the event's recording is done."""
        self._check(self.lib.cuEventSynchronize(event), "cuEventSynchronize")

    def make_current(self) -> None:
        """Makes this process's context current in the calling thread (each new thread needs it)."""
        self._check(self.lib.cuCtxSetCurrent(self.context), "cuCtxSetCurrent")

    def capture(self, enqueue) -> ctypes.c_void_p | None:
        """A CUDA graph of what `enqueue()` puts on the stream, instantiated; None where capture fails."""
        graph, instance = ctypes.c_void_p(), ctypes.c_void_p()
        if self.lib.cuStreamBeginCapture_v2(self.stream, 1) != 0:  # 1: thread-local capture mode
            return None
        try:
            enqueue()
        finally:
            ended = self.lib.cuStreamEndCapture(self.stream, ctypes.byref(graph))
        if ended != 0 or self.lib.cuGraphInstantiateWithFlags(ctypes.byref(instance), graph,
                                                              ctypes.c_ulonglong(0)) != 0:
            return None
        self.lib.cuGraphDestroy(graph)
        return instance

    def launch(self, instance: ctypes.c_void_p) -> None:
        self._check(self.lib.cuGraphLaunch(instance, self.stream), "cuGraphLaunch")

    def destroy(self, instance: ctypes.c_void_p) -> None:
        self.lib.cuGraphExecDestroy(instance)

    def elapsed_ms(self, start: ctypes.c_void_p, end: ctypes.c_void_p) -> float:
        self._check(self.lib.cuEventSynchronize(end), "cuEventSynchronize")
        ms = ctypes.c_float()
        self._check(self.lib.cuEventElapsedTime(ctypes.byref(ms), start, end), "cuEventElapsedTime")
        return ms.value


def make_cuda():
    """The CUDA helper: `Cuda` (the driver), or the stand-in class that $QDQ_BRIDGE_TRT_CUDA names as
    "module:Class" (the CPU tests' fake, beside their fake tensorrt)."""
    spec = os.environ.get(CUDA_ENV)
    if not spec:
        return Cuda()
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)()


# --- helpers ---------------------------------------------------------------------------------------------------

def _logger(verbose: bool = False):
    return trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)


def features() -> dict:
    """What this TensorRT offers, by feature detection rather than version numbers."""
    creation = trt.NetworkDefinitionCreationFlag
    return {
        "version": trt.__version__,
        "explicit_batch_flag": hasattr(creation, "EXPLICIT_BATCH"),  # needed by 8.x, ignored by 10.x, gone in 11.x
        "strongly_typed": hasattr(creation, "STRONGLY_TYPED"),  # 9.1+ (deprecated in 11.x: always on there)
        "int8_flag": hasattr(trt.BuilderFlag, "INT8"),  # precision flags: deprecated in 10.12, gone in 11.x
        "fp16_flag": hasattr(trt.BuilderFlag, "FP16"),
        "engine_inspector": hasattr(trt.ICudaEngine, "create_engine_inspector"),
        # implicit INT8 of a float network, scales from a calibrator: deprecated in 10.1, gone in 11.x
        "int8_calibrator": hasattr(trt, "IInt8EntropyCalibrator2") and hasattr(trt.IBuilderConfig, "int8_calibrator"),
    }


def typings(feats: dict) -> list:
    """The typings a build can have here, the one `auto` picks first: weak where the precision builder flags
    exist; strong where STRONGLY_TYPED exists or the flags do not (without them every network is strongly typed)."""
    weak = feats["int8_flag"] and feats["fp16_flag"]
    strong = feats["strongly_typed"] or not weak
    return [typing for typing, offered in (("strong", strong), ("weak", weak)) if offered]


class RouteError(Exception):
    """A build this TensorRT cannot do as asked; the message says what to ask instead."""


def _typing(feats: dict, asked: str) -> str:
    offered = typings(feats)
    if asked == "auto":
        return offered[0]
    if asked in offered:
        return asked
    if asked == "weak":
        raise RouteError(f"TensorRT {feats['version']} has no precision builder flags (BuilderFlag.INT8/FP16), so "
                         "no weakly typed build: ask for typing 'strong' or 'auto', which take precisions from the "
                         "ONNX (Q/DQ nodes for int8; an fp16 engine needs an fp16 ONNX)")
    if asked == "strong":
        raise RouteError(f"TensorRT {feats['version']} has no strongly typed networks (NetworkDefinitionCreationFlag"
                         ".STRONGLY_TYPED, TensorRT 9.1+): ask for typing 'weak' or 'auto'")
    raise RouteError(f"unknown typing '{asked}': ask for 'auto', 'strong' or 'weak'")


def _route(feats: dict, request: dict) -> dict:
    """Where the engine's precisions come from. Strongly typed: from the ONNX's own types (Q/DQ nodes for int8,
    fp16 tensors for fp16), no precision flag. Weakly typed: from builder flags, INT8 for the Q/DQ graph, FP16 for
    fp16 or as int8's fallback for layers left unquantized; fp32 sets none."""
    typing = _typing(feats, request.get("typing", "auto"))
    if typing == "strong":
        return {"typing": "strong", "flags": [], "precision_source": "onnx"}
    precision = request["precision"]
    flags = ["INT8"] if precision == "int8" else []
    if precision == "fp16" or (precision == "int8" and request.get("fp16_fallback")):
        flags.append("FP16")
    return {"typing": "weak", "flags": flags, "precision_source": "builder flags"}


def _network_flags(feats: dict, typing: str) -> list:
    """NetworkDefinitionCreationFlag names: EXPLICIT_BATCH where it exists; STRONGLY_TYPED for a strong build
    where weak typing is the alternative (where it is not, 11.x, every network is strongly typed and the flag is
    deprecated and ignored)."""
    names = ["EXPLICIT_BATCH"] if feats["explicit_batch_flag"] else []
    if typing == "strong" and "weak" in typings(feats):
        names.append("STRONGLY_TYPED")
    return names


def _bits(enum, names: list) -> int:
    bits = 0
    for name in names:
        bits |= 1 << int(getattr(enum, name))
    return bits


def _io_tensors(engine) -> list:
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    return [(n, engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT) for n in names]


def _layer_report(engine) -> dict:
    inspector = engine.create_engine_inspector()
    text = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    return json.loads(text, strict=False)  # TensorRT 8.6 can put control characters in layer names


# --- handlers --------------------------------------------------------------------------------------------------

def probe(request: dict) -> ProbeResponse:
    """Features, the typings a build can have (`auto` takes the first) and whether the GPU has fast INT8/FP16,
    null where TensorRT no longer says (11.x)."""
    builder = trt.Builder(_logger())
    feats = features()
    return {"features": feats, "typings": typings(feats), "fast_int8": _platform_has(builder, "int8"),
            "fast_fp16": _platform_has(builder, "fp16")}


def _platform_has(builder, precision: str):
    value = getattr(builder, f"platform_has_fast_{precision}", None)
    return None if value is None else bool(value)


def build(request: dict) -> BuildResponse:
    """ONNX -> serialized engine (+ layer report JSON, + timing cache); the response says how it was typed."""
    feats = features()
    try:
        route = _route(feats, request)
    except RouteError as exc:
        return {"error": str(exc)}
    logger = _logger(request.get("verbose_log", False))
    cache = _user_timing_cache(request, feats["version"])
    builder = trt.Builder(logger)
    network_flags = _network_flags(feats, route["typing"])
    network = builder.create_network(_bits(trt.NetworkDefinitionCreationFlag, network_flags))
    parser = trt.OnnxParser(network, logger)
    with open(request["onnx"], "rb") as f:
        if not parser.parse(f.read()):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            return {"error": "TensorRT's ONNX parser rejected the model: " + "; ".join(errors)}
    for name in request.get("mark_outputs", []):
        tensor = _find_tensor(network, name)
        if tensor is not None and not tensor.is_network_output:
            network.mark_output(tensor)
    config = _builder_config(builder, network, feats, route["flags"], request)
    float32_layers = _keep_float32(network, config, request.get("float32_layers") or [], route["flags"])
    calibrator = None
    if request.get("calibration_data"):
        if not (feats["int8_calibrator"] and "INT8" in route["flags"]):
            return {"error": f"TensorRT {feats['version']} offers no implicit INT8 calibration here (it needs "
                             "BuilderFlag.INT8, a weakly typed int8 build, and IInt8EntropyCalibrator2)"}
        calibrator = _calibrate(builder, network, config, request)

    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        return {"error": "the builder returned no engine"}
    with open(request["engine"], "wb") as f:
        f.write(serialized)
    if request.get("timing_cache"):  # replaced whole, so that builds running side by side never read half a cache
        partial = f"{request['timing_cache']}.{os.getpid()}"
        with open(partial, "wb") as f:
            f.write(memoryview(config.get_timing_cache().serialize()))
        os.replace(partial, request["timing_cache"])
    if feats["engine_inspector"] and request.get("layers"):
        engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
        with open(request["layers"], "w") as f:
            json.dump(_layer_report(engine), f, indent=1)
    response = {"build_seconds": seconds, "engine_bytes": int(serialized.nbytes), "features": feats,
                "network_flags": network_flags, "optimization_level": config.builder_optimization_level,
                "timing_cache": cache, "float32_layers": float32_layers, **route}
    if calibrator is not None:
        response["calibration"] = {"batches": calibrator.batches, "batch_size": calibrator.batch_size,
                                   "from_cache": calibrator.from_cache}
    return response


def _keep_float32(network, config, names: list, flags: list):
    """Layers named in `names` (ONNX node names, which the parser gives its layers) computed in float32 where the
    FP16 flag would let TensorRT pick float16 for them: their precision and output types set, with
    PREFER_PRECISION_CONSTRAINTS (a layer without a float32 kernel is then warned of, not fatal). A weakly typed
    build only: strongly typed ones take each tensor's type from the ONNX. {"asked", "set"}, or None."""
    if not names or "FP16" not in flags or "PREFER_PRECISION_CONSTRAINTS" not in trt.BuilderFlag.__members__:
        return None
    wanted, found = set(names), 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.name in wanted:
            layer.precision = trt.float32
            for output in range(layer.num_outputs):
                layer.set_output_type(output, trt.float32)
            found += 1
    config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    return {"asked": len(wanted), "set": found}


def _user_timing_cache(request: dict, version: str):
    """Where the build reads and writes its timing cache: the explicit request["timing_cache"], else a file in
    request["timing_cache_dir"] (the user's cache folder) named by the TensorRT version and the GPU, which a cache
    is valid for; that file's path is put in the request. {"file", "reused": whether it held timings already};
    None without a cache, or where the folder cannot be made (a read-only home: the build goes on without)."""
    folder = request.get("timing_cache_dir")
    if not request.get("timing_cache") and folder:
        key = "".join(c if c.isalnum() or c in "._-" else "-" for c in f"trt-{version}-{make_cuda().device_name()}")
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError:
            return None
        request["timing_cache"] = os.path.join(folder, f"{key}.cache")
    if not request.get("timing_cache"):
        return None
    return {"file": request["timing_cache"], "reused": os.path.isfile(request["timing_cache"])}


def _builder_config(builder, network, feats: dict, flags: list, request: dict):
    """Workspace, the optimization level, the route's precision flags (a weak route only, which exists only where
    they do), detailed layer information, the batch profile and the timing cache."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(request.get("workspace_mib", 4096)) << 20)
    if request.get("optimization_level") is not None:
        config.builder_optimization_level = int(request["optimization_level"])
    for name in flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
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
    cache = config.create_timing_cache(_read_cache(request.get("timing_cache")))
    config.set_timing_cache(cache, ignore_mismatch=False)
    return config


def _calibrate(builder, network, config, request: dict):
    """Implicit INT8: TensorRT's entropy calibrator over the .npy of float inputs at request["calibration_data"]
    (N, ...) in batches of request["calibration_batch"] (a trailing partial batch is left out), through one
    device buffer; the scales are read from and written to request["calibration_cache"] when given. Inputs with
    a dynamic batch get a calibration profile fixed at that batch. Returns the calibrator, which must outlive
    the build."""
    data = np.load(request["calibration_data"]).astype(np.float32)
    batch = max(1, min(int(request.get("calibration_batch") or 8), len(data)))
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(batch if d < 0 else d for d in tensor.shape)
        profile.set_shape(tensor.name, shape, shape, shape)
    config.set_calibration_profile(profile)
    calibrator = _entropy_calibrator(make_cuda(), data, batch, request.get("calibration_cache"))
    config.int8_calibrator = calibrator
    return calibrator


def _entropy_calibrator(cuda, data: np.ndarray, batch: int, cache_path):
    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batch_size, self.batches, self.from_cache = batch, 0, False
            self.pointer = cuda.alloc(data[:batch].nbytes)

        def get_batch_size(self):
            return self.batch_size

        def get_batch(self, names):
            start = self.batches * self.batch_size
            if start + self.batch_size > len(data):
                return None
            cuda.to_device(self.pointer, data[start:start + self.batch_size])
            self.batches += 1
            return [int(self.pointer)] * len(names)

        def read_calibration_cache(self):
            if cache_path and os.path.exists(cache_path):
                self.from_cache = True
                with open(cache_path, "rb") as f:
                    return f.read()
            return None

        def write_calibration_cache(self, cache):
            if cache_path:
                with open(cache_path, "wb") as f:
                    f.write(bytes(cache))

    return EntropyCalibrator()


def _read_cache(path) -> bytes:
    if path:
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            pass
    return b""


def _find_tensor(network, name: str):
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for j in range(layer.num_outputs):
            if layer.get_output(j).name == name:
                return layer.get_output(j)
    return None


def _load_engine(path: str):
    with open(path, "rb") as f:
        return trt.Runtime(_logger()).deserialize_cuda_engine(f.read())


NOT_DESERIALIZED = {"error": "TensorRT could not deserialize the engine (built by another TensorRT version or GPU?)"}


class Bindings:
    """Device buffers for one input batch and the outputs its shape gives, bound to the execution context."""

    def __init__(self, engine, context, cuda: Cuda, batch: np.ndarray):
        self.input_name = _input_name(engine)
        batch = np.ascontiguousarray(batch, _dtype(engine, self.input_name))  # fp16 where an fp16 ONNX says so
        self.output_names = [n for n, is_input in _io_tensors(engine) if not is_input]
        self.cuda, self.context = cuda, context
        context.set_input_shape(self.input_name, batch.shape)
        self.input = batch
        self.pointers = {self.input_name: cuda.alloc(batch.nbytes)}
        self.copy_in()
        self.host = {}
        for name in self.output_names:
            self.host[name] = np.empty(tuple(context.get_tensor_shape(name)), _dtype(engine, name))
            self.pointers[name] = cuda.alloc(self.host[name].nbytes)
        for name, pointer in self.pointers.items():
            context.set_tensor_address(name, pointer)

    def copy_in(self) -> None:
        self.cuda.to_device(self.pointers[self.input_name], self.input)

    def execute(self) -> None:
        if not self.context.execute_async_v3(self.cuda.stream.value or 0):
            raise RuntimeError("TensorRT execution failed")

    def outputs(self) -> dict:
        for name in self.output_names:
            self.cuda.to_host(self.host[name], self.pointers[name])
        return self.host

    def free(self) -> None:
        for pointer in self.pointers.values():
            self.cuda.free(pointer)


def _input_name(engine) -> str:
    return next(n for n, is_input in _io_tensors(engine) if is_input)


def _dtype(engine, name: str) -> type:
    return trt.nptype(engine.get_tensor_dtype(name))


def _engine_input(engine, batch_size: int, seed: int = 0) -> np.ndarray:
    name = _input_name(engine)
    shape = [batch_size, *list(engine.get_tensor_shape(name))[1:]]
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape).astype(_dtype(engine, name))


def _batch_range(engine, name: str) -> tuple:
    """The smallest and largest batch the engine takes: its profile's for a dynamic batch, else its fixed one."""
    batch = engine.get_tensor_shape(name)[0]
    if batch >= 0:
        return batch, batch
    lowest, _, highest = engine.get_tensor_profile_shape(name, 0)
    return lowest[0], highest[0]


class Slot:
    """One of a session's buffer sets: for each I/O tensor a file in the session's folder, mapped here and by the
    caller (page-locked where the driver allows), and a device buffer; the events that order its batch's upload,
    compute and download; its CUDA graph of a full batch, once captured."""

    def __init__(self, engine, context, cuda: Cuda, index: int, batch_size: int, folder: str):
        self.host, self.files, self.pointers, self.pinned = {}, {}, {}, []
        for number, (name, _) in enumerate(_io_tensors(engine)):
            shape = (batch_size, *tuple(context.get_tensor_shape(name))[1:])
            self.files[name] = f"{index}.{number}.bin"
            # a bare mapping, page-aligned as page-locking wants (an .npy header would shift the data)
            self.host[name] = np.memmap(os.path.join(folder, self.files[name]), _dtype(engine, name), "w+",
                                        shape=shape)
            self.pointers[name] = cuda.alloc(self.host[name].nbytes)
            if cuda.pin(self.host[name]):
                self.pinned.append(name)
        self.uploaded, self.computed, self.downloaded = (cuda.event(timed=False) for _ in range(3))
        self.graph, self.capture_tried = None, False

    def describe(self) -> list:
        return [{"name": name, "file": self.files[name], "dtype": array.dtype.str, "shape": list(array.shape)}
                for name, array in self.host.items()]

    def free(self, cuda: Cuda) -> None:
        if self.graph is not None:
            cuda.destroy(self.graph)
        for name in self.pinned:
            cuda.unpin(self.host[name])
        for pointer in self.pointers.values():
            cuda.free(pointer)


class Served:
    """One engine kept ready for batch after batch, in `slots` buffer sets, so that a batch's copies overlap
    another's compute: the upload of batch k (its own stream) runs while batch k-1 computes, its outputs come back
    on a third stream while batch k+1 computes. One execution context runs every slot's batch on the compute
    stream in turn; a full batch replays the slot's CUDA graph (captured after its first full batch, with its
    slot's buffers), a partial one is enqueued."""

    def __init__(self, engine, cuda: Cuda, batch_size: int, folder: str, slots: int = 2, cuda_graphs: bool = True):
        self.engine, self.cuda, self.context = engine, cuda, engine.create_execution_context()
        self.input_name = _input_name(engine)
        self.min_batch, highest = _batch_range(engine, self.input_name)
        self.batch_size = max(self.min_batch, min(batch_size, highest))
        self.context.set_input_shape(self.input_name,
                                     (self.batch_size, *tuple(engine.get_tensor_shape(self.input_name))[1:]))
        self.shape_batch, self.cuda_graphs = self.batch_size, cuda_graphs
        self.upload, self.download = cuda.new_stream(), cuda.new_stream()
        self.slots = [Slot(engine, self.context, cuda, index, self.batch_size, folder) for index in range(slots)]

    def describe(self) -> dict:
        return {"batch_size": self.batch_size, "input": self.input_name,
                "pinned": all(len(slot.pinned) == len(slot.host) for slot in self.slots),
                "slots": [slot.describe() for slot in self.slots]}

    def enqueue(self, index: int, count: int) -> None:
        """Puts the engine's run on the first `count` samples of slot `index`'s input file on the GPU (at least
        its smallest batch: rows past `count` are whatever the file holds, and their outputs are not read), outputs
        into its output files; `finish(index)` waits for them. The caller refills a slot only after its finish."""
        slot, cuda = self.slots[index], self.cuda
        rows = max(count, self.min_batch)
        cuda.wait(self.upload, slot.computed)  # its device input is free once its previous batch has computed
        cuda.to_device_async(slot.pointers[self.input_name], slot.host[self.input_name][:rows], self.upload)
        cuda.record(slot.uploaded, self.upload)
        cuda.wait(None, slot.uploaded)
        cuda.wait(None, slot.downloaded)  # its device outputs are free once its previous batch's came back
        self._compute(slot, rows)
        cuda.record(slot.computed)
        cuda.wait(self.download, slot.computed)
        for name, host in slot.host.items():
            if name != self.input_name:
                cuda.to_host_async(host[:rows], slot.pointers[name], self.download)
        cuda.record(slot.downloaded, self.download)

    def _compute(self, slot: Slot, rows: int) -> None:
        if rows == self.batch_size and slot.graph is not None:
            self.cuda.launch(slot.graph)
            return
        if rows != self.shape_batch:
            self.context.set_input_shape(self.input_name, (rows, *slot.host[self.input_name].shape[1:]))
            self.shape_batch = rows
        for name, pointer in slot.pointers.items():
            self.context.set_tensor_address(name, pointer)
        execute = lambda: self.context.execute_async_v3(self.cuda.stream.value or 0)  # noqa: E731
        if not execute():
            raise RuntimeError("TensorRT execution failed")
        # TensorRT wants one plain run of a shape before a capture; a graph keeps the addresses and shape it saw
        if rows == self.batch_size and self.cuda_graphs and not slot.capture_tried:
            slot.capture_tried = True
            slot.graph = self.cuda.capture(execute)

    def finish(self, index: int) -> None:
        """Waits until slot `index`'s outputs are in its files."""
        self.cuda.wait_host(self.slots[index].downloaded)

    def close(self) -> None:
        for slot in self.slots:  # no copy may still run into memory about to be freed (after a failed batch)
            self.cuda.wait_host(slot.uploaded)
            self.cuda.wait_host(slot.downloaded)
        self.cuda.synchronize()
        for slot in self.slots:
            slot.free(self.cuda)


def serve(requests, replies) -> int:
    """A session: one JSON line in ({"engine", "batch_size", "folder", "slots", "cuda_graphs"}), one JSON line
    out (`Served.describe`, or {"error"}), then a BATCH (slot, count) per batch, each answered in turn by a COUNT
    of 0 once the outputs are in the slot's files, or by an error message's length and the message; a count of 0
    or a closed pipe ends it. This thread reads and enqueues while another waits on the GPU and answers, so batch
    k+1's upload is on its way while batch k computes."""
    request = json.loads(requests.readline())
    served = None
    try:
        engine = _load_engine(request["engine"]) if trt is not None else None
        if engine is None:
            answer = NOT_DESERIALIZED if trt is not None else {"error": f"cannot import tensorrt ({TRT_IMPORT_ERROR})",
                                                               "missing_tensorrt": True}
        else:
            served = Served(engine, make_cuda(), int(request["batch_size"]), request["folder"],
                            int(request.get("slots", 2)), bool(request.get("cuda_graphs", True)))
            answer = served.describe()
    except Exception as exc:  # TensorRT and CUDA errors: reported with the log, like any other failure
        traceback.print_exc()
        answer = {"error": f"{type(exc).__name__}: {exc}"}
    replies.write((json.dumps(answer) + "\n").encode())
    replies.flush()
    if served is None:
        return 0
    enqueued = queue.Queue()  # (slot, error message or None) per batch, in order; None ends the answering thread
    answering = threading.Thread(target=_answer, args=(served, enqueued, replies))
    answering.start()
    while True:
        header = requests.read(BATCH.size)  # a buffered pipe: the whole header, or less where it closed
        index, count = BATCH.unpack(header) if len(header) == BATCH.size else (0, 0)
        if count == 0:
            break
        try:
            served.enqueue(index, count)
            enqueued.put((index, None))
        except Exception as exc:
            traceback.print_exc()
            enqueued.put((index, f"{type(exc).__name__}: {exc}"))
    enqueued.put(None)
    answering.join()
    served.close()
    return 0


def _answer(served: Served, enqueued: queue.Queue, replies) -> None:
    served.cuda.make_current()
    for index, error in iter(enqueued.get, None):
        if error is None:
            try:
                served.finish(index)
            except Exception as exc:
                traceback.print_exc()
                error = f"{type(exc).__name__}: {exc}"
        message = (error or "").encode()
        replies.write(COUNT.pack(len(message)) + message)
        replies.flush()


def _time(cuda: Cuda, run, runs: int) -> dict:
    """Median and 10th/90th percentile of `runs` executions of `run()`, each between two CUDA events."""
    start, end = cuda.event(), cuda.event()
    times = []
    for _ in range(runs):
        cuda.record(start)
        run()
        cuda.record(end)
        times.append(cuda.elapsed_ms(start, end))
    return _percentiles(times)


def _wall_time(run, runs: int) -> dict:
    """As `_time`, by the host's clock: for runs that end in a synchronous copy back to the host."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000.0)
    return _percentiles(times)


def _percentiles(times: list) -> dict:
    p10, median, p90 = np.percentile(times, [10, 50, 90])
    return {"median_ms": float(median), "p10_ms": float(p10), "p90_ms": float(p90)}


def benchmark(request: dict) -> BenchmarkResponse:
    """Latency of the engine at each batch size, by CUDA events around each execution, after `warmup` untimed
    runs: `enqueue` times execute_async_v3 as an application calls it (at small batches that includes the
    CPU's kernel launches); `cuda_graph` replays the same execution captured as a CUDA graph (the GPU's own
    time, as TensorRT advises for launch-bound work; null where capture fails). By the host's clock:
    `enqueue_with_copies` adds copying the input from and the outputs to ordinary host arrays, as a program
    holding numpy arrays does, and `copies` times those copies alone (both skipped with "copies": false: at
    large batches they take longer than the rest). Throughput = batch / median."""
    engine = _load_engine(request["engine"])
    if engine is None:
        return NOT_DESERIALIZED
    cuda = make_cuda()
    context = engine.create_execution_context()
    runs = int(request["runs"])
    timings = []
    for batch_size in request["batches"]:
        bindings = Bindings(engine, context, cuda, _engine_input(engine, batch_size))
        for _ in range(int(request["warmup"])):
            bindings.execute()
        cuda.synchronize()
        modes = {"enqueue": _time(cuda, bindings.execute, runs), "cuda_graph": None}
        if request.get("copies", True):
            modes["copies"] = _wall_time(lambda: (bindings.copy_in(), bindings.outputs()), runs)
            modes["enqueue_with_copies"] = _wall_time(lambda: (bindings.copy_in(), bindings.execute(),
                                                               bindings.outputs()), runs)
        graph = cuda.capture(bindings.execute)
        if graph is not None:
            for _ in range(int(request["warmup"])):
                cuda.launch(graph)
            modes["cuda_graph"] = _time(cuda, lambda: cuda.launch(graph), runs)
            cuda.destroy(graph)
        cuda.synchronize()
        bindings.free()
        for name, mode in modes.items():
            if mode is not None and name != "copies":
                mode["throughput_per_s"] = batch_size * 1000.0 / mode["median_ms"]
        timings.append({"batch": batch_size, "runs": runs, **modes})
    response = {"timings": timings}
    if request.get("profile_batch"):
        response["layer_profile"] = _layer_profile(engine, context, cuda, int(request["profile_batch"]), runs=20)
    return response


def _layer_profile(engine, context, cuda: Cuda, batch_size: int, runs: int):
    """Mean milliseconds per engine layer over `runs` executions, from TensorRT's profiler (which times each
    layer separately, so the sum exceeds a normal run), slowest first; None where profiling is unsupported.
    It takes over the context (the optimization profile belongs to it): call it after the timings."""

    class LayerTimes(trt.IProfiler):
        def __init__(self):
            trt.IProfiler.__init__(self)
            self.ms = {}

        def report_layer_time(self, layer_name, ms):
            self.ms[layer_name] = self.ms.get(layer_name, 0.0) + ms

    times = LayerTimes()
    context.profiler = times
    bindings = Bindings(engine, context, cuda, _engine_input(engine, batch_size))
    try:
        for _ in range(runs):
            bindings.execute()
            cuda.synchronize()
    finally:
        bindings.free()
    if not times.ms:
        return None
    layers = sorted(((name, total / runs) for name, total in times.ms.items()), key=lambda item: -item[1])
    return {"batch": batch_size, "runs": runs, "layers": [{"name": n, "mean_ms": ms} for n, ms in layers]}


HANDLERS = {"probe": probe, "build": build, "benchmark": benchmark}


def respond(request_path: str) -> None:
    """Runs the request in the file and writes its response where the request says."""
    with open(request_path) as f:
        request = json.load(f)
    if trt is None:
        response = {"error": f"cannot import tensorrt ({TRT_IMPORT_ERROR})", "missing_tensorrt": True}
    else:
        try:
            response = HANDLERS[request["command"]](request)
        except Exception as exc:  # TensorRT and CUDA errors: reported with the log, like any other failure
            traceback.print_exc()
            response = {"error": f"{type(exc).__name__}: {exc}"}
    with open(request["response"], "w") as f:
        json.dump(response, f)


def main(argv: list) -> int:
    # the protocol gets the pipe stdout was; whatever prints (TensorRT's C++ log too) goes to stderr, the log
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    if argv[1] == "--serve":
        return serve(sys.stdin.buffer, replies)
    for line in iter(sys.stdin.readline, ""):  # --loop: a request file a line, until the input closes
        respond(line.strip())
        replies.write(b"\n")  # its response is written
        replies.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
