"""TensorRT-legal eager-mode quantization: qconfig presets, PTQ with calibration, QAT preparation/conversion.

TensorRT wants per-channel symmetric int8 weights and per-tensor symmetric int8 activations. PyTorch's CPU
kernels no longer run qint8 activations, so activations use quint8 with zero-point 128: a uint8 value q is
exactly the int8 value q - 128 with zero-point 0 at the same scale, which the `int8_zero_point` pass applies.
"""
from __future__ import annotations

import contextlib
import os
import re
import warnings
import zipfile
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn
from torch.ao.quantization import (FakeQuantize, HistogramObserver, MinMaxObserver,
                                   MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver,
                                   PerChannelMinMaxObserver, QConfig)
from tqdm import tqdm

from ..choices import BACKEND_ORDER, OBSERVER_NAMES, QCONFIGS
from ..errors import BridgeError

# quint8 symmetric activations: torch picks zero-point 128 over the full 0..255 range (= int8 -128..127).
# quant_min/quant_max stay unset on purpose: with an explicit 0..255 range torch picks zero-point 127.
ACTIVATION = dict(dtype=torch.quint8, qscheme=torch.per_tensor_symmetric)
WEIGHT = dict(dtype=torch.qint8, qscheme=torch.per_channel_symmetric, quant_min=-128, quant_max=127, ch_axis=0)
# qnnpack packs 3-d convolution weights but cannot unpack them, which both exporters need
THREE_D_CONV = re.compile(rb"Conv(?:Transpose|ReLU|Bn|BnReLU)?3d")


def available_backends(order: tuple[str, ...] | None = None) -> list[str]:
    """The backends of `order` (default BACKEND_ORDER) this PyTorch build has, in that order."""
    supported = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    backends = [backend for backend in order or BACKEND_ORDER if backend in supported]
    if not backends:
        raise BridgeError(f"none of the quantized backends {', '.join(order)} is in this PyTorch build",
                          f"choose from {', '.join(supported)}")
    return backends


@contextlib.contextmanager
def using_backend(backend: str):
    """Set PyTorch's quantized backend for the duration only: what the user's process set stays set."""
    saved = torch.backends.quantized.engine
    torch.backends.quantized.engine = backend
    try:
        yield
    finally:
        torch.backends.quantized.engine = saved


def packing_backend(has_3d_conv: bool, order: tuple[str, ...] | None = None) -> str:
    """The backend to pack a model's weights with: the first available of `order`, onednn for 3-d convolutions."""
    backends = available_backends(order)
    return "onednn" if has_3d_conv and "onednn" in backends else backends[0]


def file_has_3d_conv(path: Path) -> bool:
    """Whether a model file names a 3-d convolution class, read from its pickles and TorchScript code without
    unpickling anything (so the backend is chosen before any weight is packed)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return any(THREE_D_CONV.search(archive.read(name)) for name in archive.namelist()
                       if name.endswith(".pkl") or "/code/" in name)
    return bool(THREE_D_CONV.search(path.read_bytes()))  # a legacy (non-zip) torch.save file is one pickle


def backend_for(model: nn.Module, order: tuple[str, ...] | None = None) -> str:
    """The packing backend for an eager model (float, observed or quantized)."""
    return packing_backend(any(THREE_D_CONV.search(type(m).__name__.encode()) for m in model.modules()), order)


class PercentileObserver(HistogramObserver):
    """Symmetric range from a percentile of |x| over the calibration histogram (like TensorRT's percentile calib)."""

    def __init__(self, percentile: float = 99.99, **kwargs):
        super().__init__(**kwargs)
        self.percentile = percentile

    @torch.jit.export
    def calculate_qparams(self):
        if self.histogram.sum() == 0:
            return super().calculate_qparams()
        edges = torch.linspace(float(self.min_val), float(self.max_val), self.histogram.numel() + 1)
        centres = ((edges[:-1] + edges[1:]) / 2).abs()
        order = torch.argsort(centres)
        cdf = torch.cumsum(self.histogram[order], 0) / self.histogram.sum()
        index = int(torch.searchsorted(cdf, torch.tensor(self.percentile / 100.0)).clamp(max=len(order) - 1))
        amax = centres[order][index].clamp(min=1e-8)
        return self._calculate_qparams(-amax, amax)


OBSERVERS = dict(zip(OBSERVER_NAMES, (MinMaxObserver, HistogramObserver, PercentileObserver)))


def trt_qconfig(observer: str = "histogram") -> QConfig:
    """PTQ qconfig TensorRT accepts: per-tensor symmetric activations, per-channel symmetric int8 weights."""
    if observer not in OBSERVERS:
        raise BridgeError(f"unknown observer '{observer}'", f"choose one of {', '.join(OBSERVERS)}")
    return QConfig(activation=OBSERVERS[observer].with_args(**ACTIVATION),
                   weight=PerChannelMinMaxObserver.with_args(**WEIGHT))


def ptq_qconfig(preset: str = "tensorrt", observer: str = "histogram") -> QConfig:
    """The PTQ qconfig of a preset; `observer` applies to the TensorRT one (the others bring their own)."""
    if preset not in QCONFIGS:
        raise BridgeError(f"unknown qconfig '{preset}'", f"choose one of {', '.join(QCONFIGS)}")
    if preset == "tensorrt":
        return trt_qconfig(observer)
    if preset == "torchvision":
        return QConfig(activation=torch.ao.quantization.default_observer,
                       weight=torch.ao.quantization.default_per_channel_weight_observer)
    return torch.ao.quantization.get_default_qconfig(preset)


def trt_qat_qconfig() -> QConfig:
    """QAT qconfig with the same quantization scheme as `trt_qconfig`, as fake-quant modules."""
    return QConfig(activation=FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, **ACTIVATION),
                   weight=FakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver, **WEIGHT))


@contextlib.contextmanager
def quiet_torch_warnings():
    """torch.ao.quantization, TorchScript and the TorchScript exporter warn on every call that they are deprecated;
    the eager quantization API is still what users' models come from, so keep the console readable. TorchScript's
    C++ interpreter prints its warnings straight to file descriptor 2, so that is muted too (errors still arrive
    as exceptions)."""
    with warnings.catch_warnings(), _muted_stderr_fd():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="torch")
        yield


@contextlib.contextmanager
def _muted_stderr_fd():
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


# Activation dtypes as eager modules hold them and as TorchScript stores them (ScalarType codes).
QINT8_DTYPES, QUINT8_DTYPES = (torch.qint8, 12), (torch.quint8, 13)
AFFINE_FIX = ("re-quantize with qdq_bridge.pytorch.quantize.trt_qconfig() (quint8, torch.per_tensor_symmetric "
              "activations)")


def activation_quantizers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) for each submodule that quantizes an activation: the Quantize stubs and every quantized
    module with an output scale and zero-point (weights keep theirs inside the packed parameters)."""
    return [(name, sub) for name, sub in module.named_modules()
            if name and hasattr(sub, "scale") and hasattr(sub, "zero_point")]


def _is_stub(sub: nn.Module) -> bool:
    return hasattr(sub, "dtype") and hasattr(sub, "scale") and not hasattr(sub, "_packed_params")


def activation_dtype(module: nn.Module) -> str | None:
    """'qint8' or 'quint8', as the model's Quantize stubs produce it; None without stubs."""
    dtypes = {sub.dtype for _, sub in activation_quantizers(module) if _is_stub(sub)}
    if dtypes & set(QINT8_DTYPES):
        return "qint8"
    return "quint8" if dtypes else None


def _module_type(sub: nn.Module) -> str:
    return getattr(sub, "original_name", None) or type(sub).__name__  # TorchScript keeps the eager class name


def qint8_to_quint8_activations(module: nn.Module) -> int:
    """Rewrite qint8 symmetric activations (the values PyTorch's CPU kernels no longer take) into the very same
    values as quint8 with zero-point 128: q_uint8 = q_int8 + 128 at the same scale. Works on eager and
    TorchScript modules, in place; returns how many quantizers changed. A qint8 zero-point other than 0 is
    affine: refused, naming the module."""
    quantizers = activation_quantizers(module)
    for name, sub in quantizers:
        if int(sub.zero_point) != 0:
            raise _affine(name, sub, "qint8")
    for _, sub in quantizers:
        if isinstance(sub.zero_point, torch.Tensor):
            sub.zero_point = torch.full_like(sub.zero_point, 128)
        else:
            sub.zero_point = 128
        if _is_stub(sub):
            sub.dtype = torch.quint8 if isinstance(sub.dtype, torch.dtype) else QUINT8_DTYPES[1]
    return len(quantizers)


def _affine(name: str, sub: nn.Module, dtype: str) -> BridgeError:
    return BridgeError(f"module '{name}' ({_module_type(sub)}) quantizes activations affinely ({dtype}, "
                       f"zero_point={int(sub.zero_point)}, scale={float(sub.scale):.4g}), which TensorRT's symmetric "
                       "int8 cannot represent", AFFINE_FIX)


# The activation schemes a QAT state_dict may have been trained with, as (qscheme, quant_min, quant_max): qdq_bridge's
# (symmetric), PyTorch's x86/fbgemm default (affine, reduce_range) and its qnnpack default (affine, full range).
QAT_ACTIVATION_SCHEMES = ((torch.per_tensor_symmetric, 0, 255), (torch.per_tensor_affine, 0, 127),
                          (torch.per_tensor_affine, 0, 255))


def adopt_stored_activation_schemes(model: nn.Module) -> dict[str, int]:
    """A QAT state_dict loaded into qdq_bridge's QAT structure brings each fake-quant's scale, zero-point and
    observed range, but not the scheme its observer computes them with, and `convert` recomputes them from the
    observer: give each activation observer the scheme (QAT_ACTIVATION_SCHEMES) that reproduces what the state
    stored, so the model converts as its own qconfig would have converted it. Returns how many activations took
    each scheme; refuses an activation no scheme reproduces. (Weights: every default qconfig's per-channel
    symmetric -128..127 is already qdq_bridge's.)"""
    adopted: dict[str, int] = {}
    for name, fake_quant in model.named_modules():
        if not isinstance(fake_quant, torch.ao.quantization.FakeQuantizeBase) or name.endswith("weight_fake_quant"):
            continue
        observer = fake_quant.activation_post_process
        stored = float(fake_quant.scale.flatten()[0]), int(fake_quant.zero_point.flatten()[0])
        for qscheme, quant_min, quant_max in QAT_ACTIVATION_SCHEMES:
            observer.qscheme, observer.quant_min, observer.quant_max = qscheme, quant_min, quant_max
            # symmetric quint8 takes zero-point 128 only without a customized range
            observer.has_customized_qrange = qscheme != torch.per_tensor_symmetric
            with quiet_torch_warnings():  # an observer that never ran warns and gives (1, 0)
                scale, zero_point = observer.calculate_qparams()
            computed = float(scale.flatten()[0]), int(zero_point.flatten()[0])
            if computed[1] == stored[1] and abs(computed[0] - stored[0]) <= 1e-6 * stored[0]:
                fake_quant.qscheme, fake_quant.quant_min, fake_quant.quant_max = qscheme, quant_min, quant_max
                key = "symmetric" if qscheme == torch.per_tensor_symmetric else f"affine {quant_min}..{quant_max}"
                adopted[key] = adopted.get(key, 0) + 1
                break
        else:
            raise BridgeError(f"QAT activation '{name}' stores scale {stored[0]:.6g} and zero-point {stored[1]}, "
                              "which no symmetric or affine 8-bit scheme computes from its observed range",
                              "convert the QAT model in PyTorch and pass the quantized model (TorchScript or "
                              "state_dict)")
    return adopted


def _fuse(model: nn.Module, is_qat: bool) -> None:
    """Fuse conv/bn/relu through the model's own `fuse_model` (torchvision's and our convention), if it has one."""
    if hasattr(model, "fuse_model"):
        try:
            model.fuse_model(is_qat=is_qat)
        except TypeError:  # older fuse_model() signatures take no argument
            model.fuse_model()


def prepare_ptq(model: nn.Module, observer: str = "histogram", keep_float: Iterable[str] = (),
                qconfig: str = "tensorrt") -> nn.Module:
    """Fuse and insert observers of a `QCONFIGS` preset into a float model (in place); calibrate it, then call
    `convert`. Submodules named in `keep_float` stay float (see `keep_float_modules`)."""
    return _prepare(model, ptq_qconfig(qconfig, observer), qat=False, keep_float=keep_float)


def prepare_qat(model: nn.Module, keep_float: Iterable[str] = ()) -> nn.Module:
    """Fuse and insert fake-quant modules into a float model (in place) for quantization-aware training."""
    return _prepare(model, trt_qat_qconfig(), qat=True, keep_float=keep_float)


def _prepare(model: nn.Module, qconfig: QConfig, qat: bool, keep_float: Iterable[str]) -> nn.Module:
    model.train(qat)
    _fuse(model, is_qat=qat)
    keep_float_modules(model, keep_float)
    model.qconfig = qconfig
    for module in model.modules():
        if isinstance(module, _CONV_TRANSPOSE) and getattr(module, "qconfig", qconfig) is not None:
            module.qconfig = per_tensor_weights(qconfig, qat)
    with quiet_torch_warnings():
        (torch.ao.quantization.prepare_qat if qat else torch.ao.quantization.prepare)(model, inplace=True)
    return model


# eager mode refuses per-channel weight observers on transposed convolutions ("not supported yet"); TensorRT takes
# per-tensor symmetric int8 weights there as well
_CONV_TRANSPOSE = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def per_tensor_weights(qconfig: QConfig, qat: bool) -> QConfig:
    """`qconfig` with per-tensor symmetric int8 weights over the same range, for transposed convolutions."""
    weight = {**WEIGHT, "qscheme": torch.per_tensor_symmetric}
    weight.pop("ch_axis", None)
    return QConfig(activation=qconfig.activation,
                   weight=FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, **weight) if qat
                   else MinMaxObserver.with_args(**weight))


def keep_float_modules(model: nn.Module, names: Iterable[str]) -> None:
    """Leave each named submodule (one tensor in, one out) float, in place: it is wrapped as DeQuantStub ->
    module -> QuantStub and quantization skips it. Where sensitive layers stay float, the exported graph has
    float islands between Q/DQ, which TensorRT runs in fp16 or fp32 (see `precision`)."""
    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise BridgeError(f"the model has no submodule '{name}' to keep float",
                              "name one as model.named_modules() lists it, e.g. layer4 or layer4.1.conv2") from None
        parent_name, _, attr = name.rpartition(".")
        module.qconfig = None
        setattr(model.get_submodule(parent_name), attr, nn.Sequential(
            torch.ao.quantization.DeQuantStub(), module, torch.ao.quantization.QuantStub()))


def convert(model: nn.Module, backend: str | None = None) -> nn.Module:
    """Convert an observed (PTQ) or fake-quantized (QAT) model to a quantized model, in place, its weights packed
    for `backend` (default `backend_for(model)`): run it with that backend (`using_backend`), as qdq_bridge's
    reference does."""
    model.eval()
    with using_backend(backend or backend_for(model)), quiet_torch_warnings():
        torch.ao.quantization.convert(model, inplace=True)
    return model


def first_conv_channels(model: nn.Module, rank: int) -> int | None:
    """The input channels of the model's first convolution (in module order; eager, fused, quantized and TorchScript
    modules all carry `in_channels` and `kernel_size`) where it takes inputs of `rank` dimensions, for naming a
    channel mismatch where torch's error speaks of weights and groups. Only used once torch has refused an input,
    so a first convolution that runs later misleads nothing."""
    first = next((m for _, m in model.named_modules() if isinstance(getattr(m, "in_channels", None), int)), None)
    kernel = getattr(first, "kernel_size", None)
    takes = 2 + len(kernel) if isinstance(kernel, (tuple, list)) else None
    return first.in_channels if first is not None and takes == rank else None


def calibrate(model: nn.Module, batches: Iterable[np.ndarray], total: int | None = None, progress: bool = True) -> None:
    """Run calibration batches through an observed model, with a progress bar where stderr is a terminal."""
    with torch.no_grad():
        for batch in tqdm(batches, total=total, desc="calibrating", unit="batch", leave=False,
                          disable=None if progress else True):
            try:
                model(torch.as_tensor(batch))
            except RuntimeError as exc:
                channels = first_conv_channels(model, batch.ndim)
                if channels is not None and batch.shape[1] != channels:
                    color = f" (images: --color {'gray' if channels == 1 else 'rgb'})" if channels in (1, 3) else ""
                    raise BridgeError(f"the calibration data has {batch.shape[1]}-channel samples, and the model's "
                                      f"first convolution takes {channels}-channel inputs",
                                      f"pass {channels}-channel data{color}") from None
                raise BridgeError(f"calibration failed ({str(exc).splitlines()[0]})",
                                  "check --input-shape and that the data matches the model") from None


def quantize_ptq(model: nn.Module, batches: Iterable[np.ndarray], observer: str = "histogram",
                 total: int | None = None, backend: str | None = None, keep_float: Iterable[str] = (),
                 qconfig: str = "tensorrt", progress: bool = True) -> nn.Module:
    """Post-training quantization of a float eager-mode model with a `QCONFIGS` preset (default: the
    TensorRT-legal scheme); the submodules named in `keep_float` stay float."""
    if not any(isinstance(m, torch.ao.quantization.QuantStub) for m in model.modules()):
        raise BridgeError("the float model has no QuantStub, so eager-mode quantization cannot place its inputs",
                          "add QuantStub/DeQuantStub (and FloatFunctional for adds) or use a torchvision "
                          "quantizable model (torchvision.models.quantization)")
    prepare_ptq(model, observer, keep_float, qconfig)
    calibrate(model, batches, total, progress)
    return convert(model, backend)
