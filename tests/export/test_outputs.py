"""Output names: the same flat, ordered names for every structure a model may return (qdq_bridge.outputs)."""
import collections

import pytest

from qdq_bridge.errors import BridgeError
from qdq_bridge.outputs import flatten_outputs, logits_output, named_tuple_fields

Pair = collections.namedtuple("Pair", ["logits", "aux"])


def leaf(value) -> bool:
    return isinstance(value, str)


@pytest.mark.parametrize("value, expected", [
    ("t", {"logits": "t"}),
    (("a", "b"), {"output_0": "a", "output_1": "b"}),
    (["a"], {"output_0": "a"}),
    (Pair("a", None), {"logits": "a"}),  # scripted GoogLeNet in eval mode: the aux logits are None
    (Pair("a", "b"), {"logits": "a", "aux": "b"}),
    ({"scores": "a", "features": {"stage1": "b", "stage2": "c"}},
     {"scores": "a", "features.stage1": "b", "features.stage2": "c"}),
    (("a", ("b", "c"), 3), {"output_0": "a", "output_1.0": "b", "output_1.1": "c"}),  # non-tensors are left out
])
def test_every_structure_flattens_to_stable_ordered_names(value, expected):
    flat = flatten_outputs(value, leaf)
    assert flat == expected and list(flat) == list(expected)


def test_torchscript_named_tuple_fields_come_from_the_type_text_top_level_only():
    text = "NamedTuple(logits : Tensor, aux : Tuple[Tensor, Tensor]?, extra : Dict[str, Tensor])"
    assert named_tuple_fields(text) == ["logits", "aux", "extra"]
    assert named_tuple_fields("Tuple[Tensor, Tensor]") is None


def test_the_logits_output_is_the_first_2d_one_unless_named():
    shapes = {"features": (4, 8, 7, 7), "scores": (4, 10), "embedding": (4, 128)}
    assert logits_output(shapes) == "scores"
    assert logits_output(shapes, "embedding") == "embedding" and logits_output(shapes, "0") == "features"
    assert logits_output({"map": (4, 1, 8, 8)}) == "map"
    with pytest.raises(BridgeError, match=r"--logits 3 names no output of this model \(its outputs: features, "
                                          r"scores, embedding\)"):
        logits_output(shapes, "3")
