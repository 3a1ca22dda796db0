"""PT2E programs: a `torch.export.save`d program that torchao's convert_pt2e quantized, read and exported to ONNX.

The program holds int8 tensors and quantize/dequantize ops (Q/DQ already) and runs in float: it is its own PyTorch
reference, with no quantized backend involved. torch.onnx's dynamo exporter writes its Q/DQ as ONNX
QuantizeLinear/DequantizeLinear (measured against the structural exporter's FX side, which knows eager modules
only: the dynamo export passes the linter untouched but for its opset-18 ReduceMean, which a pass rewrites, so it is
the one kept).
"""
from __future__ import annotations

import contextlib
import importlib
import io
import logging
import zipfile
from pathlib import Path

import onnx
import torch

from ..errors import BridgeError, first_line

DYNAMO_OPSET = 18  # the lowest opset torch.onnx's dynamo exporter writes


def is_program(source: Path | torch.export.ExportedProgram) -> bool:
    """A program in memory, or a torch.export.save archive: a zip with an `archive_format` entry. A damaged archive
    is not one here: the model loader names the damage."""
    if isinstance(source, torch.export.ExportedProgram):
        return True
    try:
        with zipfile.ZipFile(source) as archive:
            return any(name.endswith("/archive_format") for name in archive.namelist())
    except Exception:  # zipfile raises BadZipFile, NotImplementedError, zlib.error... on damaged archives
        return False


def load_program(path: Path) -> torch.export.ExportedProgram:
    try:
        with _quiet("torch.utils._pytree", logging.ERROR):  # torchao 0.18 on torch 2.14 warns of a deprecated call
            importlib.import_module("torchao.quantization.pt2e")  # registers the quantize/dequantize ops it calls
    except ImportError:
        raise BridgeError(f"'{path}' is a PT2E program and torchao is not installed",
                          "pip install torchao (or qdq_bridge's [pt2e] extra)") from None
    try:
        return torch.export.load(str(path))
    except Exception as exc:  # deserialisation errors of any kind
        raise BridgeError(f"'{path}' is not a loadable torch.export program ({first_line(exc)})",
                          "save it with torch.export.save(torch.export.export(model, (example,)), path)") from None


def program_input_shape(program: torch.export.ExportedProgram) -> tuple[int, ...]:
    """The one input's shape with batch 1; the batch dimension must be dynamic (the engine's profile spans 1..256)."""
    shape = _input(program).meta["val"].shape
    if all(isinstance(d, int) for d in shape):
        raise BridgeError(f"the program's batch dimension is fixed at {shape[0]}",
                          "export it with dynamic_shapes=({0: torch.export.Dim('batch')},)")
    return (1, *(int(d) for d in shape[1:]))


def program_batch_limit(program: torch.export.ExportedProgram) -> int | None:
    """The largest batch the program's dynamic batch dimension admits (`Dim("batch", max=...)`); None: unbounded."""
    size = _input(program).meta["val"].shape[0]
    bound = program.range_constraints[size.node.expr].upper
    return None if bound > 2 ** 62 else int(bound)  # sympy's int_oo: no int() and, oddly, is_finite


def _input(program: torch.export.ExportedProgram) -> torch.fx.Node:
    names = program.graph_signature.user_inputs
    if len(names) != 1:
        raise BridgeError(f"the program takes {len(names)} inputs", "export a program of one image input")
    return next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == names[0])


def export_program(program: torch.export.ExportedProgram, input_shape: tuple[int, ...], input_name: str,
                   output_names: list[str]) -> onnx.ModelProto:
    """The program as Q/DQ ONNX through torch.onnx's dynamo exporter, batch dynamic, with qdq_bridge's names."""
    buffer = io.BytesIO()
    try:
        with _quiet("onnx_ir"):  # its optimizer logs every initializer it deduplicates
            torch.onnx.export(program, (torch.zeros(input_shape),), buffer, dynamo=True, opset_version=DYNAMO_OPSET,
                              input_names=[input_name], output_names=output_names, verbose=False)
    except ImportError as exc:
        raise BridgeError(f"torch.onnx's dynamo exporter needs a package that is missing ({exc})",
                          "pip install onnxscript (or qdq_bridge's [pt2e] extra)") from None
    return onnx.load_model_from_string(buffer.getvalue())


@contextlib.contextmanager
def _quiet(name: str, level: int = logging.WARNING):
    """The named logger at `level` for the duration, then as it was."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)
