"""The TensorRT stage of a conversion: probe the worker, write the ONNX each engine is built from (FP16 where asked),
build the INT8 engine and the float comparison engines, and say what failed where."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import onnx

from ..data.arrays import Dataset
from ..errors import BridgeError
from ..export.exporter import float_twin
from ..graph.image_input import PixelInput
from ..graph.precision import mixed_precision
from .engine import TensorRTUnavailable, TensorRTWorker, build_engine
from .trt_protocol import BuildResponse, ProbeResponse

if TYPE_CHECKING:  # options sits above this package (it reads BuildSettings from .engine)
    from ..options import ConvertOptions


class StageFailure(TypedDict):
    step: str  # e.g. "build of resnet_q.int8.engine"
    message: str  # TensorRT's, in one line


class TensorRTStageResult(TypedDict, total=False):
    """report.json's "tensorrt": what the stage made; empty when no engine was asked for or TensorRT is missing."""
    probe: ProbeResponse
    files: list[str]  # every file it wrote into the output folder
    backends: dict[str, str]  # "tensorrt", "tensorrt-fp16", "tensorrt-fp32" -> engine file, for parity to run
    engine_onnx: str  # the ONNX the INT8 engine computes (the Q/DQ ONNX, or its FP16 copy), on float inputs
    engine_input: dict  # where the engine takes 8-bit pixels: dtype, layout, mean, std, and the ONNX it was built from
    mixed_precision: dict[str, dict]  # per ONNX file, what precision.mixed_precision kept float32
    build: BuildResponse
    engine: str
    layer_summary: dict  # engine.summarize_layers: layers, INT8 convolutions, standalone Adds
    build_fp16: BuildResponse
    build_fp32: BuildResponse
    failed: StageFailure
    divergence: dict  # divergence.locate_divergence, where the engine alone failed parity


def tensorrt_stage(worker: TensorRTWorker, model: onnx.ModelProto, scratch: Path, onnx_name: str,
                   sample: Dataset, options: ConvertOptions, notes: list[str],
                   pixel_input: PixelInput | None = None) -> TensorRTStageResult:
    """Build the INT8 engine (and float comparison engines) for the parity pass to run (result["backends"]:
    backend -> engine file); {} when TensorRT is not found and not required. `pixel_input`: the INT8 engine takes
    8-bit pixels, its ONNX the engine ONNX with the preprocessing in front (graph.image_input). A failure after the
    probe is recorded under "failed" (the step and TensorRT's message) with whatever was made before it: the CPU
    stages' results stand."""
    if options.engine == "off":
        return {}
    try:
        probe = worker.probe()
    except TensorRTUnavailable as exc:
        if options.engine == "require":
            raise
        notes.append(f"no TensorRT engine built: {exc}")
        return {}
    except BridgeError as exc:  # TensorRT is there but broke: an engine-stage failure, not bad input
        return {"failed": {"step": "probe", "message": exc.problem}, "files": []}
    stem = onnx_name.removesuffix(".qdq.onnx")
    engine_name = f"{stem}.int8.engine"
    result = {"probe": probe, "files": [], "backends": {}}
    # Strongly typed TensorRT takes fp16 from the ONNX only; weakly typed TensorRT from the FP16 flag on the
    # float32 Q/DQ graph, choosing per layer.
    strong = _strongly_typed(probe, options.trt.typing)
    step = "fp16 conversion"
    try:
        result["engine_onnx"] = _engine_onnx(model, onnx_name, scratch, sample,
                                             options.float_precision if strong else "fp32", result)
        built_from = result["engine_onnx"]
        if pixel_input is not None:
            built_from = built_from.replace(".onnx", f".{options.engine_input}.onnx")
            onnx.save(pixel_input.model(onnx.load(str(scratch / result["engine_onnx"]))), str(scratch / built_from))
            result["files"].append(built_from)
            result["engine_input"] = {**pixel_input.as_dict(), "onnx": built_from}
        step = f"build of {engine_name}"
        built = build_engine(scratch / built_from, scratch / engine_name, options.trt, worker)
        result["build"], result["engine"], result["layer_summary"] = built.build, engine_name, built.layer_summary
        result["files"] += [engine_name] + ([built.layers_file.name] if built.layers_file else [])
        result["backends"]["tensorrt"] = engine_name
        twin = float_twin(model)
        for precision in options.compare_precisions:  # FP32/FP16 engines of the same weights, for comparison
            name = f"{stem}.{precision}.engine"
            step = f"{precision} conversion of the float twin"
            twin_name = _engine_onnx(twin, f"{stem}.float.onnx", scratch, sample, precision if strong else "fp32",
                                     result)
            step = f"build of {name}"
            settings = replace(options.trt, precision=precision, fp16_fallback=False)
            result[f"build_{precision}"] = worker.build(scratch / twin_name, scratch / name, settings)
            result["files"].append(name)
            result["backends"][f"tensorrt-{precision}"] = name
    except BridgeError as exc:
        result["failed"] = {"step": step, "message": exc.problem}
        if step.startswith("build of") and "engine_onnx" in result:
            notes.append(reduce_hint(result["engine_onnx"], model, sample))
    return result


def reduce_hint(onnx_name: str, model: onnx.ModelProto, sample: Dataset) -> str:
    """The commands that show what TensorRT did before it failed (its VERBOSE log) and cut an ONNX it will not
    build down to the nodes it fails on (polygraphy's bisection, with `qdq_bridge build` as its check)."""
    shape = ",".join(map(str, (1, *sample.x.shape[1:])))
    return (f"TensorRT's whole log of the build, in the output folder: python -m qdq_bridge build {onnx_name} "
            f"--trt-log build.log; to find the nodes TensorRT cannot build: pip install polygraphy; polygraphy debug "
            f"reduce {onnx_name} -o reduced.onnx --model-input-shapes {model.graph.input[0].name}:[{shape}] "
            "--fail-regex 'PHRASE OF THE ERROR' --check python -m qdq_bridge build polygraphy_debug.onnx")


def _strongly_typed(probe: ProbeResponse, typing: str) -> bool:
    """Whether the worker will build strongly typed: asked for, or `auto` where the TensorRT offers it first."""
    return typing == "strong" or (typing == "auto" and probe.get("typings", ["weak"])[0] == "strong")


def _engine_onnx(model: onnx.ModelProto, name: str, scratch: Path, sample: Dataset, float_precision: str,
                 result: TensorRTStageResult) -> str:
    """Write the ONNX an engine is built from, once, and return its name: `name` itself for fp32 float compute,
    and for fp16 its mixed-precision copy `*.fp16.onnx` (precision.mixed_precision; its findings go to
    result["mixed_precision"]), or `name` again where every float op is INT8 compute and the copy would be the same."""
    if float_precision == "fp16":
        conversions = result.setdefault("mixed_precision", {})
        fp16_name = name.replace(".onnx", ".fp16.onnx")
        if name not in conversions:
            mixed, conversions[name] = mixed_precision(model, sample.x)
            if conversions[name]["fp16_nodes"]:
                onnx.save(mixed, str(scratch / fp16_name))
                result["files"].append(fp16_name)
        if conversions[name]["fp16_nodes"]:
            return fp16_name
    if name not in result["files"]:
        onnx.save(model, str(scratch / name))
        result["files"].append(name)
    return name
