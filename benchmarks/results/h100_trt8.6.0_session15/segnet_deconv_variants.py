"""segnet's ConvTranspose weight variants for TensorRT 8.6's refit assertion."""
import sys, numpy as np, onnx
from onnx import numpy_helper as nh
m = onnx.load(sys.argv[1]); g = m.graph
init = {i.name: i for i in g.initializer}
prod = {o: n for n in g.node for o in n.output}
deconv = next(n for n in g.node if n.op_type == "ConvTranspose")
dq = prod[deconv.input[1]]
w, s = nh.to_array(init[dq.input[0]]).astype(np.float32), nh.to_array(init[dq.input[1]])
which = sys.argv[2]
if which == "float_weights":
    name = deconv.input[1] + "_float"
    g.initializer.append(nh.from_array((w * s).astype(np.float32), name)); deconv.input[1] = name
elif which == "per_channel_axis1":
    c = w.shape[1]
    init[dq.input[1]].CopyFrom(nh.from_array(np.full(c, s, np.float32), dq.input[1]))
    init[dq.input[2]].CopyFrom(nh.from_array(np.zeros(c, np.int8), dq.input[2]))
    dq.attribute.append(onnx.helper.make_attribute("axis", 1))
elif which == "no_bias":
    # bias added after, as a separate Add
    bias = deconv.input[2]; deconv.input.pop(); out = deconv.output[0]
    deconv.output[0] = out + "_nobias"
    b = nh.to_array(init[bias]).reshape(1, -1, 1, 1)
    g.initializer.append(nh.from_array(b.astype(np.float32), bias + "_4d"))
    idx = list(g.node).index(deconv)
    g.node.insert(idx + 1, onnx.helper.make_node("Add", [deconv.output[0], bias + "_4d"], [out]))
onnx.save(m, sys.argv[3])
