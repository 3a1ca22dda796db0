"""Both activation recipes convert: qint8 symmetric (the reference workflow's, which PyTorch 2.14 cannot run, so
qdq_bridge rewrites it as the same values in quint8) and quint8 symmetric (qdq_bridge's own)."""
import json

import pytest
import torch

from qdq_bridge import export_onnx, lint_model, load_model, run_passes, save_torchscript
from qdq_bridge.data.sources import digits_split
from qdq_bridge.pytorch import quantize
from qdq_bridge.pytorch.models import DigitsResNet
from qdq_bridge.testing import zoo
from qdq_bridge.testing.parity import assert_parity

from helpers import quantize_with, run_cli, symmetric_qconfig

SHAPE = (1, 3, 64, 64)
RECIPES = {"qint8": torch.qint8, "quint8": torch.quint8}

# what a quantizer the calibration never reached keeps (e.g. the skip_add of a MobileNetV2 block without skip)
UNCALIBRATED = (1.0, 0)


def build(name: str, example_dir):
    """(float model, calibration batches, labelled test set, input shape) of the examples' model or a family."""
    if name == "digits":
        model = DigitsResNet()
        model.load_state_dict(torch.load(example_dir / "digits_float.pth"))
        train, test = digits_split()
        return model, [train.x[i:i + 64] for i in range(0, 512, 64)], test, (1, 1, 32, 32)
    calibration = zoo.template_task(SHAPE, 64, seed=1)
    return zoo.trained_torchvision(name), calibration.batches(16), zoo.template_task(SHAPE, 64, seed=99), SHAPE


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("name", ["digits", "resnet18", "mobilenet_v2"])
def test_recipe_converts_lint_clean_and_matches_pytorch(name, recipe, example_dir, tmp_path):
    model, calibration, test, shape = build(name, example_dir)
    quantized = quantize_with(model, symmetric_qconfig(RECIPES[recipe]), calibration)
    scales = {n: float(m.scale) for n, m in quantize.activation_quantizers(quantized)}
    torch.save(quantized, tmp_path / "model.pth")  # the user's file, as torch.save'd by their script
    loaded = load_model(tmp_path / "model.pth", trust_pickle=True)
    rewritten = [n for n in loaded.notes if "qint8 symmetric activations rewritten" in n]
    assert len(rewritten) == (recipe == "qint8")
    quantizers = quantize.activation_quantizers(loaded.module)
    assert {n: float(m.scale) for n, m in quantizers} == scales  # same scales: only the zero-points move
    assert all(int(m.zero_point) == 128 for _, m in quantizers
               if (float(m.scale), int(m.zero_point)) != UNCALIBRATED)
    onnx_model, _ = run_passes(export_onnx(loaded.module, shape))
    assert lint_model(onnx_model) == []
    assert_parity(loaded.module, onnx_model, test, min_agreement=0.99, max_accuracy_gap_points=2.0)


def test_qint8_torchscript_and_state_dict_files_convert_with_a_note(example_dir, tmp_path):
    model, calibration, _, shape = build("digits", example_dir)
    quantized = quantize_with(model, symmetric_qconfig(torch.qint8), calibration)
    save_torchscript(quantized, tmp_path / "q8.pt", shape, "digits")
    torch.save(quantized.state_dict(), tmp_path / "q8_state.pth")
    for args in (["q8.pt"], ["q8_state.pth", "--arch", "qdq_bridge.pytorch.models:digits_resnet", "--dataset", "digits"]):
        result = run_cli("convert", *args, "-o", "out", "--random-inputs", "0", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        report = json.loads((tmp_path / "out" / "report.json").read_text())
        assert report["ok"] and report["lint"] == []
        assert any("qint8 symmetric activations rewritten at 14 quantizers" in n for n in report["notes"])
        digits = report["parity"][0]
        assert digits["agreement"] >= 0.995 and digits["reference_accuracy"] >= 0.95
