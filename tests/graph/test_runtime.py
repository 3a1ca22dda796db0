"""ONNX Runtime as parity's candidate computes what the Q/DQ graph defines, with its graph optimizations on."""
import numpy as np
import onnx_graphsurgeon as gs

from helpers.graphs import model, q_dq, run


def test_a_requantization_rounds_twice_as_the_graph_says():
    """Q -> DQ -> Q -> DQ at two scales: ONNX Runtime's DoubleQDQPairsRemover would round once, at another scale."""
    x = gs.Variable("input", np.float32, (1, 64))
    nodes: list = []
    out = q_dq(nodes, q_dq(nodes, x, "first", 0.1, 0, np.int8), "second", 0.13, 0, np.int8)
    values = np.linspace(-3, 3, 64, dtype=np.float32)[None]
    once = np.clip(np.round(values / np.float32(0.1)), -128, 127) * np.float32(0.1)
    twice = np.clip(np.round(once / np.float32(0.13)), -128, 127) * np.float32(0.13)
    result = run(model(gs.Graph(nodes, [x], [out], opset=13)), values)
    np.testing.assert_array_equal(result, twice.astype(np.float32))
