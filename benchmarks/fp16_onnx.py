"""INT8 engines with FP16 float compute two ways: FP16 from builder flags (fp32 Q/DQ ONNX, INT8 + FP16 flags,
how TensorRT 8.6-10 were driven) against FP16 carried by the ONNX (qdq_bridge.graph.precision's mixed-precision copy,
the only way TensorRT 11 takes it, built here by the installed TensorRT's own route).

Needs a GPU and TensorRT (QDQ_BRIDGE_TRT_PYTHON or --trt-python). For each network it builds both engines
from the faithful Q/DQ graph with one batch profile and timing cache, times them at batch 1 and 128 as CUDA
graphs (CUDA events, warm-up then --runs timed runs, median), reads the layer reports (convolutions not INT8)
and measures top-1 agreement and accuracy against the PyTorch quantized model. It prints one table with the
throughput ratio (ONNX-carried / flag-built; the goal is within 3 %) and writes fp16_onnx.json into --out.

The mixed-precision copy keeps INT8 compute (ops between a DQ and a Q) as it is, so on a fully quantized network
it is the Q/DQ graph itself; resnet50-224-float-layer4 has a float stage for it to turn fp16.

Usage: python benchmarks/fp16_onnx.py [--networks resnet50-224,resnet50-224-float-layer4,digits] [--runs 200]
                                      [--out DIR]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import onnx

from qdq_bridge import export_onnx, run_passes
from qdq_bridge.graph.precision import mixed_precision
from qdq_bridge.pytorch.runner import run_torch
from qdq_bridge.trt.engine import BuildSettings, TensorRTWorker, summarize_layers
from qdq_bridge.verify import compare
from trt_engines import network, throughput

BATCHES = (1, 128)
GOAL = 0.03  # the ONNX-carried engine's throughput within 3 % of the flag-built one's


def engines(name: str, worker: TensorRTWorker, args, folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    module, shape, test = network(name)
    qdq = run_passes(export_onnx(module, shape), placement="faithful")[0]
    fp16, conversion = mixed_precision(qdq, test.x[:64])
    reference = run_torch(module, test, 64)
    ways = {"flags": (qdq, BuildSettings(typing="weak", fp16_fallback=True)),
            "onnx": (fp16, BuildSettings(typing="auto", fp16_fallback=True))}
    found = {"input_shape": list(shape), "test_set": test.name, "mixed_precision": conversion, "engines": {}}
    for way, (graph, settings) in ways.items():
        onnx_path, engine_path, layers_path = (folder / f"{way}.onnx", folder / f"{way}.engine",
                                               folder / f"{way}.layers.json")
        onnx.save(graph, str(onnx_path))
        settings.opt_batch, settings.max_batch = 128, 128
        settings.timing_cache = str(folder.parent / "timing.cache")
        build = worker.build(onnx_path, engine_path, settings, layers_path)
        logits = next(iter(worker.infer(engine_path, test.x, 64).values()))
        measured = worker.benchmark(engine_path, BATCHES, args.warmup, args.runs)
        found["engines"][way] = {"build": build, "timings": measured["timings"],
                                 "layers": summarize_layers(json.loads(layers_path.read_text())),
                                 "parity": compare(reference, logits, test, "pytorch", f"tensorrt {way}").as_dict()}
        engine_path.unlink()
        print(f"  {name} {way}: built in {build['build_seconds']:.0f} s ({build['typing']}ly typed, flags "
              f"{build['flags']}, precisions from {build['precision_source']}), timed", flush=True)
    return found


def table(results: dict) -> list[str]:
    lines = [f"{'network':<27}{'engine':<7}{'fp16 ops':>9}{'conv not INT8':>14}{'agree':>9}{'acc gap':>9}"
             + "".join(f"{f'b{b} img/s':>14}" for b in BATCHES), ]
    verdicts = []
    for name, found in results.items():
        for way, e in found["engines"].items():
            p = e["parity"]
            fp16_ops = found["mixed_precision"]["fp16_nodes"] if way == "onnx" else "-"
            lines.append(f"{name:<27}{way:<7}{fp16_ops:>9}{len(e['layers']['conv_gemm_not_int8']):>14}"
                         f"{p['agreement'] * 100:>8.2f}%{p['accuracy_gap_points']:>8.2f}p"
                         + "".join(f"{throughput(e, b, 'cuda_graph'):>14,.0f}" for b in BATCHES))
        flags, carried = found["engines"]["flags"], found["engines"]["onnx"]
        for b in BATCHES:
            ratio = throughput(carried, b, "cuda_graph") / throughput(flags, b, "cuda_graph")
            verdicts.append(f"{name} batch {b}: onnx/flags {ratio:.3f} "
                            f"[{'met' if abs(ratio - 1) <= GOAL else 'NOT met'}: within {GOAL:.0%}]")
    return lines + verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", default="resnet50-224,resnet50-224-float-layer4,digits")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--trt-python")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "out"))
    args = parser.parse_args()
    worker = TensorRTWorker(args.trt_python, timeout_s=1800)
    print(f"TensorRT {worker.probe()['features']['version']}")
    out = Path(args.out)
    results = {name: engines(name, worker, args, out / name) for name in args.networks.split(",")}
    (out / "fp16_onnx.json").write_text(json.dumps(results, indent=1))
    print("\n".join(table(results)))


if __name__ == "__main__":
    main()
