"""Stage 1, load: TorchScript, pickled modules, state_dict + architecture; QAT and float models are converted.

Whatever comes in, what goes out is an eval-mode quantized eager or TorchScript module, plus what is known
about its input (shape, dataset) from the file's metadata.
"""
from __future__ import annotations

import collections
import copy
import importlib
import json
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..data.arrays import Dataset
from ..data.images import ImageSource
from ..errors import BridgeError, first_line, readable_file
from . import quantize

LOADABLE = "pass a TorchScript .pt, a torch.save'd module or a state_dict"
# extra file in TorchScript archives: {"input_shape": [...], "dataset": "...", "preprocess": {...}} (the keys of
# images.Preprocessing, e.g. {"preset": "imagenet"})
METADATA_FILE = "qdq_bridge.json"
TORCHVISION_INPUT = (1, 3, 224, 224)
CALIBRATION_BATCH = 32  # samples per forward pass while PTQ observers calibrate


@dataclass
class LoadedModel:
    """A quantized model ready to export, with what is known about its input."""

    module: nn.Module
    kind: str  # torchscript | pickled-module | state_dict; with "+qat-convert" / "+ptq" when qdq_bridge converted it
    backend: str  # the quantized backend its weights are packed for (quantize.packing_backend)
    input_shape: tuple[int, ...] | None = None
    dataset: str | None = None
    preprocess: dict | None = None  # how images become its inputs (images.Preprocessing fields)
    notes: list[str] = field(default_factory=list)
    program: torch.export.ExportedProgram | None = None  # a PT2E program, which is exported as a program


def save_torchscript(model: nn.Module, path: str | Path, input_shape: tuple[int, ...], dataset: str | None = None,
                     preprocess: dict | None = None):
    """Script a quantized model and save it with qdq_bridge's metadata so `convert` needs no --input-shape (nor
    --dataset, nor preprocessing options: `preprocess` holds images.Preprocessing's fields)."""
    meta = json.dumps({"input_shape": list(input_shape), "dataset": dataset, "preprocess": preprocess})
    with quantize.quiet_torch_warnings():
        torch.jit.save(torch.jit.script(model), str(path), _extra_files={METADATA_FILE: meta})


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def _load_torchscript(path: Path, backend: str) -> LoadedModel:
    extra = {METADATA_FILE: ""}
    try:
        with quantize.using_backend(backend), quantize.quiet_torch_warnings():
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        meta = json.loads(extra[METADATA_FILE]) if extra[METADATA_FILE] else {}
    except Exception as exc:  # a damaged archive fails in the zip reader, the unpickler or the TorchScript compiler
        raise BridgeError(f"'{path}' is a corrupt TorchScript archive ({_reason(exc)})",
                          "re-save it with torch.jit.save") from None
    shape = tuple(meta["input_shape"]) if meta.get("input_shape") else None
    return LoadedModel(module.eval(), "torchscript", backend, shape, meta.get("dataset"), meta.get("preprocess"))


def _torch_load(path: Path, trust_pickle: bool, backend: str):
    try:
        with quantize.using_backend(backend), quantize.quiet_torch_warnings():
            return torch.load(str(path), map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        # the safe unpickler names the class it refused ("Unsupported global"); garbage fails on an opcode
        if not trust_pickle and "Unsupported global" in str(exc):
            raise BridgeError(f"'{path}' is a pickled module, and unpickling runs code stored in the file",
                              "pass --trust-pickle if you trust its source, or save a state_dict or TorchScript "
                              "instead") from None
        raise _unreadable(path, exc) from None
    except Exception as exc:  # torch.load's legacy reader fails on garbage with KeyError, IndexError, OSError...
        raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: BaseException) -> BridgeError:
    return BridgeError(f"'{path}' is damaged or not a PyTorch model file ({type(exc).__name__}: {_reason(exc)})",
                       LOADABLE)


def _reason(exc: BaseException) -> str:
    """The first sentence of an exception's message: PyTorch's readers add paragraphs of advice after it."""
    return first_line(exc).split(". ")[0].rstrip(".")


def _restore_module_internals(module: nn.Module) -> None:
    """Give unpickled modules back the nn.Module internals their __setstate__ dropped.

    Quantized convolutions restore only their own fields when unpickled (seen on torch 2.14: no `_modules`,
    `_parameters`, hooks), so the module cannot even be walked. Missing internals are empty for such leaves.
    """
    fresh = nn.Module().__dict__
    for key, value in fresh.items():
        if key not in module.__dict__:
            module.__dict__[key] = copy.copy(value)
    for child in module.__dict__["_modules"].values():
        if child is not None:
            _restore_module_internals(child)


def resolve_arch(spec: str, state: dict | None = None) -> Callable[[], nn.Module]:
    """`torchvision:resnet18` (a quantizable torchvision model, its class count and auxiliary heads read from the
    `state` it is to load, when given) or `package.module:factory`."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not attr:
        raise BridgeError(f"architecture '{spec}' is not of the form 'module:factory'",
                          "use e.g. torchvision:resnet18 or qdq_bridge.pytorch.models:digits_resnet")
    if module_name == "torchvision":
        import torchvision.models.quantization as tvq
        factory = getattr(tvq, attr, None)
        if factory is None:
            raise BridgeError(f"torchvision has no quantizable model '{attr}'",
                              "use one of resnet18, resnet50, mobilenet_v2, mobilenet_v3_large, googlenet, "
                              "shufflenet_v2_x1_0, inception_v3, resnext101_32x8d")
        kwargs = torchvision_kwargs(attr, state or {})
        return lambda: factory(weights=None, quantize=False, **kwargs)
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise BridgeError(f"cannot import architecture '{spec}' ({exc})",
                          "check the module is on PYTHONPATH and defines that factory") from None
    return factory


def torchvision_kwargs(name: str, state: dict) -> dict:
    """The constructor arguments a torchvision model needs to take `state`: num_classes from the classifier (the
    last 2-D weight: a float/QAT `weight`, or a quantized Linear's packed (weight, bias)), and for GoogLeNet and
    Inception v3 whether the auxiliary classifiers are there (torchvision builds them by default)."""
    kwargs: dict = {}
    weights = [v[0] if isinstance(v, tuple) else v for k, v in state.items()
               if k.endswith(("weight", "_packed_params._packed_params"))]
    classifier = [w for w in weights if isinstance(w, torch.Tensor) and w.dim() == 2]
    if classifier:
        kwargs["num_classes"] = int(classifier[-1].shape[0])
    if name in ("googlenet", "inception_v3") and state:
        kwargs["aux_logits"] = any(k.startswith(("aux1.", "AuxLogits.")) for k in state)
        kwargs["init_weights"] = False  # the state replaces them; torchvision's init is slow and seeds nothing
    return kwargs


def state_dict_kind(state: dict) -> str:
    """quantized | qat | float, from the keys and values eager-mode quantization leaves in a state_dict."""
    if any(k.endswith("fake_quant_enabled") or k.endswith("observer_enabled") for k in state):
        return "qat"
    if any("_packed_params" in k for k in state) or any(
            isinstance(v, torch.Tensor) and v.is_quantized for v in state.values()):
        return "quantized"
    return "float"


def module_kind(module: nn.Module) -> str:
    """quantized | qat | float, from the module types eager-mode quantization inserts."""
    if any(isinstance(m, torch.ao.quantization.FakeQuantizeBase) for m in module.modules()):
        return "qat"
    if any(type(m).__module__.startswith("torch.ao.nn.quantized") and not isinstance(m, torch.ao.nn.quantized.FloatFunctional)
           for m in module.modules()):
        return "quantized"
    return "float"


def _load_state_dict(model: nn.Module, state: dict, where: str) -> None:
    if getattr(state, "_metadata", None) is None:
        # a state_dict re-saved as a plain dict lost PyTorch's per-module versions, without which quantized modules
        # read their weights under an old key layout ("KeyError: 'fc.weight'"): the architecture's own are the
        # versions of the same modules
        state = collections.OrderedDict(state)
        state._metadata = model.state_dict()._metadata
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError) as exc:  # the first line says "Error(s) in loading state_dict"; the second which
        detail = [line.strip() for line in str(exc).splitlines() if line.strip()][1:2] or [first_line(exc)]
        raise BridgeError(f"the state_dict does not fit the architecture {where} ({detail[0]})",
                          "pass the --arch the weights were trained with") from None


def load_model(path: str | Path, *, arch: str | None = None, trust_pickle: bool = False,
               calibration: Dataset | ImageSource | None = None, observer: str = "histogram",
               calibration_batch: int = CALIBRATION_BATCH, backends: tuple[str, ...] | None = None,
               keep_float: tuple[str, ...] = (), qconfig: str = "tensorrt", progress: bool = True) -> LoadedModel:
    """Load any supported model file and return it quantized (converting QAT and quantizing float models, with
    the submodules named in `keep_float` left float), its weights packed for the backend chosen, before anything
    was read, from `backends` (an order of preference, default quantize.BACKEND_ORDER): `LoadedModel.backend`."""
    path = readable_file(path, "model file")
    if path.stat().st_size == 0:
        raise BridgeError(f"'{path}' is empty (0 bytes)", LOADABLE)
    try:  # both read the zip directory and pickles as bytes, nothing is unpickled
        backend = quantize.packing_backend(quantize.file_has_3d_conv(path), backends)
        torchscript = _is_torchscript(path)
    except Exception as exc:  # zipfile raises BadZipFile, zlib.error, NotImplementedError... on damaged archives
        raise BridgeError(f"'{path}' is a damaged zip archive ({first_line(exc)})",
                          "save the model again (torch.jit.save or torch.save)") from None
    if torchscript:
        loaded = _load_torchscript(path, backend)
    else:
        obj = _torch_load(path, trust_pickle, backend)
        if isinstance(obj, nn.Module):
            _restore_module_internals(obj)
            loaded = LoadedModel(obj, "pickled-module", backend)
        elif isinstance(obj, dict) and obj and all(isinstance(k, str) for k in obj) and \
                any(isinstance(v, torch.Tensor) for v in obj.values()):
            loaded = _from_state_dict(obj, arch, backends)
        elif isinstance(obj, dict):
            kinds = ", ".join(sorted({type(v).__name__ for v in obj.values()})) or "nothing"
            raise BridgeError(f"'{path}' holds a dict of {kinds}, not a state_dict (which maps names to tensors)",
                              "pass a TorchScript .pt, a torch.save'd module or a model's state_dict with --arch")
        else:
            raise BridgeError(f"'{path}' holds a {type(obj).__name__}, not a model",
                              "pass a TorchScript .pt, a torch.save'd module or a state_dict with --arch")
    return _quantized(loaded, calibration, observer, calibration_batch, keep_float, qconfig, progress)


def torchvision_arch(arch: str | None) -> bool:
    return bool(arch) and arch.startswith("torchvision:")


def _from_state_dict(state: dict, arch: str | None, backends: tuple[str, ...] | None) -> LoadedModel:
    if arch is None:
        raise BridgeError("the file is a state_dict, which holds weights but no architecture",
                          "pass --arch torchvision:resnet18 or --arch package.module:factory")
    model = resolve_arch(arch, state)()
    backend = quantize.backend_for(model, backends)
    kind = state_dict_kind(state)
    if kind == "quantized":  # build the quantized module structure; scales and weights come from the state
        quantize.prepare_ptq(model, observer="minmax")
        quantize.convert(model, backend)
    elif kind == "qat":
        quantize.prepare_qat(model)
    with quantize.using_backend(backend):  # loading quantized weights packs them
        _load_state_dict(model, state, arch)
    loaded = LoadedModel(model.eval(), "state_dict", backend)
    if kind == "qat":
        schemes = quantize.adopt_stored_activation_schemes(model)
        loaded.notes.append("QAT activation schemes read from the state_dict's scales and observed ranges: "
                            + ", ".join(f"{scheme} x{count}" for scheme, count in sorted(schemes.items())))
    quantizers = quantize.activation_quantizers(model)
    if kind == "quantized" and quantizers and all(int(sub.zero_point) == 0 for _, sub in quantizers):
        # a state_dict does not record the activation dtype; all-zero zero-points are symmetric qint8 (quint8
        # models have the input and logits quantizers, which see negative values, off zero)
        for _, sub in quantizers:
            if hasattr(sub, "dtype"):
                sub.dtype = torch.qint8
        loaded.notes.append("every activation zero-point in the state_dict is 0: read as qint8 symmetric")
    return loaded


# quantized modules qdq_bridge refuses: (problem, fix) by `_refused_kind`
_REFUSED = {
    "dynamic": ("dynamically quantized module '{name}' ({kind}) computes activation scales at run time, which "
                "TensorRT's explicit quantization cannot express", "use static quantization (PTQ with calibration, "
                                                                   "or QAT)"),
    "recurrent": ("quantized module '{name}' ({kind}) runs a time loop or attention of its own that qdq_bridge does "
                  "not translate to Q/DQ yet (README, coverage)", "leave it float: qconfig None on it, a DeQuantStub "
                                                                  "before it and a QuantStub after its output tensor"),
}


def _refused_kind(path: str) -> str | None:
    """Which of _REFUSED a module class is, from its dotted path (eager: module and class; TorchScript: its type's
    qualified name, __torch__.torch.ao...)."""
    if ".quantized.dynamic." in path:
        return "dynamic"
    if ".quantizable." in path or ".quantized.modules." in path and path.rsplit(".", 1)[1] in ("LSTM",
                                                                                               "MultiheadAttention"):
        return "recurrent"
    return None


def _refuse_unsupported(module: nn.Module) -> None:
    """Dynamic quantization (quantize_dynamic) and quantized LSTM/MultiheadAttention are refused by module class,
    eager or scripted."""
    for name, sub in module.named_modules():
        scripted = isinstance(sub, torch.jit.ScriptModule)
        refused = _refused_kind(sub._c._type().qualified_name() if scripted else
                                f"{type(sub).__module__}.{type(sub).__name__}")
        if refused:
            problem, fix = _REFUSED[refused]
            raise BridgeError(problem.format(name=name, kind=sub.original_name if scripted else sub._get_name()), fix)


def _quantized(loaded: LoadedModel, calibration: Dataset | ImageSource | None, observer: str,
               batch: int, keep_float: tuple[str, ...], qconfig: str, progress: bool) -> LoadedModel:
    scripted = loaded.kind == "torchscript"
    quantized = bool(quantize.activation_quantizers(loaded.module)) if scripted else \
        module_kind(loaded.module) != "float"  # or QAT
    if keep_float and (scripted or quantized):  # a float TorchScript model is refused below
        raise BridgeError("--keep-float applies when qdq_bridge quantizes a float model, and this one is already "
                          "quantized (or QAT)", "drop --keep-float, or pass the float model with --calibrate DATA")
    if calibration is not None and quantized:
        raise BridgeError("--calibrate quantizes a float model, and this one is already quantized (or QAT)",
                          "drop --calibrate (and --calibration-samples)")
    _refuse_unsupported(loaded.module)
    if not scripted:
        _to_quantized_module(loaded, calibration, observer, batch, keep_float, qconfig, progress)
    elif not quantized:
        raise BridgeError("the TorchScript model is a float model with no quantization, and TorchScript cannot be "
                          "quantized in eager mode", "save the float model's state_dict and pass it with --arch "
                          "and --calibrate DATA, or quantize it before scripting")
    if quantize.activation_dtype(loaded.module) == "qint8":
        count = quantize.qint8_to_quint8_activations(loaded.module)
        loaded.notes.append(f"qint8 symmetric activations rewritten at {count} quantizers as the same values in quint8 "
                            "with zero-point 128 (q + 128, same scale), which PyTorch's CPU kernels run; TensorRT "
                            "gets int8 with zero-point 0 either way")
    loaded.module.eval()
    return loaded


def _to_quantized_module(loaded: LoadedModel, calibration: Dataset | ImageSource | None, observer: str,
                         batch: int, keep_float: tuple[str, ...], qconfig: str, progress: bool) -> None:
    kind = module_kind(loaded.module)
    if kind == "qat":
        quantize.convert(loaded.module, loaded.backend)
        loaded.kind += "+qat-convert"
        loaded.notes.append("QAT fake-quant modules converted to quantized modules by qdq_bridge")
    elif kind == "float":
        if calibration is None:
            raise BridgeError("the model is a float model with no quantization",
                              "pass --calibrate digits|data.npz so qdq_bridge quantizes it (PTQ), or quantize it "
                              "first")
        n_batches = -(-len(calibration) // batch)
        quantize.quantize_ptq(loaded.module, (x for x, _ in calibration.labelled_batches(batch)), observer,
                              total=n_batches, backend=loaded.backend, keep_float=keep_float, qconfig=qconfig,
                              progress=progress)
        loaded.kind += "+ptq"
        how = f"{observer} observer" if qconfig == "tensorrt" else f"PyTorch's default {qconfig} qconfig"
        loaded.notes.append(f"quantized by qdq_bridge: PTQ, {how}, {len(calibration)} calibration "
                            f"samples of {calibration.name}"
                            + (f"; kept float: {', '.join(keep_float)}" if keep_float else ""))
