"""The family matrix (issue 20): every torchvision quantizable family, as a user brings it, through the CLI.

Each family (zoo.ALL_TORCHVISION_FAMILIES) is trained on scikit-learn's digits upsampled to --size pixels, RGB
(zoo.trained_on_digits: one-cycle Adam, shifted digits; Inception v3 at its smallest input, 75, where --size is
smaller), until it is decisive (its float test accuracy is printed; the issue asks for >= 90 %). It is quantized by
qdq_bridge's TensorRT-legal PTQ preset on --calibration-samples training digits, saved with
`torch.jit.save(torch.jit.script(model))` as a user would (qdq_bridge.save_torchscript, which adds the input shape),
with the test split as an .npz; then `python -m qdq_bridge convert NAME.pt --dataset NAME-test.npz --placement P
--engine E` runs for both placements, --jobs conversions at a time, each a process of its own with --threads
threads.

Table (printed, and families.md / families.json in --out): exit status, verdict, top-1 agreement and accuracy per
backend, the discordant counts lost / gained (samples PyTorch gets right and the candidate wrong, and the converse)
with the exact McNemar p, the engine's layers, INT8 convolutions, standalone Adds, each stage's seconds and the
conversion's wall time, and the reasons of a FAIL.

Usage: python benchmarks/families.py [--families resnet18,googlenet] [--engine require|auto|off] [--out DIR]
                                     [--size 64] [--epochs 40] [--jobs 8] [--threads 2] [--stage prepare|convert]
       python benchmarks/families.py --table DIR/families.json   (print the table of a finished run)
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch

from qdq_bridge import quantize, save_torchscript, zoo

PLACEMENTS = ("fast", "faithful")
PAIRS = (("pytorch", "onnxruntime"), ("pytorch", "tensorrt"))


def prepare(name: str, size: int, epochs: int, calibration_samples: int, threads: int, out: Path) -> dict:
    """Train, quantize and save one family; its float accuracy and the seconds each step took."""
    torch.set_num_threads(threads)
    size = max(size, zoo.MIN_INPUT_SIZE.get(name, 0))
    started = time.perf_counter()
    model, train, test = zoo.trained_on_digits(name, epochs, size=size)
    trained = time.perf_counter()
    with torch.no_grad():
        logits = torch.cat([model(torch.from_numpy(b)) for b in test.batches(128)])
    float_accuracy = float((logits.argmax(1).numpy() == test.y).mean())
    quantized = quantize.quantize_ptq(model, train.head(calibration_samples).batches(32), "histogram")
    save_torchscript(quantized, out / f"{name}.pt", (1, 3, size, size))
    np.savez(out / f"{name}-test.npz", x=test.x, y=test.y)
    info = {"family": name, "size": size, "float_accuracy": float_accuracy,
            "train_seconds": trained - started, "quantize_seconds": time.perf_counter() - trained}
    (out / f"{name}.json").write_text(json.dumps(info) + "\n")
    return info


def convert(name: str, placement: str, engine: str, threads: int, out: Path) -> dict:
    """One conversion through the CLI, as a user runs it; its report's figures."""
    folder = out / f"{name}-{placement}"
    command = [sys.executable, "-m", "qdq_bridge", "convert", str(out / f"{name}.pt"), "--dataset",
               str(out / f"{name}-test.npz"), "--placement", placement, "--engine", engine, "--no-progress",
               "-o", str(folder)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    row = {"family": name, "placement": placement, "exit": result.returncode,
           "wall_seconds": time.perf_counter() - started}
    report_path = folder / "report.json"
    if not report_path.exists():
        return {**row, "error": (result.stderr.strip().splitlines() or ["?"])[-1]}
    report = json.loads(report_path.read_text())
    labelled = [r for r in report["parity"] if r["reference_accuracy"] is not None]
    row.update(verdict="PASS" if report["ok"] else "FAIL", failed=report["failed"], logits=report["logits"],
               stage_seconds=report["stage_seconds"], pairs={})
    for r in labelled:
        row["pairs"][f"{r['reference']} vs {r['candidate']}"] = {
            "agreement": r["top1_agreement"], "reference_accuracy": r["reference_accuracy"],
            "candidate_accuracy": r["candidate_accuracy"], "lost": r["lost"], "gained": r["gained"],
            "p_value": r["loss_test"]["p_value"], "max_abs_diff": r["max_abs_diff"]}
    summary = report["tensorrt"].get("layer_summary")
    if summary:
        row["engine"] = {"layers": summary["layers"], "convolutions": summary["conv_gemm_layers"],
                         "int8_convolutions": summary["conv_gemm_layers"] - len(summary["conv_gemm_not_int8"]),
                         "standalone_adds": len(summary["standalone_add_layers"]),
                         "build_seconds": report["tensorrt"]["build"]["build_seconds"]}
    elif report["tensorrt"].get("failed"):
        row["engine"] = {"failed": report["tensorrt"]["failed"]}
    return row


def table(results: dict) -> str:
    """The matrix as a Markdown table, one row per family and placement."""
    lines = ["| family | input | float acc. | placement | exit | verdict | ORT agree | TRT agree | acc. PyTorch / ORT / "
             "TRT | TRT lost / gained (p) | layers | INT8 conv | standalone Adds | convert s | slowest stages |",
             "|---|---:|---:|---|---:|---|---:|---:|---|---|---:|---:|---:|---:|---|"]
    prepared = {p["family"]: p for p in results["prepared"]}
    for row in results["conversions"]:
        info = prepared[row["family"]]
        head = f"| {row['family']} | {info['size']} | {info['float_accuracy'] * 100:.2f}% | {row['placement']} | " \
               f"{row['exit']} |"
        if "error" in row:
            lines.append(f"{head} error: {row['error']} |" + " |" * 9)
            continue
        ort, trt = (row["pairs"].get(" vs ".join(pair), {}) for pair in PAIRS)
        accuracies = " / ".join(f"{v * 100:.2f}%" for v in (ort.get("reference_accuracy"), ort.get(
            "candidate_accuracy"), trt.get("candidate_accuracy")) if v is not None)
        discordant = f"{trt['lost']} / {trt['gained']} ({trt['p_value']:.2g})" if trt else "–"
        engine = row.get("engine", {})
        stages = sorted(row["stage_seconds"].items(), key=lambda item: -item[1])[:3]
        lines.append(
            f"{head} {row['verdict']} | {_pct(ort.get('agreement'))} | {_pct(trt.get('agreement'))} | {accuracies} | "
            f"{discordant} | {engine.get('layers', '–')} | {engine.get('int8_convolutions', '–')}/"
            f"{engine.get('convolutions', '–')} | {engine.get('standalone_adds', '–')} | {row['wall_seconds']:.0f} | "
            + ", ".join(f"{stage} {seconds:.0f}" for stage, seconds in stages) + " |")
    failures = [f"- {row['family']} {row['placement']}: " + "; ".join(row.get("failed") or [row.get("error", "")])
                for row in results["conversions"] if row.get("verdict") != "PASS"]
    return "\n".join(lines + ([""] + failures if failures else []))


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.2f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default=",".join(zoo.ALL_TORCHVISION_FAMILIES))
    parser.add_argument("--placements", default=",".join(PLACEMENTS))
    parser.add_argument("--engine", choices=("require", "auto", "off"), default="require")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--calibration-samples", type=int, default=128)
    parser.add_argument("--jobs", type=int, default=8, help="conversions (and preparations) at a time")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of each conversion")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/families"))
    parser.add_argument("--stage", choices=("prepare", "convert", "all"), default="all",
                        help="prepare: train, quantize and save the models; convert: convert those saved in --out")
    parser.add_argument("--table", type=Path, help="print the table of this families.json and stop")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    families = args.families.split(",")
    results = {"engine": args.engine, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
               "jobs": args.jobs, "threads": args.threads, "prepared": [], "conversions": []}
    # spawn: each child starts its own CUDA context for training
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        if args.stage in ("prepare", "all"):
            for info in pool.map(prepare, families, *zip(*[(args.size, args.epochs, args.calibration_samples,
                                                            args.threads, args.out)] * len(families))):
                print(f"{info['family']}: {info['size']}x{info['size']}, float accuracy "
                      f"{info['float_accuracy'] * 100:.2f}%, trained in {info['train_seconds']:.0f} s, quantized in "
                      f"{info['quantize_seconds']:.0f} s", flush=True)
        if args.stage == "prepare":
            return
        results["prepared"] = [json.loads((args.out / f"{name}.json").read_text()) for name in families]
        jobs = {pool.submit(convert, name, placement, args.engine, args.threads, args.out): (name, placement)
                for name in families for placement in args.placements.split(",")}
        for done in as_completed(jobs):  # saved after each, so a run cut short keeps what it finished
            results["conversions"].append(done.result())
            print(f"{' '.join(jobs[done])}: exit {results['conversions'][-1]['exit']}", flush=True)
            (args.out / "families.json").write_text(json.dumps(results, indent=2) + "\n")
    results["conversions"].sort(key=lambda row: (families.index(row["family"]), row["placement"]))
    (args.out / "families.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "families.md").write_text(table(results) + "\n")
    print(table(results))

if __name__ == "__main__":
    main()
