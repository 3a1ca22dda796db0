"""benchmarks/builder_levels.py on the stand-in TensorRT (no GPU): one build per family and level, none with a
timing cache, then the cached level twice over one cache (the second build reads what the first wrote)."""
import json
import os
import subprocess
import sys

import pytest

from helpers import FAKE_TRT, ROOT


@pytest.mark.slow
def test_builder_levels_builds_each_level_uncached_and_the_cached_level_twice(tmp_path):
    record = tmp_path / "calls.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(FAKE_TRT), str(ROOT)]),
           "QDQ_BRIDGE_TRT_CUDA": "fake_cuda:Cuda", "FAKE_TRT_RECORD": str(record), "XDG_CACHE_HOME": str(tmp_path)}
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "builder_levels.py"), "--families", "resnet18",
                          "--levels", "0,3", "--runs", "3", "--warmup", "1", "--out", str(tmp_path / "out")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    levels = [json.loads(line)["level"] for line in record.read_text().splitlines()
              if json.loads(line)["call"] == "builder_optimization_level"]
    assert levels == [0, 3, 3, 3]
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["families"]["resnet18"]
    assert [rows["levels"][level]["timing_cache_reused"] for level in ("0", "3")] == [None, None]  # no cache
    assert (rows["cached"]["first"]["timing_cache_reused"], rows["cached"]["second"]["timing_cache_reused"]) == \
        (False, True)
    assert set(rows["levels"]["3"]["throughput"]) == {"1", "128"}
    assert "level 0: slowest build" in run.stdout and "level 3: slowest build" in run.stdout
    assert not list((tmp_path / "out").glob("*.engine")) and not list((tmp_path / "out").glob("*.onnx"))
