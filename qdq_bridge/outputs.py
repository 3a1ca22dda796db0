"""A model's outputs, whatever their structure: the tensors in tuples, named tuples, lists and dicts become one
flat, ordered {name: tensor} mapping, with the same names in PyTorch, in the ONNX and in the engine.

Names: a lone tensor is `logits` (as before outputs of other structures were supported); a named tuple's field or
a dict's key is its own name; a position in a tuple or list is its index, `output_<i>` at the top; nested names
join with dots (`output_0.features`). None entries (GoogLeNet's and Inception v3's aux logits in eval mode) and
non-tensor values are left out. Top-1 and accuracy are judged on one output (`logits_output`); every output's
differences are compared.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Iterator

import numpy as np

from .errors import BridgeError

SINGLE_OUTPUT = "logits"
Outputs = dict[str, np.ndarray]  # a model's outputs on a batch, by name


def flatten_outputs(value: Any, is_tensor: Callable[[Any], bool]) -> dict[str, Any]:
    """{name: leaf} for every leaf of `value` that `is_tensor`, in order (module docstring)."""
    leaves = list(_walk(value, (), is_tensor))
    if len(leaves) == 1 and leaves[0][0] == ():
        return {SINGLE_OUTPUT: leaves[0][1]}
    return {_name(path): leaf for path, leaf in leaves}


def _walk(value: Any, path: tuple, is_tensor: Callable[[Any], bool]) -> Iterator[tuple[tuple, Any]]:
    if is_tensor(value):
        yield path, value
    elif isinstance(value, tuple) and hasattr(value, "_fields"):
        for field in value._fields:
            yield from _walk(getattr(value, field), (*path, field), is_tensor)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, (*path, str(key)), is_tensor)
    elif isinstance(value, (tuple, list)):
        for index, item in enumerate(value):
            yield from _walk(item, (*path, str(index)), is_tensor)


def _name(path: tuple) -> str:
    name = ".".join(path)
    return f"output_{name}" if name[:1].isdigit() else name


def named_tuple_fields(type_text: str) -> list[str] | None:
    """Field names of a TorchScript NamedTuple type from its text, `NamedTuple(logits : Tensor, aux : Tensor?)`
    (the Python bindings expose no other way to them); None for a plain tuple."""
    if not type_text.startswith("NamedTuple("):
        return None
    fields, depth, start = [], 0, len("NamedTuple(")
    for index, char in enumerate(type_text[start:-1], start):  # top-level "name : type" entries only
        depth += char in "([" or -(char in ")]")
        if char == "," and depth == 0:
            fields.append(type_text[start:index])
            start = index + 1
    fields.append(type_text[start:-1])
    return [re.match(r"\s*(\w+)\s*:", field).group(1) for field in fields]


def logits_output(shapes: dict[str, tuple[int, ...]], choice: str | None = None) -> str:
    """The output judged for top-1 and accuracy: `choice` (an output's name or its index in order), or the first
    2-D output (batch x classes), or the first output."""
    names = list(shapes)
    if choice is not None:
        if choice in shapes:
            return choice
        if choice.isdigit() and int(choice) < len(names):
            return names[int(choice)]
        raise BridgeError(f"--logits {choice} names no output of this model (its outputs: {', '.join(names)})",
                          "pass one of those names, or its index from 0")
    return next((name for name in names if len(shapes[name]) == 2), names[0])


def collect_logits(run: Callable[[np.ndarray], Outputs], data, batch_size: int, logits: str | None) -> np.ndarray:
    """The logits output (`logits`, or as logits_output chooses) of `run` over `data`'s batches, concatenated."""
    parts = [run(b) for b in data.batches(batch_size)]
    name = logits_output({k: v.shape for k, v in parts[0].items()}, logits)
    return np.concatenate([part[name] for part in parts])
