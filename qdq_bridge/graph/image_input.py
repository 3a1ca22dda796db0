"""Engines that take 8-bit pixels (`--engine-input uint8-nchw|uint8-nhwc`): the Q/DQ graph with the model's
preprocessing inside, computed as torchvision computes it, so that a server sends a quarter of the bytes of float32
inputs and does no float work on the CPU.

The engine ONNX's input is uint8, N x C x H x W or N x H x W x C (as image decoders give them); inside: Cast to
float, the transpose to N x C x H x W where needed, ToTensor's division by 255 and Normalize's subtraction of the
mean and division by the standard deviation, in that order and in float32, so that ONNX Runtime computes the very
inputs PyTorch gets (TensorRT fuses them into one pointwise layer before the first quantizer). Parity runs every
backend on the same images: the engine's runner turns each preprocessed float batch back into its pixels, exactly
(a batch that is not 8-bit images under the preprocessing is refused).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import BridgeError
from .passes import export_like

PIXEL_TOLERANCE = 0.01  # of a pixel level: the inverse of float32 preprocessing lands within 1e-4 of an integer


@dataclass(frozen=True)
class PixelInput:
    """8-bit pixels in `layout` ("nchw" or "nhwc"), preprocessed by x / 255, then (x - mean) / std per channel where
    the model's preprocessing normalizes."""

    layout: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @classmethod
    def of(cls, engine_input: str, preprocessing: dict | None) -> PixelInput | None:
        """None for float inputs; `preprocessing`: what the parity data resolved (mean, std), None for arrays."""
        if engine_input == "float":
            return None
        settings = preprocessing or {}
        mean, std = settings.get("mean"), settings.get("std")
        return cls(engine_input.partition("-")[2], tuple(mean) if mean else None, tuple(std) if std else None)

    def as_dict(self) -> dict:
        """What the engine expects, for the report."""
        return {"dtype": "uint8", "layout": self.layout.upper(), "mean": list(self.mean) if self.mean else None,
                "std": list(self.std) if self.std else None,
                "preprocessing": "x / 255" + (", then (x - mean) / std per channel" if self.mean else "")}

    def model(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """`model` (one float input, N x C x H x W) taking the pixels instead, under the same input name."""
        graph = gs.import_onnx(model)
        (image,) = graph.inputs
        channels = image.shape[1]
        pixels = gs.Variable(image.name, np.uint8, [image.shape[0], *image.shape[2:], channels]
                             if self.layout == "nhwc" else list(image.shape))
        image.name = f"{image.name}_preprocessed"
        steps = [("Cast", [], {"to": onnx.TensorProto.FLOAT})]
        if self.layout == "nhwc":
            steps.append(("Transpose", [], {"perm": [0, 3, 1, 2]}))
        steps.append(("Div", [np.array(255, np.float32)], {}))
        if self.mean:
            per_channel = (channels, 1, 1)
            steps += [("Sub", [np.broadcast_to(np.array(self.mean, np.float32).reshape(-1, 1, 1), per_channel)], {}),
                      ("Div", [np.broadcast_to(np.array(self.std, np.float32).reshape(-1, 1, 1), per_channel)], {})]
        value: gs.Tensor = pixels
        for index, (op, constants, attrs) in enumerate(steps):
            out = image if index == len(steps) - 1 else gs.Variable(f"pixels/{op}_{index}_output", np.float32)
            operands = [gs.Constant(f"pixels/{op}_{index}_operand", np.ascontiguousarray(c)) for c in constants]
            graph.nodes.append(gs.Node(op, f"pixels/{op}_{index}", attrs, [value, *operands], [out]))
            value = out
        graph.inputs = [pixels]
        return export_like(graph.cleanup().toposort(), model)

    def pixels(self, x: np.ndarray) -> np.ndarray:
        """The uint8 pixels (in `layout`) that preprocess into `x` (N x C x H x W float32), or a BridgeError where x is
        no such batch."""
        levels = x.astype(np.float64)
        if self.mean:
            levels = levels * np.array(self.std).reshape(-1, 1, 1) + np.array(self.mean).reshape(-1, 1, 1)
        levels *= 255
        rounded = np.rint(levels)
        if levels.size and (np.abs(levels - rounded).max() > PIXEL_TOLERANCE or rounded.min() < 0 or
                            rounded.max() > 255):
            raise BridgeError("--engine-input uint8 needs 8-bit images: this run's data are not pixels / 255 under "
                              f"its preprocessing (mean {self.mean}, std {self.std})",
                              "use an image dataset (imagefolder:, cifar10:, mnist:), or arrays of k / 255 values")
        pixels = rounded.astype(np.uint8)
        return np.ascontiguousarray(pixels.transpose(0, 2, 3, 1)) if self.layout == "nhwc" else pixels

    def random_images(self, shape: tuple[int, ...], count: int, seed: int = 0) -> np.ndarray:
        """`count` random 8-bit images of the model's input `shape`, preprocessed (float32 N x C x H x W)."""
        return self.preprocessed(np.random.default_rng(seed).integers(0, 256, (count, *shape[1:])))

    def preprocessed(self, pixels: np.ndarray) -> np.ndarray:
        """8-bit images, N x C x H x W, as the engine's preprocessing makes them (float32, in the same order)."""
        x = pixels.astype(np.float32) / np.float32(255)
        if self.mean:
            x = (x - np.array(self.mean, np.float32).reshape(-1, 1, 1)) / np.array(self.std, np.float32).reshape(
                -1, 1, 1)
        return x.astype(np.float32)
