"""The divergence locator: where an INT8 engine's activations first leave ONNX Runtime's on the same Q/DQ graph,
run when the engine fails parity that ONNX Runtime passes."""
from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from ..data.arrays import Dataset
from ..errors import BridgeError
from ..graph.runtime import run_onnxruntime_tensors
from .engine import BuildSettings, TensorRTWorker

LOG = logging.getLogger("qdq_bridge")

def quantized_tensors(model: onnx.ModelProto) -> list[tuple[str, float]]:
    """(tensor, scale) for every activation entering a QuantizeLinear, in graph order, each tensor once (a
    tensor read by two Qs, as a faithful ResNet's MaxPool output is, would be marked as an engine output twice,
    which TensorRT refuses): the points where backends should agree to within a quantization step or so."""
    constants = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    graph_inputs = {i.name for i in model.graph.input}
    found: dict[str, float] = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in constants and node.input[0] not in graph_inputs:
            scale = constants.get(node.input[1])
            if scale is not None and scale.size == 1:
                found.setdefault(node.input[0], float(scale))
    return list(found.items())


# Ops whose output TensorRT cannot expose as an extra engine output: 8.6 fuses a MaxPool into the convolution
# before it (CaskConvActPool) and asserts in its graph compiler (cgraph.h) when the pooled tensor is marked, alone
# or with others (seen on ResNet-18 on an H100 and an H200, both placements).
UNMARKABLE_PRODUCERS = {"MaxPool": "TensorRT fuses the pooling into the convolution before it"}


def markable_tensors(model: onnx.ModelProto, tensors: list[tuple[str, float]]) -> tuple[list, dict[str, str]]:
    """`tensors` split into those an engine can be asked to output and the others, each with the reason."""
    producers = {output: node.op_type for node in model.graph.node for output in node.output}
    skipped = {name: UNMARKABLE_PRODUCERS[producers[name]] for name, _ in tensors
               if producers.get(name) in UNMARKABLE_PRODUCERS}
    return [t for t in tensors if t[0] not in skipped], skipped


def first_divergences(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                      tensors: list[tuple[str, float]], steps: float = 2.0, limit: int = 5) -> list[dict]:
    """The first tensors (graph order) where candidate and reference differ by more than `steps` quantization
    steps: where to look when an engine disagrees."""
    found = []
    for name, scale in tensors:
        if name not in reference or name not in candidate or reference[name].shape != candidate[name].shape:
            continue
        diff = np.abs(reference[name].astype(np.float64) - candidate[name].astype(np.float64))
        if diff.max() > steps * scale:
            found.append({"tensor": name, "max_abs_diff": float(diff.max()), "steps": float(diff.max() / scale),
                          "fraction_over": float((diff > steps * scale).mean())})
            if len(found) == limit:
                break
    return found


# Engine builds the divergence locator may spend per halving of the tensor list: isolating one tensor TensorRT
# cannot expose costs two builds a halving, so this isolates two.
LOCATOR_BUILDS_PER_HALVING = 4
# a diagnosis, not a second conversion: on an H100 (8.6) ResNet-18 builds took 12-20 s each, and 80-96 s each
# where TensorRT then refused the marked outputs
LOCATOR_SECONDS = 300


def locate_divergence(worker: TensorRTWorker, model: onnx.ModelProto, onnx_path: Path, data: Dataset,
                      settings: BuildSettings) -> dict:
    """Where the INT8 engine's activations first leave ONNX Runtime's. Quantized activations are marked as
    engine outputs a group at a time, in graph order, until a group diverges. Exposing a tensor stops some
    fusions (fine for a diagnosis), and some tensors TensorRT cannot expose at all (8.6's graph compiler
    asserted with every one marked): those known to be unmarkable are skipped (UNMARKABLE_PRODUCERS), and
    a group whose build still fails is split, down to single tensors, which are then listed as not exposable. It
    stops at its build or time budget, listing the tensors it did not scan."""
    tensors, skipped = markable_tensors(model, quantized_tensors(model))
    sample = data.x[:8]
    emulated = run_onnxruntime_tensors(model, [name for name, _ in tensors], sample)
    pending, unexposable, log = [tensors], [], []
    budget = 1 + LOCATOR_BUILDS_PER_HALVING * math.ceil(math.log2(max(len(tensors), 2)))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="qdq-diverge-") as work:
        engine = Path(work) / "debug.engine"
        while pending and len(log) < budget and time.monotonic() - started < LOCATOR_SECONDS:
            group = pending.pop(0)
            entry = {"marked": len(group), "first_tensor": group[0][0]}
            log.append(entry)
            build_started = time.monotonic()
            try:
                worker.build(onnx_path, engine, replace(settings, mark_outputs=[name for name, _ in group]))
                values = worker.infer(engine, sample, len(sample))
            except BridgeError as exc:
                entry["failed"] = exc.problem
                if len(group) == 1:
                    unexposable.append(group[0][0])
                else:
                    pending[:0] = [group[:len(group) // 2], group[len(group) // 2:]]
                continue
            finally:
                entry["seconds"] = round(time.monotonic() - build_started, 1)
                LOG.info("divergence locator: build %d of at most %d, %d tensors from %s marked: %s (%.0f s)",
                         len(log), budget, len(group), group[0][0], "failed" if "failed" in entry else "built",
                         entry["seconds"])
            found = first_divergences(emulated, values, group)
            if found:
                return {"first": found, "not_exposable": unexposable, "skipped": skipped, "builds": len(log),
                        "log": log}
    return {"first": [], "not_exposable": unexposable, "skipped": skipped, "builds": len(log), "log": log,
            "complete": not pending, "not_scanned": [name for group in pending for name, _ in group]}
