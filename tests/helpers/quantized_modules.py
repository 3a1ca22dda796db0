"""Small models built from the rest of eager mode's quantized module set (BatchNorm, Hardswish, ELU, LeakyReLU,
ConvTranspose, AvgPool, QFunctional mul/cat/add, Linear+ReLU, Conv1d, Conv3d; clamps, scalar ops, pixel shuffles,
permute; MobileNetV3's squeeze-excite), for the exporters' tests."""
import numpy as np
import torch
from torch import nn
from torch.ao.quantization import DeQuantStub, QuantStub
from torch.ao.nn.quantized import FloatFunctional

from qdq_bridge.pytorch import quantize


class Modules2d(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant, self.dequant = QuantStub(), DeQuantStub()
        self.conv, self.relu, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(8)
        self.hardswish, self.elu, self.leaky = nn.Hardswish(), nn.ELU(), nn.LeakyReLU(0.1)
        self.up, self.pool, self.maxpool = nn.ConvTranspose2d(8, 4, 2, stride=2), nn.AvgPool2d(2), nn.MaxPool2d(2)
        self.branch = nn.Conv2d(8, 4, 1)
        self.mul, self.cat, self.add = FloatFunctional(), FloatFunctional(), FloatFunctional()
        self.fc1, self.fc_relu, self.fc2 = nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 5)
        # eager mode has no per-channel ConvTranspose weights
        self.up.qconfig = torch.ao.quantization.QConfig(
            activation=quantize.trt_qconfig().activation,
            weight=torch.ao.quantization.MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric))

    def forward(self, x):  # N x 3 x 16 x 16
        x = self.leaky(self.elu(self.hardswish(self.bn(self.relu(self.conv(self.quant(x)))))))
        up, branch = self.pool(self.up(x)), self.branch(x)
        x = self.cat.cat([self.mul.mul(up, branch), self.add.add(up, branch)], dim=1)
        x = torch.flatten(self.maxpool(self.maxpool(x)), 1)
        return self.dequant(self.fc2(self.fc_relu(self.fc1(x))))

    def fuse_model(self):
        torch.ao.quantization.fuse_modules(self, [["conv", "relu"], ["fc1", "fc_relu"]], inplace=True)


class Modules1d3d(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant, self.dequant = QuantStub(), DeQuantStub()
        self.conv3, self.bn3, self.relu3 = nn.Conv3d(2, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU()
        self.conv1, self.relu1 = nn.Conv1d(16, 6, 3, padding=1), nn.ReLU()

    def forward(self, x):  # N x 2 x 4 x 6 x 6
        x = self.relu3(self.bn3(self.conv3(self.quant(x))))
        return self.dequant(self.relu1(self.conv1(x.reshape(x.size(0), 16, 36))))

    def fuse_model(self):
        torch.ao.quantization.fuse_modules(self, [["conv3", "bn3", "relu3"], ["conv1", "relu1"]], inplace=True)


class ModulesClampAndMove(nn.Module):
    """Clamps (ReLU6, Hardtanh, clamp), QFunctional's scalar ops (their output grids derived, not observed) and data
    movement (PixelShuffle/PixelUnshuffle, permute), as super-resolution and sequence models use them."""

    def __init__(self):
        super().__init__()
        self.quant, self.dequant = QuantStub(), DeQuantStub()
        self.conv0, self.relu6, self.hardtanh = nn.Conv2d(3, 16, 3, padding=1), nn.ReLU6(), nn.Hardtanh(-0.5, 1.5)
        self.shuffle, self.unshuffle = nn.PixelShuffle(2), nn.PixelUnshuffle(2)
        self.add_scalar, self.mul_scalar = FloatFunctional(), FloatFunctional()
        self.conv1 = nn.Conv2d(16, 4, 1)

    def forward(self, x):  # N x 3 x 8 x 8
        x = self.hardtanh(self.relu6(self.conv0(self.quant(x))))
        x = self.unshuffle(self.shuffle(torch.clamp(x, -0.25, 1.0)))
        x = self.mul_scalar.mul_scalar(self.add_scalar.add_scalar(x, 0.3), 0.5)
        return self.dequant(self.conv1(x).permute(0, 2, 3, 1))

    def fuse_model(self):
        pass


class SqueezeExcite(nn.Module):
    """MobileNetV3's squeeze-excite as torchvision's quantizable model has it: adaptive average pool, two 1x1
    convolutions, a Hardsigmoid gate (eager mode's fixed 1/256 grid) and a QFunctional mul; then Hardswish."""

    def __init__(self):
        super().__init__()
        self.quant, self.dequant = QuantStub(), DeQuantStub()
        self.conv0, self.pool = nn.Conv2d(3, 16, 3, padding=1), nn.AdaptiveAvgPool2d(1)
        self.squeeze, self.squeeze_relu, self.expand = nn.Conv2d(16, 8, 1), nn.ReLU(), nn.Conv2d(8, 16, 1)
        self.gate, self.scale, self.hardswish = nn.Hardsigmoid(), FloatFunctional(), nn.Hardswish()
        self.conv1 = nn.Conv2d(16, 4, 1)

    def forward(self, x):  # N x 3 x 8 x 8
        x = self.conv0(self.quant(x))
        gate = self.gate(self.expand(self.squeeze_relu(self.squeeze(self.pool(x)))))
        return self.dequant(self.conv1(self.hardswish(self.scale.mul(gate, x))))

    def fuse_model(self):
        torch.ao.quantization.fuse_modules(self, [["squeeze", "squeeze_relu"]], inplace=True)


MODELS = {"modules2d": (Modules2d, (1, 3, 16, 16)), "modules1d3d": (Modules1d3d, (1, 2, 4, 6, 6)),
          "clamp_and_move": (ModulesClampAndMove, (1, 3, 8, 8)), "squeeze_excite": (SqueezeExcite, (1, 3, 8, 8))}


def quantized(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    cls, shape = MODELS[name]
    torch.manual_seed(0)
    batches = [np.random.default_rng(i).standard_normal((16, *shape[1:]), np.float32) for i in range(4)]
    return quantize.quantize_ptq(cls().eval(), batches), shape
