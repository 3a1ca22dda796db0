"""mixed_precision: the float compute between the Q/DQ pairs turns fp16 (for strongly typed TensorRT) while the
Q/DQ, the int8 weights, the float32 scales, the opset and the network's float32 input and outputs stay as they
were; ops that reach large values on the samples keep float32, each with its reason."""
import collections

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from qdq_bridge import lint_model, run_passes
from qdq_bridge.errors import BridgeError
from qdq_bridge.export.exporter import export_onnx, float_twin
from qdq_bridge.graph.lint import error_violations
from qdq_bridge.graph.precision import DEFAULT_MAX_ABS, GRID_REASON, mixed_precision
from qdq_bridge.pytorch import quantize
from qdq_bridge.testing import zoo

from helpers import graphs
from helpers.quantized_modules import quantized

FLOAT16, FLOAT32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
RNG = np.random.default_rng(3)


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    graph = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph
    return {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.value_info, *graph.output]}


def op_output_types(model: onnx.ModelProto) -> collections.Counter:
    """(op, elem type of its first output) for every compute op: the precision each op runs in."""
    types = tensor_types(model)
    return collections.Counter((n.op_type, types[n.output[0]]) for n in model.graph.node
                               if n.op_type not in ("QuantizeLinear", "DequantizeLinear", "Cast"))


def quantization_constants(model: onnx.ModelProto) -> dict[str, tuple[int, bytes]]:
    """Every initializer a Q/DQ reads (int8 weights, scales, zero-points), as raw bytes with its type."""
    inits = {i.name: i for i in model.graph.initializer}
    names = {name for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") for name in n.input}
    return {name: (inits[name].data_type, onnx.numpy_helper.to_array(inits[name]).tobytes())
            for name in names if name in inits}


def producer_ops(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: n for n in model.graph.node for out in n.output}


@pytest.fixture(scope="module")
def conv_model():
    return run_passes(graphs.model(graphs.conv_graph()))[0]


@pytest.fixture(scope="module")
def modules2d():
    """Conv+ReLU, BatchNorm, Hardswish, ELU, LeakyReLU, ConvTranspose, AvgPool, mul/cat/add, MaxPool, Linear+ReLU,
    in the fast placement (float logits), with 16 random inputs."""
    model, shape = quantized("modules2d")
    exported = run_passes(export_onnx(model, shape), placement="fast")[0]
    return exported, RNG.standard_normal((16, *shape[1:])).astype(np.float32)


def test_an_int8_conv_keeps_the_type_its_dequantize_gives_it(conv_model):
    """Q/DQ -> Conv -> Q/DQ is INT8 compute in TensorRT: no Cast may separate the DQs from the Conv (a Cast there
    stops TensorRT 8.6 folding the weights), so the copy is the model itself."""
    mixed, report = mixed_precision(conv_model, graphs.sample_input())
    assert report == {"library": "qdq_bridge", "max_abs": DEFAULT_MAX_ABS, "samples": 1, "fp16_nodes": 0,
                      "int8_nodes": 1, "kept_fp32": {}, "casts_added": 0}
    assert [n.op_type for n in mixed.graph.node] == [n.op_type for n in conv_model.graph.node]
    assert quantization_constants(mixed) == quantization_constants(conv_model)
    producers = producer_ops(mixed)
    conv = next(n for n in mixed.graph.node if n.op_type == "Conv")
    assert [producers[name].op_type for name in conv.input[:2]] == ["DequantizeLinear"] * 2


def island_graph() -> onnx.ModelProto:
    """input -> Q/DQ -> Conv(int8 weights) -> Relu -> Conv(float weights) -> Relu -> Q/DQ -> Conv(int8) -> Softmax:
    INT8 compute around a float island (a layer the user kept float), and float compute after the last INT8 op."""
    x = gs.Variable("input", np.float32, (1, 4, 5, 5))
    nodes: list = []
    current = graphs.q_dq(nodes, x, "in", 0.05, 0, np.int8)

    def conv(name, source, weight, relu):
        out = gs.Variable(f"{name}_out", np.float32)
        nodes.append(gs.Node("Conv", name, {"kernel_shape": [1, 1]}, [source, weight], [out]))
        if relu:
            relu_out = gs.Variable(f"{name}_relu", np.float32)
            nodes.append(gs.Node("Relu", f"{name}_relu", inputs=[out], outputs=[relu_out]))
            return relu_out
        return out

    def int8_weight(name):
        node, weight = graphs.weight_dq(name, RNG.integers(-127, 128, (4, 4, 1, 1)).astype(np.int8),
                                        np.full(4, 0.02), 0)
        nodes.append(node)
        return weight

    current = conv("int8_a", current, int8_weight("int8_a"), relu=True)
    current = conv("float_island", current, graphs.const("island_w", RNG.normal(0, 0.3, (4, 4, 1, 1))
                                                         .astype(np.float32)), relu=True)
    current = graphs.q_dq(nodes, current, "mid", 0.05, 0, np.int8)
    current = conv("int8_b", current, int8_weight("int8_b"), relu=False)
    out = gs.Variable("output", np.float32, (1, 4, 5, 5))
    nodes.append(gs.Node("Softmax", "softmax", {"axis": 1}, [current], [out]))
    return graphs.model(gs.Graph(nodes, [x], [out], opset=13))


def test_a_float_island_between_int8_ops_runs_fp16_with_casts_at_its_borders_only():
    model = island_graph()
    sample = RNG.standard_normal((4, 4, 5, 5)).astype(np.float32)
    mixed, report = mixed_precision(model, sample)
    assert (report["int8_nodes"], report["fp16_nodes"], report["kept_fp32"]) == (3, 3, {})
    assert op_output_types(mixed) == {("Conv", FLOAT32): 2, ("Relu", FLOAT32): 1, ("Conv", FLOAT16): 1,
                                      ("Relu", FLOAT16): 1, ("Softmax", FLOAT16): 1}
    # into the island, out of it before the Q, into the Softmax, out to the float32 network output
    assert report["casts_added"] == 4
    producers = producer_ops(mixed)
    assert all(producers[name].op_type == "DequantizeLinear" for n in mixed.graph.node if n.op_type == "Conv"
               and n.name.startswith("int8") for name in n.input[:2])
    assert quantization_constants(mixed) == quantization_constants(model)
    assert tensor_types(mixed)["output"] == FLOAT32 and error_violations(lint_model(mixed)) == []
    np.testing.assert_allclose(graphs.run(mixed, sample[:1]), graphs.run(model, sample[:1]), atol=2e-3)


@pytest.mark.slow
def test_layers_kept_float_by_ptq_become_an_fp16_island():
    """quantize_ptq(keep_float=("layer4",)) leaves ResNet-18's last stage float between a DQ and a Q: its five
    convolutions turn fp16 in the copy, with one Cast in and one out, and the INT8 stages stay as they were; the
    average pool's rounding on its integer steps (average_pools_on_pytorch_grid) stays float32."""
    shape = (1, 3, 32, 32)
    calibration = zoo.template_task(shape, 16, seed=1)
    model = quantize.quantize_ptq(zoo.torchvision_float("resnet18", 10), calibration.batches(8), keep_float=("layer4",))
    exported = run_passes(export_onnx(model, shape))[0]
    mixed, report = mixed_precision(exported, calibration.x)
    types = tensor_types(mixed)
    fp16_convs = sorted(n.name for n in mixed.graph.node if n.op_type == "Conv" and types[n.output[0]] == FLOAT16)
    assert len(fp16_convs) == 5 and all(name.startswith("/layer4/") for name in fp16_convs)
    assert report["casts_added"] == 2 and len(report["kept_fp32"]) == 4  # Round, pool, Round, Mul(scale)
    assert all(name.startswith("/avgpool/") and reason == GRID_REASON for name, reason in report["kept_fp32"].items())
    assert quantization_constants(mixed) == quantization_constants(exported)
    assert error_violations(lint_model(mixed)) == []
    expected = graphs.run(exported, calibration.x[:4])
    np.testing.assert_allclose(graphs.run(mixed, calibration.x[:4]), expected, atol=0.02 * np.abs(expected).max())


def test_keeping_float_a_submodule_the_model_lacks_names_it():
    with pytest.raises(BridgeError, match="no submodule 'layer9' to keep float"):
        quantize.prepare_ptq(zoo.torchvision_float("resnet18", 10), keep_float=("layer9",))


def range_graph() -> onnx.ModelProto:
    """input -> Mul(x1000) -> Relu -> Mul(x0.001) -> Sigmoid -> output; |x| of N(0, 1) inputs reaches thousands
    after the first Mul."""
    x = gs.Variable("input", np.float32, (1, 8))
    big, relu, small, out = (gs.Variable(n, np.float32) for n in ("big", "relu", "small", "output"))
    nodes = [gs.Node("Mul", "scale_up", inputs=[x, graphs.const("k1", np.float32(1000))], outputs=[big]),
             gs.Node("Relu", "relu", inputs=[big], outputs=[relu]),
             gs.Node("Mul", "scale_down", inputs=[relu, graphs.const("k2", np.float32(1e-3))], outputs=[small]),
             gs.Node("Sigmoid", "sigmoid", inputs=[small], outputs=[out])]
    out.shape = (1, 8)
    return graphs.model(gs.Graph(nodes, [x], [out], opset=13))


def test_ops_reaching_beyond_the_bound_on_the_samples_stay_float32_with_the_measured_value():
    model = range_graph()
    sample = RNG.standard_normal((4, 8)).astype(np.float32)
    sample[:, 0] = [0.5, -0.7, 0.9, 0.6]  # the largest |x| anywhere is in column 1: 2.0
    sample[:, 1] = [2.0, -1.0, 1.0, 0.5]
    sample[:, 2:] = np.clip(sample[:, 2:], -1.5, 1.5)
    mixed, report = mixed_precision(model, sample)
    # 2.0 * 1000 = 2000 > 512: the Mul that writes it, the Relu that reads and writes it, the Mul that reads it
    assert set(report["kept_fp32"]) == {"scale_up", "relu", "scale_down"}
    assert report["kept_fp32"]["scale_up"] == "output big reaches |x| = 2000 > max_abs 512 on the samples"
    assert report["kept_fp32"]["scale_down"] == "input relu reaches |x| = 2000 > max_abs 512 on the samples"
    assert report["fp16_nodes"] == 1
    assert op_output_types(mixed) == {("Mul", FLOAT32): 2, ("Relu", FLOAT32): 1, ("Sigmoid", FLOAT16): 1}
    np.testing.assert_allclose(graphs.run(mixed, sample[:1]), graphs.run(model, sample[:1]), atol=1e-3)
    # a bound above the measured 2000 lets all four run fp16
    assert mixed_precision(model, sample, max_abs=4096)[1]["fp16_nodes"] == 4


def test_an_already_converted_model_is_refused():
    sample = RNG.standard_normal((1, 4, 5, 5)).astype(np.float32)
    mixed, _ = mixed_precision(island_graph(), sample)
    with pytest.raises(BridgeError, match="already carries float16"):
        mixed_precision(mixed, sample)


def test_float_twin_turns_fp16_between_a_float32_input_and_output(conv_model):
    twin = float_twin(conv_model)
    sample = graphs.sample_input()
    mixed, report = mixed_precision(twin, sample)
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in mixed.graph.node)
    # float_twin keeps the output's name through an Identity
    assert op_output_types(mixed) == {("Conv", FLOAT16): 1, ("Identity", FLOAT16): 1} and report["kept_fp32"] == {}
    # the network input is cast once into fp16, the fp16 result cast back into the output's own name
    types = tensor_types(mixed)
    assert types["input"] == types["output"] == FLOAT32
    producers = producer_ops(mixed)
    assert producers["output"].op_type == "Cast" and producers[producers["output"].input[0]].op_type == "Identity"
    assert all(i.data_type == FLOAT16 for i in mixed.graph.initializer)  # weights and bias now fp16
    expected = graphs.run(twin, sample)
    np.testing.assert_allclose(graphs.run(mixed, sample), expected, rtol=0, atol=2e-3 * np.abs(expected).max())


def test_a_quantized_model_keeps_int8_compute_as_it_was_and_runs_elu_fp16(modules2d):
    """The quantized modules' ops (convs, linears, BatchNorm, Hardswish, LeakyReLU, pools, add, mul, cat) sit
    between a DQ and a Q, or are DQ'd Gemms writing the float logits: TensorRT runs them in INT8. ELU it runs in
    float (the linter warns of it), so ELU alone turns fp16, between two Casts; the pools' rounding on their
    integer steps stays float32."""
    model, sample = modules2d
    mixed, report = mixed_precision(model, sample)
    compute_ops = sum(op_output_types(model).values())
    grid = report["kept_fp32"]
    assert set(grid.values()) == {GRID_REASON} and {n.op_type for n in model.graph.node if n.name in grid} == \
        {"Round", "AveragePool", "Mul"}
    assert (report["int8_nodes"] + len(grid), report["fp16_nodes"], report["casts_added"]) == (compute_ops - 1, 1, 2)
    assert op_output_types(mixed) == op_output_types(model) - collections.Counter({("Elu", FLOAT32): 1}) \
        + collections.Counter({("Elu", FLOAT16): 1})
    assert quantization_constants(mixed) == quantization_constants(model) and error_violations(lint_model(mixed)) == []
    step = np.abs(graphs.run(model, sample)).max() / 127  # about the last quantizer's step
    assert np.abs(graphs.run(mixed, sample) - graphs.run(model, sample)).max() <= 2 * step


def test_an_op_without_float16_in_the_opset_stays_float32_and_feeds_fp16_through_a_cast():
    x = gs.Variable("input", np.float32, (1, 8))
    ramp, out = gs.Variable("ramp", np.float32), gs.Variable("output", np.float32, (1, 8))
    limits = [graphs.const(n, np.float32(v)) for n, v in (("start", 0), ("limit", 8), ("delta", 1))]
    model = graphs.model(gs.Graph([gs.Node("Range", "range", inputs=limits, outputs=[ramp]),
                                   gs.Node("Add", "add", inputs=[x, ramp], outputs=[out])], [x], [out], opset=13))
    sample = RNG.standard_normal((2, 8)).astype(np.float32)
    mixed, report = mixed_precision(model, sample)
    assert report["kept_fp32"] == {"range": "ONNX opset 13 has no Range that computes on float16 inputs"}
    assert op_output_types(mixed) == {("Range", FLOAT32): 1, ("Add", FLOAT16): 1}
    np.testing.assert_allclose(graphs.run(mixed, sample[:1]), graphs.run(model, sample[:1]), atol=5e-3)


def test_a_constant_shared_by_two_fp16_ops_becomes_one_float16_initializer():
    x, mid = gs.Variable("input", np.float32, (1, 8)), gs.Variable("mid", np.float32)
    out, half = gs.Variable("output", np.float32, (1, 8)), graphs.const("half", np.float32(0.5))
    model = graphs.model(gs.Graph([gs.Node("Mul", "first", inputs=[x, half], outputs=[mid]),
                                   gs.Node("Mul", "second", inputs=[mid, half], outputs=[out])], [x], [out], opset=13))
    mixed, report = mixed_precision(model, RNG.standard_normal((1, 8)).astype(np.float32))
    assert report["fp16_nodes"] == 2 and report["casts_added"] == 2  # into the first Mul, out of the second
    assert [(i.name, i.data_type) for i in mixed.graph.initializer] == [("half_float16", FLOAT16)]


def test_the_float_twin_leaves_out_the_rounding_onto_pytorchs_grid(modules2d):
    """The twin of a graph whose pools round on their integer steps has neither Q/DQ nor Round: its pools average
    floats, and the FP16 comparison engine is the float network's."""
    model, sample = modules2d
    twin = float_twin(model)
    assert "Round" in {n.op_type for n in model.graph.node}
    assert not {"Round", "QuantizeLinear", "DequantizeLinear"} & {n.op_type for n in twin.graph.node}
    _, report = mixed_precision(twin, sample)
    assert report["fp16_nodes"] > 0 and GRID_REASON not in report["kept_fp32"].values()
