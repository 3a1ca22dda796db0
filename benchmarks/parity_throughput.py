"""Peak memory and images/s of `convert`'s streamed parity on an image folder (issue 14).

Generates a folder of JPEGs in 10 classes, each class random crops of one of the photos scikit-learn and
scikit-image ship, quantizes torchvision's ResNet-18 (random weights: only speed and memory are measured here)
on a few of them, and converts it with `--dataset imagefolder:FOLDER --preprocess imagenet` once per image count,
each in a fresh subprocess. Peak resident memory must not grow with the image count (goal: the largest within
10 % of the smallest). Printed side by side: peak RSS of the converting process (getrusage), of its largest
DataLoader worker (getrusage of the waited-for children), and of the whole process tree (sampled every 0.2 s:
the sum of the proportional set sizes, which counts pages shared by forked workers once), and images/s of
each backend as the report records them.

Usage: python benchmarks/parity_throughput.py [--images 1000,10000] [--size 224] [--workers N] [--work DIR]
(needs scikit-image: pip install -e ".[bench]")
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

GOAL_GROWTH = 0.10
CLASSES = 10


def photos() -> list[np.ndarray]:
    """Ten photos as uint8 arrays: scikit-learn's two and eight of scikit-image's (camera is gray)."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    names = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
             "camera")
    return list(load_sample_images().images) + [getattr(skimage.data, name)() for name in names]


def write_folder(folder: Path, count: int, seed: int = 0) -> None:
    """`count` JPEGs, count/10 per class: random crops (a quarter to all of the shorter side, random aspect)
    of the class's photo, scaled so the shorter side is 160 to 320 pixels."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sources = photos()
    for index in range(count):
        label = index % CLASSES
        photo = sources[label]
        height, width = photo.shape[:2]
        side = int(rng.uniform(0.25, 1.0) * min(height, width))
        crop_h, crop_w = side, min(width, int(side * rng.uniform(0.75, 1.33)))
        top, left = rng.integers(0, height - crop_h + 1), rng.integers(0, width - crop_w + 1)
        image = Image.fromarray(photo[top:top + crop_h, left:left + crop_w])
        scale = rng.uniform(160, 320) / min(crop_h, crop_w)
        image = image.resize((max(1, round(crop_w * scale)), max(1, round(crop_h * scale))), Image.BILINEAR)
        (folder / f"class{label}").mkdir(parents=True, exist_ok=True)
        image.save(folder / f"class{label}" / f"{index:05d}.jpg", quality=90)


def prepare_model(path: Path, folder: Path, size: int) -> None:
    """torchvision's quantizable ResNet-18, quantized by qdq_bridge's PTQ on 32 of the folder's images, saved as
    TorchScript with the input shape and preprocessing in its metadata."""
    from qdq_bridge import save_torchscript
    from qdq_bridge.data.preprocessing import Preprocessing
    from qdq_bridge.data.sources import open_dataset
    from qdq_bridge.pytorch import quantize
    from qdq_bridge.testing import zoo

    shape = (1, 3, size, size)
    calibration = open_dataset(f"imagefolder:{folder}", Preprocessing(preset="imagenet")).subset(32, 0).fit(shape)
    model = zoo.torchvision_float("resnet18", num_classes=CLASSES)
    quantize.quantize_ptq(model, (x for x, _ in calibration.labelled_batches(16)), "minmax")
    save_torchscript(model, path, shape, preprocess={"preset": "imagenet"})


def measure(model: Path, folder: Path, out: Path, workers: int) -> None:
    """In the measuring subprocess: convert, then print the report's figures and getrusage's peaks as JSON."""
    from qdq_bridge import ConvertOptions, convert

    start = time.perf_counter()
    report = convert(model, out, ConvertOptions(dataset=f"imagefolder:{folder}", random_inputs=0, workers=workers,
                                                progress=False)).report
    print(json.dumps({"seconds": time.perf_counter() - start, "dataset": report["datasets"][0],
                      "parity": report["parity"][0], "stage_seconds": report["stage_seconds"],
                      "self_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "worker_maxrss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))


def _tree(pid: int) -> list[int]:
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                pending += [int(c) for c in Path(f"/proc/{current}/task/{task}/children").read_text().split()]
        except OSError:
            continue
    return found


def _pss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def run_measurement(model: Path, folder: Path, out: Path, workers: int) -> dict:
    """One convert in a fresh subprocess, its process tree's PSS sampled meanwhile."""
    command = [sys.executable, __file__, "--measure", str(model), str(folder), str(out), "--workers", str(workers)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    peak = [0.0]

    def sample():
        while child.poll() is None:
            peak[0] = max(peak[0], _pss_mib(_tree(child.pid)))
            time.sleep(0.2)
    sampler = threading.Thread(target=sample)
    sampler.start()
    stdout, _ = child.communicate()
    sampler.join()
    if child.returncode != 0:
        raise SystemExit(f"convert failed on {folder} (exit status {child.returncode})")
    return {**json.loads(stdout.strip().splitlines()[-1]), "tree_pss_mib": peak[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default="1000,10000", help="image counts to compare (default: 1000,10000)")
    parser.add_argument("--size", type=int, default=224, help="model input size (default: 224)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (default: 2)")
    parser.add_argument("--work", type=Path, help="keep the folders and model here (default: a temporary folder)")
    parser.add_argument("--measure", nargs=3, metavar=("MODEL", "FOLDER", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        return measure(*map(Path, args.measure), args.workers)
    counts = sorted(int(n) for n in args.images.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        largest = work / f"images_{counts[-1]}"
        if not largest.exists():
            write_folder(largest, counts[-1])
        for count in counts[:-1]:  # the smaller folders: the first images of each class of the largest (hard links)
            folder = work / f"images_{count}"
            for class_folder in sorted(largest.iterdir()) if not folder.exists() else []:
                (folder / class_folder.name).mkdir(parents=True)
                for path in sorted(class_folder.iterdir())[:count // CLASSES]:
                    os.link(path, folder / class_folder.name / path.name)
        model = work / f"resnet18_{args.size}_q.pt"
        if not model.exists():
            prepare_model(model, largest, args.size)
        results = {count: run_measurement(model, work / f"images_{count}", work / f"out_{count}", args.workers)
                   for count in counts}
    report(results, args)


def report(results: dict, args) -> None:
    backends = list(next(iter(results.values()))["dataset"]["images_per_second"])
    print(f"ResNet-18 {args.size}x{args.size} int8, imagefolder JPEGs, preset imagenet, batch 64, {args.workers} "
          f"workers, {os.cpu_count()} CPU cores")
    header = f"{'images':>8} {'seconds':>8} {'main RSS':>9} {'worker RSS':>10} {'tree PSS':>9} " + \
        " ".join(f"{b + ' img/s':>17}" for b in backends) + f" {'agreement':>9} {'classes':>7}"
    print(header)
    for count, r in results.items():
        rates = " ".join(f"{r['dataset']['images_per_second'][b]:>17.1f}" for b in backends)
        print(f"{count:>8} {r['seconds']:>8.1f} {r['self_maxrss_mib']:>6.0f} MiB {r['worker_maxrss_mib']:>7.0f} MiB "
              f"{r['tree_pss_mib']:>6.0f} MiB {rates} {r['parity']['agreement'] * 100:>8.2f}% "
              f"{r['dataset']['classes']:>7}")
    small, large = results[min(results)], results[max(results)]
    for key, label in (("self_maxrss_mib", "main RSS"), ("tree_pss_mib", "tree PSS")):
        growth = large[key] / small[key] - 1
        print(f"{label}: {max(results)} images vs {min(results)}: {growth * 100:+.1f}% "
              f"({'within' if growth <= GOAL_GROWTH else 'NOT within'} {GOAL_GROWTH * 100:.0f}%)")


if __name__ == "__main__":
    main()
