"""The PT2E route's INT8 engine beside the eager route's (issue 23's GPU check): one torchvision family trained
briefly on the template task, quantized both ways on the same calibration batches (eager: qdq_bridge's TensorRT
preset, saved as TorchScript; PT2E: pt2e.quantizer.quantize_pt2e, saved with torch.export.save), each converted by
the CLI in one placement with --engine require; then the two engines' layers side by side (layers, INT8
convolutions, standalone Adds, layer types) and their throughput at batch 1 and 128 (TensorRTWorker.benchmark,
CUDA graph, no host copies), with the PT2E/eager ratio. Needs a GPU, TensorRT (QDQ_BRIDGE_TRT_PYTHON) and torchao.

Usage: python benchmarks/pt2e_vs_eager.py [--family resnet50] [--size 224] [--placement fast] [--out DIR]
                                          [--convert-args "..."]
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from qdq_bridge.pt2e.quantizer import quantize_pt2e
from qdq_bridge.pytorch import quantize
from qdq_bridge.pytorch.load import save_torchscript
from qdq_bridge.testing import zoo
from qdq_bridge.trt.engine import TensorRTWorker

BATCHES = [1, 128]


def convert(model_file: Path, dataset: Path, placement: str, folder: Path, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "qdq_bridge", "convert", str(model_file), "--dataset", str(dataset),
               "--placement", placement, "--engine", "require", "--no-progress", "-o", str(folder), *extra]
    done = subprocess.run(command, capture_output=True, text=True)
    if not (folder / "report.json").exists():
        raise SystemExit(f"error: {model_file.name} did not convert: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads((folder / "report.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--placement", default="fast", choices=("faithful", "fast"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/pt2e_vs_eager"))
    parser.add_argument("--convert-args", default="", help="more convert options, e.g. a timing cache")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    shape = (1, 3, args.size, args.size)
    model = zoo.trained_torchvision(args.family, shape).eval()
    calibration = list(zoo.template_task(shape, 64, seed=1).batches(16))
    test = zoo.template_task(shape, 256, seed=99)
    np.savez(args.out / "test.npz", x=test.x, y=test.y)

    eager = quantize.quantize_ptq(zoo.trained_torchvision(args.family, shape), calibration, "histogram")
    save_torchscript(eager, args.out / "eager.pt", shape)
    tensors = [torch.from_numpy(batch) for batch in calibration]
    program = quantize_pt2e(model, tensors[0], tensors, args.placement)
    torch.export.save(program, args.out / "pt2e.pt2")

    worker, rows = TensorRTWorker(), {}
    for route, file in (("eager", "eager.pt"), ("pt2e", "pt2e.pt2")):
        report = convert(args.out / file, args.out / "test.npz", args.placement, args.out / route,
                         shlex.split(args.convert_args))
        summary, engine = report["tensorrt"]["layer_summary"], args.out / route / report["tensorrt"]["engine"]
        timings = worker.benchmark(engine, BATCHES, copies=False)["timings"]
        rows[route] = {"verdict": "PASS" if report["ok"] else "FAIL", "layers": summary["layers"],
                       "int8_convs": summary["conv_gemm_layers"] - len(summary["conv_gemm_not_int8"]),
                       "convs": summary["conv_gemm_layers"], "adds": len(summary["standalone_add_layers"]),
                       "by_type": summary["by_type"],
                       "images_per_second": {t["batch"]: t["batch"] * 1000 / t["cuda_graph"]["median_ms"]
                                             for t in timings}}
    worker.close()
    (args.out / "pt2e_vs_eager.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"{args.family} {args.size}x{args.size}, {args.placement} placement")
    for route, r in rows.items():
        rates = ", ".join(f"b{b} {rate:,.0f} img/s" for b, rate in r["images_per_second"].items())
        print(f"  {route:6} {r['verdict']}  layers {r['layers']}  INT8 conv {r['int8_convs']}/{r['convs']}  "
              f"standalone Adds {r['adds']}  {rates}")
    for batch in BATCHES:
        ratio = rows["pt2e"]["images_per_second"][batch] / rows["eager"]["images_per_second"][batch]
        print(f"  pt2e / eager at b{batch}: {ratio:.3f}")
    print(f"  same layer types: {rows['pt2e']['by_type'] == rows['eager']['by_type']}")


if __name__ == "__main__":
    main()
