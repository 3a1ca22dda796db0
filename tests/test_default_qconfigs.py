"""PyTorch's default eager qconfigs (issue 21): affine activations map onto int8 where it holds them, through the
CLI; full-range ones are re-quantized on request. (The refusal itself: test_bad_input.)"""
import json

import pytest
from torch.ao.quantization import get_default_qconfig

from qdq_bridge.data.sources import digits_split
from qdq_bridge.pytorch.load import save_torchscript
from qdq_bridge.pytorch.models import DigitsResNet

from helpers import quantize_with, run_cli


def digits_model(example_dir, qconfig: str):
    import torch
    model = DigitsResNet()
    model.load_state_dict(torch.load(example_dir / "digits_float.pth"))
    return quantize_with(model, get_default_qconfig(qconfig), [digits_split()[0].x[:512]])


def converted(tmp_path, model, *args) -> dict:
    save_torchscript(model, tmp_path / "model.pt", (1, 1, 32, 32), "digits")
    result = run_cli("convert", "model.pt", "-o", "out", "--engine", "off", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads((tmp_path / "out" / "report.json").read_text())


def digits_row(report: dict) -> dict:
    return next(r for r in report["parity"] if r["dataset"] == "digits-test" and r["candidate"] == "onnxruntime")


@pytest.mark.parametrize("qconfig", ["x86", "fbgemm"])
@pytest.mark.parametrize("placement", ["faithful", "fast"])
def test_reduce_range_model_maps_exactly_onto_int8(example_dir, tmp_path, qconfig, placement):
    report = converted(tmp_path, digits_model(example_dir, qconfig), "--placement", placement)
    assert report["ok"] and report["lint"] == []
    activations = report["activations"]
    assert activations["schemes"]["symmetric"] == 0 and activations["schemes"]["full_range"] == 0
    assert activations["affine"] and not any(a["full_range"] for a in activations["affine"])
    assert not activations["requantized"]
    row = digits_row(report)
    assert row["agreement"] >= 0.995 and row["lost"] == 0
    floors = report["op_counts"].get("Max", 0)
    # faithful keeps PyTorch's floor before each affine Q not fed by a ReLU; fast drops them all
    assert (floors > 0) == (placement == "faithful") and "Clip" not in report["op_counts"]


def test_qnnpack_model_converts_with_requantized_activations_listed(example_dir, tmp_path):
    report = converted(tmp_path, digits_model(example_dir, "qnnpack"), "--requantize-activations")
    requantized = [a for a in report["activations"]["affine"] if a["requantized_scale"]]
    assert report["activations"]["requantized"] and requantized
    for a in requantized:
        assert a["requantized_scale"] == pytest.approx(a["scale"] * max(a["zero_point"], 255 - a["zero_point"]) / 127)
    assert any("re-quantized: full-range uint8" in note for note in report["notes"])
    assert digits_row(report)["agreement"] >= 0.99
    assert "## Activations" in (tmp_path / "out" / "report.md").read_text()
