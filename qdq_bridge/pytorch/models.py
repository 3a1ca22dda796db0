"""A small ResNet-style CNN that eager-mode quantization can handle (stubs, FloatFunctional, fuse_model).

It is the architecture of the embedded example (`examples/train_digits.py`) and can be named on the CLI as
`qdq_bridge.pytorch.models:digits_resnet` to load a state_dict.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.ao.nn.quantized import FloatFunctional
from torch.ao.quantization import DeQuantStub, QuantStub, fuse_modules, fuse_modules_qat


def _fuse(module: nn.Module, groups: list[list[str]], is_qat: bool) -> None:
    (fuse_modules_qat if is_qat else fuse_modules)(module, groups, inplace=True)


class BasicBlock(nn.Module):
    """Two 3x3 conv/BN layers with a residual add+ReLU (quantized as one add_relu)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))
        self.add_relu = FloatFunctional()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.add_relu.add_relu(out, identity)

    def fuse_model(self, is_qat: bool = False) -> None:
        _fuse(self, [["conv1", "bn1", "relu1"], ["conv2", "bn2"]], is_qat)
        if self.downsample is not None:
            _fuse(self.downsample, [["0", "1"]], is_qat)


class DigitsResNet(nn.Module):
    """ResNet-style classifier: stem, three stages of basic blocks, global pooling, linear head."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        self.quant = QuantStub()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        self.stage1 = BasicBlock(widths[0], widths[0])
        self.stage2 = BasicBlock(widths[0], widths[1], stride=2)
        self.stage3 = BasicBlock(widths[1], widths[2], stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(widths[2], num_classes)
        self.dequant = DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.quant(x))
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.dequant(self.fc(self.flatten(self.pool(x))))

    def fuse_model(self, is_qat: bool = False) -> None:
        _fuse(self.stem, [["0", "1", "2"]], is_qat)
        for block in (self.stage1, self.stage2, self.stage3):
            block.fuse_model(is_qat)


def digits_resnet() -> DigitsResNet:
    """Factory for `--arch qdq_bridge.pytorch.models:digits_resnet`."""
    return DigitsResNet()


class DigitsSegNet(nn.Module):
    """A small encoder-decoder for per-pixel classes (a UNet of one level): two conv stages down to half size,
    a transposed convolution back up, the skip connection added, and a 1x1 head giving N x classes x H x W."""

    def __init__(self, in_channels: int = 1, num_classes: int = 11, width: int = 16):
        super().__init__()
        self.quant = QuantStub()
        self.enc1 = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.enc2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * width),
                                  nn.ReLU(), nn.Conv2d(2 * width, 2 * width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(2 * width), nn.ReLU())
        self.up = nn.ConvTranspose2d(2 * width, width, 2, 2)
        self.skip = FloatFunctional()
        self.head = nn.Sequential(nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, num_classes, 1))
        self.dequant = DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.enc1(self.quant(x))
        x = self.skip.add(self.up(self.enc2(skip)), skip)
        return self.dequant(self.head(x))

    def fuse_model(self, is_qat: bool = False) -> None:
        _fuse(self.enc1, [["0", "1", "2"]], is_qat)
        _fuse(self.enc2, [["0", "1", "2"], ["3", "4", "5"]], is_qat)
        _fuse(self.head, [["0", "1", "2"]], is_qat)


def digits_segnet() -> DigitsSegNet:
    """Factory for `--arch qdq_bridge.pytorch.models:digits_segnet`."""
    return DigitsSegNet()


class DigitsSuperRes(nn.Module):
    """A small super-resolution net (ESPCN-like): features at the input's size, then a convolution to scale²
    channels and PixelShuffle to an image `scale` times larger, N x 1 x (scale H) x (scale W)."""

    def __init__(self, scale: int = 2, width: int = 16):
        super().__init__()
        self.quant = QuantStub()
        self.features = nn.Sequential(nn.Conv2d(1, width, 3, 1, 1), nn.ReLU(), nn.Conv2d(width, width, 3, 1, 1),
                                      nn.ReLU())
        self.expand = nn.Conv2d(width, scale * scale, 3, 1, 1)
        self.shuffle = nn.PixelShuffle(scale)
        self.dequant = DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(self.shuffle(self.expand(self.features(self.quant(x)))))

    def fuse_model(self, is_qat: bool = False) -> None:
        _fuse(self.features, [["0", "1"], ["2", "3"]], is_qat)


class DigitsEmbedding(DigitsResNet):
    """The example's ResNet as an embedding model: the pooled 64 features are its output (N x 64), the classifier
    left out (it trains the features, as a metric-learning head would)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.quant(x))
        return self.dequant(self.flatten(self.pool(self.stage3(self.stage2(self.stage1(x))))))
