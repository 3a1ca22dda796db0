"""What it costs to call an engine from Python: `as_torch_module` (a TensorRTSession: one worker process that
keeps the engine, batches through shared-memory files) against the raw engine timed inside the worker, same
engine, same run (issue 12).

Needs a GPU and TensorRT (QDQ_BRIDGE_TRT_PYTHON or --trt-python, as for `convert`). It converts the examples'
digits model (examples/out/resnet_q.pt, made by examples/train_digits.py) with the engine required, so the
report's parity rows come through sessions, and then times at batch 1 and 128:
  - raw, the worker's benchmark handler: `enqueue` (CUDA events around execute_async_v3), `copies` (copying an
    ordinary host array in and the outputs out) and `enqueue_with_copies` (both, by the host's clock);
  - module, `as_torch_module(engine)(x)` on a CPU tensor, by the host's clock per call, after warm-up calls
    (the first call, which starts the session, is reported on its own).
It prints them side by side with issue 12's targets and writes runtime.json into --out:
  batch 1:   module latency <= raw enqueue latency + copy time + 1 ms
  batch 128: module throughput >= 80 % of the raw engine's enqueue_with_copies throughput

Usage: python benchmarks/runtime.py [--model examples/out/resnet_q.pt] [--runs 200] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from qdq_bridge import ConvertOptions, convert
from qdq_bridge.report import parity_lines
from qdq_bridge.trt.engine import TensorRTWorker, as_torch_module

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "out" / "resnet_q.pt"
BATCHES = (1, 128)
LATENCY_SLACK_MS = 1.0  # batch 1: what the session may add to the raw engine's latency and copies
MIN_THROUGHPUT_SHARE = 0.80  # batch 128: of the raw engine's throughput with copies


def module_timings(engine: Path, worker: TensorRTWorker, sample_shape: tuple, runs: int) -> dict:
    """Median, 10th and 90th percentile milliseconds of a module call per batch size, and the first call's."""
    module = as_torch_module(engine, worker, batch_size=max(BATCHES))
    rng = np.random.default_rng(0)
    timings = {}
    try:
        start = time.perf_counter()
        module(torch.zeros(1, *sample_shape))
        timings["first_call_ms"] = (time.perf_counter() - start) * 1000
        for batch in BATCHES:
            x = torch.from_numpy(rng.standard_normal((batch, *sample_shape)).astype(np.float32))
            for _ in range(20):
                module(x)
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                module(x)
                times.append((time.perf_counter() - start) * 1000)
            p10, median, p90 = np.percentile(times, [10, 50, 90])
            timings[batch] = {"median_ms": median, "p10_ms": p10, "p90_ms": p90,
                              "throughput_per_s": batch * 1000 / median}
    finally:
        module.close()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=EXAMPLE)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--trt-python", default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/runtime"))
    args = parser.parse_args()
    worker = TensorRTWorker(args.trt_python)

    result = convert(args.model, args.out / "convert", ConvertOptions(engine="require", trt_python=args.trt_python))
    report = result.report
    print(f"{args.model.name}: TensorRT {report['tensorrt']['probe']['features']['version']}, parity through "
          f"sessions ({'PASS' if result.ok else 'FAIL: ' + '; '.join(report['failed'])})")
    print("\n".join(parity_lines(report)))

    engine = args.out / "convert" / f"{args.model.stem}.int8.engine"
    raw = {t["batch"]: t for t in worker.benchmark(engine, list(BATCHES), runs=args.runs)["timings"]}
    module = module_timings(engine, worker, tuple(report["input_shape"][1:]), args.runs)

    print(f"\nfirst module call (starts the session): {module['first_call_ms']:.0f} ms")
    print(f"{'batch':>5} {'raw enqueue':>12} {'copies':>8} {'raw+copies':>11} {'module':>8}   ms (median), "
          "images/s raw+copies / module")
    for batch in BATCHES:
        r, m = raw[batch], module[batch]
        print(f"{batch:>5} {r['enqueue']['median_ms']:>12.3f} {r['copies']['median_ms']:>8.3f} "
              f"{r['enqueue_with_copies']['median_ms']:>11.3f} {m['median_ms']:>8.3f}   "
              f"{r['enqueue_with_copies']['throughput_per_s']:,.0f} / {m['throughput_per_s']:,.0f}")
    latency_bound = raw[1]["enqueue"]["median_ms"] + raw[1]["copies"]["median_ms"] + LATENCY_SLACK_MS
    share = module[128]["throughput_per_s"] / raw[128]["enqueue_with_copies"]["throughput_per_s"]
    targets = [(f"batch 1: module {module[1]['median_ms']:.3f} ms <= raw enqueue + copies + "
                f"{LATENCY_SLACK_MS:g} ms = {latency_bound:.3f} ms", module[1]["median_ms"] <= latency_bound),
               (f"batch 128: module throughput {share * 100:.1f}% of raw with copies >= "
                f"{MIN_THROUGHPUT_SHARE * 100:.0f}%", share >= MIN_THROUGHPUT_SHARE)]
    for text, met in targets:
        print(f"{text} [{'met' if met else 'MISSED'}]")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "runtime.json").write_text(json.dumps(
        {"model": args.model.name, "parity": report["parity"], "tensorrt": report["tensorrt"]["probe"]["features"],
         "raw": raw, "module": module, "targets": [{"target": t, "met": bool(met)} for t, met in targets]}, indent=1))
    print(f"wrote {args.out / 'runtime.json'}")


if __name__ == "__main__":
    main()
