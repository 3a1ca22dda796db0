"""Stage 5, verify: run the PyTorch quantized model and the Q/DQ ONNX (ONNX Runtime), and the TensorRT engine
where there is one, on the same batches as they are decoded and compare logits: top-1 agreement, accuracy of
each where labels exist, max/mean absolute logit difference, as running sums (`stream_parity`)."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import onnx
import torch
from torch import nn
from tqdm import tqdm

from .data import Dataset
from .errors import BridgeError
from .quantize import available_engines, quiet_torch_warnings, using_engine


@dataclass
class Comparison:
    """How far a candidate backend's logits are from the reference's on one dataset."""

    dataset: str
    reference: str
    candidate: str
    samples: int
    top1_agreement: float
    max_abs_diff: float
    mean_abs_diff: float
    reference_accuracy: float | None = None
    candidate_accuracy: float | None = None

    @property
    def accuracy_gap_points(self) -> float | None:
        """|accuracy difference| in percentage points, where the dataset has labels."""
        if self.reference_accuracy is None:
            return None
        return abs(self.reference_accuracy - self.candidate_accuracy) * 100

    def within(self, min_agreement: float, max_accuracy_gap_points: float) -> bool:
        return not self.failures(min_agreement, max_accuracy_gap_points)

    def failures(self, min_agreement: float, max_accuracy_gap_points: float) -> list[str]:
        """Each criterion this comparison misses, with its numbers, e.g. 'pytorch vs onnxruntime on digits-test:
        top-1 agreement 10.44% < 99.50%'."""
        pair = f"{self.reference} vs {self.candidate} on {self.dataset}"
        found = []
        if self.top1_agreement < min_agreement:
            found.append(f"{pair}: top-1 agreement {self.top1_agreement * 100:.2f}% < {min_agreement * 100:.2f}%")
        gap = self.accuracy_gap_points
        if gap is not None and gap > max_accuracy_gap_points + 1e-9:
            found.append(f"{pair}: accuracy gap {gap:.2f} points > {max_accuracy_gap_points:g} ({self.reference} "
                         f"{self.reference_accuracy * 100:.2f}%, {self.candidate} {self.candidate_accuracy * 100:.2f}%)")
        return found

    def as_dict(self) -> dict:
        return {**asdict(self), "accuracy_gap_points": self.accuracy_gap_points}


def torch_runner(module: nn.Module, engine: str | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """A batch in, the model's float outputs out, run with `engine`'s quantized kernels (default: the first of
    quantize.ENGINE_ORDER; use the engine the weights were packed for, as `LoadedModel.engine` says)."""
    engine = engine or available_engines()[0]

    def run(batch: np.ndarray) -> np.ndarray:
        with using_engine(engine), torch.no_grad(), quiet_torch_warnings():
            return module(torch.from_numpy(batch)).float().numpy()
    return run


def onnxruntime_runner(model: onnx.ModelProto | str, optimize: bool = True) -> Callable[[np.ndarray], np.ndarray]:
    """A batch in, the model's first output on ONNX Runtime's CPU out. optimize=False turns graph optimizations
    off, so Q/DQ pairs are not fused into integer kernels and every op computes in float on dequantized values."""
    import onnxruntime as ort

    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    static_batch = session.get_inputs()[0].shape[0]

    def run(batch: np.ndarray) -> np.ndarray:
        if not isinstance(static_batch, int):
            return session.run(None, {name: batch})[0]
        # a static-batch export runs one sample at a time
        return np.concatenate([session.run(None, {name: batch[i:i + static_batch]})[0]
                               for i in range(0, len(batch), static_batch)])
    return run


def run_torch(module: nn.Module, data: Dataset, batch_size: int = 64, engine: str | None = None) -> np.ndarray:
    """The model's float outputs on `data` (see `torch_runner`)."""
    run = torch_runner(module, engine)
    return np.concatenate([run(b) for b in data.batches(batch_size)])


def run_onnxruntime(model: onnx.ModelProto | str, data: Dataset, batch_size: int = 64,
                    optimize: bool = True) -> np.ndarray:
    """The model's first output on `data` (see `onnxruntime_runner`)."""
    run = onnxruntime_runner(model, optimize)
    return np.concatenate([run(b) for b in data.batches(batch_size)])


class RunningComparison:
    """A Comparison as running sums over batches: no logits are kept, so a dataset of any size takes the memory
    of one batch. Top-1 agreement counts a candidate's class as agreeing when it is one of the reference's
    largest logits: int8 logits often tie exactly, and then the reference's own top-1 is just the lowest tied
    index."""

    def __init__(self, dataset: str, reference: str, candidate: str):
        self.names = (dataset, reference, candidate)
        self.samples = self.agreeing = self.values = 0
        self.max_diff = self.sum_diff = 0.0
        self.correct: list[int] | None = [0, 0]

    def add(self, reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None) -> RunningComparison:
        diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
        ref_top1, cand_top1 = reference.argmax(1), candidate.argmax(1)
        self.agreeing += int((reference[np.arange(len(reference)), cand_top1] == reference.max(1)).sum())
        self.max_diff = max(self.max_diff, float(diff.max()))
        self.sum_diff += float(diff.sum())
        self.values += diff.size
        self.samples += len(reference)
        if labels is None:
            self.correct = None
        elif self.correct is not None:
            self.correct = [self.correct[0] + int((ref_top1 == labels).sum()),
                            self.correct[1] + int((cand_top1 == labels).sum())]
        return self

    def result(self) -> Comparison:
        result = Comparison(*self.names, self.samples, self.agreeing / self.samples, self.max_diff,
                            self.sum_diff / self.values)
        if self.correct is not None:
            result.reference_accuracy, result.candidate_accuracy = (c / self.samples for c in self.correct)
        return result


def compare(reference: np.ndarray, candidate: np.ndarray, data: Dataset, reference_name: str,
            candidate_name: str) -> Comparison:
    """`RunningComparison` over whole arrays of logits."""
    return RunningComparison(data.name, reference_name, candidate_name).add(reference, candidate, data.y).result()


@dataclass
class StreamedParity:
    """What one pass over a dataset gave: the comparisons (pairs in the order asked), the seconds each backend
    spent (and "decode": the decoding, summed over the worker processes, for a streamed image dataset), and the
    backends that failed (with why), whose comparisons are left out."""

    comparisons: list[Comparison]
    samples: int
    seconds: dict[str, float]
    failed: dict[str, str] = field(default_factory=dict)

    def images_per_second(self) -> dict[str, float]:
        return {name: self.samples / s if s else float("inf") for name, s in self.seconds.items()}


def stream_parity(source, batch_size: int, backends: dict[str, Callable[[np.ndarray], np.ndarray]],
                  pairs: tuple[tuple[str, str], ...], engines: dict[str, Callable[[np.ndarray], np.ndarray]] | None
                  = None, progress: bool = True) -> StreamedParity:
    """Run every backend on the same batches as `source` decodes them and compare `pairs` as running sums, so
    no logits are kept. `engines` (TensorRT engines, each in its worker process's session) run on every batch
    too; one that raises a BridgeError is dropped from then on and reported in `failed`, with its comparisons."""
    engines = dict(engines or {})
    ran = [*backends, *engines]
    running = {pair: RunningComparison(source.name, *pair) for pair in pairs if set(pair) <= set(ran)}
    seconds = dict.fromkeys(ran, 0.0)
    failed: dict[str, str] = {}

    def timed(name: str, run: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        out = run(x)
        seconds[name] += time.perf_counter() - start
        return out

    samples = 0
    with tqdm(total=len(source), unit="img", desc=f"parity on {source.name}", leave=False,
              disable=None if progress else True) as bar:
        for x, labels in source.labelled_batches(batch_size):
            outputs = {name: timed(name, run, x) for name, run in backends.items()}
            for name, run in list(engines.items()):
                try:
                    outputs[name] = timed(name, run, x)
                except BridgeError as exc:
                    failed[name] = exc.problem
                    del engines[name]
            for (ref, cand), comparison in running.items():
                if ref in outputs and cand in outputs:
                    comparison.add(outputs[ref], outputs[cand], labels)
            samples += len(x)
            bar.update(len(x))
            bar.set_postfix_str(", ".join(f"{name} {samples / s:.0f}/s" for name, s in seconds.items() if s))
    if source.decode_seconds is not None:  # worker seconds: images/s of one decoding process
        seconds = {"decode": source.decode_seconds, **seconds}
    comparisons = [c.result() for (ref, cand), c in running.items()
                   if ref not in failed and cand not in failed and c.samples]
    return StreamedParity(comparisons, samples, seconds, failed)


def quantized_tensors(model: onnx.ModelProto) -> list[tuple[str, float]]:
    """(tensor, scale) for every activation entering a QuantizeLinear, in graph order, each tensor once (a
    tensor read by two Qs, as a faithful ResNet's MaxPool output is, would be marked as an engine output twice,
    which TensorRT refuses): the points where backends should agree to within a quantization step or so."""
    constants = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    graph_inputs = {i.name for i in model.graph.input}
    found: dict[str, float] = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in constants and node.input[0] not in graph_inputs:
            scale = constants.get(node.input[1])
            if scale is not None and scale.size == 1:
                found.setdefault(node.input[0], float(scale))
    return list(found.items())


# Ops whose output TensorRT cannot expose as an extra engine output: 8.6 fuses a MaxPool into the convolution
# before it (CaskConvActPool) and asserts in its graph compiler (cgraph.h) when the pooled tensor is marked, alone
# or with others (seen on ResNet-18 on an H100 and an H200, both placements).
UNMARKABLE_PRODUCERS = {"MaxPool": "TensorRT fuses the pooling into the convolution before it"}


def markable_tensors(model: onnx.ModelProto, tensors: list[tuple[str, float]]) -> tuple[list, dict[str, str]]:
    """`tensors` split into those an engine can be asked to output and the others, each with the reason."""
    producers = {output: node.op_type for node in model.graph.node for output in node.output}
    skipped = {name: UNMARKABLE_PRODUCERS[producers[name]] for name, _ in tensors
               if producers.get(name) in UNMARKABLE_PRODUCERS}
    return [t for t in tensors if t[0] not in skipped], skipped


def run_onnxruntime_tensors(model: onnx.ModelProto, names: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
    """Values of intermediate tensors, made graph outputs for one ONNX Runtime run."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend([onnx.ValueInfoProto(name=name) for name in names])
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    values = session.run(names, {session.get_inputs()[0].name: x})
    return dict(zip(names, values))


def first_divergences(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                      tensors: list[tuple[str, float]], steps: float = 2.0, limit: int = 5) -> list[dict]:
    """The first tensors (graph order) where candidate and reference differ by more than `steps` quantization
    steps: where to look when an engine disagrees."""
    found = []
    for name, scale in tensors:
        if name not in reference or name not in candidate or reference[name].shape != candidate[name].shape:
            continue
        diff = np.abs(reference[name].astype(np.float64) - candidate[name].astype(np.float64))
        if diff.max() > steps * scale:
            found.append({"tensor": name, "max_abs_diff": float(diff.max()), "steps": float(diff.max() / scale),
                          "fraction_over": float((diff > steps * scale).mean())})
            if len(found) == limit:
                break
    return found
