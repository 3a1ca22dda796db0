"""Stage 5, build and run TensorRT engines, through the worker subprocess (`trt_worker.py`).

The worker's interpreter is the current one by default; `QDQ_BRIDGE_TRT_PYTHON` or `--trt-python` point at
another one that has `tensorrt` (it needs only numpy besides). Every call runs with a timeout; a crash, hang or
TensorRT error becomes a `BridgeError` that carries the end of the worker's log.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import BridgeError

WORKER = Path(__file__).with_name("trt_worker.py")
PYTHON_ENV = "QDQ_BRIDGE_TRT_PYTHON"
ENABLE_HINT = (f"set {PYTHON_ENV} (or --trt-python) to a Python that has the tensorrt package, e.g. the one in an "
               "NGC TensorRT container")


class TensorRTUnavailable(BridgeError):
    """No usable TensorRT under the chosen interpreter."""


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
    timing_cache: str | None = None
    mark_outputs: list[str] = field(default_factory=list)  # extra network outputs, for divergence analysis
    # implicit INT8 of a float ONNX (TensorRT 8.6-10.x, precision int8, weak typing): a .npy of inputs for
    # TensorRT's entropy calibrator, its batch, and a calibration cache file (read if present, then written)
    calibration_data: str | None = None
    calibration_batch: int = 8
    calibration_cache: str | None = None


@dataclass
class TensorRTWorker:
    python: str | None = None  # None: $QDQ_BRIDGE_TRT_PYTHON, else this interpreter
    timeout_s: float = 900.0

    def __post_init__(self):
        self.python = self.python or os.environ.get(PYTHON_ENV) or sys.executable

    def call(self, command: str, **params) -> dict:
        with tempfile.TemporaryDirectory(prefix="qdq-trt-") as work:
            request = Path(work) / "request.json"
            response = Path(work) / "response.json"
            request.write_text(json.dumps({"command": command, "response": str(response), **params}))
            try:
                done = subprocess.run([self.python, str(WORKER), str(request)], stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, timeout=self.timeout_s)
            except FileNotFoundError:
                raise TensorRTUnavailable(f"TensorRT interpreter '{self.python}' does not exist",
                                          ENABLE_HINT) from None
            except subprocess.TimeoutExpired as exc:
                raise BridgeError(f"TensorRT worker '{command}' timed out after {self.timeout_s:g} s "
                                  f"(log: {_tail(exc.stdout)})", "raise --trt-timeout or check the GPU") from None
            if done.returncode != 0 or not response.exists():
                how = f"signal {-done.returncode}" if done.returncode < 0 else f"exit status {done.returncode}"
                raise BridgeError(f"TensorRT worker '{command}' crashed with {how} (log: {_tail(done.stdout)})",
                                  "check the TensorRT installation and the GPU driver")
            result = json.loads(response.read_text())
        if result.get("missing_tensorrt"):
            raise TensorRTUnavailable(f"no TensorRT under '{self.python}' ({result['error']})", ENABLE_HINT)
        if "error" in result:
            raise BridgeError(f"TensorRT {command} failed: {result['error']} (log: {_tail(done.stdout)})",
                              "see the TensorRT log; `python -m qdq_bridge lint` checks the ONNX file")
        return result

    def probe(self) -> dict:
        """{"features", "typings": the typings a build can have, the one `auto` picks first, "fast_int8",
        "fast_fp16": null where TensorRT no longer says (11.x)} (see trt_worker.probe)."""
        return self.call("probe")

    def build(self, onnx_path: Path, engine_path: Path, settings: BuildSettings,
              layers_path: Path | None = None) -> dict:
        """Builds the engine; says how it was typed: {"typing": "strong" | "weak", "flags": the precision builder
        flags set, "precision_source": "onnx" | "builder flags", "network_flags", "build_seconds",
        "engine_bytes", "features"} (see trt_worker.build)."""
        return self.call("build", onnx=str(onnx_path), engine=str(engine_path),
                         layers=str(layers_path) if layers_path else None, **vars(settings))

    def benchmark(self, engine_path: Path, batches: list[int], warmup: int = 50, runs: int = 200,
                  profile_batch: int | None = None) -> dict:
        """{"timings": latency and throughput per batch size, as enqueued and as a CUDA graph, timed with CUDA
        events; "layer_profile": TensorRT's per-layer times at `profile_batch`, if asked} (see
        trt_worker.benchmark)."""
        return self.call("benchmark", engine=str(engine_path), batches=list(batches), warmup=warmup, runs=runs,
                         profile_batch=profile_batch)

    def infer(self, engine_path: Path, inputs: np.ndarray, batch_size: int = 64) -> dict[str, np.ndarray]:
        """All outputs of the engine on `inputs`, by output name, in the engine's output order."""
        with tempfile.TemporaryDirectory(prefix="qdq-trt-io-") as work:
            np.save(Path(work) / "inputs.npy", np.ascontiguousarray(inputs, np.float32))
            result = self.call("infer", engine=str(engine_path), inputs=str(Path(work) / "inputs.npy"),
                               outputs=str(Path(work) / "out"), batch_size=batch_size)
            return {name: np.load(result["outputs"][name]) for name in result["output_order"]}


def _tail(text: str | bytes | None, lines: int = 8) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    kept = [line for line in (text or "").strip().splitlines() if line.strip()][-lines:]
    return " | ".join(kept) or "empty"


# an ONNX Add node among the names TensorRT joins into a layer name: "/layer1/0/Add", "PWN(/stage1/Add_1, ...)"
ONNX_ADD = re.compile(r"(?:^|[\s(,+/])Add(?:_\d+)?(?=$|[\s),+])")


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
    """An engine callable like a torch module (as torch2trt users expect): CPU tensor in, CPU logits out."""
    import torch

    class TensorRTModule(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.engine_path, self.worker = Path(engine_path), worker or TensorRTWorker()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            outputs = self.worker.infer(self.engine_path, x.detach().cpu().numpy(), batch_size)
            return torch.from_numpy(next(iter(outputs.values())))

    return TensorRTModule()
