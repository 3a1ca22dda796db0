"""How long `convert` takes on a quantized ResNet-50 at 224x224 (goal: under 30 s on a 2-core CPU).

The model (random weights, torchvision's quantizable ResNet-50, qdq_bridge's PTQ preset) is prepared first and
saved as TorchScript; only the conversion of that file is timed, stage by stage, as the report records it.
Usage: python benchmarks/convert_resnet50.py [--random-inputs N]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from qdq_bridge import ConvertOptions, convert, save_torchscript
from qdq_bridge.data.sources import random_inputs
from qdq_bridge.pytorch import quantize
from qdq_bridge.testing import zoo

GOAL_SECONDS = 30.0
SHAPE = (1, 3, 224, 224)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--random-inputs", type=int, default=8, help="inputs for the parity stage (default 8)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = zoo.torchvision_float("resnet50")
        quantize.quantize_ptq(model, random_inputs(SHAPE, 8, seed=1).batches(4), "minmax")
        path = Path(tmp) / "resnet50_q.pt"
        save_torchscript(model, path, SHAPE)
        start = time.perf_counter()
        result = convert(path, Path(tmp) / "out", ConvertOptions(random_inputs=args.random_inputs))
        total = time.perf_counter() - start
    print(f"{'stage':<10}{'seconds':>10}")
    for stage, seconds in result.report["stage_seconds"].items():
        print(f"{stage:<10}{seconds:>10.2f}")
    print(f"{'total':<10}{total:>10.2f}")
    print(f"goal {GOAL_SECONDS:.0f} s: total/goal = {total / GOAL_SECONDS:.2f} "
          f"({'met' if total < GOAL_SECONDS else 'NOT met'}); lint errors: "
          f"{sum(v.severity == 'error' for v in result.lint)}")


if __name__ == "__main__":
    main()
