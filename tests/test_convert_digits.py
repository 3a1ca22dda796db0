"""The embedded example end to end: every way of loading it, through `python -m qdq_bridge convert`."""
import json
import shutil

import onnx
import pytest
import torch

from qdq_bridge import ConvertOptions, convert
from qdq_bridge.data.sources import digits_split
from qdq_bridge.pytorch import quantize
from qdq_bridge.pytorch.load import load_model
from qdq_bridge.pytorch.models import DigitsResNet
from qdq_bridge.report import DatasetEntry, ParityRow, Report, Thresholds
from qdq_bridge.testing.parity import assert_parity

from helpers import run_cli

ARCH = "qdq_bridge.pytorch.models:digits_resnet"


def check_report(out_dir, name: str) -> dict:
    report = json.loads((out_dir / "report.json").read_text())
    # report.json has exactly the keys its types name
    assert list(report) == list(Report.__annotations__) and set(report["thresholds"]) == Thresholds.__required_keys__
    assert all(set(row) <= ParityRow.__optional_keys__ for row in report["parity"])
    assert all(set(entry) <= DatasetEntry.__optional_keys__ for entry in report["datasets"])
    assert report["ok"] and report["lint"] == []
    digits = next(c for c in report["parity"] if c["dataset"] == "digits-test")
    assert digits["samples"] == 450
    assert digits["agreement"] >= 0.995
    assert abs(digits["accuracy_gap_points"]) * digits["samples"] / 100 <= 1 + 1e-9  # one digit's difference at most
    assert digits["reference_accuracy"] >= 0.95  # a really trained model, not noise
    assert digits["judged"] and not any(c["judged"] for c in report["parity"] if c["dataset"] != "digits-test")
    onnx_model = onnx.load(str(out_dir / f"{name}.qdq.onnx"))
    ops = {n.op_type for n in onnx_model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= ops and "Cast" not in ops
    assert "| digits-test | pytorch | onnxruntime | 450 |" in (out_dir / "report.md").read_text()
    return report


@pytest.mark.parametrize("name", ["resnet_q", "resnet_qat_q"])
def test_cli_converts_torchscript_ptq_and_qat(example_dir, tmp_path, name):
    result = run_cli("convert", str(example_dir / f"{name}.pt"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "PASS" in result.stdout
    out_dir = tmp_path / f"{name}_qdq"
    assert sorted(p.name for p in out_dir.iterdir()) == ["report.json", "report.md", f"{name}.qdq.onnx"]
    report = check_report(out_dir, name)
    assert report["kind"] == "torchscript" and report["input_shape"] == [1, 1, 32, 32]


@pytest.mark.parametrize("name", ["resnet_q", "resnet_qat_q"])
def test_cli_fast_placement_keeps_parity_and_fuses_every_residual_add(example_dir, tmp_path, name):
    result = run_cli("convert", str(example_dir / f"{name}.pt"), "--placement", "fast", "-o", str(tmp_path / "o"))
    assert result.returncode == 0, result.stderr
    report = check_report(tmp_path / "o", name)
    assert report["placement"] == "fast" and "fuse_residual_add" in report["passes"]
    graph = onnx.load(str(tmp_path / "o" / f"{name}.qdq.onnx")).graph
    producers = {out: node.op_type for node in graph.node for out in node.output}
    adds = [sorted(producers[i] for i in n.input) for n in graph.node if n.op_type == "Add"]
    assert adds == [["Conv", "DequantizeLinear"]] * 3  # the example's three residual blocks
    assert producers[graph.output[0].name] == "Gemm"  # float logits straight from the classifier
    assert "Placement: fast." in (tmp_path / "o" / "report.md").read_text()


@pytest.mark.parametrize("file,extra,kind", [
    ("resnet_q_state.pth", [], "state_dict"),
    ("digits_qat_state.pth", [], "state_dict+qat-convert"),
    ("digits_float.pth", ["--calibrate", "digits-train", "--observer", "percentile"], "state_dict+ptq"),
])
def test_cli_converts_state_dicts(example_dir, tmp_path, file, extra, kind):
    out = tmp_path / "out"
    result = run_cli("convert", str(example_dir / file), "--arch", ARCH, "--input-shape", "1,1,32,32",
                     "--dataset", "digits", "-o", str(out), *extra)
    assert result.returncode == 0, result.stderr
    report = check_report(out, file.removesuffix(".pth"))
    assert report["kind"] == kind


def test_cli_keeps_named_submodules_float_when_it_quantizes(example_dir, tmp_path):
    """--keep-float stage3: the last residual stage stays float (its convolutions read float weights, no Q/DQ
    inside it), the rest is INT8, and parity still passes."""
    out = tmp_path / "out"
    result = run_cli("convert", str(example_dir / "digits_float.pth"), "--arch", ARCH, "--input-shape", "1,1,32,32",
                     "--calibrate", "digits-train", "--keep-float", "stage3", "--dataset", "digits", "-o", str(out))
    assert result.returncode == 0, result.stderr
    report = check_report(out, "digits_float")
    assert any(note.endswith("kept float: stage3") for note in report["notes"])
    graph = onnx.load(str(out / "digits_float.qdq.onnx")).graph
    producers = {o: n.op_type for n in graph.node for o in n.output}
    weight_from = {n.name: producers.get(n.input[1], "initializer") for n in graph.node if n.op_type == "Conv"}
    float_convs = sorted(name for name, source in weight_from.items() if source != "DequantizeLinear")
    assert float_convs and all("stage3" in name for name in float_convs)
    assert any(source == "DequantizeLinear" for source in weight_from.values())


def test_pickled_module_needs_trust_flag(example_dir, tmp_path):
    module = load_model(example_dir / "resnet_q_state.pth", arch=ARCH).module
    path = tmp_path / "whole.pth"
    torch.save(module, path)
    refused = run_cli("convert", str(path), "-o", str(tmp_path / "o1"))
    assert refused.returncode == 2
    assert "is a pickled module, and unpickling runs code stored in the file: pass --trust-pickle" in refused.stderr
    assert not (tmp_path / "o1").exists()
    accepted = run_cli("convert", str(path), "--trust-pickle", "--dataset", "digits", "-o", str(tmp_path / "o2"))
    assert accepted.returncode == 0, accepted.stderr
    check_report(tmp_path / "o2", "whole")


def test_library_api_and_assert_parity(example_dir, tmp_path):
    result = convert(example_dir / "resnet_q.pt", tmp_path / "api", ConvertOptions(random_inputs=0))
    assert result.ok and {c.dataset for c in result.parity} == {"digits-test"}  # ONNX Runtime, PyTorch's peer
    module = load_model(example_dir / "resnet_q.pt").module
    comparison = assert_parity(module, result.onnx_path, digits_split()[1])
    assert comparison.agreement >= 0.995 and comparison.max_abs_diff < 1.0


def test_assert_parity_fails_on_a_different_model(example_dir, tmp_path):
    result = convert(example_dir / "resnet_q.pt", tmp_path / "a", ConvertOptions(random_inputs=0))
    float_model = DigitsResNet()  # untrained: its logits have nothing to do with the ONNX file's
    other = quantize.quantize_ptq(float_model, digits_split()[0].batches(64), "minmax")
    with pytest.raises(AssertionError, match="pytorch vs onnxruntime on digits-test: top-1 agreement"):
        assert_parity(other, result.onnx_path, digits_split()[1])


def test_disabling_a_needed_pass_fails_lint_and_exits_1(example_dir, tmp_path):
    # torch.onnx's graph is uint8 with zero-point 128 until int8_zero_point runs (the structural one is int8 at once)
    result = run_cli("convert", str(example_dir / "resnet_q.pt"), "--exporter", "torch", "--disable-pass",
                     "int8_zero_point", "--random-inputs", "0", "-o", str(tmp_path / "o"))
    assert result.returncode == 1 and "FAIL" in result.stdout
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["passes_disabled"] == ["int8_zero_point"] and not report["ok"]
    assert {v["rule"] for v in report["lint"]} == {"QDQ001", "QDQ002"}


def test_passes_command_lists_the_registry():
    from qdq_bridge.graph.passes import PASS_NAMES
    listed = run_cli("passes").stdout.split()
    assert [name for name in listed if name in PASS_NAMES] == list(PASS_NAMES)


def test_outputs_replace_an_existing_folder_atomically(example_dir, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert run_cli("convert", str(example_dir / "resnet_q.pt"), "-o", str(out)).returncode == 0
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "report.json", "report.md", "resnet_q.qdq.onnx"]
    shutil.rmtree(out)


def test_pytorchs_second_backend_runs_beside_the_candidates_unless_asked_not_to(example_dir, tmp_path):
    """By default the cross-check's second backend runs over the data (its row is shown, not judged); --no-spread
    leaves it out, and every threshold then holds as given."""
    candidates = {}
    for name, extra in (("default", []), ("off", ["--no-spread"])):
        result = run_cli("convert", str(example_dir / "resnet_q.pt"), "--random-inputs", "0", "--engine", "off",
                         "-o", str(tmp_path / name), *extra)
        assert result.returncode == 0, result.stderr
        report = json.loads((tmp_path / name / "report.json").read_text())
        candidates[name] = [(r["candidate"], r["judged"]) for r in report["parity"]]
        assert report["pytorch_reference"]["peer"] == "onednn"  # the cross-check found it either way
    assert candidates == {"default": [("onnxruntime", True), ("pytorch:onednn", False)],
                          "off": [("onnxruntime", True)]}
