"""Which of PyTorch's quantized modules convert, read from PyTorch's own module lists, so that a module a new
PyTorch adds shows as "not covered" rather than passing silently. `tests/export/test_coverage.py` holds every claim
here to a test and the README's table to `coverage_table()`."""
from __future__ import annotations

import importlib
import inspect

from torch import nn

# the packages eager-mode quantization produces modules from
PACKAGES = ("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized", "torch.ao.nn.quantizable",
            "torch.ao.nn.quantized.dynamic")

STRUCTURAL = "converts: structural exporter, ONNX Runtime within one output step of PyTorch (tests/export)"
DYNAMIC = "refused in one line: dynamic quantization computes activation scales at run time"
RECURRENT = ("refused in one line, naming the way out: leave it float between a DeQuantStub and a QuantStub (a "
             "Conv1d-LSTM-Linear model so converts, through torch.onnx, and passes: tests/test_bad_input.py)")

# (package, class) -> what qdq_bridge does with it; every class PyTorch lists and this does not name is
# "not covered" (it may still convert through torch.onnx's exporter, unmeasured)
COVERAGE = {
    **{("torch.ao.nn.quantized", name): STRUCTURAL for name in (
        "BatchNorm2d", "Conv2d", "ConvTranspose2d", "DeQuantize", "ELU",
        "FloatFunctional", "Hardswish", "LeakyReLU", "Linear", "QFunctional", "Quantize", "ReLU6")},
    **{("torch.ao.nn.intrinsic.quantized", name): STRUCTURAL for name in (
        "ConvReLU1d", "ConvReLU2d", "ConvReLU3d", "LinearReLU")},
    **{key: RECURRENT for key in (("torch.ao.nn.quantized", "LSTM"), ("torch.ao.nn.quantized", "MultiheadAttention"),
                                  ("torch.ao.nn.quantizable", "LSTM"), ("torch.ao.nn.quantizable", "LSTMCell"),
                                  ("torch.ao.nn.quantizable", "MultiheadAttention"))},
    **{("torch.ao.nn.quantized.dynamic", name): DYNAMIC for name in (
        "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "GRU", "GRUCell",
        "LSTM", "LSTMCell", "Linear", "RNNCell")},
}


def listed_modules() -> list[tuple[str, str]]:
    """(package, class name) of every module class PyTorch's quantized packages export."""
    found = []
    for package in PACKAGES:
        module = importlib.import_module(package)
        found += [(package, name) for name, value in sorted(vars(module).items())
                  if inspect.isclass(value) and issubclass(value, nn.Module) and not name.startswith("_")]
    return found


def coverage_table() -> str:
    """The README's table: every listed module and what qdq_bridge does with it."""
    rows = ["| package | module | qdq_bridge |", "|---|---|---|"]
    rows += [f"| `{package}` | {name} | {COVERAGE.get((package, name), 'not covered')} |"
             for package, name in listed_modules()]
    return "\n".join(rows)
