"""Parity arithmetic: agreement, ties, accuracy."""
import numpy as np
from onnx import TensorProto, helper

from qdq_bridge.data import Dataset
from qdq_bridge.verify import compare, quantized_tensors


def test_agreement_accepts_any_of_the_references_tied_top_logits():
    reference = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0], [3.0, 0.0, 0.0]], np.float32)
    candidate = np.array([[0.0, 1.1, 0.5], [1.0, 0.0, 0.0], [2.9, 0.1, 0.0]], np.float32)
    data = Dataset("d", np.zeros((3, 1)), np.array([1, 1, 0]))
    result = compare(reference, candidate, data, "ref", "cand")
    # sample 0: the reference ties classes 0 and 1, the candidate picks 1: agrees; sample 1 does not
    assert result.top1_agreement == 2 / 3
    # accuracy still takes the reference's argmax (the lowest tied index: class 0, wrong for label 1)
    assert result.reference_accuracy == 2 / 3 and result.candidate_accuracy == 2 / 3
    assert np.isclose(result.max_abs_diff, 2.0) and result.accuracy_gap_points == 0


def test_a_tensor_read_by_two_quantizers_is_listed_once_for_the_locator():
    """A faithful ResNet's MaxPool output feeds the next block's conv Q and its residual Q: marked as an engine
    output twice, TensorRT refuses the build (seen on an H200 with TensorRT 8.6)."""
    def scale(name, value):
        return helper.make_tensor(name, TensorProto.FLOAT, [], [value])

    def qdq(tensor, scale_name, index):
        return [helper.make_node("QuantizeLinear", [tensor, scale_name], [f"q{index}"]),
                helper.make_node("DequantizeLinear", [f"q{index}", scale_name], [f"d{index}"])]

    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             *qdq("r", "s1", "1"), *qdq("r", "s2", "2"), helper.make_node("Add", ["d1", "d2"], ["a"]), *qdq("a", "s1", "3")]
    graph = helper.make_graph(nodes, "two_readers", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("d3", TensorProto.FLOAT, [1, 4])],
                              [scale("s1", 0.5), scale("s2", 0.25)])
    assert quantized_tensors(helper.make_model(graph)) == [("r", 0.5), ("a", 0.5)]
