"""How one output of a candidate is measured against the reference's, by the output's kind (issue 33).

Every output gets the element-wise differences, in its own quantization steps where it comes from a quantized
tensor (the scale of the DequantizeLinear it leaves the graph through) and in absolute terms otherwise: max, the
99.9th percentile (exact where the sample count is known: the largest 0.1 % are kept), mean, and the fraction of
elements within one step. Each kind adds the per-sample measure its verdict rests on:

- classification (N x C): top-1 agreement, ties counted as agreement (`argmax_agreement`), accuracy and the
  discordant samples where the dataset has one label per sample;
- dense (N x C x ...: segmentation maps, per-position scores): per-position argmax agreement, tie-aware alike; where
  the dataset has per-position labels (N x ...), pixel accuracy and mean IoU of both, and the images whose pixel
  accuracy the candidate lowers or raises (a sign test over images, the dense analogue of McNemar's);
- generic (embeddings, regression, images, raw maps): a sample agrees when every element is within one output step,
  or when its cosine similarity reaches the threshold and its norm is within the same margin (cosine alone says
  the direction, not the size: a one-element regression output has cosine 1 at any value of the right sign).

An output the judge cannot measure (not a float tensor, no batch dimension, a kind its shape cannot have) carries
the reason instead of numbers, and fails the verdict.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TypedDict

import numpy as np

from .errors import BridgeError
from .outputs import logits_output

PERCENTILE = 99.9  # the element-wise differences' reported percentile
STEP_TOLERANCE = 1e-3  # a one-step difference computed through float scales lands a hair above 1 step


@dataclass(frozen=True)
class OutputSpec:
    """How one output is judged: its kind (and where that came from), the axis its classes lie on, its quantization
    step (None: computed in float), whether the dataset's labels are judged on it, or why it cannot be measured."""

    name: str
    kind: str
    source: str  # "shape N x 10", "--task"
    shape: tuple[int, ...]  # on the batch the kind was chosen from
    primary: bool = False  # the judged output: `--logits`, by default the first 2-D one (outputs.logits_output)
    class_axis: int = 1
    step: float | None = None
    labelled: bool = False
    unmeasurable: str | None = None


@dataclass
class Judging:
    """How a conversion's outputs are judged: the output the dataset's labels and the headline agreement are taken
    on (`logits`, as outputs.logits_output chooses), kinds and class axes by output name ("" for every output), each
    output's quantization step, the generic outputs' cosine threshold, and the dense labels' ignored value."""

    logits: str | None = None
    tasks: dict[str, str] = field(default_factory=dict)
    class_axes: dict[str, int] = field(default_factory=dict)
    steps: dict[str, float | None] = field(default_factory=dict)
    min_cosine: float = 0.99
    ignore_index: int | None = 255

    def specs(self, outputs: dict[str, np.ndarray], labels: np.ndarray | None) -> dict[str, OutputSpec]:
        """Each output's OutputSpec from the reference's outputs on a batch (and its labels, to place them)."""
        for option, given in (("--task", self.tasks), ("--class-axis", self.class_axes)):
            unknown = sorted(set(given) - {"", *outputs})
            if unknown:
                raise BridgeError(f"{option} names {', '.join(unknown)}, not an output of this model (its outputs: "
                                  f"{', '.join(outputs)})", f"pass {option} OUTPUT=... with one of those names")
        primary = logits_output({name: value.shape for name, value in outputs.items()}, self.logits)
        specs = {}
        for name, value in outputs.items():
            axis = self.class_axes.get(name, self.class_axes.get("", 1))
            kind, source, why = choose_kind(name, value.shape, np.issubdtype(value.dtype, np.floating),
                                            name == primary, self.tasks.get(name, self.tasks.get("")), axis)
            specs[name] = OutputSpec(name, kind, source, value.shape, name == primary, axis % max(value.ndim, 1),
                                     self.steps.get(name), unmeasurable=why)
        if labels is None:
            return specs
        taker = next((name for name in (primary, *specs) if _takes_labels(specs[name], outputs[name], labels)), None)
        if taker is None and all(spec.kind == "generic" for spec in specs.values()):
            return specs  # nothing labels could be judged on (an embedding's labels): the pipeline notes it
        if taker is None:
            shape = f"N x {'x'.join(map(str, labels.shape[1:]))}" if labels.ndim > 1 else "one per sample"
            shapes = ", ".join(f"{n}: N x {'x'.join(map(str, v.shape[1:]))}" for n, v in outputs.items())
            raise BridgeError(f"the dataset's labels ({shape}) fit no output of this model ({shapes})",
                              "pass one label per sample for a classification output, or per-position labels "
                              "(N x positions) for a dense one, or drop y from the dataset")
        return {**specs, taker: dataclasses.replace(specs[taker], labelled=True)}


def _takes_labels(spec: OutputSpec, value: np.ndarray, labels: np.ndarray) -> bool:
    """One label per sample fits a classification output; per-position labels a dense output whose positions have
    their shape."""
    if spec.unmeasurable:
        return False
    if spec.kind == "classification":
        return labels.ndim == 1
    positions = tuple(size for axis, size in enumerate(value.shape) if axis not in (0, spec.class_axis))
    return spec.kind == "dense" and labels.shape[1:] == positions


def choose_kind(name: str, shape: tuple[int, ...], is_float: bool, primary: bool, forced: str | None = None,
                class_axis: int = 1) -> tuple[str, str, str | None]:
    """(kind, where it came from, why it cannot be measured or None) of an output whose batch-1 shape is `shape`
    (batch first). The primary output (the one `--logits` names, by default the first 2-D one) is classification
    when N x C with C >= 2; other 2-D outputs are generic (features, boxes); an output with positions (3-D and more)
    whose class axis holds two or more values is dense; everything else is generic. `forced` (--task) overrides the
    shape."""
    dims = "x".join(["N", *map(str, shape[1:])])
    if forced:
        kind, source = forced, "--task"
    elif len(shape) == 2 and primary and shape[1] >= 2:
        kind, source = "classification", f"shape {dims}, the judged output"
    elif len(shape) >= 3 and -len(shape) < class_axis < len(shape) and shape[class_axis] >= 2 and class_axis != 0:
        kind, source = "dense", f"shape {dims}, classes on axis {class_axis}"
    else:
        kind, source = "generic", f"shape {dims}"
    why = None
    if not is_float:
        why = "it is not a float tensor; return the scores and take the argmax after the model"
    elif len(shape) < 1:
        why = "it has no batch dimension"
    elif kind == "classification" and len(shape) != 2:
        why = (f"classification needs N x C and it is {dims}; pass --task {name}=dense for per-position classes or "
               f"--task {name}=generic")
    elif kind == "dense" and not (len(shape) >= 3 and 0 < class_axis % len(shape)):
        why = f"dense needs N x C x positions with classes on an axis after the batch and it is {dims}"
    return kind, source, why


def argmax_agreement(reference: np.ndarray, candidate: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray,
                                                                                       np.ndarray, np.ndarray]:
    """Per sample (or position): whether the candidate's top class is one of the reference's tied largest values,
    whether the reference ties, the reference's class (the candidate's where they agree: agreeing backends are
    right or wrong together) and the candidate's class."""
    tied = reference == reference.max(axis, keepdims=True)
    picked = candidate.argmax(axis)
    agrees = np.take_along_axis(tied, np.expand_dims(picked, axis), axis).squeeze(axis)
    return agrees, tied.sum(axis) > 1, np.where(agrees, picked, reference.argmax(axis)), picked


class OutputMeasures(TypedDict, total=False):
    """What report.json says of one output of one pair (`RunningOutput.result`)."""
    kind: str  # classification | dense | generic
    kind_source: str
    unmeasurable: str  # why it could not be measured (then no numbers)
    unit: str  # "steps" (of `step`) or "absolute"
    step: float | None
    max_diff: float
    p999_diff: float  # the 99.9th percentile of the element-wise |diff|
    mean_diff: float
    max_abs_diff: float
    mean_abs_diff: float
    within_one_step: float | None  # fraction of elements; None for a float output
    elements: int
    measure: str  # what `agreement` counts
    agreement: float  # in [0, 1]
    units: int  # samples or positions `agreement` is over
    ties: int
    cosine_mean: float
    cosine_min: float
    reference_accuracy: float  # labelled outputs: accuracy (classification) or pixel accuracy (dense)
    candidate_accuracy: float
    reference_miou: float  # dense with labels
    candidate_miou: float


class RunningOutput:
    """One output's measures over batches as running sums, so that a dataset of any size takes one batch's memory
    (the percentile keeps the largest 0.1 % of the differences of the `samples` expected)."""

    def __init__(self, spec: OutputSpec, judging: Judging, samples: int | None = None):
        self.spec = spec
        self.samples = samples  # expected in all: the percentile's pool is sized for them from the first batch
        self.keep: int | None = None
        self.ignore_index, self.min_cosine = judging.ignore_index, judging.min_cosine
        self.problem = spec.unmeasurable
        self.max = self.sum = 0.0
        self.abs_max = self.abs_sum = 0.0
        self.elements = self.within = 0
        self.largest = np.zeros(0)  # the largest differences seen, enough for the percentile
        self.agreeing = self.units = self.ties = 0
        self.cosine_sum, self.cosine_min = 0.0, math.inf
        self.lost = self.gained = 0  # labelled samples (images) the candidate does worse and better on
        self.labelled = [0, 0, 0]  # reference right, candidate right, units labelled
        self.confusion: list[np.ndarray] = []  # dense: reference's and candidate's (label x prediction) counts
        self.disagreeing: list[np.ndarray] = []  # per batch: each sample's units that do not agree (a spread test's)

    def add(self, reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None, rows: int) -> None:
        """Adds one batch (`labels` are judged where the spec says the output takes them)."""
        if self.problem:
            return
        if reference.shape != candidate.shape:
            self.problem = f"the candidate's shape {candidate.shape} differs from the reference's {reference.shape}"
            return
        if reference.ndim == 0 or reference.shape[0] != rows:
            self.problem = f"its first dimension is not the batch (shape {reference.shape} for {rows} inputs)"
            return
        ref, cand = reference.astype(np.float64), candidate.astype(np.float64)
        self._elementwise(np.abs(ref - cand))
        if self.spec.kind == "generic":
            self._generic(ref, cand)
            return
        agrees, ties, ref_class, cand_class = argmax_agreement(ref, cand, self.spec.class_axis)
        self.disagreeing.append((~agrees).reshape(rows, -1).sum(1))
        self.agreeing += int(agrees.sum())
        self.units += agrees.size
        self.ties += int(ties.sum())
        if labels is not None and self.spec.labelled:
            self._labelled(ref_class, cand_class, labels)

    def _elementwise(self, diff: np.ndarray) -> None:
        self.abs_max = max(self.abs_max, float(diff.max(initial=0.0)))
        self.abs_sum += float(diff.sum())
        if self.spec.step:
            diff = diff / self.spec.step
            self.within += int((diff <= 1 + STEP_TOLERANCE).sum())
        self.max = max(self.max, float(diff.max(initial=0.0)))
        self.sum += float(diff.sum())
        self.elements += diff.size
        if self.keep is None and self.samples:
            self.keep = math.ceil(self.samples * (diff.size // len(diff)) * (1 - PERCENTILE / 100))
        keep = self.keep or math.ceil(self.elements * (1 - PERCENTILE / 100))  # unknown count: a lower bound
        pool = np.concatenate([self.largest, diff.ravel()])
        self.largest = np.partition(pool, len(pool) - keep)[len(pool) - keep:] if len(pool) > keep else pool

    def _generic(self, ref: np.ndarray, cand: np.ndarray) -> None:
        a, b = ref.reshape(len(ref), -1), cand.reshape(len(cand), -1)
        norm_a, norm_b = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
        both_zero = (norm_a == 0) & (norm_b == 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            cosine = np.where(both_zero, 1.0, np.nan_to_num((a * b).sum(1) / (norm_a * norm_b)))
            size = np.where(both_zero, 1.0, np.nan_to_num(np.minimum(norm_a, norm_b) / np.maximum(norm_a, norm_b)))
        score = np.minimum(cosine, size)  # a sample agrees where both reach --min-cosine
        if self.spec.step:
            score = np.where(np.abs(a - b).max(1, initial=0.0) <= self.spec.step * (1 + STEP_TOLERANCE), 1.0, score)
        self.cosine_sum += float(cosine.sum())
        self.cosine_min = min(self.cosine_min, float(cosine.min(initial=math.inf)))
        agrees = score >= self.min_cosine - 1e-12
        self.disagreeing.append((~agrees).astype(np.int64))
        self.agreeing += int(agrees.sum())
        self.units += len(score)

    def _labelled(self, ref_class: np.ndarray, cand_class: np.ndarray, labels: np.ndarray) -> None:
        valid = np.ones(labels.shape, bool) if self.ignore_index is None else labels != self.ignore_index
        ref_right, cand_right = (ref_class == labels) & valid, (cand_class == labels) & valid
        self.labelled = [self.labelled[0] + int(ref_right.sum()), self.labelled[1] + int(cand_right.sum()),
                         self.labelled[2] + int(valid.sum())]
        if self.spec.kind == "dense":
            classes = int(max(ref_class.max(initial=0), cand_class.max(initial=0), labels[valid].max(initial=0))) + 1
            counts = [np.bincount(labels[valid] * classes + pred[valid], minlength=classes * classes).reshape(
                classes, classes) for pred in (ref_class, cand_class)]
            self.confusion = [_grown(old, new) for old, new in zip(self.confusion, counts)] or counts
        ref_count, cand_count = (right.reshape(len(right), -1).sum(1) for right in (ref_right, cand_right))
        self.lost += int((cand_count < ref_count).sum())
        self.gained += int((cand_count > ref_count).sum())

    def result(self) -> OutputMeasures:
        measures = OutputMeasures(kind=self.spec.kind, kind_source=self.spec.source)
        if self.problem:
            return OutputMeasures(**measures, unmeasurable=self.problem)
        if not self.elements:
            return OutputMeasures(**measures, unmeasurable="no samples were compared")
        rank = min(math.ceil(self.elements * (1 - PERCENTILE / 100)), self.largest.size)  # nearest rank, upper
        measures.update(unit="steps" if self.spec.step else "absolute", step=self.spec.step, max_diff=self.max,
                        p999_diff=float(np.partition(self.largest, self.largest.size - rank)[self.largest.size - rank]),
                        mean_diff=self.sum / self.elements,
                        max_abs_diff=self.abs_max, mean_abs_diff=self.abs_sum / self.elements,
                        within_one_step=self.within / self.elements if self.spec.step else None,
                        elements=self.elements)
        measures.update(agreement=self.agreeing / self.units, units=self.units)
        if self.spec.kind == "generic":
            measures.update(measure=f"per-sample (cosine and norm ratio >= {self.min_cosine:g}, or within one step)",
                            cosine_mean=self.cosine_sum / self.units, cosine_min=self.cosine_min)
            return measures
        measures.update(measure="top-1" if self.spec.kind == "classification" else "per-position argmax",
                        ties=self.ties)
        if self.labelled[2]:
            measures.update(reference_accuracy=self.labelled[0] / self.labelled[2],
                            candidate_accuracy=self.labelled[1] / self.labelled[2])
        if self.confusion:
            measures.update(reference_miou=_mean_iou(self.confusion[0]), candidate_miou=_mean_iou(self.confusion[1]))
        return measures

    def per_sample_disagreements(self) -> np.ndarray:
        """Each sample's count of units (the sample, or its positions) that do not agree, in the order added."""
        return np.concatenate(self.disagreeing) if self.disagreeing else np.zeros(0, np.int64)


def spread_test(candidate: RunningOutput, peer: RunningOutput, peer_name: str) -> dict | None:
    """How much further a candidate is from the reference than the reference's peer backend (PyTorch's second
    quantized backend) on the same samples: the samples where the candidate disagrees on more units than the peer
    (`worse`) and on fewer (`better`), and the one-sided sign test's p of `worse` or more under no difference.
    None where either could not be measured on every sample."""
    from scipy.stats import binomtest

    ours, theirs = candidate.per_sample_disagreements(), peer.per_sample_disagreements()
    if candidate.problem or peer.problem or not len(ours) or len(ours) != len(theirs):
        return None
    worse, better = int((ours > theirs).sum()), int((ours < theirs).sum())
    p_value = float(binomtest(worse, worse + better, 0.5, alternative="greater").pvalue) if worse + better else 1.0
    return {"peer": peer_name, "peer_agreement": peer.agreeing / peer.units, "worse": worse, "better": better,
            "p_value": p_value}


def _grown(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """The sum of two confusion matrices of possibly different class counts."""
    size = max(len(old), len(new))
    total = np.zeros((size, size), np.int64)
    total[:len(old), :len(old)] += old
    total[:len(new), :len(new)] += new
    return total


def _mean_iou(confusion: np.ndarray) -> float:
    """Mean over the classes present (in labels or predictions) of intersection over union."""
    intersection = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - intersection
    present = union > 0
    return float((intersection[present] / union[present]).mean()) if present.any() else 1.0


def agreement_threshold(kind: str, min_agreement: float, min_position_agreement: float | None = None) -> float:
    """The agreement an output of `kind` must reach: `min_agreement` (top-1, generic samples), or for a dense output
    `min_position_agreement` where given."""
    return min_position_agreement if kind == "dense" and min_position_agreement is not None else min_agreement
