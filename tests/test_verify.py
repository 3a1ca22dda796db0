"""Parity arithmetic: agreement, ties, accuracy."""
import numpy as np

from qdq_bridge.data import Dataset
from qdq_bridge.verify import compare


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
