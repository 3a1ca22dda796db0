"""Images in host memory to logits in host memory, through qdq_bridge's engine session (issue 36).

For each network (torchvision's quantizable ResNet-50, ResNet-18 and MobileNetV2 at 224 x 224, 1000 classes, random
weights: the speed of an engine does not depend on what it learned), PTQ with qdq_bridge's TensorRT preset on
random 8-bit images under ImageNet's preprocessing, then these engines, each built with the same settings (batch
profile 1..256, opt 128, the user's timing cache, --builder-optimization-level if given):
  uint8      the fast placement's Q/DQ ONNX taking 8-bit pixels, N x 3 x 224 x 224, with ImageNet's preprocessing
             inside (`--engine-input uint8-nchw`, graph.image_input)
  float      the same Q/DQ ONNX taking float32 N x 3 x 224 x 224 inputs (the host does the preprocessing: a
             loader's work, not timed here)
  trt-int8   TensorRT's implicit INT8 of the float ONNX, entropy-calibrated on the same images (peers.py's route)
  modelopt   ModelOpt's ONNX PTQ, fp32 at opset 17 (peers.py's modelopt-opset17), where modelopt imports
Each engine is timed two ways at batch 1, 32 and 256:
  device      the engine alone on device buffers, replayed as a CUDA graph (TensorRTWorker.benchmark)
  end_to_end  TensorRTSession.run on --images images already in host memory (uint8 for the uint8 engine, float32
              otherwise) to logits in host memory: the copies into the shared buffers, the uploads, the compute,
              the downloads; at batch 1 each call times one image (latency percentiles), at 32 and 256 one call
              takes every image in batches (throughput, the median of --repeats calls)
While end_to_end runs: the GPU's utilisation (NVML, sampled every 10 ms) and the CPU cores busy (this process and
the worker, by their CPU times over the wall time).
Printed side by side: end_to_end / device of each engine, uint8 / float and uint8 / each peer end to end, and
ResNet-50's uint8 end to end at 256 against MLPerf Inference v4.0's offline ResNet-50 result per H100 (88,714
images/s); results.json in --out (a later run into the same --out, on the same card and builder level, keeps
the networks it does not run). Needs a GPU and TensorRT (QDQ_BRIDGE_TRT_PYTHON or --trt-python).

Usage: python benchmarks/serving.py [--networks resnet50,resnet18,mobilenet_v2] [--routes uint8,float,trt-int8]
                                    [--images 2048] [--builder-optimization-level N] [--out DIR]
       python benchmarks/serving.py --report benchmarks/results/.../serving.json
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import onnx

from qdq_bridge import export_onnx, run_passes
from qdq_bridge.choices import PRESETS
from qdq_bridge.data.arrays import Dataset
from qdq_bridge.errors import BridgeError
from qdq_bridge.graph.image_input import PixelInput
from qdq_bridge.pytorch.quantize import quantize_ptq
from qdq_bridge.testing import zoo
from qdq_bridge.trt.engine import BuildSettings, TensorRTSession, TensorRTWorker, build_engine
from peers import CALIBRATION_BATCH, float_onnx, modelopt_route

NETWORKS = ("resnet50", "resnet18", "mobilenet_v2")
ROUTES = ("uint8", "float", "trt-int8", "modelopt")
BATCHES = (1, 32, 256)
SHAPE = (1, 3, 224, 224)
MLPERF_RESNET50_H100 = 88_714  # images/s, MLPerf Inference v4.0 datacenter, offline, per H100
IMAGENET = PRESETS["imagenet"]
PIXELS = PixelInput("nchw", IMAGENET["mean"], IMAGENET["std"])  # ImageNet's ToTensor + Normalize, in the engine


def images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, *SHAPE[1:]), dtype=np.uint8)


def onnx_files(name: str, routes: list[str], folder: Path) -> dict[str, dict]:
    """Each route's ONNX (and the trt-int8 route's calibration inputs), written into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    model = zoo.torchvision_float(name, num_classes=1000).eval()
    calibration = PIXELS.preprocessed(images(64, seed=1))
    files: dict[str, dict] = {}
    if {"uint8", "float"} & set(routes):
        start = time.perf_counter()
        quantized = quantize_ptq(copy.deepcopy(model), Dataset("calibration", calibration).batches(CALIBRATION_BATCH),
                                 progress=False)
        fast = run_passes(export_onnx(quantized, SHAPE), placement="fast")[0]
        onnx.save(fast, str(folder / "float.qdq.onnx"))
        onnx.save(PIXELS.model(fast), str(folder / "uint8.qdq.onnx"))
        print(f"  {name}: PTQ, export and passes in {time.perf_counter() - start:.0f} s", flush=True)
        files["uint8"], files["float"] = {"onnx": folder / "uint8.qdq.onnx"}, {"onnx": folder / "float.qdq.onnx"}
    if {"trt-int8", "modelopt"} & set(routes):
        onnx.save(float_onnx(model, SHAPE), str(folder / "float.onnx"))
        np.save(folder / "calibration.npy", calibration)
        files["trt-int8"] = {"onnx": folder / "float.onnx", "calibration_data": folder / "calibration.npy"}
    if "modelopt" in routes:
        try:
            found = modelopt_route("modelopt-opset17", folder / "float.onnx", folder / "modelopt.onnx",
                                   Dataset("calibration", calibration))
            files["modelopt"] = {"onnx": Path(found["onnx"])}
        except ImportError as exc:
            files["modelopt"] = {"error": f"modelopt is not installed ({exc})"}
    return {route: files[route] for route in routes}


def settings(route: str, entry: dict, args, folder: Path) -> BuildSettings:
    built = BuildSettings(min_batch=1, opt_batch=128, max_batch=max(BATCHES),
                          optimization_level=args.builder_optimization_level)
    if route == "trt-int8":
        built.typing, built.calibration_batch = "weak", CALIBRATION_BATCH
        built.calibration_data, built.calibration_cache = str(entry["calibration_data"]), str(folder / "int8.cache")
        Path(built.calibration_cache).unlink(missing_ok=True)
    return built


class Utilisation:
    """The GPU's mean utilisation (NVML, sampled every 10 ms) and the CPU cores kept busy by this process and the
    worker `pid`, between `__enter__` and `__exit__`."""

    def __init__(self, pid: int):
        self.pid, self.samples, self.done = pid, [], threading.Event()
        self.device = ctypes.c_void_p()
        try:
            self.nvml = ctypes.CDLL("libnvidia-ml.so.1")
        except OSError:  # no NVIDIA driver (the CPU tests' stand-in TensorRT): no GPU figure
            self.nvml = None
        if self.nvml is not None and (self.nvml.nvmlInit_v2() or
                                      self.nvml.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(self.device))):
            self.nvml = None

    def _sample(self) -> None:
        rates = (ctypes.c_uint * 2)()  # nvmlUtilization_t: gpu, memory (percent)
        while self.nvml is not None and not self.done.wait(0.01):
            if self.nvml.nvmlDeviceGetUtilizationRates(self.device, rates) == 0:
                self.samples.append(rates[0])

    def _cpu_seconds(self) -> float:
        """This process's CPU time and the worker's, every thread's, in ns (clock ticks are too coarse at batch 1)."""
        threads = Path(f"/proc/{self.pid}/task").glob("*/schedstat")
        return time.process_time() + sum(int(t.read_text().split()[0]) for t in threads) / 1e9

    def __enter__(self) -> Utilisation:
        self.thread = threading.Thread(target=self._sample)
        self.cpu, self.wall = self._cpu_seconds(), time.perf_counter()
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.cpu_cores = (self._cpu_seconds() - self.cpu) / (time.perf_counter() - self.wall)
        self.done.set()
        self.thread.join()
        self.gpu_percent = float(np.mean(self.samples)) if self.samples else None


def end_to_end(engine: Path, host: np.ndarray, batch: int, worker: TensorRTWorker, args) -> dict:
    """Host images to host logits through a session of `batch`: latency percentiles of single images at batch 1,
    else the throughput of runs over every image."""
    with TensorRTSession(engine, batch_size=batch, worker=worker) as session:
        session.run(host[:4 * batch])  # warm-up: each slot's first full batch runs plainly and is captured
        with Utilisation(session._process.pid) as use:
            if batch == 1:
                times = []
                for index in range(args.runs):
                    start = time.perf_counter()
                    session.run(host[index % len(host):][:1])
                    times.append(time.perf_counter() - start)
                p50, p90, p99 = np.percentile(np.array(times) * 1000.0, [50, 90, 99])
                measured = {"p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "throughput_per_s": 1000.0 / p50}
            else:
                seconds = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    session.run(host)
                    seconds.append(time.perf_counter() - start)
                measured = {"seconds": float(np.median(seconds)), "throughput_per_s": len(host) / np.median(seconds)}
    return {**{k: float(v) for k, v in measured.items()}, "gpu_percent": use.gpu_percent,
            "cpu_cores": use.cpu_cores}


def run_network(name: str, routes: list[str], args, result: dict, save) -> None:
    """The network's engines, built and timed into `result`; `save()` after each, so that a run cut short keeps
    what it measured."""
    folder = args.out / name
    result["routes"] = {}
    pixels = images(args.images, seed=7)
    floats = None if routes == ["uint8"] else PIXELS.preprocessed(pixels)
    builder, worker = TensorRTWorker(args.trt_python, timeout_s=1800), TensorRTWorker(args.trt_python)
    for route, entry in onnx_files(name, routes, folder).items():
        row = result["routes"][route] = {}
        if "error" in entry:
            row["error"] = entry["error"]
            continue
        engine = folder / f"{route}.engine"
        try:
            built = build_engine(entry["onnx"], engine, settings(route, entry, args, folder), builder)
        except BridgeError as exc:
            row["error"] = str(exc)[:600]
            print(f"  {name} {route}: {row['error']}", flush=True)
            continue
        row["build_seconds"] = built.build["build_seconds"]
        timings = worker.benchmark(engine, list(BATCHES), args.warmup, args.runs, copies=False)["timings"]
        row["device"] = {t["batch"]: t["cuda_graph"] or t["enqueue"] for t in timings}
        host = pixels if route == "uint8" else floats
        try:
            row["end_to_end"] = {batch: end_to_end(engine, host, batch, worker, args) for batch in BATCHES}
        except BridgeError as exc:
            row["error"] = f"end to end: {exc}"[:600]
            print(f"  {name} {route}: {row['error']}", flush=True)
            save()
            continue
        print(f"  {name} {route}: built in {row['build_seconds']:.0f} s; end to end " + ", ".join(
            f"b{b} {row['end_to_end'][b]['throughput_per_s']:,.0f}/s" for b in BATCHES), flush=True)
        engine.unlink()  # hundreds of MB for ResNet-50
        save()


def print_tables(results: dict, card: str) -> None:
    print(f"\n{card}: images/s (host memory to host memory through TensorRTSession, and on device buffers)")
    print(f"{'network':13} {'route':9} {'batch':>5} {'device':>9} {'end2end':>9} {'e2e/dev':>7} {'p50/p90/p99 ms':>17} "
          f"{'GPU %':>5} {'CPU cores':>9}")
    for name, result in results["networks"].items():
        for route, row in result["routes"].items():
            if "error" in row:
                print(f"{name:13} {route:9} {row['error'][:90]}")
                continue
            for batch in BATCHES:
                device, e2e = row["device"][batch]["throughput_per_s"], row["end_to_end"][batch]
                latency = (f"{e2e['p50_ms']:.2f}/{e2e['p90_ms']:.2f}/{e2e['p99_ms']:.2f}" if batch == 1 else "")
                gpu = f"{e2e['gpu_percent']:.0f}" if e2e["gpu_percent"] is not None else "-"
                print(f"{name:13} {route:9} {batch:5} {device:9,.0f} {e2e['throughput_per_s']:9,.0f} "
                      f"{e2e['throughput_per_s'] / device:7.2f} {latency:>17} {gpu:>5} {e2e['cpu_cores']:9.1f}")
    print("\nend to end, uint8 over each other route (goals: >= 1.5 over float, > 1 over every peer)")
    for name, result in results["networks"].items():
        rows = result["routes"]
        if "end_to_end" not in rows.get("uint8", {}):
            continue
        for route, row in rows.items():
            if route != "uint8" and "end_to_end" in row:
                ratios = [rows["uint8"]["end_to_end"][b]["throughput_per_s"] / row["end_to_end"][b]["throughput_per_s"]
                          for b in BATCHES]
                print(f"{name:13} uint8 / {route:9} " + "  ".join(f"b{b} {r:.2f}x" for b, r in zip(BATCHES, ratios)))
    resnet50 = results["networks"].get("resnet50", {}).get("routes", {}).get("uint8", {})
    if "end_to_end" in resnet50:
        e2e = resnet50["end_to_end"][256]["throughput_per_s"]
        print(f"\nResNet-50 uint8 end to end at 256: {e2e:,.0f} images/s = {e2e / MLPERF_RESNET50_H100:.2f}x MLPerf "
              f"v4.0's {MLPERF_RESNET50_H100:,} per H100 (on {card})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", default=",".join(NETWORKS))
    parser.add_argument("--routes", default="uint8,float,trt-int8")
    parser.add_argument("--images", type=int, default=2048, help="images in host memory (default 2048)")
    parser.add_argument("--runs", type=int, default=200, help="timed runs at batch 1 and on device (default 200)")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5, help="end-to-end calls over every image (default 5)")
    parser.add_argument("--builder-optimization-level", type=int, help="TensorRT's (default: TensorRT's, 3)")
    parser.add_argument("--trt-python", help="interpreter that has tensorrt (default: $QDQ_BRIDGE_TRT_PYTHON)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/serving"))
    parser.add_argument("--report", type=Path, help="print the tables of this results.json (no GPU)")
    args = parser.parse_args()
    if args.report:
        results = json.loads(args.report.read_text())
        for result in results["networks"].values():  # JSON's keys are strings
            for row in result["routes"].values():
                for mode in ("device", "end_to_end"):
                    row[mode] = {int(batch): value for batch, value in row.get(mode, {}).items()}
        print_tables(results, results["card"])
        return
    routes = args.routes.split(",")
    for choice, offered in ((args.networks.split(","), NETWORKS), (routes, ROUTES)):
        unknown = set(choice) - set(offered)
        if unknown:
            raise SystemExit(f"unknown {', '.join(sorted(unknown))}: choose from {', '.join(offered)}")
    card = (subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                           text=True).stdout.strip() if shutil.which("nvidia-smi") else "") or "no GPU"
    results = {"card": card, "builder_optimization_level": args.builder_optimization_level, "networks": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    earlier = args.out / "results.json"
    if earlier.exists():  # a run split over calls (each under a time limit): the other networks' rows stay
        kept = json.loads(earlier.read_text())
        if (kept["card"], kept["builder_optimization_level"]) == (card, args.builder_optimization_level):
            results["networks"] = {n: r for n, r in kept["networks"].items() if n not in args.networks.split(",")}

    def save() -> None:
        (args.out / "results.json").write_text(json.dumps(results, indent=1))

    for name in args.networks.split(","):
        run_network(name, routes, args, results["networks"].setdefault(name, {}), save)
    print_tables(results, card)


if __name__ == "__main__":
    main()
