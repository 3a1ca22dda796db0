"""Which part of a Q/DQ ONNX keeps TensorRT from building it: builds rewritten variants and prefixes of the model side
by side, each with `python -m qdq_bridge build --trt-log`, and tabulates which build.

    python benchmarks/build_variants.py inception_v3_qdq/inception_v3.qdq.onnx --out variants --jobs 8 \\
        --build-args "--builder-optimization-level 0"

Polygraphy's bisection (README, TensorRT) finds a failing cut without knowing the model's structure, one build after
another; for Inception v3 it ran past 420 s. This tries the hypotheses at once:
- variants (rewrites of the whole model): as converted; with fp32 float compute; each Concat that reads another,
  requantized Concat flattened, exactly (the inner inputs each requantized at the inner scale) and not (the inner
  requantization dropped); the dilations `separate_sibling_convs` gives sibling convolutions reset; the floors
  `int8_zero_point` puts before affine activations' Qs (the Max in MobileNetV3's x86-default builder crash)
  dropped (the fast placement's form), written as Relu(x - c) + c, or moved past their Q/DQ (exact);
- prefixes: the model up to the end of each block (a Concat whose output reaches no other Concat but through a
  convolution), its requantized output the graph's output: the first prefix that fails names the block.
Writes OUT/NAME.onnx, OUT/NAME.log (TensorRT's VERBOSE log) and OUT/variants.json; prints a table whose failed rows
show the log's last fusion lines.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from qdq_bridge.graph.passes import (conv_weight, drop_activation_clamps, export_like, is_grid_floor,
                                     requantized, tidy)

# the log lines that say what TensorRT's optimizer did last before a failure
FUSION_WORDS = ("Fusing", "Running:", "Eliminating", "Swapping", "Removing", "QDQ", "Merging")


def _flatten_nested_concats(graph: gs.Graph, requantize: bool) -> gs.Graph:
    for outer in [n for n in graph.nodes if n.op == "Concat"]:
        inputs = []
        for tensor in outer.inputs:
            nested = requantized(tensor, "Concat")
            if nested is None or nested[0].attrs["axis"] != outer.attrs["axis"]:
                inputs.append(tensor)
                continue
            inner, q = nested
            for index, source in enumerate(inner.inputs):
                if requantize:  # Q(concat(a, b)) == concat(Q(a), Q(b)): exact
                    quantized = graph.layer(op="QuantizeLinear", name=f"{q.name}_flat{index}",
                                            inputs=[source, *q.inputs[1:]], outputs=[f"{q.name}_flat{index}_q"])
                    source = graph.layer(op="DequantizeLinear", name=f"{q.name}_flat{index}_dq",
                                         inputs=[quantized[0], *q.inputs[1:]],
                                         outputs=[gs.Variable(f"{q.name}_flat{index}_dq", np.float32)])[0]
                inputs.append(source)
        outer.inputs = inputs
    return tidy(graph)


def nested_concats_flattened(graph: gs.Graph) -> gs.Graph:
    """A Concat reading a requantized Concat along its axis reads the inner inputs, each requantized (exact)."""
    return _flatten_nested_concats(graph, requantize=True)


def nested_concats_spliced(graph: gs.Graph) -> gs.Graph:
    """The same without the inner requantization (not exact: each inner input keeps its own scale)."""
    return _flatten_nested_concats(graph, requantize=False)


def sibling_dilations_reset(graph: gs.Graph) -> gs.Graph:
    """Every dilation along a kernel's size-1 axis (what separate_sibling_convs writes) back to 1."""
    for conv in [n for n in graph.nodes if n.op == "Conv" and "dilations" in n.attrs]:
        weight = conv_weight(conv)
        if weight is not None:
            conv.attrs["dilations"] = [1 if size == 1 else d for d, size in zip(conv.attrs["dilations"],
                                                                                 weight.shape[2:])]
    return graph


def _floors(graph: gs.Graph) -> list[gs.Node]:
    return [n for n in graph.nodes if is_grid_floor(n)]


def activation_floors_as_relu(graph: gs.Graph) -> gs.Graph:
    """Each affine activation's floor Max(x, c) as Relu(x - c) + c (equal to float rounding; another fusion)."""
    for floor in _floors(graph):
        x, bound = floor.inputs
        shifted = graph.layer(op="Sub", name=f"{floor.name}_relu_sub", inputs=[x, bound],
                              outputs=[gs.Variable(f"{floor.name}_shifted", np.float32)])[0]
        raised = graph.layer(op="Relu", name=f"{floor.name}_relu", inputs=[shifted],
                             outputs=[gs.Variable(f"{floor.name}_raised", np.float32)])[0]
        floor.op, floor.inputs = "Add", [raised, bound]
    return tidy(graph)


def activation_floors_after_dequantize(graph: gs.Graph) -> gs.Graph:
    """Each floor moved past its Q/DQ and requantized: Q(max(x, c)) = max(Q(x), Q(c)), so DQ(Q(x)) -> Max(c) -> Q
    -> DQ is exact, and the Max no longer sits between the layer before it and its Q."""
    for floor in _floors(graph):
        x, bound = floor.inputs
        for q in list(floor.outputs[0].outputs):
            q.inputs[0] = x
            for dq in [c for c in q.outputs[0].outputs if c.op == "DequantizeLinear"]:
                floored_output = dq.outputs[0]  # a graph output keeps its name: the requantized floor writes it
                dq.outputs = [gs.Variable(f"{dq.name}_unfloored", np.float32)]
                raised = graph.layer(op="Max", name=f"{dq.name}_floor", inputs=[dq.outputs[0], bound],
                                     outputs=[gs.Variable(f"{dq.name}_floored", np.float32)])[0]
                again = graph.layer(op="QuantizeLinear", name=f"{dq.name}_floor_q", inputs=[raised, *q.inputs[1:]],
                                    outputs=[gs.Variable(f"{dq.name}_floor_q", q.outputs[0].dtype)])[0]
                graph.layer(op="DequantizeLinear", name=f"{dq.name}_floor_dq", inputs=[again, *dq.inputs[1:]],
                            outputs=[floored_output])
    return tidy(graph)


VARIANTS: dict[str, tuple[Callable[[gs.Graph], gs.Graph] | None, list[str]]] = {
    "as_converted": (None, []),
    "fp32_float_compute": (None, ["--float-precision", "fp32"]),
    "nested_concats_flattened": (nested_concats_flattened, []),
    "nested_concats_spliced": (nested_concats_spliced, []),
    "sibling_dilations_reset": (sibling_dilations_reset, []),
    "activation_floors_dropped": (drop_activation_clamps, []),
    "activation_floors_as_relu": (activation_floors_as_relu, []),
    "activation_floors_after_dequantize": (activation_floors_after_dequantize, []),
}


def _reaches_concat_directly(tensor: gs.Tensor) -> bool:
    """Whether `tensor` reaches a Concat through nothing but Q/DQ nodes."""
    return any(c.op == "Concat" or c.op in ("QuantizeLinear", "DequantizeLinear") and
               _reaches_concat_directly(c.outputs[0]) for c in tensor.outputs)


def _requantized_output(tensor: gs.Tensor) -> gs.Tensor:
    """The DQ output of tensor's Q/DQ pair, or the tensor itself."""
    q = next((c for c in tensor.outputs if c.op == "QuantizeLinear"), None)
    dq = next((c for c in q.outputs[0].outputs if c.op == "DequantizeLinear"), None) if q is not None else None
    return dq.outputs[0] if dq is not None else tensor


def block_ends(model: onnx.ModelProto) -> list[str]:
    """The output tensors (requantized) of the Concats that end a block, in graph order."""
    graph = gs.import_onnx(model).toposort()
    return [_requantized_output(n.outputs[0]).name for n in graph.nodes
            if n.op == "Concat" and not _reaches_concat_directly(n.outputs[0])]


def prefix(model: onnx.ModelProto, output: str) -> onnx.ModelProto:
    """The model up to `output`, which becomes its only graph output."""
    inferred = onnx.shape_inference.infer_shapes(model)
    extracted = onnx.utils.Extractor(inferred).extract_model([i.name for i in model.graph.input], [output])
    return export_like(gs.import_onnx(extracted), model)


def variant_models(model: onnx.ModelProto) -> dict[str, tuple[onnx.ModelProto, list[str]]]:
    """Every variant and prefix, by name, with the build options of each; a rewrite that finds nothing to change
    (no nested Concat, no affine floor) is left out rather than built twice."""
    models = {}
    for name, (rewrite, options) in VARIANTS.items():
        rewritten = export_like(rewrite(gs.import_onnx(model)), model) if rewrite else model
        if rewrite is None or rewritten.graph != export_like(gs.import_onnx(model), model).graph:
            models[name] = (rewritten, options)
    for index, output in enumerate(block_ends(model)):
        models[f"prefix_{index + 1:02d}_{output.strip('/').replace('/', '_')}"] = (prefix(model, output), [])
    return models


def build(name: str, folder: Path, options: list[str]) -> dict:
    """One `qdq_bridge build` of OUT/NAME.onnx; its result, with the log's last fusion lines when it failed."""
    log = folder / f"{name}.log"
    result = subprocess.run([sys.executable, "-m", "qdq_bridge", "build", str(folder / f"{name}.onnx"),
                             "--trt-log", str(log), *options], capture_output=True, text=True)
    row = {"variant": name, "exit": result.returncode, "options": options}
    if result.returncode == 0:
        row["summary"] = result.stdout.strip().splitlines()[-1].split(": ", 1)[1].split("; layers:")[0]
        return row
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    errors = [line.strip() for line in lines if "[E]" in line]  # TensorRT's own error line, else the build's
    row["error"] = (errors or result.stderr.strip().splitlines() or ["?"])[-1][:300]
    row["last_fusions"] = [line.strip() for line in lines if any(w in line for w in FUSION_WORDS)][-4:]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("onnx", type=Path, help="a converted model's Q/DQ ONNX")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/build_variants"))
    parser.add_argument("--jobs", type=int, default=8, help="builds at a time")
    parser.add_argument("--build-args", default="", help="options for every build, e.g. "
                                                         "'--builder-optimization-level 0'")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(args.onnx))
    variants = variant_models(model)
    for name, (variant, _) in variants.items():
        onnx.save(variant, str(args.out / f"{name}.onnx"))
    extra = shlex.split(args.build_args)
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda item: build(item[0], args.out, [*item[1][1], *extra]), variants.items()))
    (args.out / "variants.json").write_text(json.dumps({"onnx": str(args.onnx), "build_args": extra,
                                                        "rows": rows}, indent=1) + "\n")
    print("| variant | nodes | built | layers, or TensorRT's error and its last fusion lines |\n|---|---|---|---|")
    for row in rows:
        nodes = len(variants[row["variant"]][0].graph.node)
        what = row.get("summary") or f"{row['error']}<br>" + "<br>".join(row["last_fusions"])
        print(f"| {row['variant']} | {nodes} | {'yes' if row['exit'] == 0 else 'no'} | {what} |")


if __name__ == "__main__":
    main()
