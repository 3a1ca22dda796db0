"""Stage 5, verify: run the PyTorch quantized model and the Q/DQ ONNX (ONNX Runtime), and the TensorRT engine
where there is one, on the same batches as they are decoded and compare their outputs: top-1 agreement and
accuracy on the logits output (ties as `RunningComparison` says; an accuracy loss judged by an exact McNemar
test, `Comparison.accuracy_verdict`), max/mean absolute difference of every output, as running sums
(`stream_parity`)."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import onnx
from scipy.stats import binomtest
from tqdm import tqdm

from .choices import SIGNIFICANCE
from .data.arrays import Dataset
from .errors import BridgeError
from .graph.runtime import onnxruntime_runner
from .outputs import SINGLE_OUTPUT, Outputs, collect_logits


def interval_confidence(significance: float) -> float:
    """The confidence of the loss's two-sided interval whose lower end is the one-sided bound at `significance`."""
    return max(1 - 2 * significance, 0.0)


@dataclass
class Comparison:
    """How far a candidate backend's outputs are from the reference's on one dataset. Top-1 agreement and accuracy
    are taken on the logits output, with ties as `RunningComparison` says; `lost` and `gained` count the labelled
    samples the reference gets right and the candidate wrong, and the converse (the discordant pairs)."""

    dataset: str
    reference: str
    candidate: str
    samples: int
    top1_agreement: float
    max_abs_diff: float  # of the logits output
    mean_abs_diff: float
    reference_accuracy: float | None = None
    candidate_accuracy: float | None = None
    logits: str = SINGLE_OUTPUT
    reference_ties: int = 0  # samples whose reference top logits tie exactly
    lost: int | None = None
    gained: int | None = None
    outputs: dict[str, dict[str, float]] = field(default_factory=dict)  # every output: max/mean abs diff
    missing_outputs: list[str] = field(default_factory=list)  # reference outputs the candidate does not have
    nonfinite: dict[str, int] = field(default_factory=dict)  # backend -> NaN/infinite output values it gave

    @property
    def accuracy_gap_points(self) -> float | None:
        """The candidate's accuracy loss against the reference in percentage points (negative: a gain), where
        the dataset has labels."""
        if self.reference_accuracy is None:
            return None
        return (self.reference_accuracy - self.candidate_accuracy) * 100

    def loss_test(self, significance: float = SIGNIFICANCE) -> dict | None:
        """The exact McNemar test of an accuracy loss on the discordant pairs: under no loss, `lost` is
        Binomial(lost + gained, 1/2); p is the one-sided probability of `lost` or more. The gap's interval, at
        confidence 1 - 2 x significance, maps the exact (Clopper-Pearson) interval of lost / (lost + gained) onto
        points of accuracy: its lower end is above 0 exactly where p < significance."""
        if self.lost is None:
            return None
        discordant = self.lost + self.gained
        confidence = interval_confidence(significance)
        if not discordant:
            return {"p_value": 1.0, "gap_ci_points": [0.0, 0.0], "confidence": confidence}
        test = binomtest(self.lost, discordant, 0.5, alternative="greater")
        interval = binomtest(self.lost, discordant).proportion_ci(confidence, method="exact")
        scale = discordant / self.samples * 100
        return {"p_value": float(test.pvalue), "confidence": confidence,
                "gap_ci_points": [(2 * interval.low - 1) * scale, (2 * interval.high - 1) * scale]}

    def accuracy_verdict(self, max_accuracy_gap_points: float, significance: float = SIGNIFICANCE) -> tuple[bool, str]:
        """(whether the candidate lost accuracy, why): a loss beyond the threshold that the sample count can tell
        apart from chance (p < significance) fails; one that it cannot, or a gain, passes."""
        gap, test = self.accuracy_gap_points, self.loss_test(significance)
        counts = (f"{self.lost} right in {self.reference} and wrong in {self.candidate}, {self.gained} the other "
                  f"way; exact McNemar p = {test['p_value']:.3g}")
        if gap <= max_accuracy_gap_points + 1e-9:
            return False, f"{'gain' if gap < 0 else 'loss'} {abs(gap):.2f} points within {max_accuracy_gap_points:g} ({counts})"
        if test["p_value"] >= significance:
            return False, (f"loss {gap:.2f} points > {max_accuracy_gap_points:g} but not significant ({counts} "
                           f">= {significance:g})")
        return True, (f"accuracy loss {gap:.2f} points > {max_accuracy_gap_points:g} ({self.reference} "
                      f"{self.reference_accuracy * 100:.2f}%, {self.candidate} {self.candidate_accuracy * 100:.2f}%; "
                      f"{counts} < {significance:g})")

    def within(self, min_agreement: float, max_accuracy_gap_points: float, significance: float = SIGNIFICANCE) -> bool:
        return not self.failures(min_agreement, max_accuracy_gap_points, significance)

    def failures(self, min_agreement: float, max_accuracy_gap_points: float,
                 significance: float = SIGNIFICANCE) -> list[str]:
        """Each criterion this comparison misses, with its numbers, e.g. 'pytorch vs onnxruntime on digits-test:
        top-1 agreement 10.44% < 99.50%'."""
        pair = f"{self.reference} vs {self.candidate} on {self.dataset}"
        found = [f"{pair}: the candidate lacks output {name}" for name in self.missing_outputs]
        found += [f"{pair}: {backend} gave {count} non-finite output values (NaN or infinity)"
                  for backend, count in self.nonfinite.items() if count]
        if self.top1_agreement < min_agreement:
            found.append(f"{pair}: top-1 agreement {self.top1_agreement * 100:.2f}% < {min_agreement * 100:.2f}%")
        if self.reference_accuracy is not None:
            lost, why = self.accuracy_verdict(max_accuracy_gap_points, significance)
            if lost:
                found.append(f"{pair}: {why}")
        return found

    def as_dict(self, max_accuracy_gap_points: float | None = None, significance: float = SIGNIFICANCE) -> dict:
        """The fields, the gap, the loss test, and (given the threshold) the accuracy verdict's reason."""
        result = {**asdict(self), "accuracy_gap_points": self.accuracy_gap_points,
                  "loss_test": self.loss_test(significance)}
        if max_accuracy_gap_points is not None and self.reference_accuracy is not None:
            result["accuracy_verdict"] = self.accuracy_verdict(max_accuracy_gap_points, significance)[1]
        return result


def run_onnxruntime(model: onnx.ModelProto | str, data: Dataset, batch_size: int = 64, optimize: bool = True,
                    logits: str | None = None) -> np.ndarray:
    """The model's logits output on `data` (see `onnxruntime_runner` and `run_torch`)."""
    return collect_logits(onnxruntime_runner(model, optimize), data, batch_size, logits)


class RunningComparison:
    """A Comparison as running sums over batches: no outputs are kept, so a dataset of any size takes the memory
    of one batch.

    Ties: int8 logits often tie exactly, and the reference's own argmax is then just the lowest tied index. A
    candidate agrees when its top-1 is one of the reference's tied largest logits. For accuracy the reference
    takes, on each sample, the candidate's class where they agree (agreeing backends are right or wrong
    together: 100 % agreement is no gap) and its own argmax where they do not; the candidate takes its argmax."""

    def __init__(self, dataset: str, reference: str, candidate: str, logits: str = SINGLE_OUTPUT):
        self.names = (dataset, reference, candidate)
        self.logits = logits
        self.samples = self.agreeing = self.ties = 0
        self.diffs: dict[str, list[float]] = {}  # output -> [max, sum, count]
        self.missing: list[str] = []
        self.nonfinite = dict.fromkeys((reference, candidate), 0)
        self.counts: list[int] | None = [0, 0, 0, 0]  # reference right, candidate right, lost, gained

    def add(self, reference: Outputs, candidate: Outputs, labels: np.ndarray | None) -> RunningComparison:
        for backend, outputs in zip(self.nonfinite, (reference, candidate)):
            self.nonfinite[backend] += sum(int((~np.isfinite(values)).sum()) for values in outputs.values())
        for name, values in reference.items():
            if name not in candidate:
                self.missing = sorted({*self.missing, name})
                continue
            diff = np.abs(values.astype(np.float64) - candidate[name].astype(np.float64))
            running = self.diffs.setdefault(name, [0.0, 0.0, 0])
            running[:] = [max(running[0], float(diff.max())), running[1] + float(diff.sum()), running[2] + diff.size]
        ref, cand_top1 = reference[self.logits], candidate[self.logits].argmax(1)
        tied = ref == ref.max(1, keepdims=True)
        agrees = tied[np.arange(len(ref)), cand_top1]
        self.agreeing += int(agrees.sum())
        self.ties += int((tied.sum(1) > 1).sum())
        self.samples += len(ref)
        if labels is None:
            self.counts = None
        elif self.counts is not None:
            ref_right = np.where(agrees, cand_top1, ref.argmax(1)) == labels
            cand_right = cand_top1 == labels
            self.counts = [self.counts[0] + int(ref_right.sum()), self.counts[1] + int(cand_right.sum()),
                           self.counts[2] + int((ref_right & ~cand_right).sum()),
                           self.counts[3] + int((cand_right & ~ref_right).sum())]
        return self

    def result(self) -> Comparison:
        outputs = {name: {"max_abs_diff": high, "mean_abs_diff": total / count}
                   for name, (high, total, count) in self.diffs.items()}
        logits = outputs[self.logits]
        result = Comparison(*self.names, self.samples, self.agreeing / self.samples, logits["max_abs_diff"],
                            logits["mean_abs_diff"], logits=self.logits, reference_ties=self.ties, outputs=outputs,
                            missing_outputs=self.missing, nonfinite=self.nonfinite)
        if self.counts is not None:
            right, cand_right, result.lost, result.gained = self.counts
            result.reference_accuracy, result.candidate_accuracy = right / self.samples, cand_right / self.samples
        return result


def compare(reference: np.ndarray | Outputs, candidate: np.ndarray | Outputs, data: Dataset, reference_name: str,
            candidate_name: str, logits: str = SINGLE_OUTPUT) -> Comparison:
    """`RunningComparison` over whole outputs (an array is the logits output alone)."""
    wrap = (lambda v: {logits: v} if isinstance(v, np.ndarray) else v)
    return RunningComparison(data.name, reference_name, candidate_name, logits).add(
        wrap(reference), wrap(candidate), data.y).result()


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


def stream_parity(source, batch_size: int, backends: dict[str, Callable[[np.ndarray], Outputs]],
                  pairs: tuple[tuple[str, str], ...], engines: dict[str, Callable[[np.ndarray], Outputs]] | None
                  = None, progress: bool = True, logits: str = SINGLE_OUTPUT) -> StreamedParity:
    """Run every backend on the same batches as `source` decodes them and compare `pairs` as running sums (top-1
    on the `logits` output), so no outputs are kept. `engines` (TensorRT engines, each in its worker process's
    session) run on every batch too; one that raises a BridgeError is dropped from then on and reported in
    `failed`, with its comparisons."""
    engines = dict(engines or {})
    ran = [*backends, *engines]
    running = {pair: RunningComparison(source.name, *pair, logits) for pair in pairs if set(pair) <= set(ran)}
    seconds = dict.fromkeys(ran, 0.0)
    failed: dict[str, str] = {}

    def timed(name: str, run: Callable[[np.ndarray], Outputs], x: np.ndarray) -> Outputs:
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


