"""Small hand-built Q/DQ graphs with the patterns the passes and the linter look for."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from qdq_bridge.graph.runtime import onnxruntime_runner

RNG = np.random.default_rng(0)


def const(name: str, value) -> gs.Constant:
    return gs.Constant(name, np.asarray(value))


def model(graph: gs.Graph, opset: int = 13) -> onnx.ModelProto:
    out = gs.export_onnx(graph.cleanup().toposort())
    del out.opset_import[:]
    out.opset_import.append(onnx.helper.make_opsetid("", opset))
    out.ir_version = 8
    return out


def run(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return next(iter(onnxruntime_runner(m)(x).values()))


def q_dq(graph_nodes: list, x: gs.Tensor, name: str, scale=0.05, zp=128, zp_dtype=np.uint8, cast: bool = False):
    """x -> QuantizeLinear -> [Cast to the same type] -> DequantizeLinear; returns the DQ output."""
    zero = const(f"{name}_zp", np.array(zp, zp_dtype))
    s = const(f"{name}_scale", np.array(scale, np.float32))
    q = gs.Variable(f"{name}_q", zp_dtype)
    graph_nodes.append(gs.Node("QuantizeLinear", f"/{name}/QuantizeLinear", inputs=[x, s, zero], outputs=[q]))
    if cast:
        casted = gs.Variable(f"{name}_cast", zp_dtype)
        graph_nodes.append(gs.Node("Cast", f"/{name}/Cast", {"to": onnx.helper.np_dtype_to_tensor_dtype(np.dtype(zp_dtype))},
                                   [q], [casted]))
        q = casted
    out = gs.Variable(f"{name}_dq", np.float32)
    graph_nodes.append(gs.Node("DequantizeLinear", f"/{name}/DequantizeLinear", inputs=[q, s, zero], outputs=[out]))
    return out


def weight_dq(name: str, weight_int8: np.ndarray, scales: np.ndarray, axis: int) -> tuple[gs.Node, gs.Variable]:
    out = gs.Variable(f"{name}_w", np.float32)
    node = gs.Node("DequantizeLinear", f"/{name}/DequantizeLinear_w", {"axis": axis},
                   [const(f"{name}_wq", weight_int8), const(f"{name}_ws", scales.astype(np.float32)),
                    const(f"{name}_wzp", np.zeros(scales.shape, np.int8))], [out])
    return node, out


def conv_graph(*, zp=128, zp_dtype=np.uint8, cast=True, int32_bias=True, axis=0, kernel_shape=True,
               channels=(4, 6)) -> gs.Graph:
    """What torch's exporter emits for a quantized conv: Q(uint8, zp 128) -> Cast -> DQ -> Conv(DQ'd int8
    weights, DQ'd int32 bias) -> Q -> Cast -> DQ."""
    cin, cout = channels
    x = gs.Variable("input", np.float32, (1, cin, 5, 5))
    nodes: list = []
    a = q_dq(nodes, x, "in", 0.05, zp, zp_dtype, cast)
    w_scales = RNG.uniform(0.01, 0.02, cout).astype(np.float32)
    w_node, w = weight_dq("conv", RNG.integers(-127, 128, (cout, cin, 3, 3)).astype(np.int8), w_scales, axis)
    nodes.append(w_node)
    if int32_bias:
        b = gs.Variable("bias", np.float32)
        nodes.append(gs.Node("DequantizeLinear", "/conv/DequantizeLinear_b", {"axis": 0},
                             [const("bias_q", RNG.integers(-500, 500, cout).astype(np.int32)),
                              const("bias_s", (0.05 * w_scales).astype(np.float32)),
                              const("bias_zp", np.zeros(cout, np.int32))], [b]))
    else:
        b = const("bias_f", RNG.standard_normal(cout).astype(np.float32))
    y = gs.Variable("conv_out", np.float32)
    attrs = {"pads": [1, 1, 1, 1]} | ({"kernel_shape": [3, 3]} if kernel_shape else {})
    nodes.append(gs.Node("Conv", "/conv/Conv", attrs, [a, w, b], [y]))
    out = q_dq(nodes, y, "out", 0.1, zp, zp_dtype, cast)
    out.shape, out.name = (1, cout, 5, 5), "output"
    return gs.Graph(nodes, [x], [out], opset=13)


def sample_input(_model=None, shape=(1, 4, 5, 5)) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def pooled_head(axes: list[int], op: str = "ReduceMean", keepdims: int = 1) -> gs.Graph:
    """x (1, 4, 5, 5) -> int8 Q/DQ -> `op` over `axes`, given as an input (opset 18's form, torch.onnx's dynamo
    exporter's) -> Q/DQ -> Reshape to (batch, -1)."""
    x = gs.Variable("input", np.float32, (1, 4, 5, 5))
    nodes: list = []
    pooled = gs.Variable("pooled", np.float32)
    nodes.append(gs.Node(op, f"/{op}", {"keepdims": keepdims}, [q_dq(nodes, x, "in", 0.05, 0, np.int8),
                                                       const("axes", np.array(axes, np.int64))], [pooled]))
    out = gs.Variable("output", np.float32)
    nodes.append(gs.Node("Reshape", "/Reshape", inputs=[q_dq(nodes, pooled, "pooled", 0.05, 0, np.int8),
                                                        const("shape", np.array([1, -1], np.int64))],
                         outputs=[out]))
    return gs.Graph(nodes, [x], [out], opset=18)


def inception_like(join: str = "Concat", through_conv: bool = False,
                   kernels: tuple = ((1, 1), (1, 1), (3, 3)), nested: bool = False) -> gs.Graph:
    """x quantized once per consumer (as the exporter does) -> ConvReLUs of these kernels (two 1x1 and a 3x3;
    Inception v3's Mixed_7c: 1x3, 3x1) -> Q/DQ each (-> a 3x3 ConvReLU and Q/DQ each, `through_conv`: Mixed_7a)
    -> Concat (or Add: a ResNet-like join) -> Q/DQ. `nested`: the first two branches are concatenated and
    requantized first, as Mixed_7c's 1x3 and 3x1 are (FloatFunctional.cat)."""
    x = gs.Variable("input", np.float32, (1, 4, 5, 5))
    nodes: list = []

    def conv_relu(source: gs.Variable, name: str, kernel: tuple[int, int], channels: int) -> gs.Variable:
        w_node, w = weight_dq(name, RNG.integers(-127, 128, (6, channels, *kernel)).astype(np.int8),
                              RNG.uniform(0.01, 0.02, 6), 0)
        y, r = gs.Variable(f"{name}_out", np.float32), gs.Variable(f"{name}_relu_out", np.float32)
        pads = [k // 2 for k in kernel] * 2
        nodes.extend([w_node, gs.Node("Conv", f"/{name}/Conv", {"pads": pads}, [source, w], [y]),
                      gs.Node("Relu", f"/{name}/Relu", inputs=[y], outputs=[r])])
        return r

    branches = []
    for i, kernel in enumerate(kernels):
        branch = q_dq(nodes, conv_relu(q_dq(nodes, x, f"in{i}", 0.05, 0, np.int8), f"conv{i}", kernel, 4),
                      f"branch{i}", 0.1 + 0.01 * i, 0, np.int8)
        if through_conv:
            branch = q_dq(nodes, conv_relu(branch, f"tail{i}", (3, 3), 6), f"tail{i}", 0.2, 0, np.int8)
        branches.append(branch)
    if nested:
        inner = gs.Variable("inner", np.float32)
        nodes.append(gs.Node("Concat", "/inner/Concat", {"axis": 1}, branches[:2], [inner]))
        branches[:2] = [q_dq(nodes, inner, "inner", 0.13, 0, np.int8)]
    joined = gs.Variable("joined", np.float32)
    nodes.append(gs.Node(join, f"/{join}", {"axis": 1} if join == "Concat" else {},
                         branches if join == "Concat" else branches[:2], [joined]))
    out = q_dq(nodes, joined, "out", 0.2, 0, np.int8)
    out.name = "output"
    return gs.Graph(nodes, [x], [out], opset=13)
