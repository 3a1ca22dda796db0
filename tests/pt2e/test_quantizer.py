"""qdq_bridge.pt2e.quantizer on torchvision's ResNet-18 and MobileNetV2 (random weights, 32x32): what PT2E makes of
its annotations, what torch.onnx's dynamo exporter makes of the program, and whether TensorRT's rules hold."""
import collections

import numpy as np
import onnx
import pytest
import torch
import torchvision

pytest.importorskip("torchao")
pytest.importorskip("onnxscript")  # torch.onnx.export(..., dynamo=True)

from qdq_bridge.graph.lint import lint_model  # noqa: E402
from qdq_bridge.graph.passes import run_passes  # noqa: E402
from qdq_bridge.graph.runtime import onnxruntime_runner  # noqa: E402
from qdq_bridge.pt2e.quantizer import quantize_pt2e  # noqa: E402

pytestmark = pytest.mark.slow
SHAPE = (8, 3, 32, 32)


def quantized_program(model: torch.nn.Module, placement: str, qat: bool = False) -> torch.export.ExportedProgram:
    torch.manual_seed(0)

    def train(prepared):  # a few steps of fake-quantized training
        optimizer = torch.optim.SGD(prepared.parameters(), lr=1e-3)
        for _ in range(3):
            optimizer.zero_grad()
            prepared(torch.randn(SHAPE)).square().mean().backward()
            optimizer.step()
    return quantize_pt2e(model, torch.randn(SHAPE), [torch.randn(SHAPE) for _ in range(4)], placement=placement,
                         train=train if qat else None)


def onnx_of(program: torch.export.ExportedProgram, tmp_path) -> onnx.ModelProto:
    path = tmp_path / "model.onnx"
    torch.onnx.export(program, (torch.randn(SHAPE),), str(path), dynamo=True, opset_version=18, verbose=False)
    return onnx.load(str(path))


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {output: node for node in model.graph.node for output in node.output}


@pytest.mark.parametrize("placement", ["faithful", "fast"])
def test_resnet18_quantizes_to_tensorrt_legal_qdq_in_either_placement(placement, tmp_path):
    program = quantized_program(torchvision.models.resnet18(num_classes=10), placement)
    quantizers = [n for n in program.graph.nodes if "quantize_per_tensor" in str(n.target)]
    assert quantizers and all(n.args[2] == 0 and n.args[3:6] == (-128, 127, torch.int8) for n in quantizers)
    per_channel = [n for n in program.graph.nodes if "dequantize_per_channel" in str(n.target)]
    assert len(per_channel) == 21 and all(n.args[3] == 0 for n in per_channel)  # 20 convolutions, the fc; axis 0

    model = onnx_of(program, tmp_path)
    # TensorRT's explicit-quantization rules hold as exported; only the pooling's ReduceMean, whose opset-18 axes
    # input TensorRT does not read, waits for its pass
    assert [(v.rule, v.node) for v in lint_model(model)] == [("QDQ012", "node_mean")]
    made = producers(model)
    adds = [n for n in model.graph.node if n.op_type == "Add"]
    sources = [sorted(made[i].op_type for i in n.input) for n in adds]
    # faithful: both inputs of each residual Add come in int8; fast: one straight from its convolution
    expected = ["DequantizeLinear", "DequantizeLinear"] if placement == "faithful" else ["Conv", "DequantizeLinear"]
    assert len(adds) == 8 and all(s == expected for s in sources), sources

    legal, _ = run_passes(model, (), placement)
    assert lint_model(legal) == []
    check_parity(program, model, legal)


def check_parity(program: torch.export.ExportedProgram, exported: onnx.ModelProto, legal: onnx.ModelProto) -> None:
    """ONNX Runtime (its int8 fusions off, as the pipeline runs it) against the program run by PyTorch, on 64
    random inputs, in steps of the logits' quantization grid: the exported ONNX equal on most rows, the passes' ONNX
    (whose fast placement leaves the logits float, half a step from the grid) within one step on most rows."""
    x = np.random.default_rng(1).standard_normal((64, *SHAPE[1:])).astype(np.float32)
    expected = program.module()(torch.from_numpy(x)).detach().numpy()
    last_q = [n for n in exported.graph.node if n.op_type == "QuantizeLinear"][-1]
    step = float(onnx.numpy_helper.to_array(next(i for i in exported.graph.initializer if i.name == last_q.input[1])))
    # PyTorch's decomposed quantize multiplies by 1/scale where ONNX's QuantizeLinear divides by the scale: a value
    # at a rounding boundary lands one step apart, and random weights carry it on
    for model, within in ((exported, 0.5), (legal, 1.0)):
        logits = next(iter(onnxruntime_runner(model, optimize=False)(x).values()))
        assert np.mean(np.abs(logits - expected).max(1) <= within * step) >= 0.75


@pytest.mark.parametrize("placement", ["faithful", "fast"])
def test_mobilenet_v2_takes_the_quantization_point_after_relu6(placement, tmp_path):
    program = quantized_program(torchvision.models.mobilenet_v2(num_classes=10), placement)
    model = onnx_of(program, tmp_path)
    made = producers(model)
    clips = [n for n in model.graph.node if n.op_type == "Clip"]
    assert len(clips) == 35 and all(made[n.input[0]].op_type == "Conv" for n in clips)  # conv -> ReLU6, no Q between
    assert all(made[n.input[0]].op_type in ("DequantizeLinear", "Conv") for n in model.graph.node
               if n.op_type == "Add")
    legal, _ = run_passes(model, (), placement)
    assert lint_model(legal) == []
    check_parity(program, model, legal)


def test_qat_resnet18_converts_to_the_same_legal_form(tmp_path):
    program = quantized_program(torchvision.models.resnet18(num_classes=10), "faithful", qat=True)
    per_channel = [n for n in program.graph.nodes if "dequantize_per_channel" in str(n.target)]
    assert len(per_channel) == 21  # batch norms folded into their convolutions at convert
    model = onnx_of(program, tmp_path)
    assert collections.Counter(n.op_type for n in model.graph.node)["BatchNormalization"] == 0
    legal, _ = run_passes(model, (), "faithful")
    assert lint_model(legal) == []
    check_parity(program, model, legal)
