"""All six torchvision quantizable families convert, lint clean, and match PyTorch on ONNX Runtime."""
import collections

import pytest

from qdq_bridge import export_onnx, lint_model, run_passes, zoo
from qdq_bridge.data import random_inputs
from qdq_bridge.testing import assert_parity

SHAPE = (1, 3, 64, 64)


@pytest.fixture(scope="module", params=zoo.TORCHVISION_FAMILIES)
def family(request):
    model = zoo.quantized_torchvision(request.param, SHAPE)
    onnx_model, _ = run_passes(export_onnx(model, SHAPE))
    return request.param, model, onnx_model


def test_converts_lint_clean_with_int8_weights_and_activations(family):
    name, _, onnx_model = family
    assert lint_model(onnx_model) == []
    ops = collections.Counter(n.op_type for n in onnx_model.graph.node)
    assert ops["Conv"] >= 16 and ops["QuantizeLinear"] >= ops["Conv"] // 2
    assert ops["Cast"] == 0 or name == "shufflenet_v2_x1_0"  # its Casts compute reshape sizes, not Q/DQ types
    inits = {i.name: i for i in onnx_model.graph.initializer}
    weight_dqs = [n for n in onnx_model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert weight_dqs and all(inits[n.input[0]].data_type == 3 for n in weight_dqs)  # int8 initializers


def test_matches_pytorch_on_64_random_task_inputs(family):
    name, model, onnx_model = family
    inputs = zoo.template_task(SHAPE, 64, seed=99)
    comparison = assert_parity(model, onnx_model, inputs, min_agreement=0.99, max_accuracy_gap_points=2.0)
    assert comparison.samples == 64


def test_dynamic_batch_runs(family):
    _, model, onnx_model = family
    batch = random_inputs(SHAPE, 3)
    from qdq_bridge.verify import run_onnxruntime
    assert run_onnxruntime(onnx_model, batch, batch_size=3).shape == (3, 10)
