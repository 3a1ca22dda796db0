"""TensorRT engines of one quantized network four ways: FP32, FP16, INT8-faithful and INT8-fast.

Needs a GPU and TensorRT (QDQ_BRIDGE_TRT_PYTHON or --trt-python, as for `convert`). For each network it
quantizes with qdq_bridge's PTQ preset, exports, runs the passes in both placements, builds four engines with
the same batch profile and timing cache, and then:
  - times each engine at each batch size with CUDA events (warm-up, then --runs timed runs; median latency,
    throughput = batch / median), both as an application enqueues it (execute_async_v3 per run, which at small
    batches includes the CPU's kernel launches) and replayed as a CUDA graph (the GPU's time alone);
  - reads the engine inspector's layer report: layers, convolutions not in INT8, standalone pointwise, Add and
    reformat layers;
  - measures accuracy and top-1 agreement against the PyTorch quantized model on a labelled test set, for
    ONNX Runtime (both placements) and every engine.
It prints the tables and the ratios side by side, checks issue 4's targets, and writes results.json and
throughput.png into --out.

Networks:
  resnet18-32   torchvision's quantizable ResNet-18 trained on the examples' digits at 32x32 (CIFAR's size, the
                reference workflow's setup); test set: the examples' 450 test digits
  resnet50-224  torchvision's quantizable ResNet-50 at 224x224, trained briefly on qdq_bridge.testing.zoo's template
                task; test set: 256 template-task inputs
  resnet50-224-float-layer4  the same with its last stage kept float by PTQ (keep_float=("layer4",)): a float
                island between Q/DQ, as when a user leaves sensitive layers unquantized
  digits        the examples' PTQ model (examples/out/resnet_q.pt, from examples/train_digits.py)
FP32 engines use TF32 tensor cores, TensorRT's default for FP32 on Ampere and newer.

Usage: python benchmarks/trt_engines.py [--networks resnet18-32,resnet50-224,digits] [--runs 200] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import onnx

from qdq_bridge import export_onnx, lint_model, load_model, run_passes
from qdq_bridge.data.sources import load_dataset
from qdq_bridge.export.exporter import float_twin
from qdq_bridge.pytorch.runner import run_torch
from qdq_bridge.testing import zoo
from qdq_bridge.trt.engine import BuildSettings, TensorRTWorker, summarize_layers
from qdq_bridge.verify import compare, run_onnxruntime

ENGINES = ("fp32", "fp16", "int8-faithful", "int8-fast")
BATCHES = (1, 32, 128, 256)
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "out" / "resnet_q.pt"
# issue 4's targets
FAST_OVER_FAITHFUL = 1.15  # at batch 1 and 128
FAST_OVER_FP16_RESNET50 = 1.8  # at batch 256
MAX_GAP_POINTS = {"int8-faithful": 0.1, "int8-fast": 0.2}


def network(name: str):
    """(PyTorch quantized module, input shape, labelled test set)."""
    if name == "resnet18-32":
        model, test = zoo.torchvision_on_digits("resnet18")
        return model, (1, 3, 32, 32), test
    if name in ("resnet50-224", "resnet50-224-float-layer4"):
        shape = (1, 3, 224, 224)
        keep_float = ("layer4",) if name.endswith("float-layer4") else ()
        return (zoo.quantized_torchvision("resnet50", shape, keep_float=keep_float), shape,
                zoo.template_task(shape, 256, seed=99))
    if name == "digits":
        if not EXAMPLE.exists():
            raise SystemExit(f"{EXAMPLE} not found: run python examples/train_digits.py first")
        loaded = load_model(EXAMPLE)
        return loaded.module, tuple(loaded.input_shape), load_dataset(loaded.dataset)
    raise SystemExit(f"unknown network '{name}': choose from resnet18-32, resnet50-224, "
                     "resnet50-224-float-layer4, digits")


def run_network(name: str, worker: TensorRTWorker, args, folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    module, shape, test = network(name)
    exported = export_onnx(module, shape)
    graphs = {f"int8-{p}": run_passes(exported, placement=p)[0] for p in ("faithful", "fast")}
    graphs["fp32"] = graphs["fp16"] = float_twin(graphs["int8-faithful"])
    reference = run_torch(module, test, 64)
    result = {"input_shape": list(shape), "test_set": test.name, "samples": len(test), "engines": {},
              "lint_violations": {k: len(lint_model(graphs[k])) for k in ("int8-faithful", "int8-fast")},
              "onnxruntime": {k: compare(reference, run_onnxruntime(graphs[k], test, 64), test, "pytorch",
                                         f"onnxruntime {k}").as_dict() for k in ("int8-faithful", "int8-fast")},
              "prepare_seconds": time.perf_counter() - start}
    for kind in ENGINES:
        onnx_path, engine_path, layers_path = (folder / f"{kind}.onnx", folder / f"{kind}.engine",
                                               folder / f"{kind}.layers.json")
        onnx.save(graphs[kind], str(onnx_path))
        precision = kind.split("-")[0]
        settings = BuildSettings(precision=precision, fp16_fallback=precision == "int8", min_batch=1,
                                 opt_batch=args.opt_batch, max_batch=max(BATCHES),
                                 timing_cache=str(folder.parent / "timing.cache"))
        build = worker.build(onnx_path, engine_path, settings, layers_path)
        logits = next(iter(worker.infer(engine_path, test.x, 64).values()))
        layers = json.loads(layers_path.read_text()) if layers_path.exists() else {}
        measured = worker.benchmark(engine_path, BATCHES, args.warmup, args.runs, profile_batch=max(BATCHES))
        result["engines"][kind] = {
            "build_seconds": build["build_seconds"],
            "layers": summarize_layers(layers),
            "tactics": {layer["Name"]: layer.get("TacticName", "") for layer in layers.get("Layers", [])},
            "timings": measured["timings"],
            "layer_profile": measured.get("layer_profile"),
            "parity": compare(reference, logits, test, "pytorch", f"tensorrt {kind}").as_dict(),
        }
        engine_path.unlink()  # hundreds of MB each; the layer reports stay
        print(f"  {name} {kind}: built in {build['build_seconds']:.0f} s, timed", flush=True)
    return result


MODES = ("cuda_graph", "enqueue")


def timing(entry: dict, batch: int, mode: str) -> dict | None:
    """An engine's timing at `batch` in `mode`; None where that mode did not run (no CUDA graph)."""
    return next(t for t in entry["timings"] if t["batch"] == batch)[mode]


def _measure(entry: dict, batch: int, mode: str, key: str) -> float:
    """One number of an engine's timing at `batch` in `mode`; NaN where that mode did not run."""
    found = timing(entry, batch, mode)
    return found[key] if found else float("nan")


def throughput(entry: dict, batch: int, mode: str) -> float:
    return _measure(entry, batch, mode, "throughput_per_s")


def latency_ms(entry: dict, batch: int, mode: str) -> float:
    return _measure(entry, batch, mode, "median_ms")


def print_tables(results: dict) -> list[tuple[str, bool]]:
    """Prints the tables; returns (target, met) for issue 4's targets."""
    targets = []
    for name, r in results.items():
        engines = r["engines"]
        print(f"\n== {name} {'x'.join(map(str, r['input_shape'][1:]))}, test set {r['test_set']} "
              f"({r['samples']} samples)")
        print(f"{'engine':<14}{'layers':>7}{'conv':>5}{'!int8':>6}{'pointw':>7}{'Adds':>5}{'reform':>7}{'build s':>8}")
        for kind, e in engines.items():
            s = e["layers"]
            print(f"{kind:<14}{s['layers']:>7}{s['conv_gemm_layers']:>5}{len(s['conv_gemm_not_int8']):>6}"
                  f"{len(s['pointwise_layers']):>7}{len(s['standalone_add_layers']):>5}{len(s['reformat_layers']):>7}"
                  f"{e['build_seconds']:>8.0f}")
        for mode in MODES:
            print(f"{mode}: images/s at each batch, and batch-1 latency")
            for kind, e in engines.items():
                print(f"  {kind:<14}" + "".join(f"{f'b{b}':>6}{throughput(e, b, mode):>11,.0f}" for b in BATCHES) +
                      f"{latency_ms(e, 1, mode):>9.3f} ms")
            print(f"{mode}: throughput ratios, side by side")
            for top, bottom in (("int8-fast", "int8-faithful"), ("int8-fast", "fp16"), ("int8-faithful", "fp16"),
                                ("fp16", "fp32"), ("int8-fast", "fp32")):
                print(f"  {top + ' / ' + bottom:<28}" + "".join(
                    f"{f'b{b}':>6} {throughput(engines[top], b, mode) / throughput(engines[bottom], b, mode):5.2f}x"
                    for b in BATCHES))
        print(f"accuracy vs the PyTorch quantized model (PyTorch: "
              f"{r['onnxruntime']['int8-faithful']['reference_accuracy'] * 100:.2f}%):")
        rows = [*r["onnxruntime"].values(), *(e["parity"] for e in engines.values())]
        for c in rows:
            print(f"  {c['candidate']:<28} accuracy {c['candidate_accuracy'] * 100:6.2f}%  gap "
                  f"{c['accuracy_gap_points']:5.2f} pt  top-1 agreement {c['agreement'] * 100:6.2f}%  "
                  f"max|diff| {c['max_abs_diff']:.4f}")
        print(f"lint violations: {r['lint_violations']}")
        targets += _targets(name, r)
    return targets


def _targets(name: str, r: dict) -> list[tuple[str, bool]]:
    engines = r["engines"]
    fast, faithful = engines["int8-fast"], engines["int8-faithful"]
    targets = []
    if name.startswith("resnet"):
        targets.append((f"{name}: INT8-fast has no standalone Add layers", not fast["layers"]["standalone_add_layers"]))
        for mode in MODES:
            for b in (1, 128):
                ratio = throughput(fast, b, mode) / throughput(faithful, b, mode)
                targets.append((f"{name} {mode}: INT8-fast / INT8-faithful at batch {b} = {ratio:.2f} >= "
                                f"{FAST_OVER_FAITHFUL}", ratio >= FAST_OVER_FAITHFUL))
    if name == "resnet50-224":
        for mode in MODES:
            ratio = throughput(fast, 256, mode) / throughput(engines["fp16"], 256, mode)
            targets.append((f"{name} {mode}: INT8-fast / FP16 at batch 256 = {ratio:.2f} >= "
                            f"{FAST_OVER_FP16_RESNET50}", ratio >= FAST_OVER_FP16_RESNET50))
        s = fast["layers"]
        print(f"  {name} INT8-fast: convolutions not INT8: {s['conv_gemm_not_int8']}; standalone pointwise: "
              f"{s['pointwise_layers']}; reformats: {s['reformat_layers']}")
        for kind in ("int8-fast", "fp16"):
            explain_time(kind, engines[kind])
    if r["test_set"].startswith("digits"):  # the examples' test set
        for kind, limit in MAX_GAP_POINTS.items():
            for c in (r["onnxruntime"][kind], engines[kind]["parity"]):
                targets.append((f"{name}: {c['candidate']} accuracy within {limit} pt of PyTorch "
                                f"({c['accuracy_gap_points']:.2f})", c["accuracy_gap_points"] <= limit + 1e-9))
    return targets


def kernel_family(tactic: str) -> str:
    """TensorRT's kernel names start with the architecture they were written for: sm90 (Hopper's own), sm80..."""
    return tactic.split("_")[0] if tactic.startswith("sm") else "no tactic (reformat, fused stem, ...)"


def explain_time(kind: str, engine: dict) -> None:
    """Where an engine's time goes at the profiled batch, by kernel family, and its slowest layers."""
    profile = engine.get("layer_profile")
    if not profile:
        print(f"  {kind}: no layer profile")
        return
    families: dict[str, list] = {}
    for layer in profile["layers"]:
        families.setdefault(kernel_family(engine["tactics"].get(layer["name"], "")), []).append(layer["mean_ms"])
    total = sum(sum(v) for v in families.values())
    print(f"  {kind} at batch {profile['batch']}, TensorRT profiler ({total:.2f} ms over all layers): " +
          "; ".join(f"{family} {sum(ms):.2f} ms in {len(ms)} layers ({sum(ms) / total:.0%})"
                    for family, ms in sorted(families.items(), key=lambda item: -sum(item[1]))))
    for layer in profile["layers"][:3]:
        print(f"    {layer['mean_ms']:.3f} ms  {layer['name'][:70]}  [{engine['tactics'].get(layer['name'], '')[:60]}]")


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.2), squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items()):
        for index, (kind, e) in enumerate(r["engines"].items()):
            for mode, style in zip(MODES, ("-", ":")):
                ax.plot(BATCHES, [throughput(e, b, mode) for b in BATCHES], style, marker="o", color=f"C{index}",
                        label=f"{kind} ({mode.replace('_', ' ')})")
        ax.set(xscale="log", yscale="log", xlabel="batch", ylabel="images / s", title=name)
        ax.set_xticks(BATCHES, [str(b) for b in BATCHES])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", default="resnet18-32,resnet50-224,digits")
    parser.add_argument("--runs", type=int, default=200, help="timed runs per engine and batch (default 200)")
    parser.add_argument("--warmup", type=int, default=50, help="untimed runs first (default 50)")
    parser.add_argument("--opt-batch", type=int, default=128, help="the profile's optimum batch (default 128)")
    parser.add_argument("--trt-python", help="interpreter that has tensorrt (default: $QDQ_BRIDGE_TRT_PYTHON)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    parser.add_argument("--keep", action="store_true",
                        help="keep the other networks already in --out/results.json (measured earlier on this "
                             "machine) and report them alongside: for runs split to fit a time limit")
    args = parser.parse_args()
    worker = TensorRTWorker(args.trt_python)
    probe = worker.probe()
    print(f"TensorRT {probe['features']['version']}, fast INT8: {probe['fast_int8']}", flush=True)
    saved = args.out / "results.json"
    results = json.loads(saved.read_text())["networks"] if args.keep and saved.exists() else {}
    for name in args.networks.split(","):
        results[name] = run_network(name, worker, args, args.out / name)
        saved.write_text(json.dumps({"tensorrt": probe, "batches": BATCHES, "runs": args.runs,
                                                           "warmup": args.warmup, "networks": results}, indent=1))
    targets = print_tables(results)
    plot(results, args.out / "throughput.png")
    print("\nissue 4 targets:")
    for target, met in targets:
        print(f"  [{'met' if met else 'NOT met'}] {target}")
    print(f"wrote {saved} and {args.out / 'throughput.png'}")


if __name__ == "__main__":
    main()
