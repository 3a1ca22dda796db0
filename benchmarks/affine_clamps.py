"""Which form of PyTorch's affine-activation floor TensorRT computes right (issue 21's faithful placement).

Seen on an H200 with TensorRT 8.6.0 (benchmarks/results/h200_trt8.6.0_families_runs/run3.json): models quantized
with PyTorch's x86 default or torchvision's recipe converted exactly on ONNX Runtime in both placements, and their
fast engines matched PyTorch, but their faithful engines agreed with it on about 10 % of the test digits (chance)
while the floor before each affine Q (PyTorch's saturation at -z steps) was a Clip(-z steps, +127 steps). This builds
one engine per form of that floor from the same faithful ONNX and compares each with ONNX Runtime running it:

  max             Max(x, -z steps) -> Q, as `int8_zero_point` exports it (the Q saturates at +127 steps itself)
  clip            Clip(-z steps, +127 steps) -> Q, as exported before
  clip-min-only   Clip(-z steps) -> Q
  relu-where-zero Relu -> Q where the floor is 0 (z = 0), Maxes elsewhere
  clip-after-dequantize  Q -> DQ -> Clip(-z steps, +127 steps): the same values (the bounds lie on the grid)
  no-input-floor  every floor but the one on the network input
  no-floor        none (the fast placement's drop_activation_clamps on the faithful graph)

Usage: python benchmarks/affine_clamps.py MODEL.pt TEST.npz [--level 1] [--out DIR]
(needs TensorRT through QDQ_BRIDGE_TRT_PYTHON, as `convert` does)
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from qdq_bridge import export_onnx, load_model, run_passes
from qdq_bridge.data.arrays import Dataset
from qdq_bridge.graph.passes import drop_activation_clamps, export_like, is_grid_floor, reroute, scale_of
from qdq_bridge.trt.engine import BuildSettings, TensorRTWorker, summarize_layers
from qdq_bridge.verify import run_onnxruntime


def _floors(graph: gs.Graph) -> list[gs.Node]:
    return [n for n in graph.nodes if is_grid_floor(n)]


def _ceiling(floor: gs.Node) -> gs.Constant:
    """+127 steps of the scale of the Qs the floor feeds."""
    return gs.Constant(f"{floor.name}/ceiling", np.array(127 * scale_of(floor.outputs[0].outputs[0]), np.float32))


def clip(graph: gs.Graph) -> gs.Graph:
    for floor in _floors(graph):
        floor.op, floor.inputs = "Clip", [*floor.inputs, _ceiling(floor)]
    return graph


def clip_min_only(graph: gs.Graph) -> gs.Graph:
    for floor in _floors(graph):
        floor.op = "Clip"
    return graph


def relu_where_zero(graph: gs.Graph) -> gs.Graph:
    for floor in _floors(graph):
        if float(floor.inputs[1].values) == 0.0:
            floor.op, floor.inputs = "Relu", floor.inputs[:1]
    return graph


def clip_after_dequantize(graph: gs.Graph) -> gs.Graph:
    for floor in _floors(graph):
        q = floor.outputs[0].outputs[0]
        bounds = [floor.inputs[1], _ceiling(floor)]
        q.inputs[0] = floor.inputs[0]
        for i, dq in enumerate(list(q.outputs[0].outputs)):
            readers, out = list(dq.outputs[0].outputs), dq.outputs[0]
            clamped = gs.Variable(f"{out.name}/clamped", np.float32, out.shape)
            graph.nodes.append(gs.Node("Clip", f"{floor.name}/after_dq{i}", inputs=[out, *bounds], outputs=[clamped]))
            for reader in readers:
                reader.inputs = [clamped if t is out else t for t in reader.inputs]
            if out in graph.outputs:
                graph.outputs = [clamped if t is out else t for t in graph.outputs]
        floor.outputs.clear()
    return graph.cleanup()


def no_input_floor(graph: gs.Graph) -> gs.Graph:
    for floor in _floors(graph):
        if floor.inputs[0] in graph.inputs:
            reroute(graph, floor.outputs[0], floor.inputs[0])
    return graph.cleanup()


VARIANTS: dict[str, Callable[[gs.Graph], gs.Graph]] = {
    "max": lambda graph: graph, "clip": clip, "clip-min-only": clip_min_only, "relu-where-zero": relu_where_zero,
    "clip-after-dequantize": clip_after_dequantize, "no-input-floor": no_input_floor,
    "no-floor": drop_activation_clamps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--level", type=int, default=1, help="builder optimization level")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/affine_clamps"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    arrays = np.load(args.dataset)
    data = Dataset(args.dataset.stem, arrays["x"].astype(np.float32), arrays["y"])
    loaded = load_model(args.model)
    faithful, _ = run_passes(export_onnx(loaded.module, (1, *data.x.shape[1:])), placement="faithful")
    worker, rows, faithful_logits = TensorRTWorker(), {}, None
    for name, variant in VARIANTS.items():
        graph = variant(gs.import_onnx(faithful))
        model = export_like(graph.cleanup().toposort(), faithful)
        onnx_path, engine = args.out / f"{name}.onnx", args.out / f"{name}.engine"
        onnx.save(model, onnx_path)
        expected = run_onnxruntime(model, data)
        faithful_logits = expected if faithful_logits is None else faithful_logits
        built = worker.build(onnx_path, engine, BuildSettings(optimization_level=args.level),
                             args.out / f"{name}.layers.json")
        got = next(iter(worker.infer(engine, data.x).values()))
        summary = summarize_layers(json.loads((args.out / f"{name}.layers.json").read_text(), strict=False))
        rows[name] = {"floors": sum(n.op in ("Clip", "Max") for n in graph.nodes),
                      "agreement_with_onnxruntime": float((got.argmax(1) == expected.argmax(1)).mean()),
                      "max_abs_diff": float(np.abs(got - expected).max()),
                      # how far this form is from the exported one, on ONNX Runtime (0: the same function)
                      "onnxruntime_vs_max_abs_diff": float(np.abs(expected - faithful_logits).max()),
                      "accuracy_onnxruntime": float((expected.argmax(1) == data.y).mean()),
                      "accuracy_tensorrt": float((got.argmax(1) == data.y).mean()),
                      "layers": summary["layers"], "build_seconds": built["build_seconds"]}
        print(name, rows[name], flush=True)
        (args.out / "affine_clamps.json").write_text(json.dumps(rows, indent=1) + "\n")  # a cut run keeps its rows


if __name__ == "__main__":
    main()
