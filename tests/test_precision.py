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
from qdq_bridge.export import export_onnx, float_twin
from qdq_bridge.lint import errors
from qdq_bridge.passes import export_like
from qdq_bridge.precision import CAST_PREFIX, DEFAULT_MAX_ABS, mixed_precision

import graphs
from quantized_modules import quantized

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


def test_conv_runs_fp16_between_untouched_qdq_with_casts_on_the_float_side(conv_model):
    sample = graphs.sample_input()
    mixed, report = mixed_precision(conv_model, sample)
    assert report == {"library": "qdq_bridge", "max_abs": DEFAULT_MAX_ABS, "samples": 1, "fp16_nodes": 1,
                      "kept_fp32": {}, "casts_added": 3}
    assert op_output_types(mixed) == {("Conv", FLOAT16): 1}
    assert quantization_constants(mixed) == quantization_constants(conv_model)
    assert [o.version for o in mixed.opset_import] == [13]
    assert errors(lint_model(mixed)) == []
    producers = producer_ops(mixed)
    conv = next(n for n in mixed.graph.node if n.op_type == "Conv")
    # data and weight come DQ -> Cast(fp16); the bias is a float16 initializer
    assert [producers[name].op_type for name in conv.input[:2]] == ["Cast", "Cast"]
    assert [producers[producers[name].input[0]].op_type for name in conv.input[:2]] == ["DequantizeLinear"] * 2
    bias = next(i for i in mixed.graph.initializer if i.name == conv.input[2])
    assert bias.data_type == FLOAT16
    # the output Q reads the conv result cast back to float32; Q feeds its DQ directly
    q_out = next(n for n in mixed.graph.node if n.op_type == "QuantizeLinear" and n.input[0] != "input")
    assert producers[q_out.input[0]].op_type == "Cast" and producers[q_out.input[0]].input[0] == conv.output[0]
    types = tensor_types(mixed)
    assert types["input"] == types["output"] == FLOAT32
    # one output step (0.1) at most: an fp16-rounded conv sum may fall on the other side of a rounding boundary
    assert np.abs(graphs.run(mixed, sample) - graphs.run(conv_model, sample)).max() <= 0.1 + 1e-6


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


def test_an_already_converted_model_is_refused(conv_model):
    mixed, _ = mixed_precision(conv_model, graphs.sample_input())
    with pytest.raises(BridgeError, match="already carries float16"):
        mixed_precision(mixed, graphs.sample_input())


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


def test_a_quantized_model_keeps_its_qdq_and_logits_within_two_output_steps(modules2d):
    model, sample = modules2d
    mixed, report = mixed_precision(model, sample)
    assert quantization_constants(mixed) == quantization_constants(model)
    assert errors(lint_model(mixed)) == []
    types = op_output_types(mixed)
    gemms = sorted(n.name for n in model.graph.node if n.op_type == "Gemm")  # int8 Gemms stay fp32 for TensorRT 8.6
    assert sorted(report["kept_fp32"]) == gemms == ["/fc1/Gemm", "/fc2/Gemm"]
    assert all(reason.startswith("TensorRT 8.6 has no int8 Gemm") for reason in report["kept_fp32"].values())
    compute_ops = sum(op_output_types(model).values()) - len(gemms)
    assert report["fp16_nodes"] == compute_ops
    assert sum(count for (_, t), count in types.items() if t == FLOAT16) == compute_ops
    # every added Cast changes the type (no fp16 -> fp16 round trips); none sits between a Q and its DQ
    tensor_type = tensor_types(mixed)
    casts = [n for n in mixed.graph.node if n.name.startswith(CAST_PREFIX)]
    assert casts and all(tensor_type[n.input[0]] != tensor_type[n.output[0]] for n in casts)
    producers = producer_ops(mixed)
    assert all(producers[n.input[0]].op_type == "QuantizeLinear" for n in mixed.graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in producers)
    ref = graphs.run(model, sample)
    step = np.abs(ref).max() / 127  # the last quantizer's step, give or take: the logits span about its range
    assert np.abs(graphs.run(mixed, sample) - ref).max() <= 2 * step


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


def test_lint_sees_weights_through_the_fp16_cast(modules2d):
    """The linter's weight rules (kernel_shape, per-channel axis) apply to DQ -> Cast(fp16) -> Conv too, and the
    Casts themselves are not float ops behind a DQ."""
    model, _ = mixed_precision(*modules2d)
    assert {v.rule for v in lint_model(model)} == {v.rule for v in lint_model(modules2d[0])}
    graph = gs.import_onnx(model)
    conv = next(n for n in graph.nodes if n.op == "Conv")
    del conv.attrs["kernel_shape"]
    assert [v.rule for v in errors(lint_model(export_like(graph, model)))] == ["QDQ008"]
