"""The structural exporter: Q/DQ ONNX from the model's structure, with no quantized kernel run. Where torch.onnx's
exporter also runs, both graphs compute the same thing (bit for bit with torch.onnx's bias rounding)."""
import json

import numpy as np
import onnx
import pytest
import torch

from qdq_bridge import export_onnx, lint_model, load_model, run_passes
from qdq_bridge.data.arrays import Dataset
from qdq_bridge.data.sources import digits_split
from qdq_bridge.errors import BridgeError
from qdq_bridge.export.exporter import exported_by
from qdq_bridge.export.structural import export_structural
from qdq_bridge.graph.lint import error_violations
from qdq_bridge.pytorch import quantize
from qdq_bridge.pytorch.models import DigitsResNet
from qdq_bridge.pytorch.reference import probe_exactness, repack
from qdq_bridge.pytorch.runner import run_torch
from qdq_bridge.verify import run_onnxruntime

from helpers import quantize_with, run_cli, symmetric_qconfig
from helpers.quantized_modules import MODELS, quantized

SHAPE = (1, 1, 32, 32)


@pytest.fixture(scope="module")
def digits_model(example_dir):
    return load_model(example_dir / "resnet_q.pt").module, digits_split()[1]


def ort(model: onnx.ModelProto, data) -> np.ndarray:
    return run_onnxruntime(run_passes(model)[0], data, 64)


@pytest.mark.parametrize("frontend", ["torchscript", "fx"])
def test_equals_the_torch_exporter_bit_for_bit_with_its_bias_rounding(digits_model, example_dir, frontend):
    scripted, test = digits_model
    module = scripted if frontend == "torchscript" else load_model(example_dir / "resnet_q_state.pth",
                                                                   arch="qdq_bridge.pytorch.models:digits_resnet").module
    torch_graph = export_onnx(module, SHAPE, exporter="torch")
    structural = export_structural(module, SHAPE, bias_rounding="toward_zero")
    np.testing.assert_array_equal(ort(structural, test), ort(torch_graph, test))
    ops = [n.op_type for n in structural.graph.node]
    assert "Cast" not in ops and ops.count("Conv") == 9 and ops.count("Gemm") == 1


def test_rounds_biases_as_pytorch_does_and_lands_closer_to_it(digits_model):
    module, test = digits_model
    reference = run_torch(module, test)
    nearest, toward_zero = (np.abs(ort(export_structural(module, SHAPE, bias_rounding=r), test) - reference).mean()
                            for r in ("nearest", "toward_zero"))
    assert nearest < toward_zero  # measured here: 0.023 against 0.029 (torch.onnx truncates biases)
    agreement = (ort(export_structural(module, SHAPE), test).argmax(1) == reference.argmax(1)).mean()
    assert agreement == 1.0


def test_exports_qint8_activations_without_running_them(example_dir):
    """The reference workflow's qint8 model: PyTorch cannot run it, the structural exporter needs not."""
    model = DigitsResNet()
    model.load_state_dict(torch.load(example_dir / "digits_float.pth"))
    qint8 = quantize_with(model, symmetric_qconfig(torch.qint8), [digits_split()[0].x[:256]])
    direct = export_structural(qint8, SHAPE)
    assert lint_model(run_passes(direct)[0]) == []
    # a copy packed for the backend that runs it, as qdq_bridge's reference does: copy.deepcopy alone packs for
    # the process's backend (x86), whose kernels saturate on full-range activations without VNNI (10 % here)
    rewritten = repack(qint8, quantize.backend_for(qint8))
    quantize.qint8_to_quint8_activations(rewritten)  # the same values in quint8, which PyTorch runs
    test = digits_split()[1]
    np.testing.assert_array_equal(ort(direct, test), ort(export_structural(rewritten, SHAPE), test))
    assert (ort(direct, test).argmax(1) == run_torch(rewritten, test).argmax(1)).mean() >= 0.995
    # last: a failed qint8 run can leave qnnpack's packed weights unusable (torch 2.11)
    with pytest.raises(RuntimeError):  # 2.14: "Expected activation data type QUInt8"; 2.11: "Unsupported config"
        with quantize.quiet_torch_warnings():
            qint8(torch.zeros(SHAPE))


def test_auto_falls_back_to_torch_onnx_for_an_unknown_op_and_says_so():
    class Gelu(torch.nn.Module):  # a float op between quantized ones: eager mode runs it, no translation exists
        def __init__(self):
            super().__init__()
            self.quant, self.conv, self.dequant = torch.ao.quantization.QuantStub(), torch.nn.Conv2d(1, 4, 3), \
                torch.ao.quantization.DeQuantStub()

        def forward(self, x):
            return torch.nn.functional.gelu(self.dequant(self.conv(self.quant(x))))

        def fuse_model(self):
            pass

    model = quantize_with(Gelu(), quantize.trt_qconfig(), [np.random.default_rng(0).standard_normal((8, *SHAPE[1:]),
                                                                                                     np.float32)])
    with pytest.raises(BridgeError, match=r"function gelu at 'gelu' has no structural ONNX translation: use "
                                          r"--exporter torch"):
        export_onnx(model, SHAPE, exporter="structural")
    fallback = export_onnx(model, SHAPE)
    assert exported_by(fallback).startswith("torch.onnx (the structural exporter could not: function gelu")


@pytest.mark.parametrize("exporter,expected", [("structural", "structural (TorchScript graph)"),
                                               ("torch", "torch.onnx")])
def test_cli_records_the_exporter(example_dir, tmp_path, exporter, expected):
    result = run_cli("convert", str(example_dir / "resnet_q.pt"), "--exporter", exporter, "--random-inputs", "0",
                     "-o", str(tmp_path / "o"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["exporter"] == expected and report["ok"]
    assert f"Exported by {expected}." in (tmp_path / "o" / "report.md").read_text()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_rest_of_the_quantized_module_set(name):
    """BatchNorm, Hardswish, ELU, LeakyReLU, ConvTranspose, AvgPool, QFunctional mul/cat/add, Linear+ReLU, Conv1d,
    Conv3d, clamps, scalar ops, pixel shuffles and permute: both frontends give the same graph, lint-clean, within one output step of PyTorch; torch.onnx equals
    it bit for bit where it can export the model at all (it has no quantized BatchNorm2d, and cannot serialize
    onednn's 3-d packed weights)."""
    model, shape = quantized(name)
    data = Dataset("random", np.random.default_rng(9).standard_normal((32, *shape[1:]), np.float32))
    fx_graph, _ = run_passes(export_structural(model, shape, bias_rounding="toward_zero"))
    scripted, _ = run_passes(export_structural(torch.jit.script(model), shape, bias_rounding="toward_zero"))
    # TensorRT has no int8 ELU: only the linter's note that it runs in float
    assert {(v.rule, v.node) for v in lint_model(fx_graph)} <= {("QDQ011", "/elu/Elu")}
    assert not error_violations(lint_model(scripted))
    outputs = run_onnxruntime(fx_graph, data, 32)
    np.testing.assert_array_equal(run_onnxruntime(scripted, data, 32), outputs)
    output_step = float(next(m for n, m in quantize.activation_quantizers(model) if n == "fc2" or n == "conv1").scale)
    # PyTorch as the yardstick where its kernels are exact: onednn, the only backend with 3-d convolutions, saturates
    # full-range activations on CPUs without VNNI (26 steps off on this project's AMD EPYC; probe_exactness)
    # qnnpack's relu6 and hardtanh clamp channels-last tensors (what its convolutions return) at the wrong
    # positions (torch 2.14: 2.3 of 2.65 off), which the pipeline's cross-check catches; onednn's are right
    backend = "onednn" if name == "clamp_and_move" else quantize.backend_for(model)
    if probe_exactness(backend) <= 1:
        assert np.abs(outputs - run_torch(repack(model, backend), data, 32, backend)).max() <= output_step + 1e-6
    try:
        torch_graph, _ = run_passes(export_onnx(model, shape, exporter="torch"))
    except BridgeError as exc:  # what torch.onnx cannot export, measured on torch 2.14
        assert {"modules2d": "quantized::batch_norm2d", "modules1d3d": "Conv3dPackedParamsBase",
                "clamp_and_move": "quantized::relu6"}[name] in str(exc)
    else:
        np.testing.assert_array_equal(run_onnxruntime(torch_graph, data, 32), outputs)


def test_a_squeeze_excite_gate_rounds_to_pytorchs_fixed_grid():
    """The Hardsigmoid gate on eager mode's 1/256 grid (fixed_range_outputs_on_pytorch_grid): left in float it put
    4.3 % of a squeeze-excite block's outputs one step from every CPU backend (measured on a block of MobileNetV3's
    shape); on the grid, under 0.5 % here, as rounding ties between float orders leave."""
    model, shape = quantized("squeeze_excite")
    data = Dataset("random", np.random.default_rng(4).standard_normal((256, *shape[1:]), np.float32))
    graph, applied = run_passes(export_structural(model, shape))
    assert "fixed_range_outputs_on_pytorch_grid" in applied and not lint_model(graph)
    assert [n.op_type for n in graph.graph.node].count("Round") == 3  # the gate's, and the pool's two
    step = float(next(m for n, m in quantize.activation_quantizers(model) if n == "conv1").scale)
    outputs = run_onnxruntime(graph, data, 64)
    for backend in quantize.available_backends():
        steps_off = np.abs(outputs - run_torch(repack(model, backend), data, 64, backend)) / step
        assert (steps_off > 0.5).mean() < 0.005 and steps_off.max() <= 1 + 1e-4, backend
