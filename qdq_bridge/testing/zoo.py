"""Quantized torchvision models for structural tests and benchmarks, with no weight downloads.

A network with random weights answers random inputs with near-equal logits and is chaotic: one rounding step
of difference in an early layer grows to tens of steps at the output (measured here on mobilenet_v2), so two
correct int8 backends disagree on its top-1 for no fault of either. Real deployments quantize trained
networks, which are decisive and damp such perturbations. So `quantized_torchvision` briefly trains the
randomly initialised model on a synthetic task (`template_task`: one of ten fixed smooth random patterns plus
noise), then quantizes it with qdq_bridge's TensorRT-legal PTQ preset. `torchvision_float` gives the untrained
model (for speed benchmarks, where the weights do not matter).
"""
from __future__ import annotations

import copy
import functools
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import nn

from ..data.sources import Dataset, digits_segmentation, digits_split
from ..pytorch import quantize

TORCHVISION_FAMILIES = ("resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_large", "googlenet",
                        "shufflenet_v2_x1_0")
# every family torchvision.models.quantization has, and the smallest square input each takes (Inception v3's
# stride-2 stages need 75 pixels)
ALL_TORCHVISION_FAMILIES = ("resnet18", "resnet50", "resnext101_32x8d", "mobilenet_v2", "mobilenet_v3_large",
                            "googlenet", "inception_v3", "shufflenet_v2_x1_0")
MIN_INPUT_SIZE = {"inception_v3": 75}


def torchvision_float(name: str, num_classes: int = 1000, seed: int = 0) -> nn.Module:
    """A quantizable torchvision model (torchvision.models.quantization) with random weights, not yet quantized."""
    import torchvision.models.quantization as tvq

    torch.manual_seed(seed)
    kwargs: dict = {"num_classes": num_classes}
    if name in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=True)
    if name.startswith(("resnet", "resnext")):
        kwargs["zero_init_residual"] = True  # each block starts as identity: stable short training at any depth
    return getattr(tvq, name)(weights=None, quantize=False, **kwargs)


def template_task(input_shape: tuple[int, ...], count: int, num_classes: int = 10, seed: int = 0,
                  noise: float = 1.0) -> Dataset:
    """Labelled random inputs: template[label] + noise * N(0, 1); the templates are fixed smooth random fields
    (7x7, upsampled), the same for every seed."""
    coarse = torch.from_numpy(np.random.default_rng(1234).standard_normal((num_classes, input_shape[1], 7, 7)))
    templates = torch.nn.functional.interpolate(coarse.float(), size=tuple(input_shape[2:]), mode="bilinear",
                                                align_corners=False).numpy()
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, count)
    x = templates[labels] + noise * rng.standard_normal((count, *input_shape[1:]), dtype=np.float32)
    return Dataset(f"template-task x{count}", x.astype(np.float32), labels.astype(np.int64))


def train_steps(model: nn.Module, batches: Iterable[Dataset], lr: float, one_cycle_steps: int | None = None,
                loss=nn.functional.cross_entropy) -> None:
    """Adam on each batch in turn against its `y` (class labels for the default cross-entropy, target images for a
    regression loss), at a constant `lr` or on a one-cycle schedule peaking at `lr` over `one_cycle_steps` (on the
    GPU when there is one; the model ends on the CPU, in eval mode)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, lr, total_steps=one_cycle_steps) \
        if one_cycle_steps else None
    for data in batches:
        error = loss(model(torch.from_numpy(data.x).to(device)), torch.from_numpy(data.y).to(device))
        optimiser.zero_grad()
        error.backward()
        optimiser.step()
        if schedule:
            schedule.step()
    model.cpu().eval()


def train_on_task(model: nn.Module, input_shape: tuple[int, ...], steps: int, num_classes: int, seed: int,
                  batch: int = 32, lr: float = 3e-3) -> None:
    """A few Adam steps on fresh `template_task` batches."""
    train_steps(model, (template_task(input_shape, batch, num_classes, seed=seed * 100_000 + step)
                        for step in range(steps)), lr)


def trained_torchvision(name: str, input_shape: tuple[int, ...] = (1, 3, 64, 64), num_classes: int = 10,
                        steps: int = 150, seed: int = 0) -> nn.Module:
    """A float torchvision family member trained briefly on `template_task` (a fresh copy of a cached one)."""
    return copy.deepcopy(_trained_torchvision(name, tuple(input_shape), num_classes, steps, seed))


@functools.lru_cache(maxsize=8)
def _trained_torchvision(name: str, input_shape: tuple[int, ...], num_classes: int, steps: int, seed: int) -> nn.Module:
    model = torchvision_float(name, num_classes, seed)
    # ResNet-50 at 224x224 diverged at 3e-3 (measured: float accuracy 14%, logits std 140); MobileNets need 3e-3
    train_on_task(model, input_shape, steps, num_classes, seed, lr=1e-3 if name.startswith("resnet") else 3e-3)
    return model


def quantized_torchvision(name: str, input_shape: tuple[int, ...] = (1, 3, 64, 64), num_classes: int = 10,
                          steps: int = 150, seed: int = 0, observer: str = "histogram",
                          keep_float: tuple[str, ...] = ()) -> nn.Module:
    """A torchvision family member trained briefly on `template_task`, then PTQ-quantized for TensorRT (the
    submodules named in `keep_float` left float)."""
    model = trained_torchvision(name, input_shape, num_classes, steps, seed)
    calibration = template_task(input_shape, 64, num_classes, seed=seed + 1)
    return quantize.quantize_ptq(model, calibration.batches(16), observer, keep_float=keep_float)


def digits_rgb(size: int = 32) -> tuple[Dataset, Dataset]:
    """The examples' digits split (size x size, 32 as in the examples) with the gray channel repeated three
    times, for torchvision models."""
    return tuple(Dataset(d.name, np.repeat(d.x, 3, axis=1), d.y) for d in digits_split(size))


def shuffled_batches(data: Dataset, epochs: int, batch: int, seed: int = 0, max_shift: int = 0) -> Iterator[Dataset]:
    """`epochs` passes over `data` in random order, each batch rolled by up to `max_shift` pixels (augmentation)."""
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        for idx in np.array_split(rng.permutation(len(data)), -(-len(data) // batch)):
            shift = rng.integers(-max_shift, max_shift + 1, 2)
            yield Dataset(data.name, np.roll(data.x[idx], tuple(shift), axis=(2, 3)), data.y[idx])


def torchvision_on_digits(name: str, epochs: int = 40, seed: int = 0,
                          observer: str = "histogram") -> tuple[nn.Module, Dataset]:
    """A torchvision family member trained on the examples' digits at 32x32 (CIFAR's size: the reference
    workflow's setup), PTQ-quantized for TensorRT on the training split; returns it and the test split."""
    model, train, test = trained_on_digits(name, epochs, seed)
    return quantize.quantize_ptq(model, train.batches(64), observer), test


def trained_on_digits(name: str, epochs: int = 40, seed: int = 0,
                      size: int = 32) -> tuple[nn.Module, Dataset, Dataset]:
    """`torchvision_on_digits`' float model before PTQ, with the training and test splits (digits at size x
    size). One-cycle training with shifted digits: a decisive model, few test digits near a decision boundary."""
    train, test = digits_rgb(size)
    model = torchvision_float(name, 10, seed)
    batch = 64
    train_steps(model, shuffled_batches(train, epochs, batch, seed, max_shift=size // 16), lr=3e-3,
                one_cycle_steps=epochs * -(-len(train) // batch))
    return model, train, test


def segmentation_on_digits(epochs: int = 4, seed: int = 0, train_count: int = 1200,
                           test_count: int = 200) -> tuple[nn.Module, Dataset]:
    """`DigitsSegNet` trained briefly on `digits_segmentation` (a weak first model: most of its pixels are
    background) and PTQ-quantized for TensorRT; returns it and a labelled test set (per-pixel labels)."""
    from ..pytorch.models import DigitsSegNet

    torch.manual_seed(seed)
    train = digits_segmentation(train_count, seed=seed + 1, split="train")
    model = DigitsSegNet()
    train_steps(model, shuffled_batches(train, epochs, 32, seed), lr=3e-3)
    return quantize.quantize_ptq(model, train.head(256).batches(64)), digits_segmentation(test_count, seed=seed + 2)


def super_resolution_on_digits(epochs: int = 6, seed: int = 0) -> tuple[nn.Module, Dataset]:
    """`DigitsSuperRes` trained briefly (mean squared error) to turn the digits at 16 x 16 into 32 x 32 and
    PTQ-quantized for TensorRT; returns it and the test digits at 16 x 16 (no labels: its output is an image)."""
    from ..pytorch.models import DigitsSuperRes

    torch.manual_seed(seed)
    (small, test), (large, _) = digits_split(16), digits_split(32)
    model = DigitsSuperRes()
    pairs = Dataset("digits 16 -> 32", small.x, large.x)  # the same digits at both sizes, split alike
    train_steps(model, shuffled_batches(pairs, epochs, 32, seed), lr=3e-3, loss=nn.functional.mse_loss)
    return quantize.quantize_ptq(model, small.head(256).batches(64)), Dataset(test.name, test.x)


def embedding_on_digits(epochs: int = 6, seed: int = 0) -> tuple[nn.Module, Dataset]:
    """`DigitsEmbedding` whose features were trained with a classifier on the digits (then dropped), PTQ-quantized
    for TensorRT; returns it and the test digits with their labels (which an embedding's output does not take)."""
    from ..pytorch.models import DigitsEmbedding

    torch.manual_seed(seed)
    train, test = digits_split()
    model = DigitsEmbedding()
    classifier = nn.Sequential(model, nn.Linear(64, 10))
    train_steps(classifier, shuffled_batches(train, epochs, 64, seed), lr=3e-3)
    return quantize.quantize_ptq(model.eval(), train.head(256).batches(64)), test
