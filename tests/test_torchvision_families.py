"""All six torchvision quantizable families convert in both placements, lint clean, and match PyTorch on ONNX
Runtime; the fast placement leaves the Q/DQ where TensorRT fuses residual adds and runs data movement in int8."""
import collections

import numpy as np
import onnx_graphsurgeon as gs
import pytest
import torch

from qdq_bridge import export_onnx, lint_model, run_passes
from qdq_bridge.data.sources import random_inputs
from qdq_bridge.export.exporter import exported_by
from qdq_bridge.export.structural import export_structural
from qdq_bridge.graph.passes import GRID_PRESERVING_OPS, PLACEMENTS
from qdq_bridge.testing import zoo
from qdq_bridge.testing.parity import assert_parity
from qdq_bridge.verify import run_onnxruntime

SHAPE = (1, 3, 64, 64)
# residual Adds per family at any input size: BasicBlocks/Bottlenecks, inverted residuals with a skip
RESIDUAL_ADDS = {"resnet18": 8, "resnet50": 16, "mobilenet_v2": 10, "mobilenet_v3_large": 10, "googlenet": 0,
                 "shufflenet_v2_x1_0": 0}


@pytest.fixture(scope="module", params=zoo.TORCHVISION_FAMILIES)
def family(request):
    model = zoo.quantized_torchvision(request.param, SHAPE)
    exported = export_onnx(model, SHAPE)
    assert exported_by(exported) == "structural (torch.fx)"
    return request.param, model, {p: run_passes(exported, placement=p)[0] for p in PLACEMENTS}


def producer(tensor: gs.Tensor) -> str | None:
    return tensor.inputs[0].op if tensor.inputs else None


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_converts_lint_clean_with_int8_weights_and_activations(family, placement):
    name, _, models = family
    onnx_model = models[placement]
    assert lint_model(onnx_model) == []
    ops = collections.Counter(n.op_type for n in onnx_model.graph.node)
    assert ops["Conv"] >= 16 and ops["QuantizeLinear"] >= ops["Conv"] // 2
    assert ops["Cast"] == 0 or name == "shufflenet_v2_x1_0"  # its Casts compute reshape sizes, not Q/DQ types
    inits = {i.name: i for i in onnx_model.graph.initializer}
    weight_dqs = [n for n in onnx_model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert weight_dqs and all(inits[n.input[0]].data_type == 3 for n in weight_dqs)  # int8 initializers


def test_fast_placement_feeds_each_residual_add_a_float_conv_output_and_a_quantized_one(family):
    name, _, models = family
    faithful, fast = (gs.import_onnx(models[p]) for p in PLACEMENTS)
    fused = [n for n in fast.nodes if n.op == "Add" and sorted(map(producer, n.inputs)) == ["Conv", "DequantizeLinear"]]
    assert len(fused) == RESIDUAL_ADDS[name]
    assert not [n for n in faithful.nodes if n.op == "Add" and "Conv" in map(producer, n.inputs)]
    # one requantization fewer per residual Add; fewer still where data movement or the output lost theirs
    q_count = collections.Counter(n.op for n in fast.nodes)["QuantizeLinear"]
    assert q_count <= collections.Counter(n.op for n in faithful.nodes)["QuantizeLinear"] - RESIDUAL_ADDS[name]


def test_fast_placement_leaves_no_requantization_after_grid_preserving_ops(family):
    _, _, models = family
    fast = gs.import_onnx(models["fast"])
    for q in (n for n in fast.nodes if n.op == "QuantizeLinear" and producer(n.inputs[0]) in GRID_PRESERVING_OPS):
        op = q.inputs[0].inputs[0]
        data = op.inputs if op.op == "Concat" else op.inputs[:1]
        scales = {float(t.inputs[0].inputs[1].values) for t in data if producer(t) == "DequantizeLinear"}
        readers = {c.op for dq in q.outputs[0].outputs for c in dq.outputs[0].outputs}
        # a Q is left only where the inputs' scales differ from it (not exact to drop) or it feeds a residual Add
        assert scales != {float(q.inputs[1].values)} or readers - {"Conv", "Gemm", *GRID_PRESERVING_OPS}, \
            f"{q.name} requantizes {op.op} at its input's scale"
    assert fast.outputs[0].inputs[0].op != "DequantizeLinear"  # the classifier writes float logits


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_matches_pytorch_on_64_random_task_inputs(family, placement):
    _, model, models = family
    inputs = zoo.template_task(SHAPE, 64, seed=99)
    comparison = assert_parity(model, models[placement], inputs, min_agreement=0.99, max_accuracy_gap_points=2.0)
    assert comparison.samples == 64


def test_dynamic_batch_runs(family):
    _, _, models = family
    batch = random_inputs(SHAPE, 3)
    for onnx_model in models.values():
        assert run_onnxruntime(onnx_model, batch, batch_size=3).shape == (3, 10)


def test_both_structural_frontends_equal_torch_onnx_bit_for_bit(family):
    """torch.fx (the eager module) and the TorchScript graph (its torch.jit.script) against torch.onnx, with
    torch.onnx's bias rounding: the same ONNX Runtime outputs on the task inputs."""
    _, model, _ = family
    inputs = zoo.template_task(SHAPE, 64, seed=99)
    expected = run_onnxruntime(run_passes(export_onnx(model, SHAPE, exporter="torch"))[0], inputs)
    for module in (model, torch.jit.script(model)):
        structural, _ = run_passes(export_structural(module, SHAPE, bias_rounding="toward_zero"))
        assert lint_model(structural) == []
        np.testing.assert_array_equal(run_onnxruntime(structural, inputs), expected)
