"""A stand-in `tensorrt` for CPU tests of the worker, emulating the API surface of one real TensorRT.

FAKE_TRT_API (8.6 | 10.13 | 11.4, default 8.6) picks the surface: tests/trt_api/tensorrt-<version>.txt, the names
of the real bindings (tools/trt_api_names.py). The enums hold exactly the members that list has; names the lists
disagree on are defined only where the list has them; a test holds every public name here to the list.
FAKE_TRT_MODE=crash|hang: Builder() crashes or hangs; build-fails: building returns None; run-crash|run-hang|
run-fails: the third execution crashes, hangs or returns False.
FAKE_TRT_UNEXPOSABLE: comma-separated tensor names; building a network that marks one as an output returns None.
FAKE_TRT_FAILING_OPS: comma-separated ONNX op types; building a network with a node of one logs TensorRT 8.6's
"chooseHigherPrecision" assertion and returns None (a builder fault that only some nodes trip).
Implicit INT8 (8.6, 10.13): a build with the INT8 flag and `IBuilderConfig.int8_calibrator` set drives the calibrator
as TensorRT does (cache read, batches until None, cache written) and records what it read from device memory.
FAKE_TRT_LOGITS: an .npy of rows; the first output of every execution in the process takes the next rows of it in
turn (an engine whose logits a test chose: a real accuracy loss, say).
FAKE_TRT_RECORD: a JSON-lines file that gets one line per call a test asserts on (flags, parsed ONNX kept beside it, marked outputs, profile shapes).
Engines are JSON plans of the parsed network; executing one writes each output as (output index + 1) times the
sum of the sample's input values, through the fake CUDA memory of `fake_cuda`.
"""
import enum
import hashlib
import json
import os
import pathlib
import signal
import sys
import time

import fake_cuda as _cuda
import numpy as np

_VERSIONS = {"8.6": "8.6.1", "10.13": "10.13.0.35", "11.4": "11.4.0.106"}
__version__ = _VERSIONS[os.environ.get("FAKE_TRT_API", "8.6")]
_NAMES = set((pathlib.Path(__file__).resolve().parents[2] / "trt_api" / f"tensorrt-{__version__}.txt").read_text()
             .split())
_MODE = os.environ.get("FAKE_TRT_MODE", "ok")
_UNEXPOSABLE = set(filter(None, os.environ.get("FAKE_TRT_UNEXPOSABLE", "").split(",")))
_FAILING_OPS = set(filter(None, os.environ.get("FAKE_TRT_FAILING_OPS", "").split(",")))
_SCHEMA_11 = int(__version__.split(".")[0]) >= 11  # the engine inspector's JSON changed in 11.x
_LOGITS = np.load(os.environ["FAKE_TRT_LOGITS"]) if os.environ.get("FAKE_TRT_LOGITS") else None
_served = [0]  # rows of _LOGITS handed out so far


def _enum(name: str) -> type:
    """The enum with the members (upper-case names) the real list gives it."""
    members = sorted(entry.split(".", 1)[1] for entry in _NAMES if entry.startswith(name + "."))
    return enum.IntEnum(name, [m for m in members if m.isupper()], module=__name__, start=0)


BuilderFlag = _enum("BuilderFlag")
NetworkDefinitionCreationFlag = _enum("NetworkDefinitionCreationFlag")
MemoryPoolType = _enum("MemoryPoolType")
ProfilingVerbosity = _enum("ProfilingVerbosity")
LayerInformationFormat = _enum("LayerInformationFormat")
TensorIOMode = _enum("TensorIOMode")
DataType = _enum("DataType")

float32 = DataType.FLOAT  # the real module's aliases of DataType members
_NUMPY = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8, DataType.INT32: np.int32,
          DataType.UINT8: np.uint8}
_ONNX_TYPES = {1: DataType.FLOAT, 10: DataType.HALF, 2: DataType.UINT8}  # onnx.TensorProto.FLOAT, FLOAT16, UINT8


def nptype(trt_type):
    return _NUMPY[trt_type]


def _record(call: str, **details) -> None:
    path = os.environ.get("FAKE_TRT_RECORD")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"call": call, **details}) + "\n")


def _keep(data: bytes, suffix: str):
    """A copy of `data` beside the record file, for the test to read; its path, None without a record file."""
    path = os.environ.get("FAKE_TRT_RECORD")
    if not path:
        return None
    kept = f"{path}.{hashlib.sha256(data).hexdigest()[:12]}{suffix}"
    pathlib.Path(kept).write_bytes(data)
    return kept


class Logger:
    WARNING = 2
    VERBOSE = 4

    def __init__(self, min_severity):
        self._min_severity = min_severity

    def _verbose(self, message: str) -> None:  # real Loggers log through their C++ side
        if self._min_severity >= Logger.VERBOSE:
            print(f"[TRT] [V] {message}", file=sys.stderr)


class IHostMemory(bytes):
    nbytes = property(len)


class ITimingCache:
    def __init__(self, data: bytes):
        self._data = data

    def serialize(self) -> IHostMemory:
        return IHostMemory(self._data or b"fake timing cache")


class ITensor:
    def __init__(self, name: str, shape: list, dtype, is_output: bool = False):
        self._name, self._shape, self._dtype, self._is_output = name, shape, dtype, is_output

    name = property(lambda self: self._name)
    shape = property(lambda self: tuple(self._shape))
    dtype = property(lambda self: self._dtype)
    is_network_output = property(lambda self: self._is_output)

    def _plan(self) -> dict:
        return {"name": self._name, "shape": self._shape, "dtype": self._dtype.name}


class ILayer:
    def __init__(self, name: str, kind: str, outputs: list):
        self._name, self._kind, self._outputs = name, kind, outputs

    name = property(lambda self: self._name)
    num_outputs = property(lambda self: len(self._outputs))

    def get_output(self, index: int) -> ITensor:
        return self._outputs[index]

    if "ILayer.precision" in _NAMES:  # weak typing's per-layer constraints (gone in 11.x)
        def _set_precision(self, precision) -> None:
            _record("layer_precision", layer=self._name, precision=DataType(precision).name)

        precision = property(lambda self: DataType.FLOAT, _set_precision)

        def set_output_type(self, index: int, dtype) -> None:
            _record("layer_output_type", layer=self._name, index=index, dtype=DataType(dtype).name)


class INetworkDefinition:
    def __init__(self):
        self._inputs, self._layers, self._outputs = [], [], []

    num_inputs = property(lambda self: len(self._inputs))
    num_layers = property(lambda self: len(self._layers))

    def get_input(self, index: int) -> ITensor:
        return self._inputs[index]

    def get_layer(self, index: int) -> ILayer:
        return self._layers[index]

    def mark_output(self, tensor: ITensor) -> None:
        _record("mark_output", tensor=tensor.name)
        self._add_output(tensor)

    def _add_output(self, tensor: ITensor) -> None:
        tensor._is_output = True
        self._outputs.append(tensor)

    def _plan(self) -> dict:
        return {"version": __version__, "inputs": [t._plan() for t in self._inputs],
                "outputs": [t._plan() for t in self._outputs],
                "layers": [{"name": layer.name, "kind": layer._kind} for layer in self._layers]}


# engine layer types of the ONNX ops, as the inspector names them
_LAYER_TYPES = {"Conv": "CaskConvolution", "MatMul": "CaskGemmConvolution", "Gemm": "CaskGemmConvolution"}


class OnnxParser:
    """Reads the ONNX with the onnx package: graph inputs (symbolic dimensions become -1), one layer per node
    (its outputs have shape [-1, 1] unless they are graph outputs), graph outputs."""

    def __init__(self, network: INetworkDefinition, logger: Logger):
        self._network, self._errors, self._logger = network, [], logger

    num_errors = property(lambda self: len(self._errors))

    def get_error(self, index: int) -> str:
        return self._errors[index]

    def parse(self, model) -> bool:
        import onnx

        _record("parse", onnx=_keep(bytes(model), ".onnx"))
        try:
            graph = onnx.load_from_string(bytes(model)).graph
        except Exception as exc:  # noqa: BLE001 - the real parser reports any failure as errors
            self._errors.append(f"fake parser: {exc}")
            return False
        declared = {value.name: _tensor(value) for value in list(graph.input) + list(graph.output)}
        weights = {init.name for init in graph.initializer}
        self._network._inputs = [declared[v.name] for v in graph.input if v.name not in weights]
        self._network._trips = any(node.op_type in _FAILING_OPS for node in graph.node)
        for node in graph.node:
            self._logger._verbose(f"Parsing node: {node.name} [{node.op_type}]")  # as TensorRT's parser logs it
            outputs = [declared.get(name) or ITensor(name, [-1, 1], DataType.FLOAT) for name in node.output]
            self._network._layers.append(ILayer(node.name or node.op_type, _LAYER_TYPES.get(node.op_type,
                                                                                           "PointWiseV2"), outputs))
        for value in graph.output:
            self._network._add_output(declared[value.name])
        return True


def _tensor(value) -> ITensor:
    tensor_type = value.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
    return ITensor(value.name, shape, _ONNX_TYPES[tensor_type.elem_type])


class IOptimizationProfile:
    def __init__(self):
        self._shapes = {}

    def set_shape(self, input: str, min, opt, max) -> None:  # noqa: A002 - TensorRT's own keyword names
        _record("set_shape", input=input, shapes=[list(min), list(opt), list(max)])
        self._shapes[input] = [list(min), list(opt), list(max)]


if "IInt8EntropyCalibrator2" in _NAMES:  # gone in 11.x
    class IInt8EntropyCalibrator2:
        """No public members of its own (the name lists do not walk this class): the application's subclass gives
        get_batch_size, get_batch, read_calibration_cache and write_calibration_cache."""


class IBuilderConfig:
    def __init__(self):
        self._verbosity, self._cache, self._flags, self._calibrator = ProfilingVerbosity.LAYER_NAMES_ONLY, None, [], None
        self._profiles, self._level = [], 3

    def _set_level(self, level: int) -> None:
        _record("builder_optimization_level", level=level)
        self._level = level

    builder_optimization_level = property(lambda self: self._level, _set_level)

    if "IBuilderConfig.int8_calibrator" in _NAMES:  # gone in 11.x
        int8_calibrator = property(lambda self: self._calibrator,
                                   lambda self, calibrator: setattr(self, "_calibrator", calibrator))

    if "IBuilderConfig.set_calibration_profile" in _NAMES:
        def set_calibration_profile(self, profile: IOptimizationProfile) -> bool:
            _record("set_calibration_profile")
            return True

    def set_memory_pool_limit(self, pool, pool_size: int) -> None:
        _record("set_memory_pool_limit", pool=pool.name, bytes=pool_size)

    def set_flag(self, flag) -> None:
        _record("set_flag", flag=flag.name)
        self._flags.append(flag.name)

    def _set_verbosity(self, verbosity) -> None:
        _record("profiling_verbosity", verbosity=verbosity.name)
        self._verbosity = verbosity

    profiling_verbosity = property(lambda self: self._verbosity, _set_verbosity)

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self._profiles.append(profile)
        return len(self._profiles) - 1

    def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache:
        return ITimingCache(bytes(serialized_timing_cache))

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        self._cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache:
        return self._cache


class Builder:
    def __init__(self, logger):
        _record("builder", pid=os.getpid())
        if _MODE == "crash":
            os.kill(os.getpid(), signal.SIGSEGV)
        if _MODE == "hang":
            time.sleep(3600)

    if "Builder.platform_has_fast_int8" in _NAMES:  # gone in 11.x
        platform_has_fast_int8 = True
    if "Builder.platform_has_fast_fp16" in _NAMES:
        platform_has_fast_fp16 = True

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        _record("create_network", flags=[f.name for f in NetworkDefinitionCreationFlag if flags >> f.value & 1])
        return INetworkDefinition()

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> IHostMemory:
        if getattr(network, "_trips", False):
            print("[TRT] [E] 2: [graphOptimizer.cpp::chooseHigherPrecision::7079] Error Code 2: Internal Error "
                  "(Assertion dt1 == DataType::kFLOAT || dt1 == DataType::kHALF failed. )", file=sys.stderr)
            return None
        if _MODE == "build-fails" or any(t.name in _UNEXPOSABLE for t in network._outputs):
            return None  # as TensorRT does, the reason in its log
        if config._calibrator is not None and "INT8" in config._flags:
            _calibrate(config._calibrator, network)
        profiles = [profile._shapes for profile in config._profiles]
        return IHostMemory(json.dumps({**network._plan(), "profiles": profiles}).encode())


def _calibrate(calibrator, network: INetworkDefinition) -> None:
    """TensorRT's calibration loop: the cache if the calibrator has one, else batches until get_batch says None;
    records the batches and the sum of the inputs read from device memory."""
    if calibrator.read_calibration_cache() is not None:
        _record("calibrate", from_cache=True)
        return
    source = network.get_input(0)
    batch = calibrator.get_batch_size()
    shape = (batch, *source.shape[1:])
    batches, total = 0, 0.0
    while True:
        pointers = calibrator.get_batch([source.name])
        if pointers is None:
            break
        batches += 1
        total += float(_cuda.read(pointers[0], nptype(source.dtype), shape).astype(np.float64).sum())
    calibrator.write_calibration_cache(IHostMemory(b"fake calibration cache"))
    _record("calibrate", from_cache=False, batch_size=batch, batches=batches, input_sum=total)


class Runtime:
    def __init__(self, logger):
        pass

    def deserialize_cuda_engine(self, serialized_engine):
        plan = json.loads(bytes(serialized_engine))
        return ICudaEngine(plan) if plan["version"] == __version__ else None  # as a real plan of another version


class ICudaEngine:
    def __init__(self, plan: dict):
        self._plan = plan
        self._tensors = {t["name"]: t for t in plan["inputs"] + plan["outputs"]}

    num_io_tensors = property(lambda self: len(self._tensors))

    def get_tensor_name(self, index: int) -> str:
        return list(self._tensors)[index]

    def get_tensor_mode(self, name: str):
        return TensorIOMode.INPUT if self._tensors[name] in self._plan["inputs"] else TensorIOMode.OUTPUT

    def get_tensor_shape(self, name: str) -> tuple:
        return tuple(self._tensors[name]["shape"])

    def get_tensor_dtype(self, name: str):
        return DataType[self._tensors[name]["dtype"]]

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list:
        return [tuple(shape) for shape in self._plan["profiles"][profile_index][name]]

    def create_execution_context(self) -> "IExecutionContext":
        return IExecutionContext(self)

    def create_engine_inspector(self) -> "EngineInspector":
        return EngineInspector(self._plan)


class EngineInspector:
    """The engine information JSON in the schema of the chosen TensorRT: 8.6/10.x "Bindings" and one
    "Format/Datatype" per layer tensor; 11.x "I/O Tensors" objects and separate "Format" and "Datatype"."""

    def __init__(self, plan: dict):
        self._plan = plan

    def get_engine_information(self, format) -> str:  # noqa: A002 - TensorRT's own keyword name
        first = self._plan["inputs"][0]
        layers = [{"Name": layer["name"], "LayerType": layer["kind"], "Inputs": [_layer_tensor(first, layer)]}
                  for layer in self._plan["layers"]]
        if _SCHEMA_11:
            io = [{"Name": t["name"], "IOMode": mode, "DataType": t["dtype"].title(), "Dimensions": t["shape"],
                   "Location": "Device", "IsShapeInferenceIO": False}
                  for mode, key in (("Input", "inputs"), ("Output", "outputs")) for t in self._plan[key]]
            return json.dumps({"Layers": layers, "I/O Tensors": io})
        return json.dumps({"Layers": layers, "Bindings": [t["name"] for t in self._plan["inputs"] +
                                                          self._plan["outputs"]]})


def _layer_tensor(tensor: dict, layer: dict) -> dict:
    """A layer's input as the inspector describes it: int8 into convolutions and GEMMs, float elsewhere."""
    datatype = "Int8" if layer["kind"].startswith("Cask") else "FP32"
    described = {"Name": tensor["name"], "Location": "Device", "Dimensions": tensor["shape"]}
    if _SCHEMA_11:
        return {**described, "Format": "Row major linear format (kLINEAR)", "Datatype": datatype}
    return {**described, "Format/Datatype": f"Row major linear {datatype} format"}


class IProfiler:
    def report_layer_time(self, layer_name: str, ms: float) -> None:
        raise NotImplementedError


class IExecutionContext:
    def __init__(self, engine: ICudaEngine):
        self._engine, self._batch, self._addresses, self._profiler = engine, 0, {}, None

    profiler = property(lambda self: self._profiler, lambda self, profiler: setattr(self, "_profiler", profiler))

    def set_input_shape(self, name: str, shape) -> bool:
        self._batch = shape[0]
        return True

    def get_tensor_shape(self, name: str) -> tuple:
        return self._shape(name, self._batch)

    def _shape(self, name: str, batch: int) -> tuple:
        return tuple(batch if d < 0 else d for d in self._engine.get_tensor_shape(name))

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self._addresses[name] = memory
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        if _cuda.CAPTURING is not None:  # recorded into a CUDA graph, not run
            _cuda.CAPTURING.append(lambda batch=self._batch, addresses=dict(self._addresses):
                                   self._execute(batch, addresses, graph=True))
            return True
        return self._execute(self._batch, self._addresses)

    def _execute(self, batch: int, addresses: dict, graph: bool = False) -> bool:
        self._runs = getattr(self, "_runs", 0) + 1
        _record("execute", batch=batch, pid=os.getpid(), graph=graph)
        if self._runs == 3 and _MODE == "run-crash":
            os.kill(os.getpid(), signal.SIGSEGV)
        if self._runs == 3 and _MODE == "run-hang":
            time.sleep(3600)
        if self._runs == 3 and _MODE == "run-fails":
            return False
        plan = self._engine._plan
        source = plan["inputs"][0]["name"]
        x = _cuda.read(addresses[source], nptype(self._engine.get_tensor_dtype(source)),
                       self._shape(source, batch))
        sums = x.reshape(len(x), -1).astype(np.float64).sum(axis=1)
        for index, output in enumerate(plan["outputs"]):
            shape = self._shape(output["name"], batch)
            values = np.broadcast_to(sums.reshape(-1, *[1] * (len(shape) - 1)) * (index + 1), shape)
            if _LOGITS is not None and index == 0:
                values = _LOGITS[np.arange(_served[0], _served[0] + len(x)) % len(_LOGITS)].reshape(shape)
                _served[0] += len(x)
            _cuda.write(addresses[output["name"]], values.astype(nptype(DataType[output["dtype"]])))
        for layer in plan["layers"] if self._profiler else []:
            self._profiler.report_layer_time(layer["name"], 0.01)
        return True
