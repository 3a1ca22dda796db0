"""What a conversion can be asked, by name: the choices the command line offers, importable without torch,
onnxruntime or scipy, so that `lint`, `passes` and a mistyped option answer at once. The modules that own each
registry (quantize, export, images, verify) take these names from here."""
from __future__ import annotations

import os

EXPORTERS = ("auto", "structural", "torch")
# where Q/DQ sit: every PyTorch quantization point kept, or moved where TensorRT fuses residual Adds
PLACEMENTS = ("faithful", "fast")
DEFAULT_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear (the `axis` attribute) needs opset 13

# The quantized CPU backends in order of preference. A model's weights are packed for the backend in force when
# it is converted or loaded, and that backend's kernels run it afterwards (qdq_bridge.pytorch.reference checks it).
# qnnpack first: x86/fbgemm's u8*s8 kernels sum pairs of products in int16 and saturate with full-range 8-bit
# activations on CPUs without AVX-512 VNNI (why torch's own default qconfig reduces activations to 7 bits;
# measured here, a depthwise conv of torchvision's mobilenet_v2 came out 82 quantization steps off, the
# examples' model 10 % accurate); onednn's quantized ConvTranspose2d (as x86's) is up to 46 steps off float
# emulation where qnnpack is exact, and on mobilenet_v2 its logits sit 16 output steps from the Q/DQ graph's
# against qnnpack's 5 (torch 2.14).
BACKEND_ORDER = ("qnnpack", "onednn", "x86", "fbgemm")

OBSERVER_NAMES = ("minmax", "histogram", "percentile")  # activation observers for PTQ (quantize.OBSERVERS)
# PTQ presets: qdq_bridge's TensorRT-legal one, PyTorch's defaults (as users' eager models are made), or the
# recipe of torchvision's quantized models (torchvision.models.quantization.utils.quantize_model for fbgemm:
# MinMax activations on quint8 0..127, per-channel weights). All but the first quantize activations affinely:
# see qdq_bridge.graph.activations for what int8 holds of them.
QCONFIGS = ("tensorrt", "x86", "fbgemm", "qnnpack", "torchvision")

ENGINE_MODES = ("auto", "off", "require")  # when to build the TensorRT engine
TYPINGS = ("auto", "strong", "weak")  # how the engine's precisions are set (trt.engine.BuildSettings.typing)
FLOAT_PRECISIONS = ("fp16", "fp32")  # float compute outside the Q/DQ pairs in engines
ENGINE_INPUTS = ("float", "uint8-nchw", "uint8-nhwc")  # the INT8 engine's input: preprocessed floats or 8-bit pixels
OPTIMIZATION_LEVELS = range(6)  # TensorRT's builder optimization levels (8.6+)

SIGNIFICANCE = 0.05  # an accuracy loss fails only where a one-sided exact McNemar test finds it at this level
# how an output is judged (qdq_bridge.measures): top-1 on N x C, per-position argmax on N x C x ..., cosine and
# steps on anything
OUTPUT_KINDS = ("classification", "dense", "generic")

PRESETS = {  # what torchvision's reference training scripts and tutorials use
    "imagenet": {"resize_ratio": 256 / 224, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
                 "color": "rgb"},
    "cifar10": {"mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616), "color": "rgb"},
    "mnist": {"mean": (0.1307,), "std": (0.3081,), "color": "gray"},
}


def default_workers() -> int:
    """DataLoader worker processes: one per core, up to 4 (decoding keeps up with a CPU backend at that)."""
    return max(1, min(4, os.cpu_count() or 1))

SCRATCH_PREFIX = ".partial-"  # a convert's scratch folder inside its output folder (pipeline._output_folder)
