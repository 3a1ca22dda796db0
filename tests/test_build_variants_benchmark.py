"""benchmarks/build_variants.py without a GPU: its rewrites keep (or, where it says so, nearly keep) the numbers, its
prefixes end at each block, and its builds run through `qdq_bridge build` (a stand-in TensorRT) into one table."""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from qdq_bridge.graph import passes
from qdq_bridge.trt.trt_protocol import CUDA_ENV

from helpers import FAKE_TRT, ROOT
from helpers.graphs import conv_graph, inception_like, model, run, sample_input

SCRIPT = ROOT / "benchmarks" / "build_variants.py"


@pytest.fixture(scope="module")
def variants():
    spec = importlib.util.spec_from_file_location("build_variants", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nested_block() -> onnx.ModelProto:
    """An Inception-like block whose first two branches meet in a requantized Concat, as converted (dilations set)."""
    return model(passes.separate_sibling_convs(inception_like(kernels=((1, 3), (3, 1), (3, 3)), nested=True)))


def concats(m: onnx.ModelProto) -> list[int]:
    return [len(n.input) for n in m.graph.node if n.op_type == "Concat"]


def test_flattening_is_exact_and_splicing_within_a_step(variants):
    block, x = nested_block(), sample_input()
    flat, spliced = (model(rewrite(gs.import_onnx(block))) for rewrite in (variants.nested_concats_flattened,
                                                                          variants.nested_concats_spliced))
    assert concats(block) == [2, 2] and concats(flat) == [3] == concats(spliced)
    np.testing.assert_array_equal(run(flat, x), run(block, x))
    assert np.abs(run(spliced, x) - run(block, x)).max() <= 0.2 + 1e-6  # one step of the output's scale
    reset = model(variants.sibling_dilations_reset(gs.import_onnx(block)))
    assert all(a.ints == [1, 1] for n in reset.graph.node for a in n.attribute if a.name == "dilations")


def test_affine_floor_variants_keep_the_floor_exactly_or_within_rounding(variants):
    """A conv whose input and output are affine (uint8, zero-point 5): int8_zero_point floors each at -5 steps.
    Moved past its Q/DQ the floor is exact, as Relu(x - c) + c within one step, dropped it lets values below
    through (what the fast placement does)."""
    floored = passes.int8_zero_point(passes.remove_cast_between_q_dq(conv_graph(zp=5)))
    assert [n.op for n in floored.nodes].count("Max") == 2
    base = model(floored.copy())
    x = 3 * sample_input()
    after, relu, dropped = (model(variants.VARIANTS[f"activation_floors_{form}"][0](gs.import_onnx(base)))
                            for form in ("after_dequantize", "as_relu", "dropped"))
    np.testing.assert_array_equal(run(after, x), run(base, x))
    assert "Relu" in [n.op_type for n in relu.graph.node] and np.abs(run(relu, x) - run(base, x)).max() <= 0.1 + 1e-6
    assert run(base, x).min() >= -0.5 - 1e-6 > run(dropped, x).min()  # the floor: -5 steps of 0.1


def test_prefixes_end_at_each_block(variants):
    block = nested_block()
    assert variants.block_ends(block) == ["output"]  # the inner Concat reaches the outer one directly: no block end
    assert [o.name for o in variants.prefix(block, "output").graph.output] == ["output"]


@pytest.mark.slow  # six `qdq_bridge build` processes
def test_builds_every_variant_into_one_table(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONPATH", f"{FAKE_TRT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv(CUDA_ENV, "fake_cuda:Cuda")
    onnx.save(nested_block(), str(tmp_path / "block.onnx"))
    result = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "block.onnx"), "--out", str(tmp_path / "v"),
                             "--jobs", "2"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "v" / "variants.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["as_converted", "fp32_float_compute", "nested_concats_flattened",
                                            "nested_concats_spliced", "sibling_dilations_reset", "prefix_01_output"]
    assert all(r["exit"] == 0 and "layers" in r["summary"] for r in rows), rows
    assert rows[1]["options"] == ["--float-precision", "fp32"]
    assert "| nested_concats_flattened | " in result.stdout
    assert "[V] Parsing node" in (tmp_path / "v" / "as_converted.log").read_text()
