"""Stage 5, verify: run the PyTorch quantized model and the Q/DQ ONNX (ONNX Runtime), and the TensorRT engine
where there is one, on the same batches as they are decoded and compare their outputs, as running sums
(`stream_parity`): every output by its kind (classification, dense or generic: `qdq_bridge.measures`), ties as
`RunningComparison` says, and an accuracy loss on the labelled output judged by an exact McNemar test (a sign
test over images on per-position labels), `Comparison.accuracy_verdict`."""
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
from .measures import Judging, OutputMeasures, RunningOutput, agreement_threshold, spread_test
from .outputs import SINGLE_OUTPUT, Outputs, collect_logits


def interval_confidence(significance: float) -> float:
    """The confidence of the loss's two-sided interval whose lower end is the one-sided bound at `significance`."""
    return max(1 - 2 * significance, 0.0)


@dataclass
class Comparison:
    """How far a candidate backend's outputs are from the reference's on one dataset: every output measured by its
    kind (qdq_bridge.measures), and the headline figures of the judged output (`logits`): its agreement (top-1,
    per-position or per-sample, by its kind) and absolute differences. `lost` and `gained` count the labelled
    samples the reference gets right and the candidate wrong, and the converse (the discordant pairs); on a dense
    output with per-position labels, the images whose pixel accuracy the candidate lowers and raises."""

    dataset: str
    reference: str
    candidate: str
    samples: int
    agreement: float  # of the judged output, by its kind's measure
    max_abs_diff: float | None  # of the judged output (None where it could not be measured)
    mean_abs_diff: float | None
    reference_accuracy: float | None = None  # of the labelled output: accuracy, or pixel accuracy on a dense one
    candidate_accuracy: float | None = None
    logits: str = SINGLE_OUTPUT
    reference_ties: int = 0  # samples (positions) of the judged output whose reference top values tie exactly
    lost: int | None = None
    gained: int | None = None
    outputs: dict[str, OutputMeasures] = field(default_factory=dict)  # every output, by its kind
    missing_outputs: list[str] = field(default_factory=list)  # reference outputs the candidate does not have
    nonfinite: dict[str, int] = field(default_factory=dict)  # backend -> NaN/infinite output values it gave
    accuracy_of: str | None = None  # the labelled output
    spread: dict[str, dict] = field(default_factory=dict)  # output -> measures.spread_test against PyTorch's peer

    @property
    def dense_labels(self) -> bool:
        return self.accuracy_of is not None and self.outputs[self.accuracy_of]["kind"] == "dense"

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
        points of accuracy: its lower end is above 0 exactly where p < significance. On dense labels the same
        test is a sign test over images, and the images' counts map onto no interval of pixel accuracy (None)."""
        if self.lost is None:
            return None
        discordant = self.lost + self.gained
        confidence = interval_confidence(significance)
        if not discordant:
            return {"p_value": 1.0, "gap_ci_points": None if self.dense_labels else [0.0, 0.0],
                    "confidence": confidence}
        test = binomtest(self.lost, discordant, 0.5, alternative="greater")
        if self.dense_labels:
            return {"p_value": float(test.pvalue), "confidence": confidence, "gap_ci_points": None}
        interval = binomtest(self.lost, discordant).proportion_ci(confidence, method="exact")
        scale = discordant / self.samples * 100
        return {"p_value": float(test.pvalue), "confidence": confidence,
                "gap_ci_points": [(2 * interval.low - 1) * scale, (2 * interval.high - 1) * scale]}

    def accuracy_verdict(self, max_accuracy_gap_points: float, significance: float = SIGNIFICANCE) -> tuple[bool, str]:
        """(whether the candidate lost accuracy, why): a loss beyond the threshold that the sample count can tell
        apart from chance (p < significance) fails; one that it cannot, or a gain, passes. On per-position labels
        the loss is the larger of pixel accuracy's and mean IoU's, tested over images."""
        gap, test = self.accuracy_gap_points, self.loss_test(significance)
        what, scores = "accuracy", (self.reference_accuracy, self.candidate_accuracy)
        if self.dense_labels:
            # pixel accuracy is mostly background: a lost class shows in the mean IoU first
            measures = self.outputs[self.accuracy_of]
            miou_gap = (measures["reference_miou"] - measures["candidate_miou"]) * 100
            what, gap, scores = ("mean IoU", miou_gap, (measures["reference_miou"], measures["candidate_miou"])) \
                if miou_gap > gap else ("pixel accuracy", gap, scores)
            counts = (f"{self.lost} images of lower pixel accuracy in {self.candidate} than in {self.reference}, "
                      f"{self.gained} higher; sign test p = {test['p_value']:.3g}")
        else:
            counts = (f"{self.lost} right in {self.reference} and wrong in {self.candidate}, {self.gained} the other "
                      f"way; exact McNemar p = {test['p_value']:.3g}")
        if gap <= max_accuracy_gap_points + 1e-9:
            return False, f"{'gain' if gap < 0 else 'loss'} {abs(gap):.2f} points within {max_accuracy_gap_points:g} ({counts})"
        if test["p_value"] >= significance:
            return False, (f"loss {gap:.2f} points > {max_accuracy_gap_points:g} but not significant ({counts} "
                           f">= {significance:g})")
        return True, (f"{what} loss {gap:.2f} points > {max_accuracy_gap_points:g} ({self.reference} "
                      f"{scores[0] * 100:.2f}%, {self.candidate} {scores[1] * 100:.2f}%; {counts} < {significance:g})")

    def within(self, min_agreement: float, max_accuracy_gap_points: float, significance: float = SIGNIFICANCE,
               min_position_agreement: float | None = None) -> bool:
        return not self.failures(min_agreement, max_accuracy_gap_points, significance, min_position_agreement)

    def failures(self, min_agreement: float, max_accuracy_gap_points: float, significance: float = SIGNIFICANCE,
                 min_position_agreement: float | None = None) -> list[str]:
        """Each criterion this comparison misses, with its numbers, e.g. 'pytorch vs onnxruntime on digits-test:
        top-1 agreement 10.44% < 99.50%'. Every output is judged by its kind; one that
        could not be measured fails with the reason."""
        pair = f"{self.reference} vs {self.candidate} on {self.dataset}"
        found = [f"{pair}: the candidate lacks output {name}" for name in self.missing_outputs]
        found += [f"{pair}: {backend} gave {count} non-finite output values (NaN or infinity)"
                  for backend, count in self.nonfinite.items() if count]
        for name, measures in self.outputs.items():
            if "unmeasurable" in measures:
                found.append(f"{pair}: output {name} ({measures['kind']}) cannot be measured: "
                             f"{measures['unmeasurable']}")
                continue
            shortfall = self._agreement_shortfall(name, min_agreement, significance, min_position_agreement)
            if shortfall and not shortfall[1]:
                found.append(f"{pair}: {self._shortfall(name, shortfall[0])}")
        if self.reference_accuracy is not None:
            lost, why = self.accuracy_verdict(max_accuracy_gap_points, significance)
            if lost:
                found.append(f"{pair}: {why}")
        return found

    def spread_notes(self, min_agreement: float, significance: float = SIGNIFICANCE,
                     min_position_agreement: float | None = None) -> list[str]:
        """For each output whose agreement misses its threshold and is excused by PyTorch's own spread
        (`_within_spread`), the line that says so, with both figures and the test."""
        notes = []
        for name in self.outputs:
            shortfall = self._agreement_shortfall(name, min_agreement, significance, min_position_agreement)
            if shortfall and shortfall[1]:
                needed, spread = shortfall[0], self.spread[name]
                notes.append(
                    f"{self.reference} vs {self.candidate} on {self.dataset}: {self._shortfall(name, needed)}, and "
                    f"PyTorch's {spread['peer'].partition(':')[2]} backend agrees with its "
                    f"{self.reference} reference on {spread['peer_agreement'] * 100:.2f}%: within PyTorch's own "
                    f"spread ({spread['worse']} samples further from the reference than {spread['peer']}, "
                    f"{spread['better']} nearer; sign test p = {spread['p_value']:.3g} >= {significance:g}), passed")
        return notes

    def _agreement_shortfall(self, name: str, min_agreement: float, significance: float,
                             min_position_agreement: float | None) -> tuple[float, bool] | None:
        """(the agreement output `name` needed, whether PyTorch's spread excuses it) where its measured agreement
        is below its kind's threshold; None otherwise."""
        measures = self.outputs[name]
        needed = agreement_threshold(measures["kind"], min_agreement, min_position_agreement)
        if "agreement" not in measures or measures["agreement"] >= needed:
            return None
        return needed, self._within_spread(name, needed, significance)

    def _within_spread(self, name: str, needed: float, significance: float) -> bool:
        """An agreement below `needed` is excused where PyTorch's second backend, on the same samples, is below it
        too (the threshold is beyond what PyTorch's kernels agree on), and the candidate is no further from the
        reference than that backend by a one-sided sign test over the samples where they differ (p >= significance).
        Where the peer meets the threshold, nothing is excused: a test that cannot tell the two apart on few
        samples is no evidence of parity. An accuracy loss is judged apart and never excused."""
        spread = self.spread.get(name)
        return bool(spread) and spread["peer_agreement"] < needed and spread["p_value"] >= significance

    def _shortfall(self, name: str, needed: float) -> str:
        measures = self.outputs[name]  # a lone classifier's output needs no name
        of = "" if len(self.outputs) == 1 and measures["kind"] == "classification" else \
            f" of output {name} ({measures['kind']})"
        return f"{measures['measure']} agreement{of} {measures['agreement'] * 100:.2f}% < {needed * 100:.2f}%"

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
    of one batch. Each output is measured by `qdq_bridge.measures.RunningOutput`, its kind and the other
    particulars taken by `judging` from the reference's first batch.

    Ties: int8 logits often tie exactly, and the reference's own argmax is then just the lowest tied index. A
    candidate agrees when its top-1 is one of the reference's tied largest logits. For accuracy the reference
    takes, on each sample, the candidate's class where they agree (agreeing backends are right or wrong
    together: 100 % agreement is no gap) and its own argmax where they do not; the candidate takes its argmax."""

    def __init__(self, dataset: str, reference: str, candidate: str, judging: Judging | None = None,
                 samples: int | None = None):
        self.names = (dataset, reference, candidate)
        self.judging = judging or Judging()
        self.expected = samples  # the dataset's size, for the exact percentile (measures.RunningOutput)
        self.samples = 0
        self.running: dict[str, RunningOutput] | None = None  # made on the first batch
        self.missing: list[str] = []
        self.nonfinite = dict.fromkeys((reference, candidate), 0)
        self.unlabelled = False  # a batch came without labels: no accuracy is judged

    def add(self, reference: Outputs, candidate: Outputs, labels: np.ndarray | None) -> RunningComparison:
        for backend, outputs in zip(self.nonfinite, (reference, candidate)):
            self.nonfinite[backend] += sum(int((~np.isfinite(values)).sum()) for values in outputs.values()
                                           if np.issubdtype(values.dtype, np.floating))
        if self.running is None:
            self.specs = self.judging.specs(reference, labels)
            self.running = {name: RunningOutput(spec, self.judging, self.expected)
                            for name, spec in self.specs.items()}
        rows = len(next(iter(reference.values())))
        self.unlabelled |= labels is None
        for name, values in reference.items():
            if name not in candidate:
                self.missing = sorted({*self.missing, name})
                continue
            self.running[name].add(values, candidate[name], labels, rows)
        self.samples += rows
        return self

    def result(self) -> Comparison:
        outputs = {name: running.result() for name, running in self.running.items() if name not in self.missing}
        labelled = next((name for name, spec in self.specs.items() if spec.labelled), None)
        primary = labelled or next(name for name, spec in self.specs.items() if spec.primary)
        head = outputs.get(primary, {})  # {}: the candidate lacks it, which fails on its own
        result = Comparison(*self.names, self.samples, head.get("agreement", 0.0), head.get("max_abs_diff"),
                            head.get("mean_abs_diff"), logits=primary, reference_ties=head.get("ties", 0),
                            outputs=outputs, missing_outputs=self.missing, nonfinite=self.nonfinite)
        if labelled and not self.unlabelled and "reference_accuracy" in outputs.get(labelled, {}):
            result.accuracy_of = labelled
            result.lost, result.gained = self.running[labelled].lost, self.running[labelled].gained
            result.reference_accuracy = outputs[labelled]["reference_accuracy"]
            result.candidate_accuracy = outputs[labelled]["candidate_accuracy"]
        return result


def compare(reference: np.ndarray | Outputs, candidate: np.ndarray | Outputs, data: Dataset, reference_name: str,
            candidate_name: str, logits: str = SINGLE_OUTPUT, judging: Judging | None = None) -> Comparison:
    """`RunningComparison` over whole outputs (an array is the logits output alone)."""
    reference, candidate = ({logits: v} if isinstance(v, np.ndarray) else v for v in (reference, candidate))
    judging = judging or Judging(logits=logits if logits in reference else None)
    return RunningComparison(data.name, reference_name, candidate_name, judging, len(data)).add(
        reference, candidate, data.y).result()


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
                  = None, progress: bool = True, judging: Judging | None = None,
                  spread: tuple[str, str] | None = None) -> StreamedParity:
    """Run every backend on the same batches as `source` decodes them and compare `pairs` as running sums (each
    output by its kind, as `judging` says), so no outputs are kept. `engines` (TensorRT engines, each in its worker
    process's session) run on every batch too; one that raises a BridgeError is dropped from then on and reported in
    `failed`, with its comparisons. `spread`: (reference, peer), a pair of `pairs` that measures how far the
    reference's own kind of backend spreads (PyTorch's second quantized backend): every other pair of that reference
    gets a `measures.spread_test` against it, per output."""
    engines = dict(engines or {})
    ran = [*backends, *engines]
    running = {pair: RunningComparison(source.name, *pair, judging, len(source))
               for pair in pairs if set(pair) <= set(ran)}
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
    comparisons = []
    for (ref, cand), comparison in running.items():
        if ref in failed or cand in failed or not comparison.samples:
            continue
        comparisons.append(comparison.result())
        peer = running.get(spread) if spread and ref == spread[0] and cand != spread[1] else None
        if peer is not None and peer.samples == comparison.samples:
            tests = {name: spread_test(output, peer.running[name], spread[1])
                     for name, output in comparison.running.items() if name in peer.running}
            comparisons[-1].spread = {name: test for name, test in tests.items() if test is not None}
    return StreamedParity(comparisons, samples, seconds, failed)


