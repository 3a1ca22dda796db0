"""What the main process and the TensorRT worker say to each other: the session pipe's framing, the environment
variable naming a stand-in CUDA, and the keys of each command's response.

The worker imports this file from beside it (`import trt_protocol`: it runs as a script, under an interpreter that
need not have qdq_bridge); the client imports it as `qdq_bridge.trt.trt_protocol`. Standard library only, and
Python 3.9: typing's Dict/List/Optional, no `X | Y` outside annotations.
"""
from __future__ import annotations

import struct
from typing import Dict, List, Optional, TypedDict

# "module:Class" of a stand-in for the worker's CUDA driver wrapper (the CPU tests' fake, beside their tensorrt)
CUDA_ENV = "QDQ_BRIDGE_TRT_CUDA"
# a session's pipe: a batch's slot (buffer set) and sample count (a count of 0 ends the session); each batch's reply,
# in turn: a COUNT of 0, or the length of an error message and the message
BATCH = struct.Struct("<II")
COUNT = struct.Struct("<I")


class _Timed(TypedDict, total=False):
    call_seconds: float  # added by the client (TensorRTWorker.call): its wall time, the process start in the first


class ProbeResponse(_Timed):
    features: Dict[str, object]  # what this TensorRT offers, by feature detection (trt_worker.features)
    typings: List[str]  # the typings a build can have; `auto` takes the first
    fast_int8: Optional[bool]  # None where TensorRT no longer says (11.x)
    fast_fp16: Optional[bool]


class BuildResponse(_Timed, total=False):
    typing: str  # "strong" | "weak"
    flags: List[str]  # the precision builder flags set (weak typing)
    precision_source: str  # "onnx" | "builder flags"
    network_flags: List[str]
    build_seconds: float
    engine_bytes: int
    optimization_level: int
    features: Dict[str, object]
    calibration: Dict[str, object]  # implicit INT8 only: batches, batch_size, from_cache
    timing_cache: Optional[Dict[str, object]]  # file, reused (it held timings before this build); None: no cache


class BenchmarkResponse(_Timed, total=False):
    timings: List[Dict[str, object]]  # per batch size: enqueue, cuda_graph (and host copies) in ms and per s
    layer_profile: Optional[Dict[str, object]]  # TensorRT's per-layer times at the profiled batch size
