"""benchmarks/peers.py's bookkeeping, without a GPU: the order engines are timed in, the round-by-round ratio
spread, and joining runs so that each route is compared with the fast engine of its own run."""
import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from helpers import ROOT

BENCHMARKS = ROOT / "benchmarks"


@pytest.fixture(scope="module")
def peers():
    sys.path.insert(0, str(BENCHMARKS))  # peers.py imports trt_engines beside it
    try:
        spec = importlib.util.spec_from_file_location("peers", BENCHMARKS / "peers.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))


class RecordingWorker:
    """Stands in for TensorRTWorker.benchmark: engine k's median is 1 + its place in the call order."""

    def __init__(self):
        self.order, self.copies = [], []

    def benchmark(self, path, batches, warmup, runs, copies=True):
        self.order.append(path)
        self.copies.append(copies)
        return {"timings": [{"batch": b, "runs": runs, "enqueue": {"median_ms": float(len(self.order))},
                             "cuda_graph": None} for b in batches]}


def test_each_round_starts_with_another_engine_and_the_median_round_counts(peers):
    worker = RecordingWorker()
    timings = peers.time_in_rounds({"fast": "f", "ort": "o", "fp16": "h"}, worker,
                                   argparse.Namespace(rounds=4, warmup=1, runs=2))
    assert worker.order == ["f", "o", "h", "o", "h", "f", "h", "f", "o", "f", "o", "h"]
    assert worker.copies == [False] * 12  # the same I/O on every route: copies would only add time
    ort = timings["ort"][0]
    assert ort["enqueue"]["round_medians_ms"] == [2.0, 4.0, 9.0, 11.0]
    assert ort["enqueue"]["median_ms"] == 6.5 and ort["cuda_graph"] is None
    assert peers.time_in_rounds({}, worker, argparse.Namespace(rounds=3, warmup=1, runs=2)) == {}


def engine(round_ms: list[float]) -> dict:
    """An engine's timings whose rounds took `round_ms` at every batch, in both modes."""
    median = sorted(round_ms)[len(round_ms) // 2]
    return {"timings": [{"batch": b, **{mode: {"median_ms": median, "round_medians_ms": round_ms,
                                               "throughput_per_s": b * 1000 / median}
                                        for mode in ("enqueue", "cuda_graph")}} for b in (1, 128, 256)]}


def test_round_spread_is_fast_over_the_peer_round_by_round(peers):
    assert peers._round_spread(engine([1.0, 2.0, 1.0]), engine([1.1, 1.8, 0.9]), 1, "cuda_graph") == "(0.90-1.10)"
    no_rounds = {"timings": [{"batch": 1, "cuda_graph": {"median_ms": 1.0, "throughput_per_s": 1000.0}}]}
    assert peers._round_spread(no_rounds, no_rounds, 1, "cuda_graph") == ""


def run_file(folder: Path, name: str, routes: dict) -> Path:
    network = {"float": {"logits_checksum": 1.0}, "routes": {
        route: {"engine": {**engine(ms), "build_seconds": 1.0,
                           "parity": {"candidate_accuracy": 1.0, "agreement": 1.0},
                           "layers": {"layers": 3, "pointwise_layers": [], "reformat_layers": [],
                                      "conv_gemm_not_int8": []}}}
        for route, ms in routes.items()}}
    path = folder / name
    path.write_text(json.dumps({"device": "card", "networks": {"net": network}}))
    return path


def test_merged_routes_keep_the_fast_engine_of_their_own_run(peers, tmp_path, capsys):
    first = run_file(tmp_path, "a.json", {"fast": [1.0, 1.0, 1.0], "ort": [2.0, 2.0, 2.0]})
    second = run_file(tmp_path, "b.json", {"fast": [4.0, 4.0, 4.0], "fp16": [2.0, 2.0, 2.0]})
    routes = peers.merge([first, second])["networks"]["net"]["routes"]
    assert routes["fast"]["engine"]["timings"][0]["cuda_graph"]["median_ms"] == 4.0  # the later run's fast row
    assert routes["ort"]["fast_same_run"]["file"] == "a.json"
    assert routes["fp16"]["fast_same_run"]["file"] == "b.json"
    assert "fast_same_run" not in routes["fast"]

    peers.print_tables({"networks": {"net": {"input_shape": [1, 3, 4, 4], "calibration": {"samples": 1, "set": "s"},
                                             "test_set": "t", "samples": 1, "float": {"accuracy": 1.0},
                                             "routes": routes}}})
    ratios = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  fast / ")]
    # ONNX Runtime against its own run's fast (1 ms against 2 ms), FP16 against the other run's (4 against 2)
    assert "b1  2.00x  (2.00-2.00)" in next(line for line in ratios if "ORT QDQ" in line)
    assert "b1  0.50x  (0.50-0.50)" in next(line for line in ratios if "FP16" in line)
