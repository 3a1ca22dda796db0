"""What a conversion is asked to do (`ConvertOptions`), every number and choice checked on construction, the
message naming the CLI option; torch-free, so that the command line refuses a bad option before it imports the
conversion's side (torch, ONNX Runtime, scipy)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import onnx

from .choices import (BACKEND_ORDER, DEFAULT_OPSET, ENGINE_INPUTS, ENGINE_MODES, EXPORTERS, FLOAT_PRECISIONS,
                      OBSERVER_NAMES, OPTIMIZATION_LEVELS, OUTPUT_KINDS, PLACEMENTS, QCONFIGS, SIGNIFICANCE, TYPINGS,
                      default_workers)
from .data.preprocessing import Preprocessing
from .errors import BridgeError
from .trt.engine import BuildSettings


@dataclass
class ConvertOptions:
    input_shape: tuple[int, ...] | None = None
    arch: str | None = None  # architecture for state_dict files: torchvision:NAME or package.module:factory
    trust_pickle: bool = False
    calibrate: str | None = None  # dataset spec to quantize a float model with (PTQ)
    observer: str = "histogram"
    qconfig: str = "tensorrt"  # PTQ preset for --calibrate (choices.QCONFIGS)
    # re-quantize activations PyTorch quantized over the full uint8 range (which int8 at their scale cannot hold)
    # to symmetric int8 over the same range, instead of refusing them (qdq_bridge.graph.activations)
    requantize_activations: bool = False
    keep_float: tuple[str, ...] = ()  # submodules PTQ leaves float (quantize.keep_float_modules)
    torch_backends: tuple[str, ...] = BACKEND_ORDER  # PyTorch reference backends, by preference (choices.BACKEND_ORDER)
    spread: bool = True  # run PyTorch's second backend over the data too (verify's spread test); costs a PyTorch pass
    dataset: str | None = None  # labelled dataset for parity; defaults to the model file's metadata
    # how image datasets become inputs; unset fields come from the model file's metadata (parity data only)
    preprocess: Preprocessing = field(default_factory=Preprocessing)
    limit: int | None = None  # parity on a seeded random subset of this many samples of the dataset
    calibration_samples: int | None = None  # calibrate on a seeded random subset of this many samples
    seed: int = 0  # for both subsets
    workers: int = field(default_factory=default_workers)  # DataLoader processes decoding image datasets
    progress: bool = True  # a progress bar on stderr (only where stderr is a terminal)
    random_inputs: int = 64
    exporter: str = "auto"  # auto: structural, torch.onnx where it cannot | structural | torch
    disabled_passes: tuple[str, ...] = ()
    placement: str = "faithful"  # faithful: every PyTorch quantization point | fast: TensorRT's fusion-friendly Q/DQ
    opset: int = DEFAULT_OPSET
    dynamic_batch: bool = True
    batch_size: int = 64
    min_agreement: float = 0.995
    max_accuracy_gap_points: float = 0.2  # an accuracy loss beyond this fails where it is significant:
    significance: float = SIGNIFICANCE  # the exact McNemar test's level (verify.Comparison.accuracy_verdict)
    logits: str | None = None  # the output judged for top-1: a name or index (default: outputs.logits_output)
    # how each output is judged (qdq_bridge.measures), by output name ("" for every output): its kind
    # (classification | dense | generic; default from its shape) and the axis its classes lie on (default 1)
    tasks: dict[str, str] = field(default_factory=dict)
    class_axes: dict[str, int] = field(default_factory=dict)
    min_position_agreement: float = 0.99  # dense outputs: per-position argmax agreement
    min_cosine: float = 0.99  # generic outputs: a sample agrees at this cosine and norm ratio (or within a step)
    ignore_index: int | None = 255  # per-position labels of this value are not judged
    engine: str = "auto"  # auto: build when TensorRT is found | off | require: fail without TensorRT
    trt_python: str | None = None  # interpreter with tensorrt (default: $QDQ_BRIDGE_TRT_PYTHON or this one)
    trt_timeout_s: float = 900.0
    trt: BuildSettings = field(default_factory=BuildSettings)
    compare_precisions: tuple[str, ...] = ()  # also build fp16 / fp32 engines of the float twin
    # the float compute outside Q/DQ in engines: fp16 from a mixed-precision copy of the ONNX (the way strongly
    # typed TensorRT takes it; ONNX Runtime's parity keeps the float32 file), or fp32
    float_precision: str = "fp16"
    # what the INT8 engine takes: float (the model's preprocessed input) or 8-bit pixels with the preprocessing
    # inside (graph.image_input): uint8-nchw | uint8-nhwc
    engine_input: str = "float"

    def __post_init__(self):
        """Every number in range, so that no verdict rests on a nonsensical option (a negative batch compared
        nothing and passed); the message names the CLI option."""
        def bounded(option: str, value, low, high=math.inf, *, whole: bool = False, open_low: bool = False):
            kind = "a whole number" if whole else "a number"
            ok = isinstance(value, (int, float)) and math.isfinite(value) and (value > low if open_low else
                                                                                 value >= low) and value <= high
            if not ok or whole and value != int(value):
                span = f"{'above' if open_low else 'at least'} {low:g}" + (f" and at most {high:g}" if high < math.inf
                                                                            else "")
                raise BridgeError(f"{option} {value} is not {kind} {span}", f"pass {option} with such a value")
        bounded("--min-agreement", self.min_agreement, 0, 1)
        bounded("--max-accuracy-gap", self.max_accuracy_gap_points, 0, 100)
        bounded("--significance", self.significance, 0, 1, open_low=True)
        if self.calibration_samples is not None and self.calibrate is None:
            raise BridgeError("--calibration-samples applies to --calibrate's data, and no --calibrate was given",
                              "drop --calibration-samples, or pass --calibrate DATA with it")
        bounded("--min-position-agreement", self.min_position_agreement, 0, 1)
        bounded("--min-cosine", self.min_cosine, -1, 1)
        for name, kind in self.tasks.items():
            if kind not in OUTPUT_KINDS:
                raise BridgeError(f"--task {name + '=' if name else ''}{kind}: '{kind}' is not one of "
                                  f"{', '.join(OUTPUT_KINDS)}", "pass --task [OUTPUT=]KIND with one of them")
        for name, axis in self.class_axes.items():
            if not isinstance(axis, int) or axis == 0:
                raise BridgeError(f"--class-axis {name + '=' if name else ''}{axis} is not a whole number other than "
                                  "0 (axis 0 is the batch)", "pass --class-axis [OUTPUT=]AXIS, e.g. 1 or -1")
        bounded("--batch-size", self.batch_size, 1, whole=True)
        bounded("--random-inputs", self.random_inputs, 0, whole=True)
        bounded("--seed", self.seed, 0, whole=True)
        bounded("--workers", self.workers, 0, whole=True)
        bounded("--trt-timeout", self.trt_timeout_s, 0, open_low=True)
        bounded("--opset", self.opset, DEFAULT_OPSET, onnx.defs.onnx_opset_version(), whole=True)
        for option, count in (("--limit", self.limit), ("--calibration-samples", self.calibration_samples)):
            if count is not None:
                bounded(option, count, 1, whole=True)
        if self.input_shape is not None:
            for size in self.input_shape:
                bounded("--input-shape", size, 1, whole=True)
        if self.engine == "off" and self.engine_input != "float":
            raise BridgeError(f"--engine-input {self.engine_input} is what an engine takes, and --engine off builds "
                              "none", "drop one of them")
        if self.trt.optimization_level is not None:
            bounded("--builder-optimization-level", self.trt.optimization_level, OPTIMIZATION_LEVELS.start,
                    OPTIMIZATION_LEVELS.stop - 1, whole=True)
        for option, value, allowed in (
                ("--placement", self.placement, PLACEMENTS), ("--exporter", self.exporter, EXPORTERS),
                ("--observer", self.observer, OBSERVER_NAMES), ("--qconfig", self.qconfig, QCONFIGS),
                ("--engine", self.engine, ENGINE_MODES), ("--float-precision", self.float_precision, FLOAT_PRECISIONS),
                ("--typing", self.trt.typing, TYPINGS), ("--engine-input", self.engine_input, ENGINE_INPUTS)):
            if value not in allowed:
                raise BridgeError(f"{option} {value!r} is not one of {', '.join(map(str, allowed))}",
                                  f"pass {option} with one of them")
