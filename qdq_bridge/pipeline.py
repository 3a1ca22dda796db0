"""The whole job, top to bottom: load -> quantize -> reference -> export -> passes -> lint -> verify -> report.

`convert` writes `<name>.qdq.onnx`, `report.json` and `report.md` into the output folder, all or nothing:
files are written to a scratch folder inside it and moved into place only once every stage has run.
"""
from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import logging
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from .choices import SCRATCH_PREFIX
from .data import sources as datasets
from .data.preprocessing import Preprocessing
from .errors import BridgeError, Interrupted, readable_file
from .export.exporter import INPUT_NAME, export_onnx, exported_by, resolve_input_shape, stamped
from .graph.activations import affine_activations, refuse_full_range, requantize, scheme_counts
from .graph.activations import as_report as activations_report
from .graph.activations import notes as activation_notes
from .graph.image_input import PixelInput
from .graph.lint import Violation, error_violations, lint_model
from .graph.passes import pytorch_emulation, run_passes
from .graph.runtime import onnxruntime_runner
from .measures import Judging
from .options import ConvertOptions
from .outputs import logits_output
from .pt2e.program import export_program, is_program, load_program, program_batch_limit, program_input_shape
from .pytorch.load import CALIBRATION_BATCH, TORCHVISION_INPUT, LoadedModel, load_model, torchvision_arch
from .pytorch.quantize import available_backends, using_backend
from .pytorch.reference import (CHECK_SAMPLES, Reference, check_sample, cross_check, output_step,
                                runnable_reference)
from .pytorch.runner import torch_runner
from .report import DatasetEntry, ParityRow, Report, Thresholds, write_reports
from .trt.divergence import locate_divergence
from .trt.engine import TensorRTSession, TensorRTWorker
from .trt.stage import TensorRTStageResult, tensorrt_stage
from .verify import Comparison, StreamedParity, interval_confidence, run_onnxruntime, stream_parity

LOG = logging.getLogger("qdq_bridge")  # the slow steps' progress (the CLI prints it on stderr)

MIN_VERDICT_SAMPLES = 32  # fewer compared samples make no verdict: one differing sample would be 3 % of them
# (reference, candidate) pairs compared wherever both ran; the verdict is taken on the INT8 ones
JUDGED_PAIRS = (("pytorch", "onnxruntime"), ("pytorch", "tensorrt"))
BACKEND_PAIRS = (*JUDGED_PAIRS, ("onnxruntime", "tensorrt"), ("pytorch", "tensorrt-fp16"), ("pytorch", "tensorrt-fp32"))


@dataclass
class ConvertResult:
    onnx_path: Path
    report_json: Path
    report_md: Path
    report: Report
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


@contextlib.contextmanager
def _output_folder(output_dir: Path):
    """A private scratch folder inside `output_dir` for one run, which owns nothing else there.

    The run holds an exclusive lock on the output folder (flock on the folder itself, so nothing is left behind):
    a second run into the same folder is refused at once with one line, so each folder ends with one run's
    complete set. On failure or interruption only this run's scratch goes, and the folders this run created,
    where they are still empty: files that arrived from elsewhere meanwhile stay."""
    for path in (output_dir, *output_dir.parents):
        if path.exists() and not path.is_dir():
            raise BridgeError(f"output folder '{output_dir}' cannot be made: '{path}' is a file",
                              "pass --output-dir with a folder path, not a file's")
    created = [path for path in (output_dir, *output_dir.parents) if not path.exists()]  # deepest first

    def unwritable(exc: OSError) -> BridgeError:
        return BridgeError(f"output folder '{output_dir}' is not writable ({exc.strerror or exc})",
                           "pass --output-dir with a folder you can write to")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        lock = os.open(output_dir, os.O_RDONLY)
    except OSError as exc:
        raise unwritable(exc) from None
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BridgeError(f"output folder '{output_dir}' is in use by another qdq_bridge convert",
                              "wait for it to finish, or pass another --output-dir") from None
        # a killed run's scratch: no run holds the lock but this one
        for stale in output_dir.glob(f"{SCRATCH_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
        try:
            scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=output_dir))
        except OSError as exc:
            raise unwritable(exc) from None
        try:
            yield scratch
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            for folder in created:
                try:
                    folder.rmdir()  # only while empty
                except OSError:
                    break
            raise
        shutil.rmtree(scratch, ignore_errors=True)
    finally:
        os.close(lock)  # and with it the lock


INTERRUPTS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def _interrupts_held(output_dir: Path):
    """Interrupts wait while a run moves its files into place, so the folder never holds a mix of two runs' files;
    one that came meanwhile is raised after, as an Interrupted naming the folder with the complete set. Python runs
    signal handlers in the main thread only: from any other, nothing is held."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = {number: signal.signal(number, lambda number, frame: caught.append(number)) for number in INTERRUPTS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)  # None: a handler set in C
    if caught:
        raise Interrupted(caught[0], files_in=output_dir)


def _opset(model: onnx.ModelProto) -> int:
    """The ONNX's own (default-domain) opset: --opset, or the dynamo exporter's for a PT2E program."""
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _versions() -> dict[str, str]:
    import onnxruntime
    import torch
    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def convert(model: str | Path | torch.export.ExportedProgram, output_dir: str | Path | None = None,
            options: ConvertOptions | None = None) -> ConvertResult:
    """Convert a quantized (or QAT, or float + calibration data) PyTorch model into TensorRT-legal Q/DQ ONNX,
    lint it, check its parity with the PyTorch model on ONNX Runtime, and write the reports. `model`: a model
    file, or a PT2E program in memory (its files are named `program.*`)."""
    options = options or ConvertOptions()
    source = model if isinstance(model, torch.export.ExportedProgram) else readable_file(model, "model file")
    name = "program" if isinstance(source, torch.export.ExportedProgram) else source.stem
    output_dir = Path(output_dir) if output_dir else Path(f"{name}_qdq")
    _refuse_overwriting_inputs([source, *(Path(spec) for spec in (options.dataset, options.calibrate) if spec)],
                               output_dir, name)
    with _output_folder(output_dir) as scratch:
        try:
            return _convert(source, name, output_dir, scratch, options)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):  # a full disk, a quota, `ulimit -f`
                raise
            limit = " (or raise the file-size limit, ulimit -f)" if exc.errno == errno.EFBIG else ""
            raise BridgeError(f"the run's files could not be written to '{output_dir}' ({exc.strerror})",
                              f"free space there{limit}, or pass an --output-dir on a disk with room") from None


def _refuse_overwriting_inputs(inputs: list, output_dir: Path, name: str) -> None:
    """No input file is written over: a run writes report.json, report.md and NAME.* (.onnx, .engine, .json) into
    the output folder, and a file of the run's in that folder under one of those names is refused."""
    for path in inputs:
        if not isinstance(path, Path) or not path.is_file() or not output_dir.is_dir() or \
                not path.resolve().parent.samefile(output_dir):
            continue
        if path.name in ("report.json", "report.md") or path.name.startswith(f"{name}.") and \
                path.suffix in (".onnx", ".engine", ".json"):
            raise BridgeError(f"'{path}' is an input of this run, and the run would write its '{path.name}' over it "
                              f"in '{output_dir}'", "pass another --output-dir, or move or rename that file")


def _open(spec: str | None, options: ConvertOptions, metadata: dict | None, count: int | None):
    """The dataset `spec` names, as a seeded random subset of `count` samples."""
    if spec is None:
        return None
    source = datasets.open_dataset(spec, options.preprocess, Preprocessing.from_metadata(metadata), options.workers)
    return source.subset(count, options.seed)


def _check_labels(checks: list, heads: list, outputs: dict[str, np.ndarray], judging: Judging,
                  notes: list[str]) -> None:
    """Labels must fit an output (one per sample: a classification output; per position: a dense one) and name one
    of its classes (class indices are positions on its class axis; on a dense output, or the ignored value)."""
    for data, head in zip(checks, heads):
        if head.y is None:
            continue
        spec = next((spec for spec in judging.specs(outputs, head.y).values() if spec.labelled), None)
        if spec is None:
            notes.append(f"dataset {data.name} has labels, and every output is generic: they were not judged "
                         "(classification and dense outputs take labels; --task OUTPUT=KIND sets an output's kind)")
            continue
        classes = outputs[spec.name].shape[spec.class_axis]
        labels = data.y if isinstance(data, datasets.Dataset) else None  # streamed images: class folders
        if labels is not None and spec.kind == "dense" and judging.ignore_index is not None:
            labels = labels[labels != judging.ignore_index]
        low, high = (int(labels.min()), int(labels.max())) if labels is not None and labels.size else (0, 0)
        count = (data.classes or 0) if labels is None else high + 1
        if low < 0 or count > classes:
            ignored = f" or {judging.ignore_index}, the ignored value" if spec.kind == "dense" else ""
            found = f"has {count} classes" if low >= 0 else f"has labels from {low} to {high}"
            model = f"the model {classes} outputs" if len(outputs) == 1 and spec.kind == "classification" else \
                f"output {spec.name} {classes} classes"
            raise BridgeError(f"dataset {data.name} {found}, {model}",
                              f"pass the dataset the model was trained on (labels are 0 to {classes - 1}{ignored})")


def _check_memory(input_shape: tuple[int, ...], options: ConvertOptions) -> None:
    """Refuses a --batch-size whose float32 inputs alone would take over a quarter of the memory available now
    (each backend holds a batch's inputs and activations at once, several times the inputs), and --random-inputs
    that would (they are made at once)."""
    sample_bytes = math.prod(input_shape[1:]) * 4
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for option, count, what in (("--batch-size", options.batch_size, "one batch's inputs alone"),
                                ("--random-inputs", options.random_inputs, "the random inputs")):
        if count * sample_bytes > available / 4:
            raise BridgeError(f"{option} {count} needs {count * sample_bytes / 2 ** 30:.1f} GiB for {what}, and "
                              f"{available / 2 ** 30:.1f} GiB of memory is available",
                              f"pass {option} {max(1, int(available / 4 // sample_bytes))} or smaller")


# samples the affine activations' reach is measured on (the head of the parity data, whose first CHECK_SAMPLES the
# reference checks take too)
ACTIVATION_SAMPLES = 256


def _check_output_names(model: onnx.ModelProto, outputs: dict[str, np.ndarray]) -> None:
    """The ONNX must have the PyTorch model's outputs, named alike (qdq_bridge.outputs), for parity to pair them."""
    exported = [output.name for output in model.graph.output]
    if exported != list(outputs):
        raise BridgeError(f"the exported ONNX has outputs {', '.join(exported)} where the model returns "
                          f"{', '.join(outputs)}", "try --exporter torch, and report the model's output structure")


def _stream_parity(checks: list, reference, model: onnx.ModelProto, worker: TensorRTWorker, scratch: Path,
                   tensorrt: TensorRTStageResult, options: ConvertOptions, judging: Judging,
                   pixel_input: PixelInput | None) -> list[StreamedParity]:
    """One pass over each dataset: PyTorch, ONNX Runtime and each engine on every batch, each engine in one
    TensorRT session for every dataset (the INT8 engine on the batch's pixels where it takes 8-bit images). An
    engine whose run fails is recorded as the TensorRT stage's failure."""
    backends = {"pytorch": torch_runner(reference.module, reference.backend), "onnxruntime": onnxruntime_runner(model)}
    pairs, spread = BACKEND_PAIRS, None
    if reference.peer is not None and options.spread:  # PyTorch's second backend on every sample: its own spread
        peer, module = reference.peer
        spread = ("pytorch", f"pytorch:{peer}")
        backends[spread[1]] = torch_runner(module, peer)
        pairs = (*pairs, spread)
    runs, broken = [], set()
    with contextlib.ExitStack() as sessions:
        runners = {backend: _engine_runner(sessions, worker, scratch / name, options.batch_size,
                                           pixel_input if backend == "tensorrt" else None)
                   for backend, name in tensorrt.get("backends", {}).items()}
        for data in checks:
            engines = {backend: run for backend, run in runners.items() if backend not in broken}
            run = stream_parity(data, options.batch_size, backends, pairs, engines, options.progress, judging, spread)
            for backend, message in run.failed.items():
                tensorrt.setdefault("failed", {"step": f"run of {tensorrt['backends'][backend]}", "message": message})
            broken |= run.failed.keys()
            runs.append(run)
    return runs


def _engine_runner(sessions: contextlib.ExitStack, worker: TensorRTWorker, engine: Path, batch_size: int,
                   pixel_input: PixelInput | None = None):
    """The engine's outputs on a batch, through a session opened on first use (so a session that cannot start
    fails that engine's run, as any run failure does) and closed with `sessions`; an engine of 8-bit pixels gets
    the batch's pixels."""
    opened: list[TensorRTSession] = []

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        if not opened:
            opened.append(sessions.enter_context(TensorRTSession(engine, batch_size, worker)))
        return opened[0].run(pixel_input.pixels(x) if pixel_input else x)
    return run


def _dataset_entry(data, run: StreamedParity) -> DatasetEntry:
    """What the report says of a dataset: its size, preprocessing, and images/s of each backend."""
    entry = DatasetEntry(name=data.name, samples=run.samples, classes=data.classes,
                         images_per_second={k: round(v, 1) for k, v in run.images_per_second().items()})
    if data.decode_seconds is not None:  # an image dataset
        entry["preprocessing"] = data.resolved()
    return entry


def _pt2e_program(source: Path | torch.export.ExportedProgram, options: ConvertOptions,
                  calibration) -> LoadedModel:
    """A quantized PT2E program; a float one quantized here by PTQ on --calibrate's data (qdq_bridge's TensorRT
    quantizer, in --placement's placement), or refused with the ways to quantize it."""
    label = f"'{source.name}'" if isinstance(source, Path) else "the program"
    eager_only = [option for option, used in (("--arch", options.arch), ("--keep-float", options.keep_float),
                                              ("--qconfig", options.qconfig != "tensorrt"),
                                              ("--observer", options.observer != "histogram")) if used]
    if eager_only:
        raise BridgeError(f"{label} is a PT2E program: {', '.join(eager_only)} apply to eager models",
                          "drop them (--calibrate quantizes a float program with qdq_bridge's TensorRT quantizer)")
    program = load_program(source) if isinstance(source, Path) else source
    quantized = any("quantize_per_tensor" in str(n.target) for n in program.graph.nodes if n.op == "call_function")
    input_shape, batch_limit = program_input_shape(program), program_batch_limit(program)
    if batch_limit is not None and options.batch_size > batch_limit:
        raise BridgeError(f"the batch dimension of {label} goes up to {batch_limit}, and --batch-size is "
                          f"{options.batch_size}", f"pass --batch-size {batch_limit} or less")
    notes = ["the PyTorch reference is the PT2E program itself: its quantize/dequantize ops run in float, no "
             "quantized backend involved"]
    if quantized and calibration is not None:
        raise BridgeError(f"{label} is a quantized PT2E program and --calibrate quantizes float ones",
                          "drop --calibrate")
    if not quantized:
        if calibration is None:
            raise BridgeError(f"{label} is a PT2E program without quantize ops (a float program)",
                              "pass --calibrate DATA to quantize it here, or quantize it with prepare_pt2e/"
                              "convert_pt2e and qdq_bridge.pt2e.quantizer.TensorRTQuantizer (README, PT2E) and "
                              "torch.export.save it")
        from .pt2e.quantizer import quantize_program  # torchao's quantizer: imported where a program needs it
        calibration = calibration.fit(input_shape)
        batches = calibration.labelled_batches(min(CALIBRATION_BATCH, batch_limit or CALIBRATION_BATCH))
        program = quantize_program(program, torch.zeros(2, *input_shape[1:]),
                                   (torch.from_numpy(x) for x, _ in batches), options.placement, batch_limit)
        notes.insert(0, f"quantized by qdq_bridge: PT2E PTQ with its TensorRT quantizer ({options.placement} "
                        f"placement), {len(calibration)} calibration samples of {calibration.name}")
    return LoadedModel(program.module(), "pt2e" if quantized else "pt2e+ptq",
                       available_backends(options.torch_backends)[0], input_shape, notes=notes, program=program)


def _convert(source: Path | torch.export.ExportedProgram, name: str, output_dir: Path, scratch: Path,
             options: ConvertOptions) -> ConvertResult:
    timer = _StageTimer()
    with timer("load"):
        calibration = _open(options.calibrate, options, None, options.calibration_samples)
        if is_program(source):
            loaded = _pt2e_program(source, options, calibration)
        else:
            if calibration is not None:  # a float model's shape is known from the options alone (no metadata)
                calibration = calibration.fit(options.input_shape or (
                    TORCHVISION_INPUT if torchvision_arch(options.arch) else None))
            loaded = load_model(
                source, arch=options.arch, trust_pickle=options.trust_pickle, calibration=calibration,
                observer=options.observer, backends=options.torch_backends, keep_float=options.keep_float,
                qconfig=options.qconfig, progress=options.progress)
        program = loaded.program
        dataset_spec = options.dataset or loaded.dataset
        checks = [_open(dataset_spec, options, loaded.preprocess, options.limit)] if dataset_spec else []
        # shape precedence: --input-shape, the file's metadata, the labelled dataset, torchvision's 224x224 for
        # --arch torchvision:NAME, the first layer's weights
        from_data = (1, *checks[0].sample_shape) if checks and checks[0].sample_shape and \
            loaded.input_shape is None else None
        default = TORCHVISION_INPUT if torchvision_arch(options.arch) and loaded.input_shape is None else None
        input_shape = resolve_input_shape(loaded, options.input_shape or from_data or default)
    with timer("reference"):  # shape errors and engine limits surface here, before any export
        reference = Reference(loaded.module, loaded.backend, "nothing: a PT2E program") if program is not None \
            else runnable_reference(loaded.module, loaded.backend, input_shape, options.torch_backends)
        outputs = torch_runner(reference.module, reference.backend)(np.zeros((1, *input_shape[1:]), np.float32))
        logits = logits_output({name: value.shape for name, value in outputs.items()}, options.logits)
    _check_memory(input_shape, options)
    checks = [data.fit(input_shape) for data in checks]  # after the model's own shape check: that error comes first
    with timer("export"), using_backend(reference.backend):  # torch.onnx runs the model
        exported = stamped(export_program(program, input_shape, INPUT_NAME, list(outputs)),
                           "torch.onnx dynamo (PT2E program)") if program is not None else \
            export_onnx(reference.module, input_shape, options.opset, options.dynamic_batch, options.exporter)
    _check_output_names(exported, outputs)
    with timer("activations"):  # what int8 holds of PyTorch's affine activations, measured on the parity data
        reach = (checks[0] if checks else datasets.random_inputs(input_shape, ACTIVATION_SAMPLES)).head(
            ACTIVATION_SAMPLES)
        affine = affine_activations(exported, reach.batches(options.batch_size))
        full_range = [a for a in affine if a.full_range]
        if full_range and not options.requantize_activations:
            refuse_full_range(affine, program=program is not None)
        legalizable = requantize(exported, affine) if full_range else exported
    with timer("passes"):
        model, applied = run_passes(legalizable, options.disabled_passes, options.placement)
    with timer("lint"):
        violations = lint_model(model)
    onnx_name = f"{name}.qdq.onnx"
    onnx.save(model, str(scratch / onnx_name))

    with timer("reference"):  # the checks that need a few rows take them from the head already read (reach)
        heads = [reach.head(CHECK_SAMPLES)] if checks else []  # checks: the one dataset, random inputs come later
        judging = Judging(options.logits, options.tasks, options.class_axes,
                          {name: output_step(exported, name) for name in outputs}, options.min_cosine,
                          options.ignore_index)
        label_notes: list[str] = []
        _check_labels(checks, heads, outputs, judging, label_notes)
        sample = check_sample(heads, input_shape)
        if program is None:  # a PT2E program runs in float, on no quantized backend: nothing to cross-check
            emulation = pytorch_emulation(exported)
            cross_check(reference, sample,
                        lambda x: run_onnxruntime(emulation, datasets.Dataset("sample", x), optimize=False,
                                                  logits=logits),
                        output_step(exported, logits), options.torch_backends, logits)
    # an engine of 8-bit pixels: the parity data's preprocessing goes inside it (arrays: pixels / 255 alone)
    pixel_input = PixelInput.of(options.engine_input, checks[0].resolved() if checks and
                                checks[0].decode_seconds is not None else None)
    if options.random_inputs:  # random images where the engine takes pixels: the engine sees what parity judges
        checks.append(datasets.Dataset(f"random images x{options.random_inputs}", pixel_input.random_images(
            input_shape, options.random_inputs)) if pixel_input else
            datasets.random_inputs(input_shape, options.random_inputs))
        heads.append(checks[-1])
    notes = [*loaded.notes, *reference.notes, *activation_notes(affine, reach.name, options.placement), *label_notes]
    with timer("tensorrt"):
        worker = TensorRTWorker(options.trt_python, options.trt_timeout_s)
        tensorrt = tensorrt_stage(worker, model, scratch, onnx_name, sample, options, notes, pixel_input)
    with timer("verify"):
        streamed = _stream_parity(checks, reference, model, worker, scratch, tensorrt, options, judging, pixel_input)
    parity = [c for run in streamed for c in run.comparisons]
    # The verdict is taken on labelled data where there is some: on random inputs a model made for other data
    # gives near-tied logits, whose top-1 flips on a single rounding step; they are then shown, not judged.
    int8 = [c for c in parity if (c.reference, c.candidate) in JUDGED_PAIRS]
    judged = [c for c in int8 if c.reference_accuracy is not None] or int8
    failed = [f for c in judged for f in c.failures(options.min_agreement, options.max_accuracy_gap_points,
                                                   options.significance, options.min_position_agreement)]
    notes += [n for c in judged for n in c.spread_notes(options.min_agreement, options.significance,
                                                        options.min_position_agreement)]
    compared = min((c.samples for c in judged), default=0)
    if compared < MIN_VERDICT_SAMPLES:
        failed.append(f"only {compared} samples were compared; a verdict needs at least {MIN_VERDICT_SAMPLES} "
                      "(pass a larger --dataset, or --random-inputs N)")
    parity_ok = not failed
    if error_violations(violations):
        failed.append(f"lint: {len(error_violations(violations))} errors "
                      f"({', '.join(sorted({v.rule for v in error_violations(violations)}))})")
    if tensorrt.get("failed"):
        failed.append(f"TensorRT: the {tensorrt['failed']['step']} failed ({tensorrt['failed']['message']})")
    elif tensorrt.get("engine") and not parity_ok:
        try:
            with timer("divergence"):  # a diagnosis: builds of its own, so its own line in stage_seconds
                tensorrt["divergence"] = locate_divergence(worker, model, scratch / tensorrt["engine_onnx"],
                                                           heads[0], options.trt)
        except BridgeError as exc:
            notes.append(f"the divergence locator failed: {exc.problem}")
    worker.close()  # its process, if a call started one; on an error garbage collection ends it
    report = Report(
        model=source.name if isinstance(source, Path) else name, source=str(source) if isinstance(source, Path)
        else "an ExportedProgram in memory", kind=loaded.kind, notes=notes,
        input_shape=list(input_shape), opset=_opset(exported), exporter=exported_by(exported), onnx=onnx_name,
        ok=not failed, failed=failed,
        pytorch_reference=reference.as_dict(),
        outputs={name: list(value.shape[1:]) for name, value in outputs.items()}, logits=logits,
        thresholds=Thresholds(min_agreement=options.min_agreement,
                              min_position_agreement=options.min_position_agreement,
                              min_cosine=options.min_cosine,
                              max_accuracy_gap_points=options.max_accuracy_gap_points,
                              significance=options.significance,
                              loss_interval_confidence=interval_confidence(options.significance)),
        parity=[ParityRow(**c.as_dict(options.max_accuracy_gap_points, options.significance),
                          judged=any(c is j for j in judged)) for c in parity],
        datasets=[_dataset_entry(data, run) for data, run in zip(checks, streamed)],
        op_counts=dict(collections.Counter(n.op_type for n in model.graph.node).most_common()),
        activations=activations_report(affine, scheme_counts(exported), bool(full_range)),
        placement=options.placement, passes=applied, passes_disabled=sorted(options.disabled_passes),
        lint=[vars(v) for v in violations],
        tensorrt=tensorrt,
        stage_seconds=timer.seconds, versions=_versions())
    write_reports(report, scratch)
    final = {}
    with _interrupts_held(output_dir):
        for name in dict.fromkeys((onnx_name, "report.json", "report.md", *tensorrt.get("files", []))):
            final[name] = output_dir / name
            (scratch / name).replace(final[name])
    return ConvertResult(final[onnx_name], final["report.json"], final["report.md"], report, violations, parity)
