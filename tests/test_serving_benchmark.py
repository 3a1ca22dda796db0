"""benchmarks/serving.py end to end on the stand-in TensorRT (no GPU): every engine of every route is built, timed
on device and through the session at each batch size, and reported side by side."""
import json
import os
import subprocess
import sys

import pytest

from helpers import FAKE_TRT, ROOT


@pytest.mark.slow
def test_serving_benchmark_times_every_route_at_every_batch(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(FAKE_TRT), str(ROOT)]), "QDQ_BRIDGE_TRT_CUDA":
           "fake_cuda:Cuda", "FAKE_TRT_RECORD": str(tmp_path / "calls.jsonl"), "XDG_CACHE_HOME": str(tmp_path)}
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serving.py"), "--networks", "resnet18",
                          "--routes", "uint8,float,trt-int8", "--images", "96", "--runs", "5", "--warmup", "1",
                          "--repeats", "2", "--out", str(tmp_path / "out")], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    routes = json.loads((tmp_path / "out" / "results.json").read_text())["networks"]["resnet18"]["routes"]
    assert set(routes) == {"uint8", "float", "trt-int8"}
    for row in routes.values():
        assert set(row["device"]) == set(row["end_to_end"]) == {"1", "32", "256"}
        assert row["end_to_end"]["1"]["p50_ms"] <= row["end_to_end"]["1"]["p99_ms"]
        assert row["end_to_end"]["256"]["throughput_per_s"] > 0 and row["end_to_end"]["256"]["cpu_cores"] > 0
        assert row["end_to_end"]["256"]["gpu_percent"] is None  # no NVML here: no figure rather than a made-up one
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    inputs = [c for c in calls if c["call"] == "parse"]
    assert len(inputs) == 3  # one engine per route
    executions = [c["batch"] for c in calls if c["call"] == "execute"]
    # sessions of 1 and 32 take the 96 images a batch at a time; one of 256 takes them at once
    assert {1, 32, 96} <= set(executions) <= {1, 32, 96, 4, 128, 256}  # and the device timings' own batches
    lines = run.stdout.splitlines()
    assert any(line.startswith("resnet18      uint8 / float") for line in lines)
    assert sum(line.startswith("resnet18      uint8     ") for line in lines) == 3
