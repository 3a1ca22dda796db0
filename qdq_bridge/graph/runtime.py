"""ONNX Runtime on the CPU, computing what a Q/DQ graph defines: the parity pair's candidate and the probe for
intermediate tensors."""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx

from ..outputs import Outputs

def onnxruntime_session(model: onnx.ModelProto | str, optimize: bool = True):
    """An ONNX Runtime CPU session computing what the graph defines: Q/DQ pairs are never fused into ONNX Runtime's
    integer kernels, which on x86 CPUs without VNNI (AVX2 only, e.g. AMD EPYC before Zen 4) saturate pairs of
    u8 x s8 products in 16 bits (measured: 45 steps off on a 4-channel conv, onnxruntime 1.32). Every op computes
    in float on dequantized values; optimize=False turns the other graph optimizations off too."""
    import onnxruntime as ort

    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    # DoubleQDQPairsRemover turns Q -> DQ -> Q -> DQ of two scales into one pair (measured: one output step off on a
    # flattened Concat), which computes something else than the graph's double rounding
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=["DoubleQDQPairsRemover"])


def onnxruntime_runner(model: onnx.ModelProto | str, optimize: bool = True) -> Callable[[np.ndarray], Outputs]:
    """A batch in, the model's outputs by name on ONNX Runtime's CPU out (onnxruntime_session)."""
    session = onnxruntime_session(model, optimize)
    name = session.get_inputs()[0].name
    names = [output.name for output in session.get_outputs()]
    static_batch = session.get_inputs()[0].shape[0]

    def run(batch: np.ndarray) -> Outputs:
        if not isinstance(static_batch, int):
            return dict(zip(names, session.run(None, {name: batch})))
        # a static-batch export runs one sample at a time
        parts = [session.run(None, {name: batch[i:i + static_batch]}) for i in range(0, len(batch), static_batch)]
        return {output: np.concatenate([part[index] for part in parts]) for index, output in enumerate(names)}
    return run


def run_onnxruntime_tensors(model: onnx.ModelProto, names: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
    """Values of intermediate tensors, made graph outputs for one ONNX Runtime run."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend([onnx.ValueInfoProto(name=name) for name in names])
    session = onnxruntime_session(probe)
    values = session.run(names, {session.get_inputs()[0].name: x})
    return dict(zip(names, values))
