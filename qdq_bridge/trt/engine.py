"""Stage 5, build and run TensorRT engines, through the worker subprocess (`trt_worker.py`).

The worker's interpreter is the current one by default; `QDQ_BRIDGE_TRT_PYTHON` or `--trt-python` point at
another one that has `tensorrt` (it needs only numpy besides). Every call runs with a timeout; a crash, hang or
TensorRT error becomes a `BridgeError` that carries the end of the worker's log.
"""
from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import select
import subprocess
import sys
import tempfile
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import BridgeError
from ..graph.lint import read_onnx
from ..graph.precision import grid_layers
from .trt_protocol import BATCH, COUNT, BenchmarkResponse, BuildResponse, ProbeResponse

WORKER = Path(__file__).with_name("trt_worker.py")
PYTHON_ENV = "QDQ_BRIDGE_TRT_PYTHON"
ENABLE_HINT = (f"set {PYTHON_ENV} (or --trt-python) to a Python that has the tensorrt package, e.g. the one in an "
               "NGC TensorRT container")


class TensorRTUnavailable(BridgeError):
    """No usable TensorRT under the chosen interpreter."""


def user_timing_cache_dir() -> str:
    """$XDG_CACHE_HOME/qdq_bridge/timing (~/.cache/qdq_bridge/timing by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "qdq_bridge", "timing")


@dataclass
class BuildSettings:
    precision: str = "int8"  # int8 (explicit Q/DQ) | fp16 | fp32
    fp16_fallback: bool = True  # weakly typed int8: let layers left unquantized run in FP16 instead of FP32
    # strong: precisions from the ONNX itself (Q/DQ nodes; fp16 needs an fp16 ONNX), no precision flags (9.1+,
    # the only typing from 11.x); weak: from INT8/FP16 builder flags (8.6 to 10.x); auto: strong where available
    typing: str = "auto"
    min_batch: int = 1
    opt_batch: int = 32
    max_batch: int = 256
    workspace_mib: int = 4096
    timing_cache: str | None = None  # a file to read and update; None: one per TensorRT and GPU in timing_cache_dir
    # the user's cache folder for timing caches (None: no cache), so a second build of a model is faster
    timing_cache_dir: str | None = field(default_factory=user_timing_cache_dir)
    # TensorRT's builder optimization level (0-5, 8.6+): lower builds sooner and may pick slower kernels;
    # None keeps TensorRT's default (3)
    optimization_level: int | None = None
    mark_outputs: list[str] = field(default_factory=list)  # extra network outputs, for divergence analysis
    # ONNX nodes whose layers compute in float32 even where the FP16 flag is on (weak typing): the arithmetic that
    # rounds onto PyTorch's grids (precision.grid_arithmetic), exact only in float32
    float32_layers: list[str] = field(default_factory=list)
    # implicit INT8 of a float ONNX (TensorRT 8.6-10.x, precision int8, weak typing): a .npy of inputs for
    # TensorRT's entropy calibrator, its batch, and a calibration cache file (read if present, then written)
    calibration_data: str | None = None
    calibration_batch: int = 8
    calibration_cache: str | None = None
    # TensorRT's log at VERBOSE (every optimizer step and fusion, as trtexec --verbose): where a build fails inside
    # TensorRT, its last lines name the layers it was fusing
    verbose_log: bool = False


@dataclass
class TensorRTWorker:
    """The worker process for probes, builds and benchmarks: started at the first call and kept for the next ones
    until `close()`, the `with` block's end or garbage collection, so that the interpreter's start, TensorRT's import
    and CUDA's start are paid once (README, TensorRT). A crash or a timeout ends the process and raises; the next call
    starts another."""
    python: str | None = None  # None: $QDQ_BRIDGE_TRT_PYTHON, else this interpreter
    timeout_s: float = 900.0
    _running: _Process | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        self.python = self.python or os.environ.get(PYTHON_ENV) or sys.executable

    def call(self, command: str, log_path: Path | None = None, **params) -> dict:
        """Run one worker command; the response, with "call_seconds": the call's wall time (the process's start
        included where this call started it). `log_path`: where to write the worker's log of this call, whether it
        succeeds or fails."""
        started = time.perf_counter()
        running = self._start()
        log_start = running.log.seek(0, os.SEEK_END)
        try:
            return self._call(running, command, started, log_start, params)
        finally:
            if log_path is not None:
                running.save_log(log_start, log_path)
            if running.process.poll() is not None:  # hung or crashed, and killed: the next call starts another
                self.close()

    def _call(self, running: _Process, command: str, started: float, log_start: int, params: dict) -> dict:
        with tempfile.TemporaryDirectory(prefix="qdq-trt-") as work:
            request = Path(work) / "request.json"
            response = Path(work) / "response.json"
            request.write_text(json.dumps({"command": command, "response": str(response), **params}))
            try:
                running.process.stdin.write(f"{request}\n".encode())
                ready = select.select([running.process.stdout], [], [], self.timeout_s)[0]
                answered = bool(ready) and bool(running.process.stdout.readline())
            except OSError:  # the process ended before it read the request
                ready, answered = True, False
            if not answered or not response.exists():
                running.process.kill()  # hung, or half-ended
                running.process.wait()
                log = running.log_tail(log_start)
                if not ready:
                    raise BridgeError(f"TensorRT worker '{command}' timed out after {self.timeout_s:g} s (log: {log})",
                                      "raise --trt-timeout or check the GPU")
                code = running.process.returncode
                how = f"signal {-code}" if code < 0 else f"exit status {code}"
                raise BridgeError(f"TensorRT worker '{command}' crashed with {how} (log: {log})",
                                  "check the TensorRT installation and the GPU driver")
            result = json.loads(response.read_text())
        if result.get("missing_tensorrt"):
            raise TensorRTUnavailable(f"no TensorRT under '{self.python}' ({result['error']})", ENABLE_HINT)
        if "error" in result:
            raise BridgeError(f"TensorRT {command} failed: {result['error']} (log: {running.log_tail(log_start)})",
                              "see the TensorRT log; `python -m qdq_bridge lint` checks the ONNX file")
        result["call_seconds"] = time.perf_counter() - started
        return result

    def close(self) -> None:
        """Ends the worker process (it exits when its input closes); a later call starts a new one."""
        if self._running is not None:
            self._running.end()
            self._running = None

    def __enter__(self) -> TensorRTWorker:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _start(self) -> _Process:
        if self._running is None:
            self._running = _Process(self.python, "--loop", b"")
        return self._running

    def probe(self) -> ProbeResponse:
        """What the TensorRT offers (see trt_protocol.ProbeResponse and trt_worker.probe)."""
        return self.call("probe")

    def build(self, onnx_path: Path, engine_path: Path, settings: BuildSettings,
              layers_path: Path | None = None, log_path: Path | None = None) -> BuildResponse:
        """Builds the engine; says how it was typed and how long it took (trt_protocol.BuildResponse). `log_path`:
        TensorRT's log of the build, written also when it fails."""
        return self.call("build", log_path, onnx=str(onnx_path), engine=str(engine_path),
                         layers=str(layers_path) if layers_path else None, **vars(settings))

    def benchmark(self, engine_path: Path, batches: list[int], warmup: int = 50, runs: int = 200,
                  profile_batch: int | None = None, copies: bool = True) -> BenchmarkResponse:
        """{"timings": latency and throughput per batch size, as enqueued and as a CUDA graph, timed with CUDA
        events, and with host copies unless `copies` is False; "layer_profile": TensorRT's per-layer times at
        `profile_batch`, if asked} (see trt_worker.benchmark)."""
        return self.call("benchmark", engine=str(engine_path), batches=list(batches), warmup=warmup, runs=runs,
                         profile_batch=profile_batch, copies=copies)

    def infer(self, engine_path: Path, inputs: np.ndarray, batch_size: int = 64) -> dict[str, np.ndarray]:
        """All outputs of the engine on `inputs`, by output name, in the engine's output order (one session)."""
        with TensorRTSession(engine_path, batch_size, self) as session:
            return session.run(inputs)


@dataclass
class BuiltEngine:
    build: BuildResponse
    layers_file: Path | None  # the engine inspector's JSON, where this TensorRT has an inspector
    layer_summary: dict  # summarize_layers of it (all counts 0 without)


def build_engine(onnx_path: Path, engine_path: Path, settings: BuildSettings, worker: TensorRTWorker,
                 log_path: Path | None = None) -> BuiltEngine:
    """Builds the engine of an ONNX file with its layer report beside it (`<engine>.layers.json`) and, if asked,
    TensorRT's log of the build at `log_path`; a build TensorRT refuses raises BridgeError with TensorRT's reason.
    An INT8 build whose float ops may run fp16 keeps the ONNX's grid arithmetic float32 (precision.grid_layers)."""
    layers_path = engine_path.with_name(f"{engine_path.name.removesuffix('.engine')}.layers.json")
    if settings.precision == "int8" and settings.fp16_fallback and not settings.float32_layers:
        settings = replace(settings, float32_layers=grid_layers(read_onnx(onnx_path)))
    build = worker.build(onnx_path, engine_path, settings, layers_path, log_path)
    if not layers_path.exists():
        return BuiltEngine(build, None, summarize_layers({}))
    return BuiltEngine(build, layers_path, summarize_layers(json.loads(layers_path.read_text())))


# a batch larger than this is copied into its slot by several threads (numpy lets go of the GIL while it copies):
# one thread's memcpy, ~10 GB/s, is slower than the GPU takes uint8 images in
PARALLEL_COPY_BYTES = 4 << 20
COPY_THREADS = min(8, os.cpu_count() or 1)
_copy_pool: list[ThreadPoolExecutor] = []  # made at the first large copy, kept for the process


def _copy_rows(target: np.ndarray, source: np.ndarray) -> None:
    """target[:len(source)] = source (converted to target's type), over COPY_THREADS threads where it is large."""
    rows = len(source)
    if source.nbytes < PARALLEL_COPY_BYTES or COPY_THREADS == 1 or rows < COPY_THREADS:
        target[:rows] = source
        return
    if not _copy_pool:
        _copy_pool.append(ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="qdq-copy"))
    bounds = np.linspace(0, rows, COPY_THREADS + 1).astype(int)
    parts = [(slice(low, high), source[low:high]) for low, high in zip(bounds[:-1], bounds[1:])]
    list(_copy_pool[0].map(lambda part: target.__setitem__(*part), parts))


# where the session's shared files go: memory-backed where the system has it
SHARED_FOLDER = "/dev/shm" if os.path.isdir("/dev/shm") else None


class TensorRTSession:
    """An engine kept loaded in one worker process for as many batches as the caller has: its execution context
    and device buffers for `batch_size` samples are made once, in `slots` buffer sets (2: one batch's copies
    overlap another's compute), and each batch crosses through files both processes map (page-locked in the
    worker where the driver allows), with a few bytes on a pipe to say "run". Larger inputs run in chunks of
    `batch_size`, the next chunk filled and on its way while the GPU computes the last; full chunks replay a CUDA
    graph unless `cuda_graphs` is False. A crash or hang becomes a BridgeError, and the worker ends with the
    session (`close`, the `with` block, or garbage collection)."""

    def __init__(self, engine_path: str | Path, batch_size: int = 64, worker: TensorRTWorker | None = None,
                 slots: int = 2, cuda_graphs: bool = True):
        self.worker = worker or TensorRTWorker()
        self._running = _Process(self.worker.python, "--serve", BATCH.pack(0, 0))  # a count of 0 ends the session
        self._process = self._running.process
        self._folder = tempfile.TemporaryDirectory(prefix="qdq-trt-session-", dir=SHARED_FOLDER)
        request = {"engine": str(Path(engine_path).resolve()), "batch_size": int(batch_size),
                   "folder": self._folder.name, "slots": int(slots), "cuda_graphs": bool(cuda_graphs)}
        self._send((json.dumps(request) + "\n").encode(), "start")
        answer = json.loads(self._receive_line("start"))
        if "error" in answer:
            self.close()
            unavailable = answer.get("missing_tensorrt")
            raise (TensorRTUnavailable if unavailable else BridgeError)(
                f"TensorRT session on {Path(engine_path).name} could not start: {answer['error']}",
                ENABLE_HINT if unavailable else "rebuild the engine with this TensorRT on this GPU")
        self.batch_size, self.pinned, self.input_name = answer["batch_size"], answer["pinned"], answer["input"]
        self._slots = [{t["name"]: np.memmap(Path(self._folder.name) / t["file"], np.dtype(t["dtype"]), "r+",
                                             shape=tuple(t["shape"])) for t in tensors} for tensors in answer["slots"]]
        self.output_names = [name for name in self._slots[0] if name != self.input_name]

    def run(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of the engine on `inputs` (float32, by name, in the engine's order), in batches of at
        most `batch_size`, as many in flight as the session has slots."""
        outputs = {name: np.empty((len(inputs), *self._slots[0][name].shape[1:]), np.float32)
                   for name in self.output_names}
        in_flight: collections.deque = collections.deque()  # (slot, first row, rows) in the order sent
        failure = None
        for number, start in enumerate(range(0, len(inputs), self.batch_size)):
            if len(in_flight) == len(self._slots):
                failure = self._collect(*in_flight.popleft(), outputs) or failure
            slot, rows = number % len(self._slots), min(self.batch_size, len(inputs) - start)
            _copy_rows(self._slots[slot][self.input_name], inputs[start:start + rows])
            self._send(BATCH.pack(slot, rows), "run")
            in_flight.append((slot, start, rows))
        while in_flight:
            failure = self._collect(*in_flight.popleft(), outputs) or failure
        if failure:
            raise BridgeError(f"TensorRT session run failed: {failure}", "see the TensorRT log; check the GPU")
        return outputs

    def run_batch(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """One batch of at most `batch_size` samples."""
        if len(batch) > self.batch_size:
            raise BridgeError(f"a batch of {len(batch)} is larger than the session's {self.batch_size}",
                              "use run(), which splits it")
        return self.run(batch)

    def _collect(self, slot: int, start: int, rows: int, outputs: dict[str, np.ndarray]) -> str | None:
        """Waits for a batch's answer and copies its outputs out of its slot; the worker's error message, if any."""
        status = COUNT.unpack(self._receive(COUNT.size, "run"))[0]
        if status:
            return self._receive(status, "run").decode(errors="replace")
        for name in self.output_names:
            outputs[name][start:start + rows] = self._slots[slot][name][:rows]
        return None

    def close(self) -> None:
        self._running.end()
        self._folder.cleanup()

    def __enter__(self) -> TensorRTSession:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _send(self, data: bytes, step: str) -> None:
        try:
            self._process.stdin.write(data)
        except OSError:
            self._fail(step, "crashed")

    def _receive_line(self, step: str) -> bytes:
        self._wait_readable(step)
        line = self._process.stdout.readline()
        if not line:
            self._fail(step, "crashed")
        return line

    def _receive(self, size: int, step: str) -> bytes:
        data = b""
        while len(data) < size:
            self._wait_readable(step)
            chunk = self._process.stdout.read(size - len(data))
            if not chunk:
                self._fail(step, "crashed")
            data += chunk
        return data

    def _wait_readable(self, step: str) -> None:
        if not select.select([self._process.stdout], [], [], self.worker.timeout_s)[0]:
            self._fail(step, f"timed out after {self.worker.timeout_s:g} s")

    def _fail(self, step: str, what: str):
        """Ends the worker and raises the one-line error, with the end of its log."""
        self._process.kill()
        self._process.wait()
        log = self._running.log_tail()
        how = f" with signal {-self._process.returncode}" if what == "crashed" and self._process.returncode < 0 else ""
        self.close()
        raise BridgeError(f"TensorRT session {what}{how} at its {step} (log: {log})",
                          "raise --trt-timeout or check the TensorRT installation and the GPU driver")


class _Process:
    """A worker process in one of its pipe modes (`--loop`, `--serve`), its stderr (the worker's log and
    TensorRT's) in a file; `end` or garbage collection sends `farewell`, closes its input and waits for it."""

    def __init__(self, python: str, mode: str, farewell: bytes):
        self.log = tempfile.TemporaryFile()
        try:
            # unbuffered pipes: `select` then sees every byte the worker has sent
            self.process = subprocess.Popen([python, str(WORKER), mode], bufsize=0, stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=self.log)
        except FileNotFoundError:
            self.log.close()
            raise TensorRTUnavailable(f"TensorRT interpreter '{python}' does not exist", ENABLE_HINT) from None
        self.end = weakref.finalize(self, _end_process, self.process, self.log, farewell)

    def log_tail(self, start: int = 0) -> str:
        """The end of the log written since byte `start`."""
        self.log.seek(start)
        return _tail(self.log.read())

    def save_log(self, start: int, path: Path) -> None:
        """The log written since byte `start`, into the file `path`."""
        self.log.seek(start)
        Path(path).write_bytes(self.log.read())


def _end_process(process: subprocess.Popen, log, farewell: bytes) -> None:
    """Says `farewell`, closes the worker's input (which ends it), kills it if it has not ended within 5 s, and
    closes the log."""
    if process.poll() is None:
        with contextlib.suppress(OSError):
            process.stdin.write(farewell)
            process.stdin.close()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for stream in (process.stdin, process.stdout):
        with contextlib.suppress(OSError):
            stream.close()
    log.close()


def _tail(text: str | bytes | None, lines: int = 8) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    kept = [line for line in (text or "").strip().splitlines() if line.strip()][-lines:]
    return " | ".join(kept) or "empty"


# an ONNX Add node among the names TensorRT joins into a layer name: "/layer1/0/Add", "PWN(/stage1/Add_1, ...)",
# and as torch.onnx's dynamo exporter names them (PT2E programs): "node_add_95"
ONNX_ADD = re.compile(r"(?:^|[\s(,+/])(?:Add|node_add)(?:_\d+)?(?=$|[\s),+])")


def summarize_layers(report: dict) -> dict:
    """Layer counts by type and precision from the engine inspector's JSON, and which convolution/GEMM layers
    are not INT8, plus the standalone pointwise and reformat layers that explicit quantization should avoid
    (`standalone_add_layers`: those computing an ONNX Add outside a convolution), and the engine's I/O tensors.
    Reads TensorRT 8.6/10.x's schema and 11.x's (see `_io_tensor_names` and `_tensor_types`)."""
    layers = [layer for layer in report.get("Layers", []) if isinstance(layer, dict)]
    by_type: dict[str, int] = {}
    not_int8, pointwise, reformat, adds = [], [], [], []
    for layer in layers:
        kind, name = str(layer.get("LayerType", "?")), str(layer.get("Name"))
        by_type[kind] = by_type.get(kind, 0) + 1
        if _computes(kind):
            if not _runs_int8(layer):
                not_int8.append(name)
            continue
        if "PointWise" in kind or kind == "ElementWise":
            pointwise.append(name)
        elif kind == "Reformat":
            reformat.append(name)
        if ONNX_ADD.search(name):
            adds.append(name)
    conv_layers = sum(n for k, n in by_type.items() if _computes(k))
    return {"layers": len(layers), "by_type": by_type, "conv_gemm_layers": conv_layers,
            "conv_gemm_not_int8": not_int8, "pointwise_layers": pointwise, "reformat_layers": reformat,
            "standalone_add_layers": adds, "io_tensors": _io_tensor_names(report)}


def _io_tensor_names(report: dict) -> list[str]:
    """The engine's I/O tensors: "Bindings", a list of names, up to TensorRT 10.x; "I/O Tensors", a list of
    objects with a "Name", from 11.x."""
    if "Bindings" in report:
        return [str(name) for name in report["Bindings"]]
    return [str(tensor.get("Name")) for tensor in report.get("I/O Tensors", []) if isinstance(tensor, dict)]


def _computes(kind: str) -> bool:
    """Convolution and GEMM layer types: CaskConvolution, CaskGemmConvolution, CaskConvActPool, MatrixMultiply..."""
    return "Conv" in kind or "Gemm" in kind or "MatrixMultiply" in kind


def _runs_int8(layer: dict) -> bool:
    """Int8 weights or input formats, or (dynamic shapes leave formats 'N/A') an int8 kernel: TensorRT's tactic
    names say i8i8 or int8int8 (int8 x int8 inputs), i8i32 (int32 accumulation) or IMMA (integer MMA)."""
    weights = [str(layer.get(key, {}).get("Type", "")) for key in ("Weights", "ConvWeights")
               if isinstance(layer.get(key), dict)]
    formats = " ".join(_tensor_types(t) for t in layer.get("Inputs", [])).lower()
    tactic = str(layer.get("TacticName", "")).lower()
    return "Int8" in weights or "int8" in formats or any(m in tactic for m in ("i8i8", "int8int8", "i8i32", "imma"))


def _tensor_types(tensor: dict) -> str:
    """A layer input's format and data type: one "Format/Datatype" field up to TensorRT 10.x, separate "Format"
    and "Datatype" fields from 11.x."""
    return " ".join(str(tensor[key]) for key in ("Format/Datatype", "Format", "Datatype") if key in tensor)


def as_torch_module(engine_path: str | Path, worker: TensorRTWorker | None = None, batch_size: int = 64):
    """An engine callable like a torch module (as torch2trt users expect): CPU tensor in, CPU logits out (an
    engine of several outputs gives a dict of them by name, in the engine's order). The engine stays loaded in
    one TensorRTSession from the first call until `close()` or the module's end."""
    import torch

    class TensorRTModule(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.engine_path, self.worker = Path(engine_path), worker or TensorRTWorker()
            self.session: TensorRTSession | None = None

        def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
            if self.session is None:
                self.session = TensorRTSession(self.engine_path, batch_size, self.worker)
            outputs = {name: torch.from_numpy(values) for name, values in
                       self.session.run(x.detach().cpu().numpy()).items()}
            return next(iter(outputs.values())) if len(outputs) == 1 else outputs

        def close(self) -> None:
            if self.session is not None:
                self.session.close()
                self.session = None

    return TensorRTModule()
