"""TensorRT's builder optimization levels side by side over the family matrix (issue 35, item 5): how long each
level builds and how fast its engines run, to choose the default by measurement.

For each family (torchvision's quantizable families at the matrix's 64 x 64, 10 classes, random weights: a build's
time and an engine's speed do not depend on what the weights learned), qdq_bridge's PTQ preset on random inputs,
export and the fast placement's passes give the engine ONNX; then, one build at a time (builds side by side would
time each other's kernels), each --levels level builds it with no timing cache (what a first conversion costs),
and the engine is timed at batch 1 and 128 (CUDA graph, device buffers, median of --runs). The level in
--cached-level is built once more with a timing cache filled by a first build (what the user's default cache saves
on a second conversion of the same model).
Printed: per family and level the build seconds and images/s, and the share of the best level's images/s; then
per level the slowest build and the lowest share over the families, against issue 35's goals (a conversion in
<= 90 s, engines within 2 % of the best level). results.json in --out, written after every build.

Usage: python benchmarks/builder_levels.py [--families resnet18,mobilenet_v2,googlenet] [--levels 0,1,2,3]
                                           [--cached-level 3] [--out DIR]
       python benchmarks/builder_levels.py --report DIR/results.json
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import onnx

from qdq_bridge import export_onnx, run_passes
from qdq_bridge.errors import BridgeError
from qdq_bridge.pytorch.quantize import quantize_ptq
from qdq_bridge.testing import zoo
from qdq_bridge.trt.engine import BuildSettings, TensorRTWorker

BATCHES = (1, 128)
GOAL_BUILD_SECONDS = 90.0
GOAL_SHARE = 0.98


def engine_onnx(family: str, folder: Path) -> Path:
    size = max(64, zoo.MIN_INPUT_SIZE.get(family, 0))
    shape = (1, 3, size, size)
    quantized = quantize_ptq(zoo.torchvision_float(family, num_classes=10).eval(),
                             zoo.template_task(shape, 64, seed=1).batches(16), progress=False)
    path = folder / f"{family}.onnx"
    onnx.save(run_passes(export_onnx(quantized, shape), placement="fast")[0], str(path))
    return path


def build_and_time(onnx_path: Path, level: int, cache: str | None, builder: TensorRTWorker, timer: TensorRTWorker,
                   args) -> dict:
    engine = onnx_path.with_suffix(f".level{level}.engine")
    settings = BuildSettings(min_batch=1, opt_batch=128, max_batch=max(BATCHES), optimization_level=level,
                             timing_cache=cache, timing_cache_dir=None)
    try:
        built = builder.build(onnx_path, engine, settings)
    except BridgeError as exc:
        return {"error": str(exc)[:400]}
    timings = timer.benchmark(engine, list(BATCHES), args.warmup, args.runs, copies=False)["timings"]
    engine.unlink()
    return {"build_seconds": built["build_seconds"], "timing_cache_reused": (built.get("timing_cache") or {}).get("reused"),
            "throughput": {t["batch"]: (t["cuda_graph"] or t["enqueue"])["throughput_per_s"] for t in timings}}


def run(args) -> dict:
    results = {"levels": args.levels, "cached_level": args.cached_level, "families": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    builder, timer = TensorRTWorker(args.trt_python, timeout_s=args.build_timeout), TensorRTWorker(args.trt_python)
    for family in args.families:
        rows = results["families"][family] = {"levels": {}}
        onnx_path = engine_onnx(family, args.out)
        for level in args.levels:
            rows["levels"][level] = build_and_time(onnx_path, level, None, builder, timer, args)
            print(f"  {family} level {level}: {_cell(rows['levels'][level])}", flush=True)
            _save(results, args.out)
        if args.cached_level is not None:
            with tempfile.TemporaryDirectory() as folder:
                cache = str(Path(folder) / "timing.cache")
                first = build_and_time(onnx_path, args.cached_level, cache, builder, timer, args)
                second = build_and_time(onnx_path, args.cached_level, cache, builder, timer, args)
            rows["cached"] = {"first": first, "second": second}
            _save(results, args.out)
        onnx_path.unlink()
    return results


def _save(results: dict, out: Path) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=1))


def _cell(row: dict) -> str:
    if "error" in row:
        return row["error"][:80]
    return (f"built in {row['build_seconds']:.0f} s, " +
            ", ".join(f"b{b} {v:,.0f}/s" for b, v in row["throughput"].items()))


def print_tables(results: dict) -> None:
    levels = [str(level) for level in results["levels"]]
    print(f"\n{'family':20} {'level':>5} {'build s':>8} " + " ".join(f"{'b' + str(b) + ' /s':>10} {'share':>6}"
                                                                  for b in BATCHES))
    worst: dict[str, dict] = {level: {"build": 0.0, "share": 1.0, "failed": 0} for level in levels}
    for family, rows in results["families"].items():
        built = {level: row for level, row in rows["levels"].items() if "error" not in row}
        best = {str(b): max(row["throughput"][str(b)] for row in built.values()) for b in BATCHES} if built else {}
        for level, row in rows["levels"].items():
            if "error" in row:
                worst[level]["failed"] += 1
                print(f"{family:20} {level:>5} {row['error'][:90]}")
                continue
            shares = {b: row["throughput"][str(b)] / best[str(b)] for b in BATCHES}
            worst[level]["build"] = max(worst[level]["build"], row["build_seconds"])
            worst[level]["share"] = min(worst[level]["share"], *shares.values())
            print(f"{family:20} {level:>5} {row['build_seconds']:8.1f} " +
                  " ".join(f"{row['throughput'][str(b)]:10,.0f} {shares[b]:6.1%}" for b in BATCHES))
        cached = rows.get("cached")
        if cached and "error" not in cached["first"] and "error" not in cached["second"]:
            print(f"{family:20} level {results['cached_level']} with a timing cache: first build "
                  f"{cached['first']['build_seconds']:.1f} s, second {cached['second']['build_seconds']:.1f} s")
    print(f"\nper level over the families (goals: builds <= {GOAL_BUILD_SECONDS:.0f} s, engines >= "
          f"{GOAL_SHARE:.0%} of the best level's images/s)")
    for level, figures in worst.items():
        meets = figures["build"] <= GOAL_BUILD_SECONDS and figures["share"] >= GOAL_SHARE and not figures["failed"]
        print(f"level {level}: slowest build {figures['build']:.1f} s, lowest share {figures['share']:.1%}, "
              f"{figures['failed']} failed builds: {'meets both' if meets else 'misses'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default="resnet18,resnet50,mobilenet_v2,mobilenet_v3_large,shufflenet_v2_x1_0,"
                                              "googlenet,inception_v3,resnext101_32x8d")
    parser.add_argument("--levels", default="0,1,2,3,4,5")
    parser.add_argument("--cached-level", type=int, default=3, help="built twice with one timing cache (-1: not)")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--build-timeout", type=int, default=900)
    parser.add_argument("--trt-python", help="interpreter that has tensorrt (default: $QDQ_BRIDGE_TRT_PYTHON)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/builder_levels"))
    parser.add_argument("--report", type=Path, help="print the tables of this results.json (no GPU)")
    args = parser.parse_args()
    if args.report:
        print_tables(json.loads(args.report.read_text()))
        return
    args.families = args.families.split(",")
    unknown = set(args.families) - set(zoo.ALL_TORCHVISION_FAMILIES)
    if unknown:
        raise SystemExit(f"unknown {', '.join(sorted(unknown))}: choose from {', '.join(zoo.ALL_TORCHVISION_FAMILIES)}")
    args.levels = [int(level) for level in args.levels.split(",")]
    args.cached_level = None if args.cached_level < 0 else args.cached_level
    # through JSON, so that a finished run and a saved one print alike (keys become strings)
    print_tables(json.loads(json.dumps(run(args))))


if __name__ == "__main__":
    main()
