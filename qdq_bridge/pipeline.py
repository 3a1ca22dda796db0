"""The whole job, top to bottom: load -> quantize -> export -> passes -> lint -> verify -> report.

`convert` writes `<name>.qdq.onnx`, `report.json` and `report.md` into the output folder, all or nothing:
files are written to a scratch folder inside it and moved into place only once every stage has run.
"""
from __future__ import annotations

import collections
import contextlib
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from . import data as datasets
from .errors import BridgeError
from .export import DEFAULT_OPSET, export_onnx, resolve_input_shape
from .lint import Violation, errors, lint_model
from .load import load_model
from .passes import run_passes
from .report import write_reports
from .verify import Comparison, compare, run_onnxruntime, run_torch


@dataclass
class ConvertOptions:
    input_shape: tuple[int, ...] | None = None
    arch: str | None = None  # architecture for state_dict files: torchvision:NAME or package.module:factory
    trust_pickle: bool = False
    calibrate: str | None = None  # dataset spec to quantize a float model with (PTQ)
    observer: str = "histogram"
    dataset: str | None = None  # labelled dataset for parity; defaults to the model file's metadata
    random_inputs: int = 64
    disabled_passes: tuple[str, ...] = ()
    opset: int = DEFAULT_OPSET
    dynamic_batch: bool = True
    batch_size: int = 64
    min_agreement: float = 0.995
    max_accuracy_gap_points: float = 0.2


@dataclass
class ConvertResult:
    onnx_path: Path
    report_json: Path
    report_md: Path
    report: dict
    lint: list[Violation]
    parity: list[Comparison]

    @property
    def ok(self) -> bool:
        return self.report["ok"]


@dataclass
class _StageTimer:
    seconds: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        yield
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


def _writable_folder(output_dir: Path) -> tuple[Path, bool]:
    """Create the output folder if needed and return (scratch folder inside it, whether we created it)."""
    created = not output_dir.exists()
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".partial-", dir=output_dir)), created
    except OSError as exc:
        raise BridgeError(f"output folder '{output_dir}' is not writable ({exc.strerror or exc})",
                          "pass --output-dir with a folder you can write to") from None


def _versions() -> dict[str, str]:
    import onnxruntime
    import torch
    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def convert(model_path: str | Path, output_dir: str | Path | None = None,
            options: ConvertOptions | None = None) -> ConvertResult:
    """Convert a quantized (or QAT, or float + calibration data) PyTorch model into TensorRT-legal Q/DQ ONNX,
    lint it, check its parity with the PyTorch model on ONNX Runtime, and write the reports."""
    options = options or ConvertOptions()
    model_path = Path(model_path)
    if not model_path.is_file():
        raise BridgeError(f"model file '{model_path}' not found", "check the path")
    output_dir = Path(output_dir) if output_dir else Path(f"{model_path.stem}_qdq")
    scratch, created = _writable_folder(output_dir)
    try:
        result = _convert(model_path, output_dir, scratch, options)
    except BaseException:
        shutil.rmtree(output_dir if created else scratch, ignore_errors=True)
        raise
    shutil.rmtree(scratch, ignore_errors=True)
    return result


def _convert(model_path: Path, output_dir: Path, scratch: Path, options: ConvertOptions) -> ConvertResult:
    timer = _StageTimer()
    with timer("load"):
        calibration = datasets.load_dataset(options.calibrate) if options.calibrate else None
        loaded = load_model(model_path, arch=options.arch, trust_pickle=options.trust_pickle,
                            calibration=calibration, observer=options.observer)
        input_shape = resolve_input_shape(loaded, options.input_shape)
    with timer("export"):
        exported = export_onnx(loaded.module, input_shape, options.opset, options.dynamic_batch)
    with timer("passes"):
        model, applied = run_passes(exported, options.disabled_passes)
    with timer("lint"):
        violations = lint_model(model)
    onnx_name = f"{model_path.stem}.qdq.onnx"
    onnx.save(model, str(scratch / onnx_name))

    with timer("verify"):
        parity = []
        dataset_spec = options.dataset or loaded.dataset
        checks = [datasets.load_dataset(dataset_spec)] if dataset_spec else []
        if options.random_inputs:
            checks.append(datasets.random_inputs(input_shape, options.random_inputs))
        for data in checks:
            if data.x.shape[1:] != tuple(input_shape[1:]):
                raise BridgeError(f"dataset {data.name} has samples of shape {data.x.shape[1:]}, the model takes "
                                  f"{tuple(input_shape[1:])}", "pass a dataset that matches --input-shape")
            reference = run_torch(loaded.module, data, options.batch_size)
            candidate = run_onnxruntime(model, data, options.batch_size)
            parity.append(compare(reference, candidate, data, "pytorch", "onnxruntime"))

    # The verdict is taken on labelled data where there is some: on random inputs a model made for other data
    # gives near-tied logits, whose top-1 flips on a single rounding step; they are then shown, not judged.
    judged = [c for c in parity if c.reference_accuracy is not None] or parity
    parity_ok = all(c.within(options.min_agreement, options.max_accuracy_gap_points) for c in judged)
    report = {
        "model": model_path.name, "source": str(model_path), "kind": loaded.kind, "notes": loaded.notes,
        "input_shape": list(input_shape), "opset": options.opset, "onnx": onnx_name,
        "ok": parity_ok and not errors(violations),
        "thresholds": {"min_agreement": options.min_agreement,
                       "max_accuracy_gap_points": options.max_accuracy_gap_points},
        "parity": [c.as_dict() | {"judged": c in judged} for c in parity],
        "op_counts": dict(collections.Counter(n.op_type for n in model.graph.node).most_common()),
        "passes": applied, "passes_disabled": sorted(options.disabled_passes),
        "lint": [vars(v) for v in violations],
        "stage_seconds": timer.seconds, "versions": _versions(),
    }
    write_reports(report, scratch)
    final = {}
    for name in (onnx_name, "report.json", "report.md"):
        final[name] = output_dir / name
        (scratch / name).replace(final[name])
    return ConvertResult(final[onnx_name], final["report.json"], final["report.md"], report, violations, parity)
