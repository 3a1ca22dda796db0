"""The family matrix (issue 20): every torchvision quantizable family, as a user brings it, through the CLI.

Each family (zoo.ALL_TORCHVISION_FAMILIES) is trained on scikit-learn's digits upsampled to --size pixels, RGB
(zoo.trained_on_digits: one-cycle Adam, shifted digits; Inception v3 at its smallest input, 75, where --size is
smaller), until it is decisive (its float test accuracy is printed; the issue asks for >= 90 %). It is quantized by
qdq_bridge's TensorRT-legal PTQ preset on --calibration-samples training digits, saved with
`torch.jit.save(torch.jit.script(model))` as a user would (qdq_bridge.save_torchscript, which adds the input shape),
with the test split as an .npz; then `python -m qdq_bridge convert NAME.pt --dataset NAME-test.npz --placement P
--engine E` runs for both placements, one conversion at a time (--convert-jobs), each a process of its own with
--threads threads. FAMILY@RECIPE quantizes with another qdq_bridge preset instead: one of PyTorch's default qconfigs
(x86, fbgemm, qnnpack), or torchvision's recipe for its quantized models, saved as a state_dict (as
`torchvision.models.quantization.FAMILY(quantize=True)` holds one) and converted with --arch torchvision:FAMILY.

Models of other tasks (TASKS: `segnet`, a segmentation net with per-pixel labels; `superres`, PixelShuffle
super-resolution judged per sample as an image) are trained and quantized by their zoo functions and go through the
same conversions.

Table (printed, and families.md / families.json in --out): exit status, verdict, top-1 agreement and accuracy per
backend, the discordant counts lost / gained (samples PyTorch gets right and the candidate wrong, and the converse)
with the exact McNemar p, the engine's layers, INT8 convolutions, standalone Adds, each stage's seconds and the
conversion's wall time, and the reasons of a FAIL.

Usage: python benchmarks/families.py [--families resnet18,googlenet,resnet18@x86,resnet50@torchvision]
                                     [--engine require|auto|off] [--out DIR] [--size 64] [--epochs 40] [--jobs 8]
                                     [--convert-jobs 1] [--threads 2] [--stage prepare|convert|all]
                                     [--convert-args '--builder-optimization-level 1']
       python benchmarks/families.py --table DIR/families.json   (print the table of a finished run)
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch

from qdq_bridge import save_torchscript
from qdq_bridge.choices import ENGINE_MODES
from qdq_bridge.pytorch import quantize
from qdq_bridge.testing import zoo

PLACEMENTS = ("fast", "faithful")
PAIRS = (("pytorch", "onnxruntime"), ("pytorch", "tensorrt"))


# how a family is quantized: a qdq_bridge PTQ preset (quantize.QCONFIGS) on training digits, saved as TorchScript;
# the torchvision preset (the recipe of torchvision's quantized models) saved as a state_dict, as
# `torchvision.models.quantization.NAME(quantize=True)` holds it, and converted with --arch torchvision:NAME
RECIPES = quantize.QCONFIGS


def parse_entry(entry: str) -> tuple[str, str, str]:
    """`resnet18` or `resnet18@x86` -> (family, recipe, label); the label names files and table rows."""
    name, _, recipe = entry.partition("@")
    recipe = recipe or "tensorrt"
    if name not in (*zoo.ALL_TORCHVISION_FAMILIES, *TASKS) or recipe not in RECIPES or \
            name in TASKS and recipe != "tensorrt":
        raise SystemExit(f"error: '{entry}' is not FAMILY[@RECIPE] with a family of "
                         f"{', '.join(zoo.ALL_TORCHVISION_FAMILIES)} and a recipe of {', '.join(RECIPES)}, "
                         f"or a task model of {', '.join(TASKS)}")
    return name, recipe, name if recipe == "tensorrt" else f"{name}-{recipe}"


# models of other tasks than classification (issue 33), each trained and quantized by its zoo function, which
# returns the quantized model and its test set (per-pixel labels for segmentation, none for super-resolution)
TASKS = {"segnet": zoo.segmentation_on_digits, "superres": zoo.super_resolution_on_digits}


def prepare(entry: str, size: int, epochs: int, calibration_samples: int, threads: int, out: Path) -> dict:
    """Train, quantize and save one family; its float accuracy and the seconds each step took."""
    name, recipe, label = parse_entry(entry)
    torch.set_num_threads(threads)
    if name in TASKS:
        started = time.perf_counter()
        quantized, test = TASKS[name]()
        save_torchscript(quantized, out / f"{label}.pt", (1, *test.x.shape[1:]))
        np.savez(out / f"{label}-test.npz", x=test.x, **({} if test.y is None else {"y": test.y}))
        info = {"family": label, "recipe": recipe, "size": test.x.shape[-1], "float_accuracy": None,
                "train_seconds": time.perf_counter() - started, "quantize_seconds": 0.0}
        (out / f"{label}.json").write_text(json.dumps(info) + "\n")
        return info
    size = max(size, zoo.MIN_INPUT_SIZE.get(name, 0))
    started = time.perf_counter()
    model, train, test = zoo.trained_on_digits(name, epochs, size=size)
    trained = time.perf_counter()
    with torch.no_grad():
        logits = torch.cat([model(torch.from_numpy(b)) for b in test.batches(128)])
    float_accuracy = float((logits.argmax(1).numpy() == test.y).mean())
    quantized = quantize.quantize_ptq(model, train.head(calibration_samples).batches(32), "histogram",
                                      qconfig=recipe)
    if recipe == "torchvision":
        torch.save(quantized.state_dict(), out / f"{label}.pth")
    else:
        save_torchscript(quantized, out / f"{label}.pt", (1, 3, size, size))
    np.savez(out / f"{label}-test.npz", x=test.x, y=test.y)
    info = {"family": label, "recipe": recipe, "size": size, "float_accuracy": float_accuracy,
            "train_seconds": trained - started, "quantize_seconds": time.perf_counter() - trained}
    (out / f"{label}.json").write_text(json.dumps(info) + "\n")
    return info


def convert(entry: str, placement: str, engine: str, threads: int, out: Path, extra: list[str]) -> dict:
    """One conversion through the CLI, as a user runs it (with the `extra` convert options); its report's figures."""
    name, recipe, label = parse_entry(entry)
    folder = out / f"{label}-{placement}"
    model = [f"{label}.pth", "--arch", f"torchvision:{name}"] if recipe == "torchvision" else [f"{label}.pt"]
    command = [sys.executable, "-m", "qdq_bridge", "convert", str(out / model[0]), *model[1:], "--dataset",
               str(out / f"{label}-test.npz"), "--placement", placement, "--engine", engine, "--no-progress",
               "-o", str(folder), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    row = {"family": label, "placement": placement, "exit": result.returncode,
           "wall_seconds": time.perf_counter() - started}
    report_path = folder / "report.json"
    if not report_path.exists():
        return {**row, "error": (result.stderr.strip().splitlines() or ["?"])[-1]}
    report = json.loads(report_path.read_text())
    labelled = [r for r in report["parity"] if r["judged"]]  # the labelled rows where there are labels
    row.update(verdict="PASS" if report["ok"] else "FAIL", failed=report["failed"], logits=report["logits"],
               stage_seconds=report["stage_seconds"], pairs={})
    for r in labelled:
        row["pairs"][f"{r['reference']} vs {r['candidate']}"] = {
            "agreement": r["agreement"], "reference_accuracy": r["reference_accuracy"],
            "candidate_accuracy": r["candidate_accuracy"], "lost": r["lost"], "gained": r["gained"],
            "p_value": (r["loss_test"] or {}).get("p_value"), "max_abs_diff": r["max_abs_diff"]}
    summary = report["tensorrt"].get("layer_summary")
    if summary:
        row["engine"] = {"layers": summary["layers"], "convolutions": summary["conv_gemm_layers"],
                         "int8_convolutions": summary["conv_gemm_layers"] - len(summary["conv_gemm_not_int8"]),
                         "standalone_adds": len(summary["standalone_add_layers"]),
                         "build_seconds": report["tensorrt"]["build"]["build_seconds"],
                         "build_call_seconds": report["tensorrt"]["build"].get("call_seconds"),
                         "probe_call_seconds": report["tensorrt"]["probe"].get("call_seconds"),
                         "optimization_level": report["tensorrt"]["build"].get("optimization_level")}
    elif report["tensorrt"].get("failed"):
        row["engine"] = {"failed": report["tensorrt"]["failed"]}
    if report["tensorrt"].get("divergence"):  # the locator's finding: where the engine first leaves ONNX Runtime
        row["divergence"] = {k: v for k, v in report["tensorrt"]["divergence"].items() if k != "log"}
    return row


def table(results: dict) -> str:
    """The matrix as a Markdown table, one row per family and placement."""
    lines = ["| family | input | float acc. | placement | exit | verdict | ORT agree | TRT agree | acc. PyTorch / ORT / "
             "TRT | TRT lost / gained (p) | layers | INT8 conv | standalone Adds | convert s | slowest stages |",
             "|---|---:|---:|---|---:|---|---:|---:|---|---|---:|---:|---:|---:|---|"]
    prepared = {p["family"]: p for p in results["prepared"]}
    for row in results["conversions"]:
        info = prepared[row["family"]]
        head = f"| {row['family']} | {info['size']} | {_pct(info['float_accuracy'])} | {row['placement']} | " \
               f"{row['exit']} |"
        if "error" in row:
            lines.append(f"{head} error: {row['error']} |" + " |" * 9)
            continue
        ort, trt = (row["pairs"].get(" vs ".join(pair), {}) for pair in PAIRS)
        accuracies = " / ".join(f"{v * 100:.2f}%" for v in (ort.get("reference_accuracy"), ort.get(
            "candidate_accuracy"), trt.get("candidate_accuracy")) if v is not None)
        discordant = f"{trt['lost']} / {trt['gained']} ({trt['p_value']:.2g})" if trt.get("lost") is not None else "–"
        engine = row.get("engine", {})
        stages = sorted(row["stage_seconds"].items(), key=lambda item: -item[1])[:3]
        lines.append(
            f"{head} {row['verdict']} | {_pct(ort.get('agreement'))} | {_pct(trt.get('agreement'))} | {accuracies} | "
            f"{discordant} | {engine.get('layers', '–')} | {engine.get('int8_convolutions', '–')}/"
            f"{engine.get('convolutions', '–')} | {engine.get('standalone_adds', '–')} | {row['wall_seconds']:.0f} | "
            + ", ".join(f"{stage} {seconds:.0f}" for stage, seconds in stages) + " |")
    failures = [f"- {row['family']} {row['placement']}: " + "; ".join(row.get("failed") or [row.get("error", "")])
                + (f"; first divergence: {row['divergence']['first']}" if row.get("divergence") else "")
                for row in results["conversions"] if row.get("verdict") != "PASS"]
    return "\n".join(lines + ([""] + failures if failures else []))


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.2f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default=",".join(zoo.ALL_TORCHVISION_FAMILIES),
                        help=f"FAMILY[@RECIPE],... with RECIPE one of {', '.join(RECIPES)} (default: tensorrt)")
    parser.add_argument("--placements", default=",".join(PLACEMENTS))
    parser.add_argument("--engine", choices=ENGINE_MODES, default="require")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--calibration-samples", type=int, default=128)
    parser.add_argument("--jobs", type=int, default=8, help="preparations (training on the GPU) at a time")
    parser.add_argument("--convert-jobs", type=int, default=1,
                        help="conversions at a time (default 1: engine builds that share a GPU time their tactics "
                             "against each other, several times slower each)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of each preparation and conversion")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/families"))
    parser.add_argument("--convert-args", default="", metavar="ARGS",
                        help="more options for every convert, e.g. '--builder-optimization-level 1 --timing-cache "
                             "benchmarks/out/families/timing.cache'")
    parser.add_argument("--stage", choices=("prepare", "convert", "all"), default="all",
                        help="prepare: train, quantize and save the models; convert: convert those saved in --out "
                             "that its families.json does not hold yet (a run cut short goes on)")
    parser.add_argument("--table", type=Path, help="print the table of this families.json and stop")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    entries = args.families.split(",")
    labels = [parse_entry(entry)[2] for entry in entries]
    if args.stage in ("prepare", "all"):
        # spawn: each child starts its own CUDA context for training
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for info in pool.map(prepare, entries, *zip(*[(args.size, args.epochs, args.calibration_samples,
                                                           args.threads, args.out)] * len(entries))):
                print(f"{info['family']}: {info['size']}x{info['size']}, float accuracy "
                      f"{_pct(info['float_accuracy'])}, trained in {info['train_seconds']:.0f} s, quantized in "
                      f"{info['quantize_seconds']:.0f} s", flush=True)
    if args.stage == "prepare":
        return
    saved = args.out / "families.json"
    results = json.loads(saved.read_text()) if args.stage == "convert" and saved.exists() else {
        "engine": args.engine, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "convert_jobs": args.convert_jobs, "threads": args.threads, "convert_args": args.convert_args,
        "conversions": []}
    results["prepared"] = [json.loads((args.out / f"{label}.json").read_text()) for label in labels]
    done = {(row["family"], row["placement"]) for row in results["conversions"]}
    todo = [(entry, label, placement) for entry, label in zip(entries, labels)
            for placement in args.placements.split(",") if (label, placement) not in done]
    with ProcessPoolExecutor(args.convert_jobs) as pool:
        jobs = {pool.submit(convert, entry, placement, args.engine, args.threads, args.out,
                            shlex.split(args.convert_args)): (label, placement)
                for entry, label, placement in todo}
        for finished in as_completed(jobs):  # saved after each, so a run cut short keeps what it finished
            row = finished.result()
            results["conversions"].append(row)
            print(f"{' '.join(jobs[finished])}: exit {row['exit']} in {row['wall_seconds']:.0f} s", flush=True)
            saved.write_text(json.dumps(results, indent=2) + "\n")
    results["conversions"].sort(key=lambda row: (labels.index(row["family"]) if row["family"] in labels
                                                 else len(labels), row["placement"]))
    saved.write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "families.md").write_text(table(results) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
