"""Each pass: build the bad pattern, apply the pass, check the fix (graph and numbers), apply it again."""
import numpy as np
import onnx_graphsurgeon as gs
import pytest
from onnx import numpy_helper

from qdq_bridge.errors import BridgeError
from qdq_bridge.graph import passes

from helpers.graphs import (RNG, conv_graph, const, inception_like, model, pooled_head, q_dq, run, sample_input,
                            weight_dq)


def apply_twice(graph_pass, graph: gs.Graph):
    """Returns (model before, after one application); asserts a second application changes nothing."""
    before = model(graph.copy())
    once = model(graph_pass(gs.import_onnx(before)))
    twice = model(graph_pass(gs.import_onnx(once)))
    assert once.graph == twice.graph, f"{graph_pass.__name__} is not idempotent"
    return before, once


def ops(m) -> list[str]:
    return [n.op_type for n in m.graph.node]


def folded(graph: gs.Graph) -> gs.Graph:
    return passes.fold_constants(graph)


def test_registry_lists_every_pass_once_in_order():
    assert passes.PASS_NAMES[0] == "fold_constants"
    assert len(set(passes.PASS_NAMES)) == len(passes.PASS_NAMES)
    assert all(p.summary for p in passes.PASSES)


def test_fold_constants_folds_constant_chains_but_keeps_weight_dequantize():
    graph = conv_graph()
    x = gs.Variable("extra_shape", np.int64)
    # a ConstantOfShape -> Cast chain like the exporter's bias zero-points
    zeros = gs.Variable("zeros", np.float32)
    graph.nodes.append(gs.Node("ConstantOfShape", "cos", {"value": const("v", np.array([0.0], np.float32))},
                               [const("shape", np.array([6], np.int64))], [zeros]))
    casted = gs.Variable("zeros_i32", np.int32)
    graph.nodes.append(gs.Node("Cast", "cast_zp", {"to": 6}, [zeros], [casted]))
    bias_dq = next(n for n in graph.nodes if n.name == "/conv/DequantizeLinear_b")
    bias_dq.inputs[2] = casted
    del x
    before, after = apply_twice(passes.fold_constants, graph)
    assert "ConstantOfShape" in ops(before) and "ConstantOfShape" not in ops(after)
    assert ops(after).count("DequantizeLinear") == ops(before).count("DequantizeLinear")
    int8_inits = [i for i in after.graph.initializer if i.data_type == 3]  # int8 weights stay int8
    assert int8_inits and int8_inits[0].dims == [6, 4, 3, 3]
    x_in = sample_input(before)
    np.testing.assert_array_equal(run(before, x_in), run(after, x_in))


def test_remove_cast_between_q_dq():
    graph = folded(conv_graph(cast=True))
    before, after = apply_twice(passes.remove_cast_between_q_dq, graph)
    assert ops(before).count("Cast") == 2 and "Cast" not in ops(after)
    x = sample_input(before)
    np.testing.assert_array_equal(run(before, x), run(after, x))


def test_remove_cast_keeps_a_cast_that_changes_type():
    graph = conv_graph(cast=False)
    nodes = list(graph.nodes)
    q = next(n for n in nodes if n.name == "/in/QuantizeLinear")
    widened = gs.Variable("widened", np.int32)
    graph.nodes.append(gs.Node("Cast", "widen", {"to": 6}, [q.outputs[0]], [widened]))
    graph.outputs.append(widened)
    _, after = apply_twice(passes.remove_cast_between_q_dq, graph)
    assert "Cast" in ops(after)


def test_fold_bias_dequantize_makes_float_bias():
    graph = folded(conv_graph(int32_bias=True))
    before, after = apply_twice(passes.fold_bias_dequantize, graph)
    assert ops(before).count("DequantizeLinear") == 4 and ops(after).count("DequantizeLinear") == 3
    bias = next(i for i in after.graph.initializer if i.name.endswith("_float"))
    assert bias.data_type == 1 and bias.dims == [6]
    x = sample_input(before)
    np.testing.assert_allclose(run(before, x), run(after, x), atol=1e-6)


def test_int8_zero_point_is_exact_for_zero_point_128():
    graph = folded(conv_graph(cast=False))
    before, after = apply_twice(passes.int8_zero_point, graph)
    inits = {i.name: numpy_helper.to_array(i) for i in after.graph.initializer}
    zero_points = [inits[n.input[2]] for n in after.graph.node if n.op_type in passes.QDQ_OPS]
    eight_bit = [zp for zp in zero_points if zp.dtype != np.int32]  # the int32 one is the bias's
    assert len(eight_bit) == 5 and all(zp.dtype == np.int8 and not zp.any() for zp in eight_bit)
    x = sample_input(before)
    np.testing.assert_array_equal(run(before, x), run(after, x))


@pytest.mark.parametrize("zp", [57, 0])
def test_int8_zero_point_maps_reduce_range_activations_exactly_keeping_pytorchs_clamp(zp):
    """PyTorch's x86/fbgemm activations: uint8 around z <= 127. int8 at the same scale holds -z..127 steps; the
    Max keeps PyTorch's floor at -z steps. Equal to the uint8 graph wherever a value stays within 127 steps."""
    before, after = apply_twice(passes.int8_zero_point, folded(conv_graph(cast=False, zp=zp)))
    floors = [n for n in after.graph.node if n.op_type == "Max"]
    assert [f.output[0] for f in floors] == [n.input[0] for n in after.graph.node
                                            if n.op_type == "QuantizeLinear" and n.input[0].endswith("floor_output")]
    assert len(floors) == 2 and "Clip" not in ops(after)  # the input's and the conv output's quantizers
    x = sample_input(before) * 0.3
    assert run(before, x).max() < 127 * 0.1  # within int8's reach at the output's scale
    np.testing.assert_array_equal(run(before, x), run(after, x))
    big = x * 100  # the input quantizer's uint8 goes on to 255 - z steps, int8 stops at 127
    assert not np.array_equal(run(before, big), run(after, big))


@pytest.mark.parametrize("zp,dtype,message", [
    (200, np.uint8, r"activation 'input' \(module in\) is quantized affinely over the full uint8 range "
                    r"\(zero_point=200.*--requantize-activations.*--qconfig tensorrt"),
    (3, np.int8, r"node '/in/QuantizeLinear' \(module in\) quantizes affinely .*per_tensor_symmetric")])
def test_int8_zero_point_refuses_what_int8_cannot_hold(zp, dtype, message):
    with pytest.raises(BridgeError, match=message):
        passes.int8_zero_point(folded(conv_graph(cast=False, zp=zp, zp_dtype=dtype)))


def test_drop_activation_clamps_leaves_the_q_after_its_layer():
    mapped = passes.int8_zero_point(folded(conv_graph(cast=False, zp=57)))
    before, after = apply_twice(passes.drop_activation_clamps, mapped)
    assert ops(before).count("Max") == 2 and "Max" not in ops(after)
    low = -np.abs(sample_input(before)) * 3  # below -57 steps of the input's 0.05: PyTorch's floor, not int8's
    assert not np.array_equal(run(before, low), run(after, low))


@pytest.mark.parametrize("bound", [0.37, -0.05 * 129])  # off the Q's 0.05 grid; below int8's -128 steps
def test_drop_activation_clamps_keeps_a_models_own_max(bound):
    x = gs.Variable("x", np.float32, (1, 4, 5, 5))
    floored = gs.Variable("floored", np.float32, (1, 4, 5, 5))
    nodes = [gs.Node("Max", "own_max", inputs=[x, const("bound", np.array(bound, np.float32))], outputs=[floored])]
    y = q_dq(nodes, floored, "out", zp=0, zp_dtype=np.int8)
    before, after = apply_twice(passes.drop_activation_clamps, gs.Graph(nodes=nodes, inputs=[x], outputs=[y]))
    assert ops(after) == ops(before) == ["Max", "QuantizeLinear", "DequantizeLinear"]


def test_fixed_range_outputs_stay_on_pytorchs_grid_in_float_ops():
    x = gs.Variable("input", np.float32, (1, 9))
    nodes: list = []
    s = gs.Variable("sig", np.float32)
    nodes.append(gs.Node("HardSigmoid", "hs", {"alpha": 1 / 6, "beta": 0.5}, [x], [s]))
    out = q_dq(nodes, s, "hs_out", scale=1 / 256, zp=0)
    y = gs.Variable("output", np.float32, (1, 9))
    nodes.append(gs.Node("Mul", "mul", inputs=[out, x], outputs=[y]))
    before, after = apply_twice(passes.fixed_range_outputs_on_pytorch_grid, gs.Graph(nodes, [x], [y], opset=13))
    assert "QuantizeLinear" in ops(before) and "QuantizeLinear" not in ops(after) and "Round" in ops(after)
    # every value of the grid and the half-way points between (rounded to even), and 1.0, which uint8 saturates
    x_in = (np.array([-4, -3, 0, 3 / 256 * 6 - 3, 6.5 / 256 * 6 - 3, 7.5 / 256 * 6 - 3, 1, 2.99, 4]) - 0)[None]
    np.testing.assert_array_equal(run(before, x_in.astype(np.float32)), run(after, x_in.astype(np.float32)))


def test_quantize_weight_constants_stores_int8_weights():
    graph = conv_graph(cast=False, zp=0, zp_dtype=np.int8)
    w_dq = next(n for n in graph.nodes if n.name == "/conv/DequantizeLinear_w")
    w_float = (w_dq.inputs[0].values.astype(np.float32) * w_dq.inputs[1].values[:, None, None, None])
    q_out = gs.Variable("wq_runtime", np.int8)
    graph.nodes.append(gs.Node("QuantizeLinear", "/conv/QuantizeLinear_w", {"axis": 0},
                               [const("w_float", w_float), w_dq.inputs[1], w_dq.inputs[2]], [q_out]))
    w_dq.inputs[0] = q_out
    before, after = apply_twice(passes.quantize_weight_constants, graph)
    assert ops(before).count("QuantizeLinear") == 3 and ops(after).count("QuantizeLinear") == 2
    x = sample_input(before)
    np.testing.assert_array_equal(run(before, x), run(after, x))


def test_fold_weight_transpose_remaps_axis():
    x = gs.Variable("input", np.float32, (2, 8))
    nodes: list = []
    a = q_dq(nodes, x, "in", zp=0, zp_dtype=np.int8)
    scales = np.linspace(0.01, 0.02, 5, dtype=np.float32)
    w_node, w = weight_dq("fc", np.random.default_rng(1).integers(-127, 128, (5, 8)).astype(np.int8), scales, axis=-2)
    nodes.append(w_node)
    wt = gs.Variable("wt", np.float32)
    nodes.append(gs.Node("Transpose", "t", {"perm": [1, 0]}, [w], [wt]))
    y = gs.Variable("output", np.float32, (2, 5))
    nodes.append(gs.Node("MatMul", "/fc/MatMul", inputs=[a, wt], outputs=[y]))
    before, after = apply_twice(passes.fold_weight_transpose, gs.Graph(nodes, [x], [y], opset=13))
    assert "Transpose" in ops(before) and "Transpose" not in ops(after)
    dq = next(n for n in after.graph.node if n.op_type == "DequantizeLinear" and n.output[0] in after.graph.node[-1].input)
    assert [a.i for a in dq.attribute if a.name == "axis"] == [1]
    x_in = np.random.default_rng(2).standard_normal((2, 8)).astype(np.float32)
    np.testing.assert_array_equal(run(before, x_in), run(after, x_in))


def test_drop_redundant_dq_q():
    x = gs.Variable("input", np.float32, (1, 4))
    nodes: list = []
    a = q_dq(nodes, x, "first", scale=0.1, zp=0, zp_dtype=np.int8)
    b = q_dq(nodes, a, "second", scale=0.1, zp=0, zp_dtype=np.int8)
    c = q_dq(nodes, b, "third", scale=0.2, zp=0, zp_dtype=np.int8)  # different scale: must stay
    y = gs.Variable("output", np.float32, (1, 4))
    nodes.append(gs.Node("Relu", "relu", inputs=[c], outputs=[y]))
    before, after = apply_twice(passes.drop_redundant_dq_q, gs.Graph(nodes, [x], [y], opset=13))
    assert ops(before).count("QuantizeLinear") == 3 and ops(after).count("QuantizeLinear") == 2
    x_in = np.linspace(-20, 20, 4, dtype=np.float32)[None]
    np.testing.assert_array_equal(run(before, x_in), run(after, x_in))


def test_conv_kernel_shape_is_added_from_weights():
    before, after = apply_twice(passes.conv_kernel_shape, folded(conv_graph(kernel_shape=False)))
    conv = next(n for n in after.graph.node if n.op_type == "Conv")
    assert [list(a.ints) for a in conv.attribute if a.name == "kernel_shape"] == [[3, 3]]


def deconv_graph() -> gs.Graph:
    """A UNet's upsampling: Q/DQ input -> ConvTranspose (2x2, stride 2, per-tensor int8 weights, float bias) ->
    Q/DQ, as the passes before leave it."""
    x = gs.Variable("input", np.float32, (1, 4, 5, 5))
    nodes: list = []
    a = q_dq(nodes, x, "in", 0.05, 0, np.int8)
    w_node, w = weight_dq("up", RNG.integers(-127, 128, (4, 3, 2, 2)).astype(np.int8), np.array(0.02), 0)
    nodes.append(w_node)
    y = gs.Variable("up_out", np.float32)
    nodes.append(gs.Node("ConvTranspose", "/up/ConvTranspose", {"kernel_shape": [2, 2], "strides": [2, 2]},
                         [a, w, const("up_bias", RNG.standard_normal(3).astype(np.float32))], [y]))
    out = q_dq(nodes, y, "out", 0.1, 0, np.int8)
    out.shape, out.name = (1, 3, 10, 10), "output"
    return gs.Graph(nodes, [x], [out], opset=13)


def test_deconv_bias_moves_into_an_add_after_it():
    before, after = apply_twice(passes.deconv_bias_as_add, deconv_graph())
    deconv = next(n for n in after.graph.node if n.op_type == "ConvTranspose")
    (add,) = [n for n in after.graph.node if n.op_type == "Add"]
    assert len(deconv.input) == 2 and add.input[0] == deconv.output[0]
    bias = next(i for i in after.graph.initializer if i.name == add.input[1])
    assert list(bias.dims) == [1, 3, 1, 1]
    x = sample_input(before)
    np.testing.assert_allclose(run(before, x), run(after, x), atol=1e-6)


def test_run_passes_makes_exporter_style_graph_lint_clean_and_exact():
    from qdq_bridge.graph.lint import lint_model
    raw = model(conv_graph())
    assert {v.rule for v in lint_model(raw)} >= {"QDQ001", "QDQ002", "QDQ006"}
    fixed, applied = passes.run_passes(raw)
    assert applied == [p.name for p in passes.PASSES if not p.fast_only]
    assert lint_model(fixed) == []
    x = sample_input(raw)
    np.testing.assert_allclose(run(raw, x), run(fixed, x), atol=1e-6)


def test_fast_placement_runs_every_pass_and_stays_lint_clean():
    from qdq_bridge.graph.lint import lint_model
    raw = model(conv_graph())
    fixed, applied = passes.run_passes(raw, placement="fast")
    assert applied == list(passes.PASS_NAMES) and lint_model(fixed) == []
    assert fixed.graph.output[0].name == "output" and fixed.graph.node[-1].op_type == "Conv"  # float output
    x = sample_input(raw)
    assert_rounds_to(run(fixed, x), run(raw, x), step=0.1)


def assert_rounds_to(unrounded: np.ndarray, rounded: np.ndarray, step: float) -> None:
    """`rounded` is `unrounded` quantized to int8 at `step` (what dropping an output's Q/DQ leaves out)."""
    assert not np.array_equal(unrounded, rounded)
    np.testing.assert_allclose(rounded, np.clip(np.rint(unrounded / step), -128, 127) * step, atol=1e-6)


def test_run_passes_rejects_unknown_placement():
    with pytest.raises(BridgeError, match="unknown placement 'quick': choose from faithful, fast"):
        passes.run_passes(model(conv_graph()), placement="quick")


# --- fast placement ---------------------------------------------------------------------------------------------

def int8_q_dq(nodes: list, x: gs.Tensor, name: str, scale: float) -> gs.Variable:
    return q_dq(nodes, x, name, scale, zp=0, zp_dtype=np.int8)


def weighted(nodes: list, x: gs.Tensor, name: str, op: str, cin: int, cout: int) -> gs.Variable:
    """A Conv (3x3, same padding) or Gemm (transB) with int8 per-channel weights behind a DQ."""
    shape = (cout, cin, 3, 3) if op == "Conv" else (cout, cin)
    w_node, w = weight_dq(name, RNG_W.integers(-127, 128, shape).astype(np.int8),
                          RNG_W.uniform(0.002, 0.004, cout), axis=0)
    nodes.append(w_node)
    y = gs.Variable(f"{name}_out", np.float32)
    attrs = {"pads": [1, 1, 1, 1], "kernel_shape": [3, 3]} if op == "Conv" else {"transB": 1}
    nodes.append(gs.Node(op, f"/{name}/{op}", attrs, [x, w, const(f"{name}_b", np.zeros(cout, np.float32))], [y]))
    return y


RNG_W = np.random.default_rng(7)
X_SHAPE = (2, 4, 6, 6)


def residual_block(identity_from: str = "input") -> gs.Graph:
    """x -> Q/DQ -> Conv -> Q/DQ -> Add(., DQ'd identity) -> Relu -> Q/DQ: eager mode's residual block."""
    x = gs.Variable("input", np.float32, X_SHAPE)
    nodes: list = []
    a = int8_q_dq(nodes, x, "in", 0.05)
    conv = int8_q_dq(nodes, weighted(nodes, a, "conv", "Conv", 4, 4), "conv_q", 0.1)
    identity = a if identity_from == "input" else int8_q_dq(nodes, x, "other", 0.05)
    summed = gs.Variable("sum", np.float32)
    nodes.append(gs.Node("Add", "/block/Add", inputs=[conv, identity], outputs=[summed]))
    relu = gs.Variable("relu", np.float32)
    nodes.append(gs.Node("Relu", "/block/Relu", inputs=[summed], outputs=[relu]))
    out = int8_q_dq(nodes, relu, "out", 0.1)
    out.name, out.shape = "output", X_SHAPE
    return gs.Graph(nodes, [x], [out], opset=13)


def x_sample() -> np.ndarray:
    return np.random.default_rng(3).standard_normal(X_SHAPE).astype(np.float32) * 3


def test_fuse_residual_add_feeds_the_add_the_float_conv_output():
    before, after = apply_twice(passes.fuse_residual_add, residual_block())
    add = next(n for n in after.graph.node if n.op_type == "Add")
    producers = {o: n.op_type for n in after.graph.node for o in n.output}
    assert [producers[i] for i in add.input] == ["Conv", "DequantizeLinear"]
    assert ops(before).count("QuantizeLinear") == 3 and ops(after).count("QuantizeLinear") == 2
    diff = np.abs(run(before, x_sample()) - run(after, x_sample()))
    # the Add now sees the conv before rounding (half a 0.1 step): the block output moves by one step at most
    assert 0 < diff.max() <= 0.1 + 1e-6


def test_fuse_residual_add_needs_a_quantized_other_input():
    graph = residual_block()
    add = next(n for n in graph.nodes if n.op == "Add")
    add.inputs[1] = graph.inputs[0]  # a float residual: TensorRT could not fuse it as int8, so nothing changes
    before, after = apply_twice(passes.fuse_residual_add, graph)
    assert before.graph == after.graph


def data_movement_chain(second_scale: float = 0.1, consumer: str = "Gemm") -> gs.Graph:
    """x -> Q/DQ -> MaxPool -> Q/DQ -> Concat(with itself) -> Q/DQ(second_scale) -> Flatten -> Q/DQ -> consumer."""
    x = gs.Variable("input", np.float32, X_SHAPE)
    nodes: list = []
    a = int8_q_dq(nodes, x, "in", 0.1)
    pooled = gs.Variable("pooled", np.float32)
    nodes.append(gs.Node("MaxPool", "/pool/MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2]}, [a], [pooled]))
    p = int8_q_dq(nodes, pooled, "pool_q", 0.1)
    cat = gs.Variable("cat", np.float32)
    nodes.append(gs.Node("Concat", "/cat/Concat", {"axis": 1}, [p, p], [cat]))
    c = int8_q_dq(nodes, cat, "cat_q", second_scale)
    flat = gs.Variable("flat", np.float32)
    nodes.append(gs.Node("Flatten", "/flatten/Flatten", {"axis": 1}, [c], [flat]))
    f = int8_q_dq(nodes, flat, "flat_q", second_scale)
    if consumer == "Gemm":
        y = weighted(nodes, f, "fc", "Gemm", 8 * 3 * 3, 5)
    else:
        y = gs.Variable("y", np.float32)
        nodes.append(gs.Node("Add", "/residual/Add", inputs=[f, f], outputs=[y]))
    y.name, y.shape = "output", (2, 5) if consumer == "Gemm" else (2, 72)
    return gs.Graph(nodes, [x], [y], opset=13)


def test_skip_grid_preserving_requantize_is_exact():
    before, after = apply_twice(passes.skip_grid_preserving_requantize, data_movement_chain())
    assert ops(before).count("QuantizeLinear") == 4 and ops(after).count("QuantizeLinear") == 1
    producers = {o: n.op_type for n in after.graph.node for o in n.output}
    assert [producers[n.input[0]] for n in after.graph.node if n.op_type in ("Concat", "Flatten", "Gemm")] == \
        ["MaxPool", "Concat", "Flatten"]
    np.testing.assert_array_equal(run(before, x_sample()), run(after, x_sample()))


def test_skip_grid_preserving_requantize_keeps_a_scale_change_and_a_residual_input():
    # the Concat output is requantized at 0.3 (not exact to drop); the last Q/DQ then feeds an Add, whose
    # input TensorRT needs DQ'd to fuse: only the MaxPool's requantization goes
    before, after = apply_twice(passes.skip_grid_preserving_requantize, data_movement_chain(0.3, consumer="Add"))
    assert ops(before).count("QuantizeLinear") == 4 and ops(after).count("QuantizeLinear") == 3
    np.testing.assert_array_equal(run(before, x_sample()), run(after, x_sample()))


def test_float_network_outputs_keeps_the_output_name_and_drops_its_rounding():
    graph = residual_block()
    before, after = apply_twice(passes.float_network_outputs, graph)
    assert [o.name for o in after.graph.output] == ["output"] and after.graph.node[-1].op_type == "Relu"
    assert_rounds_to(run(after, x_sample()), run(before, x_sample()), step=0.1)


def test_run_passes_rejects_unknown_pass_names():
    with pytest.raises(BridgeError, match="unknown pass nope: choose from fold_constants"):
        passes.run_passes(model(conv_graph()), disabled=["nope"])


def dilations(m) -> dict[str, list[int]]:
    return {n.name: [list(a.ints) for a in n.attribute if a.name == "dilations"] for n in m.graph.node
            if n.op_type == "Conv"}


@pytest.mark.parametrize("through_conv, kernels, second", [
    (False, ((1, 1), (1, 1), (3, 3)), [2, 2]),
    (True, ((1, 1), (1, 1), (3, 3)), [2, 2]),
    (False, ((1, 3), (3, 1), (3, 3)), [1, 2]),  # along the 3x1 kernel's size-1 axis only
])
def test_separate_sibling_convs_gives_concat_siblings_distinct_dilations_exactly(through_conv, kernels, second):
    before, after = apply_twice(passes.separate_sibling_convs, inception_like(through_conv=through_conv,
                                                                              kernels=kernels))
    assert {k: v for k, v in dilations(after).items() if "conv" in k} == {
        "/conv0/Conv": [], "/conv1/Conv": [second], "/conv2/Conv": []}
    x = sample_input()
    np.testing.assert_array_equal(run(before, x), run(after, x))


def test_separate_sibling_convs_leaves_siblings_that_feed_no_concat():
    before, after = apply_twice(passes.separate_sibling_convs, inception_like(join="Add"))
    assert before.graph == after.graph


@pytest.mark.parametrize("keepdims", [1, 0])
def test_spatial_mean_as_global_average_pool_reads_opset_18_axes_and_keeps_the_mean(keepdims):
    graph = pooled_head([-1, -2], keepdims=keepdims)
    before = model(graph.copy(), opset=18)
    once = model(passes.spatial_mean_as_global_average_pool(gs.import_onnx(before)), opset=18)
    assert model(passes.spatial_mean_as_global_average_pool(gs.import_onnx(once)), opset=18).graph == once.graph
    ops = [n.op_type for n in once.graph.node]
    assert "ReduceMean" not in ops and ops[ops.index("GlobalAveragePool") + 1] == (
        "QuantizeLinear" if keepdims else "Flatten")
    x = sample_input()
    np.testing.assert_allclose(run(once, x), run(before, x), atol=1e-6)


def test_spatial_mean_as_global_average_pool_leaves_other_means():
    graph = pooled_head([1])  # a mean over channels is no pooling
    before = model(graph.copy(), opset=18)
    after = model(passes.spatial_mean_as_global_average_pool(gs.import_onnx(before)), opset=18)
    assert before.graph == after.graph


@pytest.mark.parametrize("zp", [128, 3])
@pytest.mark.parametrize("pool", ["global", "window"])
def test_average_pools_round_the_stored_integers_mean_half_to_even_as_pytorch(pool, zp):
    """A 2 x 2 average (a tie in 1 of 4 outputs) and a 4 x 4 global one, with an even and an odd zero-point: after
    the pass, ONNX Runtime gives PyTorch's quantized pool (x86, on channels-last input as its convolutions give it)
    exactly; the float pool before it did not."""
    torch = pytest.importorskip("torch")
    scale = 0.05
    x = gs.Variable("input", np.float32, (64, 8, 4, 4))
    nodes: list = []
    dq = q_dq(nodes, x, "in", scale=scale, zp=zp)
    pooled = gs.Variable("pooled", np.float32)
    nodes.append(gs.Node("GlobalAveragePool" if pool == "global" else "AveragePool", "/pool/Pool",
                         {} if pool == "global" else {"kernel_shape": [2, 2], "strides": [2, 2]}, [dq], [pooled]))
    y = q_dq(nodes, pooled, "out", scale=scale, zp=zp)
    graph = gs.Graph(nodes, [x], [y], opset=13)
    graph.outputs[0].shape = None
    before, after = apply_twice(passes.average_pools_on_pytorch_grid, graph)
    assert ops(after).count("Round") == 2 and ops(after).count("QuantizeLinear") == 2
    values = np.random.default_rng(0).integers(0, 256, (64, 8, 4, 4))
    inputs = ((values - zp) * scale).astype(np.float32)
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = "x86" if "x86" in torch.backends.quantized.supported_engines else "fbgemm"
    try:
        quantized = torch.quantize_per_tensor(torch.from_numpy(inputs), scale, zp, torch.quint8).contiguous(
            memory_format=torch.channels_last)
        pooled = (torch.nn.functional.adaptive_avg_pool2d(quantized, 1) if pool == "global"
                  else torch.nn.functional.avg_pool2d(quantized, 2))
    finally:
        torch.backends.quantized.engine = previous
    expected = pooled.dequantize().numpy()
    np.testing.assert_array_equal(run(after, inputs), expected)
    assert (run(before, inputs) != expected).any()  # the float pool misses PyTorch's ties
