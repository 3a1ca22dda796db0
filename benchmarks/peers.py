"""qdq_bridge side by side with the routes users pick instead: one float network, the same calibration data,
every route to an INT8 TensorRT engine (issue 11).

Routes (--routes, default all):
  fast, faithful     qdq_bridge: eager-mode PTQ (its TensorRT-legal preset), Q/DQ export, passes in that placement
  modelopt-opset17   NVIDIA ModelOpt's ONNX PTQ (modelopt.onnx.quantization.quantize, int8, entropy calibration on
                     ONNX Runtime's CPU EP) with high_precision_dtype fp32, then onnx.version_converter down to opset
                     17: the form TensorRT 8.6 parses (ModelOpt itself raises int8 models to opset 19)
  modelopt-default   ModelOpt's default output (opset 19, fp16 scales and float parts): built where the TensorRT in
                     use parses it, else its parser's error is the row
  ort                ONNX Runtime's quantize_static, QDQ format: QInt8 per-channel symmetric weights, symmetric QInt8
                     activations, MinMax, QuantizeBias False (TensorRT rejects int32 bias DequantizeLinear)
  trt-int8           TensorRT's implicit INT8 of the float ONNX, IInt8EntropyCalibrator2 over the calibration inputs
                     (only where the TensorRT has BuilderFlag.INT8 and that calibrator: 8.6-10.x)
  fp16               the float ONNX built with the FP16 flag (the float baseline)
Every INT8 route calibrates on the same --calibration-samples inputs; ModelOpt and ONNX Runtime read the float ONNX
(torch.onnx of the float model with conv+BN(+ReLU) fused, as qdq_bridge's PTQ fuses them), each from its own copy
(ModelOpt rewrites its input file).

For each route: tool time (the wall time of its quantization step: qdq_bridge PTQ + export + passes; ModelOpt's
quantize call plus the opset conversion; quantize_static; none for trt-int8, which calibrates inside its build),
accuracy and top-1 agreement against the float PyTorch model under ONNX Runtime (CPU), and, unless
--quantize-only: engine build time (each build in its own worker process, killed after --build-timeout seconds:
a route that times out is reported so and the run goes on), layer count, standalone pointwise and reformat
layers, convolutions not INT8 (summarize_layers), throughput at batch 1/128/256 as enqueued and as a CUDA graph
(TensorRTWorker.benchmark without host copies, one profile 1..256 opt 128, one timing cache for all builds; in
--rounds rounds, each starting with another engine), and the engine's accuracy and top-1 agreement against the
float model. Tables and the ratios qdq_bridge fast / each peer (with the lowest and highest round's ratio) are
printed; peers.json and peers.png are written into --out.

Networks:
  resnet50-224     torchvision's ResNet-50 at 224x224, trained briefly (--train-steps) on qdq_bridge.testing.zoo's template
                   task; calibration: template-task inputs (seed 1); test: --test-samples template-task inputs
                   (seed 99), labelled
  digits-resnet18  the ResNet-18 of zoo.torchvision_on_digits at 32x32, float; calibration: its training split's
                   first --calibration-samples; test: the 450 test digits

Runs split to fit a time limit (one route set per call, on one card) are joined with --merge: it reads several
peers.json, prints the tables and writes the merged peers.json and peers.png, with no GPU; a route's ratios are
taken against the fast engine of its own run.

Usage: python benchmarks/peers.py [--networks resnet50-224,digits-resnet18] [--routes fast,ort,...] [--out DIR]
                                  [--build-timeout 600] [--runs 200] [--calibration-samples 128] [--quantize-only]
       python benchmarks/peers.py --merge a/peers.json b/peers.json --out benchmarks/results
"""
from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import shutil
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import torch

from qdq_bridge import export_onnx, run_passes
from qdq_bridge.data.arrays import Dataset
from qdq_bridge.errors import BridgeError
from qdq_bridge.export.exporter import INPUT_NAME, _export_torch
from qdq_bridge.pytorch.quantize import quantize_ptq
from qdq_bridge.pytorch.runner import run_torch
from qdq_bridge.testing import zoo
from qdq_bridge.trt.engine import BuildSettings, TensorRTWorker, summarize_layers
from qdq_bridge.verify import compare, run_onnxruntime
from trt_engines import MODES, latency_ms, throughput, timing

ROUTES = ("fast", "faithful", "modelopt-opset17", "modelopt-default", "ort", "trt-int8", "fp16")
LABELS = {"fast": "qdq_bridge fast", "faithful": "qdq_bridge faithful", "modelopt-opset17": "ModelOpt fp32/op17",
          "modelopt-default": "ModelOpt default", "ort": "ORT QDQ", "trt-int8": "TRT implicit INT8",
          "fp16": "FP16"}
NETWORKS = ("resnet50-224", "digits-resnet18")
BATCHES = (1, 128, 256)
OPT_BATCH = 128
CALIBRATION_BATCH = 16  # every tool's calibration batch


def network(name: str, args) -> tuple[torch.nn.Module, tuple[int, ...], Dataset, Dataset]:
    """(float PyTorch model, input shape, calibration inputs, labelled test set)."""
    if name == "resnet50-224":
        shape = (1, 3, 224, 224)
        model = zoo.trained_torchvision("resnet50", shape, 10, steps=args.train_steps)
        return (model, shape, zoo.template_task(shape, args.calibration_samples, seed=1),
                zoo.template_task(shape, args.test_samples, seed=99))
    if name == "digits-resnet18":
        model, train, test = zoo.trained_on_digits("resnet18")
        return model, (1, 3, 32, 32), train.head(args.calibration_samples), test
    raise SystemExit(f"unknown network '{name}': choose from {', '.join(NETWORKS)}")


def float_onnx(model: torch.nn.Module, shape: tuple[int, ...]) -> onnx.ModelProto:
    """The float model with conv+BN(+ReLU) fused (torchvision's fuse_model), through torch.onnx, opset 17,
    dynamic batch: the input of the peers' tools, of TensorRT's implicit INT8 and of FP16."""
    fused = copy.deepcopy(model).eval()
    fused.fuse_model(is_qat=False)
    return _export_torch(fused, shape, 17, dynamic_batch=True)


# --- the quantization step of each route --------------------------------------------------------------------------

def quantize_route(route: str, model, shape, calibration: Dataset, folder: Path, shared: dict) -> dict:
    """Writes the route's ONNX into `folder`; {"onnx", "tool_seconds", ...}; tool_seconds is None where the
    route has no separate step."""
    source = folder / "float.onnx"
    target = folder / f"{route}.onnx"
    if route in ("fast", "faithful"):
        if "qdq" not in shared:  # PTQ and export are shared by both placements; each is charged for them
            start = time.perf_counter()
            quantized = quantize_ptq(copy.deepcopy(model), calibration.batches(CALIBRATION_BATCH))
            shared["qdq"] = (export_onnx(quantized, shape), time.perf_counter() - start)
        exported, seconds = shared["qdq"]
        start = time.perf_counter()
        onnx.save(run_passes(exported, placement=route)[0], str(target))
        return {"onnx": str(target), "tool_seconds": seconds + time.perf_counter() - start,
                "ptq_export_seconds": seconds}
    if route.startswith("modelopt"):
        # in a process of its own: ModelOpt patches ONNX Runtime's quantization module on import, which then
        # fails quantize_static (measured with onnxruntime 1.32)
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(modelopt_route, route, source, target, calibration).result()
    if route == "ort":
        return ort_route(source, target, calibration)
    if route == "trt-int8":
        np.save(folder / "calibration.npy", calibration.x)
        return {"onnx": str(source), "tool_seconds": None, "calibration_data": str(folder / "calibration.npy"),
                "note": "TensorRT calibrates inside the engine build"}
    if route == "fp16":
        return {"onnx": str(source), "tool_seconds": None}
    raise SystemExit(f"unknown route '{route}': choose from {', '.join(ROUTES)}")


def modelopt_route(route: str, source: Path, target: Path, calibration: Dataset) -> dict:
    from modelopt.onnx.quantization import quantize as modelopt_quantize

    work = target.with_suffix("")  # ModelOpt writes beside (and over) its input: a copy of its own
    work.mkdir(exist_ok=True)
    shutil.copy(source, work / "float.onnx")
    fp32 = route == "modelopt-opset17"
    batch_shape = "x".join(map(str, (CALIBRATION_BATCH, *calibration.sample_shape)))
    start = time.perf_counter()
    modelopt_quantize(str(work / "float.onnx"), quantize_mode="int8", calibration_data=calibration.x,
                      calibration_shapes=f"{INPUT_NAME}:{batch_shape}", calibration_eps=["cpu"],
                      output_path=str(target), high_precision_dtype="fp32" if fp32 else "fp16",
                      log_level="WARNING")
    found = {"onnx": str(target), "quantize_seconds": time.perf_counter() - start,
             "opset_written": _opset(onnx.load(str(target)))}
    if fp32:
        converted = onnx.version_converter.convert_version(onnx.load(str(target)), 17)
        onnx.save(converted, str(target))
    found["tool_seconds"] = time.perf_counter() - start
    found["opset"] = _opset(onnx.load(str(target)))
    return found


def ort_route(source: Path, target: Path, calibration: Dataset) -> dict:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration.batches(CALIBRATION_BATCH))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    start = time.perf_counter()
    quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
    return {"onnx": str(target), "tool_seconds": time.perf_counter() - start}


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def graph_facts(path: str) -> dict:
    """What a route's ONNX holds: opset, Q/DQ node counts, quantized op types, float dtypes of the scales."""
    model = onnx.load(path)
    nodes = model.graph.node
    outputs = {o: n for n in nodes for o in n.output}
    quantized = sorted({c.op_type for n in nodes if n.op_type == "DequantizeLinear" for c in nodes
                        if n.output[0] in c.input and c.op_type != "QuantizeLinear"})
    scales = {i.name: i.data_type for i in model.graph.initializer}
    scale_types = sorted({onnx.TensorProto.DataType.Name(scales[n.input[1]]) for n in nodes
                          if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.input[1] in scales})
    return {"opset": _opset(model), "quantize_nodes": sum(n.op_type == "QuantizeLinear" for n in nodes),
            "dequantize_nodes": sum(n.op_type == "DequantizeLinear" for n in nodes),
            "weight_dequantize_nodes": sum(n.op_type == "DequantizeLinear" and n.input[0] not in outputs
                                           for n in nodes),
            "ops_after_dequantize": quantized, "scale_types": scale_types, "nodes": len(nodes)}


def quantize_network(name: str, routes: list[str], args, folder: Path) -> tuple[dict, dict, Dataset]:
    """Every route's ONNX, its tool time and its ONNX Runtime parity with the float model."""
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model, shape, calibration, test = network(name, args)
    onnx.save(float_onnx(model, shape), str(folder / "float.onnx"))
    reference = run_torch(model, test, 64)
    result = {"input_shape": list(shape), "test_set": test.name, "samples": len(test),
              "calibration": {"samples": len(calibration), "set": calibration.name, "batch": CALIBRATION_BATCH},
              "float": {"accuracy": compare(reference, reference, test, "pytorch float", "self").reference_accuracy,
                        "logits_checksum": float(np.abs(reference).sum())},  # the same float model in every call?
              "prepare_seconds": time.perf_counter() - start, "routes": {}}
    shared: dict = {}
    for route in routes:
        try:
            entry = quantize_route(route, model, shape, calibration, folder, shared)
        except Exception as exc:  # noqa: BLE001 - a tool's failure is that route's row, not the end of the run
            traceback.print_exc()
            entry = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:400]}
        if "onnx" in entry:
            entry["graph"] = graph_facts(entry["onnx"])
            if not args.no_ort_parity and route not in ("trt-int8", "fp16"):
                # ONNX Runtime's CPU graph optimizations break ModelOpt's fp16 Q/DQ output (digits: 28 % top-1
                # agreement optimized, 100 % unoptimized, onnxruntime 1.32): that one runs unoptimized
                entry["onnxruntime_optimized"] = route != "modelopt-default"
                logits = run_onnxruntime(entry["onnx"], test, 64, optimize=entry["onnxruntime_optimized"])
                entry["onnxruntime"] = compare(reference, logits, test, "pytorch float",
                                               f"onnxruntime {route}").as_dict()
        result["routes"][route] = entry
        tool = entry.get("tool_seconds")
        print(f"  {name} {route}: " + (entry["error"] if "error" in entry else
                                        f"tool {tool:.1f} s" if tool is not None else "no tool step"), flush=True)
    return result, reference, test


# --- engines --------------------------------------------------------------------------------------------------------

def build_settings(route: str, entry: dict, folder: Path) -> BuildSettings:
    settings = BuildSettings(precision="fp16" if route == "fp16" else "int8", fp16_fallback=True, min_batch=1,
                             opt_batch=OPT_BATCH, max_batch=max(BATCHES),
                             timing_cache=str(folder.parent / "timing.cache"))
    if route == "trt-int8":
        cache = folder / "trt-int8.calibration.cache"
        cache.unlink(missing_ok=True)  # calibrated in this build, not read from an earlier one
        settings.typing = "weak"
        settings.calibration_data, settings.calibration_batch = entry["calibration_data"], CALIBRATION_BATCH
        settings.calibration_cache = str(cache)
    return settings


def engine_route(route: str, entry: dict, builder: TensorRTWorker, worker: TensorRTWorker, probe: dict,
                 reference: np.ndarray, test: Dataset, args, folder: Path) -> dict:
    if route == "trt-int8" and not probe["features"].get("int8_calibrator"):
        return {"error": f"not offered by TensorRT {probe['features']['version']} (no BuilderFlag.INT8 + "
                         "IInt8EntropyCalibrator2)", "not_offered": True}
    engine_path, layers_path = folder / f"{route}.engine", folder / f"{route}.layers.json"
    try:
        build = builder.build(Path(entry["onnx"]), engine_path, build_settings(route, entry, folder), layers_path)
    except BridgeError as exc:
        message = str(exc)
        timed_out = "timed out" in message
        return {"error": f"build timed out after {args.build_timeout} s" if timed_out else message[:600],
                "timed_out": timed_out}
    layers = json.loads(layers_path.read_text()) if layers_path.exists() else {}
    logits = next(iter(worker.infer(engine_path, test.x, 64).values()))
    return {"build_seconds": build["build_seconds"], "build": {k: build.get(k) for k in
                                                               ("typing", "flags", "calibration", "engine_bytes")},
            "layers": summarize_layers(layers),
            "parity": compare(reference, logits, test, "pytorch float", f"tensorrt {route}").as_dict()}


def time_in_rounds(engines: dict[str, Path], worker: TensorRTWorker, args) -> dict[str, list]:
    """Each engine's timings, benchmarked in --rounds rounds that take the engines in turn (so a drift of the
    GPU's clocks or load falls on every route alike), as the per-round medians' median for each batch and mode;
    each round's median is kept too (round_medians_ms). Each round starts with another engine, so no route is
    always timed first."""
    measured = {route: [] for route in engines}
    routes = list(engines)
    for round_index in range(args.rounds if routes else 0):
        shift = round_index % len(routes)
        for route in routes[shift:] + routes[:shift]:
            path = engines[route]
            # without host copies: the routes' engines take the same input and output, so copies tell nothing
            # between them, and at b256 they would take most of the time
            measured[route].append(worker.benchmark(path, BATCHES, args.warmup, args.runs,
                                                    copies=False)["timings"])
    timings = {}
    for route, rounds in measured.items():
        timings[route] = []
        for index, batch in enumerate(BATCHES):
            entry = {"batch": batch, "runs": args.runs, "rounds": len(rounds)}
            for mode in rounds[0][index]:
                if mode in ("batch", "runs"):
                    continue
                if not all(isinstance(r[index][mode], dict) for r in rounds):
                    entry[mode] = None  # as the worker says of a mode that did not run (no CUDA graph)
                    continue
                medians = [r[index][mode]["median_ms"] for r in rounds]
                entry[mode] = {"median_ms": float(np.median(medians)), "round_medians_ms": medians}
                if "throughput_per_s" in rounds[0][index][mode]:
                    entry[mode]["throughput_per_s"] = batch * 1000.0 / entry[mode]["median_ms"]
            timings[route].append(entry)
    return timings


def run_network(name: str, routes: list[str], args, probe: dict | None, save) -> dict:
    """The network's routes, quantized and (unless --quantize-only) built and measured; `save(result)` after each
    step, so a run cut short by a time limit keeps what it measured."""
    folder = args.out / name
    result, reference, test = quantize_network(name, routes, args, folder)
    save(result)
    if args.quantize_only:
        return result
    builder = TensorRTWorker(args.trt_python, timeout_s=args.build_timeout)
    worker = TensorRTWorker(args.trt_python, timeout_s=1800)
    for route, entry in result["routes"].items():
        if "error" in entry:
            continue
        entry["engine"] = engine_route(route, entry, builder, worker, probe, reference, test, args, folder)
        e = entry["engine"]
        print(f"  {name} {route}: " + (e["error"] if "error" in e else f"built in {e['build_seconds']:.0f} s"),
              flush=True)
        save(result)
    built = {route: folder / f"{route}.engine" for route, entry in result["routes"].items() if _engine(entry)}
    start = time.perf_counter()
    for route, timings in time_in_rounds(built, worker, args).items():
        result["routes"][route]["engine"]["timings"] = timings
    print(f"  {name}: {len(built)} engines timed in {args.rounds} rounds ({time.perf_counter() - start:.0f} s)",
          flush=True)
    for path in built.values():
        path.unlink()  # hundreds of MB for ResNet-50; the layer reports stay
    save(result)
    return result


# --- report ---------------------------------------------------------------------------------------------------------

def _engine(entry: dict) -> dict | None:
    engine = entry.get("engine")
    return engine if engine and "error" not in engine else None


def _cell(value, fmt: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{fmt}}"


def print_tables(results: dict) -> None:
    for name, r in results["networks"].items():
        routes = r["routes"]
        print(f"\n== {name} {'x'.join(map(str, r['input_shape'][1:]))}: calibration {r['calibration']['samples']} "
              f"inputs ({r['calibration']['set']}); test {r['test_set']} ({r['samples']}); float PyTorch accuracy "
              f"{r['float']['accuracy'] * 100:.2f}%")
        print(f"{'route':<20}{'tool s':>7}{'opset':>6}{'Q':>5}{'DQ':>5}{'ORT acc':>9}{'agree':>8}"
              f"{'build s':>8}{'layers':>7}{'pointw':>7}{'reform':>7}{'!int8':>6}{'TRT acc':>9}{'agree':>8}")
        for route, entry in routes.items():
            graph, ort, engine = entry.get("graph", {}), entry.get("onnxruntime"), _engine(entry)
            row = (f"{LABELS.get(route, route):<20}{_cell(entry.get('tool_seconds'), '.1f', 7)}"
                   f"{_cell(graph.get('opset'), 'd', 6)}{_cell(graph.get('quantize_nodes'), 'd', 5)}"
                   f"{_cell(graph.get('dequantize_nodes'), 'd', 5)}"
                   f"{_cell(ort and ort['candidate_accuracy'] * 100, '.2f', 8)}{'%' if ort else ' '}"
                   f"{_cell(ort and ort['agreement'] * 100, '.2f', 7)}{'%' if ort else ' '}")
            if engine:
                s, p = engine["layers"], engine["parity"]
                row += (f"{engine['build_seconds']:>8.0f}{s['layers']:>7}{len(s['pointwise_layers']):>7}"
                        f"{len(s['reformat_layers']):>7}{len(s['conv_gemm_not_int8']):>6}"
                        f"{p['candidate_accuracy'] * 100:>8.2f}%{p['agreement'] * 100:>7.2f}%")
            print(row)
            problem = entry.get("error") or (entry.get("engine") or {}).get("error")
            if problem:
                print(f"  {'':<18}{problem[:150]}")
        engines = {route: e for route, entry in routes.items() if (e := _engine(entry))}
        for mode in MODES:
            if not engines:
                break
            print(f"{mode}: images/s at each batch, and batch-1 latency")
            for route, e in engines.items():
                print(f"  {LABELS.get(route, route):<20}" + "".join(
                    f"{f'b{b}':>6}{throughput(e, b, mode):>11,.0f}" for b in BATCHES) +
                      f"{latency_ms(e, 1, mode):>9.3f} ms")
            if "fast" in engines:
                print(f"{mode}: qdq_bridge fast / each route (>= 1.00: fast is at least as fast; in brackets the "
                      f"lowest and highest round's ratio)")
                for route, e in engines.items():
                    if route != "fast":
                        fast = routes[route].get("fast_same_run") or engines["fast"]
                        print(f"  {'fast / ' + LABELS.get(route, route):<28}" + "".join(
                            f"{f'b{b}':>6} {throughput(fast, b, mode) / throughput(e, b, mode):5.2f}x"
                            f"{_round_spread(fast, e, b, mode):>13}" for b in BATCHES))
                if any("fast_same_run" in entry for entry in routes.values()):
                    print("  (each route against the fast engine timed in the same run: "
                          + ", ".join(f"{LABELS.get(route, route)} in {entry['fast_same_run']['file']}"
                                      for route, entry in routes.items() if "fast_same_run" in entry) + ")")


def _round_spread(fast: dict, peer: dict, batch: int, mode: str) -> str:
    """'(low-high)' of fast's throughput over the peer's, round by round ('' without rounds)."""
    fast_timing, peer_timing = timing(fast, batch, mode), timing(peer, batch, mode)
    if not (fast_timing and peer_timing and "round_medians_ms" in fast_timing and "round_medians_ms" in peer_timing):
        return ""
    ratios = [p / f for f, p in zip(fast_timing["round_medians_ms"], peer_timing["round_medians_ms"])]
    return f"({min(ratios):.2f}-{max(ratios):.2f})"


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    networks = results["networks"]
    fig, axes = plt.subplots(1, len(networks), figsize=(6.5 * len(networks), 4.4), squeeze=False)
    for ax, (name, r) in zip(axes[0], networks.items()):
        engines = {route: e for route, entry in r["routes"].items() if (e := _engine(entry))}
        width = 0.8 / max(len(engines), 1)
        for index, (route, e) in enumerate(engines.items()):
            ax.bar(np.arange(len(BATCHES)) + (index - (len(engines) - 1) / 2) * width,
                   [throughput(e, b, "cuda_graph") for b in BATCHES], width, label=LABELS.get(route, route),
                   color=f"C{ROUTES.index(route) if route in ROUTES else index}")  # one color per route
        ax.set(yscale="log", xlabel="batch", ylabel="images / s (CUDA graph)", title=name)
        ax.set_xticks(range(len(BATCHES)), [str(b) for b in BATCHES])
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"TensorRT {results.get('tensorrt', {}).get('features', {}).get('version', '?')} on "
                 f"{results.get('device', '?')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def merge(files: list[Path]) -> dict:
    """Several runs' peers.json as one: routes of a network joined, a later file's route over an earlier one.
    Where a run timed qdq_bridge fast beside other routes, each of them keeps that fast engine's timings
    (fast_same_run), and its ratios are taken against them rather than against another run's."""
    merged: dict = {}
    for path in files:
        found = json.loads(path.read_text())
        for r in found["networks"].values():
            fast = _engine(r["routes"].get("fast", {}))
            for route, entry in r["routes"].items():
                if route != "fast" and fast and _engine(entry):
                    entry["fast_same_run"] = {"file": path.name, "timings": fast["timings"]}
        for key in ("tensorrt", "device", "batches", "runs", "warmup", "rounds"):
            if merged.get(key) is not None and found.get(key) is not None and merged[key] != found[key]:
                print(f"warning: {path} has another {key} ({found[key]} vs {merged[key]})")
            merged.setdefault(key, found.get(key))
        for name, r in found["networks"].items():
            if name in merged.setdefault("networks", {}):
                before = merged["networks"][name]
                if abs(before["float"]["logits_checksum"] - r["float"]["logits_checksum"]) > \
                        1e-3 * abs(before["float"]["logits_checksum"]):
                    print(f"warning: {name}'s float model differs between the files (logits checksum)")
                before["routes"].update(r["routes"])
            else:
                merged["networks"][name] = r
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", default=",".join(NETWORKS))
    parser.add_argument("--routes", default=",".join(ROUTES))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/peers"))
    parser.add_argument("--build-timeout", type=int, default=600,
                        help="seconds per engine build (default 600: ONNX Runtime's ResNet-50 took 419 s on an H200)")
    parser.add_argument("--runs", type=int, default=200, help="timed runs per engine and batch (default 200)")
    parser.add_argument("--warmup", type=int, default=50, help="untimed runs first (default 50)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="timing rounds, each taking every engine in turn; the median round counts (default 3)")
    parser.add_argument("--calibration-samples", type=int, default=128, help="inputs every route calibrates on")
    parser.add_argument("--test-samples", type=int, default=256, help="resnet50-224's test inputs (default 256)")
    parser.add_argument("--train-steps", type=int, default=150, help="resnet50-224's training steps (default 150)")
    parser.add_argument("--no-ort-parity", action="store_true", help="skip each ONNX's ONNX Runtime parity")
    parser.add_argument("--quantize-only", action="store_true", help="stop before TensorRT (CPU only)")
    parser.add_argument("--trt-python", help="interpreter that has tensorrt (default: $QDQ_BRIDGE_TRT_PYTHON)")
    parser.add_argument("--merge", type=Path, nargs="+", help="join these peers.json and report them (no GPU)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        results = merge(args.merge)
    else:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False  # one float model per seed
        probe = None
        if not args.quantize_only:
            probe = TensorRTWorker(args.trt_python).probe()
            print(f"TensorRT {probe['features']['version']}, fast INT8: {probe['fast_int8']}", flush=True)
        results = {"tensorrt": probe, "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                   "batches": BATCHES, "runs": args.runs, "warmup": args.warmup, "rounds": args.rounds,
                   "networks": {}}
        routes = args.routes.split(",")
        for name in args.networks.split(","):
            def save(result: dict, name: str = name) -> None:
                results["networks"][name] = result
                (args.out / "peers.json").write_text(json.dumps(results, indent=1))
            run_network(name, routes, args, probe, save)
    (args.out / "peers.json").write_text(json.dumps(results, indent=1))
    print_tables(results)
    wrote = [args.out / "peers.json"]
    if any(_engine(entry) for r in results["networks"].values() for entry in r["routes"].values()):
        try:
            plot(results, args.out / "peers.png")
            wrote.append(args.out / "peers.png")
        except ImportError as exc:
            print(f"no plot ({exc})")
    print("wrote " + " and ".join(map(str, wrote)))


if __name__ == "__main__":
    main()
