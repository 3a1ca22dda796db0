"""The linter names each violating node, by rule, and `lint` exits non-zero on errors."""
import json
import subprocess
import sys

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from qdq_bridge.graph import passes
from qdq_bridge.graph.lint import error_violations, lint_model

from helpers import run_cli
from helpers.graphs import conv_graph, model, pooled_head, q_dq


def rules(m) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for v in lint_model(m):
        found.setdefault(v.rule, set()).add(v.node)
    return found


def clean_conv(**kwargs) -> gs.Graph:
    fixed, _ = passes.run_passes(model(conv_graph(**kwargs)))
    return gs.import_onnx(fixed)


def test_exporter_style_graph_violations_are_named_per_node():
    found = rules(model(conv_graph()))
    assert "/in/QuantizeLinear" in found["QDQ002"] and "/out/DequantizeLinear" in found["QDQ001"]
    assert found["QDQ006"] == {"/in/QuantizeLinear", "/out/QuantizeLinear"}
    assert "/conv/DequantizeLinear_b" in found["QDQ002"]  # int32 bias DQ


def test_wrong_per_channel_axis_on_conv_weights():
    graph = clean_conv()
    w_dq = next(n for n in graph.nodes if n.name == "/conv/DequantizeLinear_w")
    w_dq.attrs["axis"] = 1
    assert rules(model(graph))["QDQ005"] == {"/conv/Conv"}


def test_missing_kernel_shape_and_nonpositive_scale():
    graph = clean_conv(kernel_shape=False)
    conv = next(n for n in graph.nodes if n.op == "Conv")
    del conv.attrs["kernel_shape"]
    q = next(n for n in graph.nodes if n.name == "/out/QuantizeLinear")
    q.inputs[1] = gs.Constant("neg_scale", np.array(-0.1, np.float32))
    found = rules(model(graph))
    assert found["QDQ008"] == {"/conv/Conv"} and found["QDQ003"] == {"/out/QuantizeLinear"}


def test_per_channel_activation_and_unpaired_q():
    x = gs.Variable("input", np.float32, (1, 3))
    q_out = gs.Variable("q", np.int8, (1, 3))
    node = gs.Node("QuantizeLinear", "lonely_q", {"axis": 1}, [x, gs.Constant("s", np.full(3, 0.1, np.float32)),
                                                               gs.Constant("z", np.zeros(3, np.int8))], [q_out])
    found = rules(model(gs.Graph([node], [x], [q_out], opset=13)))
    assert found["QDQ004"] == {"lonely_q"} and found["QDQ007"] == {"lonely_q"}


def test_unquantized_model_and_float_only_op_warning():
    x = gs.Variable("input", np.float32, (1, 3))
    y = gs.Variable("output", np.float32, (1, 3))
    plain = model(gs.Graph([gs.Node("Softmax", "sm", inputs=[x], outputs=[y])], [x], [y], opset=13))
    assert [v.rule for v in lint_model(plain)] == ["QDQ000"]
    x = gs.Variable("input", np.float32, (1, 3))
    y = gs.Variable("output", np.float32, (1, 3))
    nodes: list = []
    a = q_dq(nodes, x, "in", zp=0, zp_dtype=np.int8)
    nodes.append(gs.Node("Softmax", "sm", inputs=[a], outputs=[y]))
    found = lint_model(model(gs.Graph(nodes, [x], [y], opset=13)))
    assert [(v.rule, v.severity, v.node) for v in found] == [("QDQ011", "warning", "sm")]
    assert error_violations(found) == []


@pytest.mark.slow
def test_lint_cli_exit_codes_and_json(tmp_path):
    bad, good = tmp_path / "bad.onnx", tmp_path / "good.onnx"
    onnx.save(model(conv_graph()), bad)
    onnx.save(passes.run_passes(model(conv_graph()))[0], good)
    result = run_cli("lint", str(bad))
    assert result.returncode == 1
    assert "ERROR   QDQ006 node '/in/QuantizeLinear': Cast between QuantizeLinear and DequantizeLinear" in result.stdout
    assert run_cli("lint", str(good)).returncode == 0
    as_json = json.loads(run_cli("lint", "--json", str(bad)).stdout)
    assert {"rule", "severity", "node", "message"} == set(as_json[0])
    missing = run_cli("lint", str(tmp_path / "nope.onnx"))
    assert missing.returncode == 2 and "error: ONNX file" in missing.stderr and "not found" in missing.stderr


def test_lint_passes_and_option_checks_start_without_torch(tmp_path):
    """The ONNX side of the command line, and the checks of a conversion's options, import neither torch, nor ONNX
    Runtime, nor scipy: a mistyped option is refused at once."""
    onnx.save(passes.run_passes(model(conv_graph()))[0], tmp_path / "good.onnx")
    code = ("import sys; from qdq_bridge.cli import main; "
            f"codes = main(['passes']), main(['lint', {str(tmp_path / 'good.onnx')!r}]), "
            "main(['convert', 'm.pt', '--batch-size', '0']); "
            "print(codes, [m for m in ('torch', 'onnxruntime', 'scipy') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[-1] == "(0, 0, 2) []"


@pytest.mark.parametrize("op, flagged", [("ReduceMean", True), ("ReduceMax", True), ("ReduceSum", False)])
def test_reduce_axes_given_as_an_input_are_an_error_for_tensorrt(op, flagged):
    """TensorRT reads a Reduce op's axes from the attribute only (ReduceSum's input since opset 13)."""
    found = [v for v in lint_model(model(pooled_head([-1, -2], op), opset=18)) if v.rule == "QDQ012"]
    assert [(v.severity, v.node) for v in found] == ([("error", f"/{op}")] if flagged else [])


def test_the_global_average_pool_pass_clears_the_reduce_axes_error():
    fixed = passes.spatial_mean_as_global_average_pool(gs.import_onnx(model(pooled_head([-1, -2]), opset=18)))
    assert not [v for v in lint_model(model(fixed, opset=18)) if v.rule == "QDQ012"]


def test_a_graph_with_a_cycle_is_an_error_not_a_clean_lint():
    """Add(x, dq) -> Q -> DQ -> dq: onnx.checker and ONNX Runtime reject it; the linter once printed 0 errors."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Add", ["x", "dq"], ["a"]), helper.make_node("QuantizeLinear", ["a", "s"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s"], ["dq"])]
    graph = helper.make_graph(nodes, "cycle", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("dq", TensorProto.FLOAT, [1])],
                              [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])])
    (violation,) = lint_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    assert (violation.rule, violation.severity) == ("QDQ013", "error")
    assert violation.message == "reads 'dq' before it is produced (a cycle, or nodes out of topological order)"


def test_malformed_qdq_graphs_are_errors_not_tracebacks(tmp_path):
    """A QuantizeLinear without its scale, and a scale claiming 500,000,000 elements with no data: one error each
    through the CLI, exit 1 (round two: both were tracebacks)."""
    from onnx import TensorProto, helper

    def saved(name, nodes, scale):
        graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [scale])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / f"{name}.onnx")
        return str(tmp_path / f"{name}.onnx")

    empty = TensorProto(name="s", data_type=TensorProto.FLOAT, dims=[500_000_000])
    cases = {saved("one_input", [helper.make_node("QuantizeLinear", ["x"], ["q"]),
                                 helper.make_node("DequantizeLinear", ["q", "s"], ["y"])],
                   helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])):
             "ERROR   QDQ013 node 'QuantizeLinear': has 1 input(s); QuantizeLinear takes x, a scale and a zero-point",
             saved("no_data", [helper.make_node("QuantizeLinear", ["x", "s"], ["q"]),
                               helper.make_node("DequantizeLinear", ["q", "s"], ["y"])], empty):
             "ERROR   QDQ013 node 's': initializer claims 500,000,000 elements and holds no data"}
    for path, line in cases.items():
        result = run_cli("lint", path)
        assert result.returncode == 1 and result.stdout.splitlines() == [line, "1 errors, 0 warnings"], result.stderr
