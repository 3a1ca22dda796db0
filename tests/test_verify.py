"""Parity arithmetic: agreement, ties, accuracy; streamed as running sums."""
import gc
import weakref

import numpy as np
import pytest
from onnx import TensorProto, helper

from qdq_bridge.data.arrays import Dataset
from qdq_bridge.errors import BridgeError
from qdq_bridge.trt.divergence import markable_tensors, quantized_tensors
from qdq_bridge.measures import Judging
from qdq_bridge.verify import Comparison, RunningComparison, compare, stream_parity


def test_agreement_accepts_any_of_the_references_tied_top_logits():
    reference = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0], [3.0, 0.0, 0.0]], np.float32)
    candidate = np.array([[0.0, 1.1, 0.5], [1.0, 0.0, 0.0], [2.9, 0.1, 0.0]], np.float32)
    data = Dataset("d", np.zeros((3, 1)), np.array([1, 1, 0]))
    result = compare(reference, candidate, data, "ref", "cand")
    # sample 0: the reference ties classes 0 and 1, the candidate picks 1: agrees; sample 1 does not
    assert result.agreement == 2 / 3 and result.reference_ties == 1
    # where they agree the reference takes the candidate's class (1, right); sample 1 is a real loss
    assert result.reference_accuracy == 1 and result.candidate_accuracy == 2 / 3
    assert (result.lost, result.gained) == (1, 0)
    assert np.isclose(result.max_abs_diff, 2.0) and np.isclose(result.accuracy_gap_points, 100 / 3)


def _tied_digits(samples: int = 450, ties: int = 9, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference logits on an int8 grid whose top two tie on `ties` samples (the label second by index, so the
    reference's argmax is wrong there), a float candidate resolving those ties to the label, and the labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(1, 10, samples)
    reference = np.round(rng.uniform(0, 4, (samples, 10)))
    reference[np.arange(samples), labels] = 8
    reference[:ties, 0] = 8  # tied with the label, at a lower index
    candidate = reference + rng.uniform(-0.2, 0.2, reference.shape)
    candidate[np.arange(ties), labels[:ties]] += 0.5
    return reference.astype(np.float32), candidate.astype(np.float32), labels


def test_a_candidate_that_resolves_the_references_ties_agrees_fully_and_loses_nothing():
    """The fast placement's float logits against PyTorch's tied int8 ones (issue 20: 100 % agreement and yet an
    'accuracy gap'): one definition for both, so full agreement is no gap."""
    reference, candidate, labels = _tied_digits()
    result = compare(reference, candidate, Dataset("d", np.zeros((450, 1)), labels), "pytorch", "tensorrt")
    assert result.agreement == 1 and result.reference_ties == 9
    assert result.accuracy_gap_points == 0 and (result.lost, result.gained) == (0, 0)
    assert result.within(0.995, 0.2)


def _discordant(lost: int, gained: int, samples: int = 450) -> Comparison:
    """A comparison on `samples` labelled samples whose candidate loses `lost` and gains `gained`."""
    labels = np.zeros(samples, np.int64)
    reference = np.tile(np.float32([1, 0]), (samples, 1))
    reference[samples - gained:] = [0, 1]  # wrong where the candidate will be right
    candidate = reference.copy()
    candidate[:lost] = [0, 1]
    candidate[samples - gained:] = [1, 0]
    return compare(reference, candidate, Dataset("d", np.zeros((samples, 1)), labels), "pytorch", "tensorrt")


def test_a_real_loss_fails_with_its_discordant_counts_and_test():
    """Five of 450 images the reference gets right and the candidate wrong, none the other way: p = 1/32."""
    result = _discordant(5, 0)
    assert np.isclose(result.accuracy_gap_points, 500 / 450)
    test = result.loss_test()
    assert np.isclose(test["p_value"], 0.5 ** 5) and test["gap_ci_points"][0] > 0
    (failure,) = result.failures(0.0, 0.2)
    assert "accuracy loss 1.11 points > 0.2" in failure and "5 right in pytorch and wrong in tensorrt, 0 the other" \
        in failure and "p = 0.0312 < 0.05" in failure


@pytest.mark.parametrize("lost, gained, why", [
    (1, 0, "loss 0.22 points > 0.2 but not significant"),  # one image of 450: finer than the data can tell
    (3, 2, "loss 0.22 points > 0.2 but not significant"),
    (0, 1, "gain 0.22 points within 0.2"),  # a candidate more accurate than the reference
    (0, 5, "gain 1.11 points within 0.2"),
    (0, 0, "loss 0.00 points within 0.2")])
def test_a_loss_the_sample_count_cannot_tell_apart_or_a_gain_passes_and_says_why(lost, gained, why):
    result = _discordant(lost, gained)
    failed, reason = result.accuracy_verdict(0.2)
    assert not failed and reason.startswith(why) and result.within(0.0, 0.2)


def test_significance_one_fails_every_loss_beyond_the_gap_and_the_gap_still_bounds_it():
    assert not _discordant(1, 0).within(0.0, 0.2, significance=1.0)
    assert _discordant(1, 0).within(0.0, 0.3, significance=1.0)


def test_every_output_is_judged_by_its_kind_and_top1_taken_on_the_named_one():
    """(logits, features): logits by top-1, features (a second 2-D output) as generic; a features output moved off
    fails on its own although top-1 agrees; a candidate missing an output fails with its name."""
    logits = np.float32([[2, 1], [0, 3]])
    features = np.float32([[0.5, 0.5, 0.5], [1, 1, 1]])
    reference = {"logits": logits, "features": features}
    data = Dataset("d", np.zeros((2, 1)), np.array([0, 1]))
    result = compare(reference, {"logits": logits + 0.25, "features": features * 1.001}, data, "pytorch",
                     "onnxruntime", logits="logits")
    assert {name: m["kind"] for name, m in result.outputs.items()} == {"logits": "classification",
                                                                       "features": "generic"}
    assert result.outputs["logits"]["max_abs_diff"] == 0.25 and result.outputs["features"]["agreement"] == 1
    assert result.agreement == 1 and result.max_abs_diff == 0.25 and result.failures(1.0, 0.0) == []
    moved = compare(reference, {"logits": logits, "features": features - 1}, data, "pytorch", "onnxruntime")
    assert moved.failures(0.995, 0.2) == [
        "pytorch vs onnxruntime on d: per-sample (cosine and norm ratio >= 0.99, or within one step) agreement of "
        "output features (generic) 0.00% < 99.50%"]
    partial = compare(reference, {"logits": logits}, data, "pytorch", "onnxruntime")
    assert partial.failures(1.0, 0.0) == ["pytorch vs onnxruntime on d: the candidate lacks output features"]


def _scale(name, value):
    return helper.make_tensor(name, TensorProto.FLOAT, [], [value])


def _qdq(tensor, scale_name, index):
    return [helper.make_node("QuantizeLinear", [tensor, scale_name], [f"q{index}"]),
            helper.make_node("DequantizeLinear", [f"q{index}", scale_name], [f"d{index}"])]


def _model(nodes, output, shape=(1, 4)):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, list(shape))],
                              [_scale("s1", 0.5), _scale("s2", 0.25)])
    return helper.make_model(graph)


def test_a_tensor_read_by_two_quantizers_is_listed_once_for_the_locator():
    """A faithful ResNet's MaxPool output feeds the next block's conv Q and its residual Q: marked as an engine
    output twice, TensorRT refuses the build (seen on an H200 with TensorRT 8.6)."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             *_qdq("r", "s1", "1"), *_qdq("r", "s2", "2"), helper.make_node("Add", ["d1", "d2"], ["a"]),
             *_qdq("a", "s1", "3")]
    assert quantized_tensors(_model(nodes, "d3")) == [("r", 0.5), ("a", 0.5)]


def test_the_locator_does_not_mark_a_pooled_tensor_tensorrt_fuses_into_its_convolution():
    """ResNet's stem, Relu -> Q/DQ -> MaxPool -> Q/DQ: the Relu output can be an engine output, the MaxPool's
    cannot (TensorRT 8.6 asserts), so it is skipped with the reason."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]), *_qdq("r", "s1", "1"),
             helper.make_node("MaxPool", ["d1"], ["p"], kernel_shape=[1, 1]), *_qdq("p", "s1", "2")]
    model = _model(nodes, "d2", (1, 4, 2, 2))
    markable, skipped = markable_tensors(model, quantized_tensors(model))
    assert markable == [("r", 0.5)] and list(skipped) == ["p"] and "pooling" in skipped["p"]


class CountedSource:
    """A streamed source of random logits-sized batches that counts how many of its batches are alive at once."""

    def __init__(self, batches: int, batch: int = 8, seed: int = 0):
        self.name, self.batches, self.batch, self.rng = "counted", batches, batch, np.random.default_rng(seed)
        self.alive = self.most_alive = 0
        self.decode_seconds = None
        self.x, self.y = [], []  # copies, to recompute the figures in one go

    def __len__(self) -> int:
        return self.batches * self.batch

    def _freed(self) -> None:
        self.alive -= 1

    def labelled_batches(self, batch_size: int):
        for _ in range(self.batches):
            x = self.rng.standard_normal((batch_size, 5)).astype(np.float32)
            y = self.rng.integers(0, 5, batch_size)
            self.x.append(x.copy())
            self.y.append(y)
            self.alive += 1
            self.most_alive = max(self.most_alive, self.alive)
            weakref.finalize(x, self._freed)
            yield x, y
            del x


def noisy(x: np.ndarray) -> np.ndarray:
    """A candidate backend: the reference's logits with small deterministic noise."""
    return x + 0.3 * np.sin(x * 7).astype(np.float32)


@pytest.mark.parametrize("with_engine", [False, True])
def test_streamed_parity_keeps_no_logits_and_equals_the_one_shot_figures(with_engine):
    """Memory does not grow with the dataset: 200 batches pass through, at most two are alive at once (the one
    being compared and the one being decoded); the running sums give what compare() gives on all the logits
    at once."""
    source = CountedSource(200)
    backends = {"pytorch": lambda x: {"logits": x * 1.0}, "onnxruntime": lambda x: {"logits": noisy(x)}}
    engines = {"tensorrt": lambda x: {"logits": noisy(x) * 1.0}} if with_engine else {}
    result = stream_parity(source, 8, backends, (("pytorch", "onnxruntime"), ("pytorch", "tensorrt")), engines,
                           progress=False)
    gc.collect()
    assert source.alive == 0 and source.most_alive <= 2
    x, y = np.concatenate(source.x), np.concatenate(source.y)
    whole = compare(x, noisy(x), Dataset("counted", x, y), "pytorch", "onnxruntime")
    assert [c.candidate for c in result.comparisons] == ["onnxruntime", "tensorrt"][:1 + with_engine]
    for streamed in result.comparisons:
        assert (streamed.samples, streamed.agreement, streamed.max_abs_diff) == \
            (whole.samples, whole.agreement, whole.max_abs_diff)
        assert streamed.reference_accuracy == whole.reference_accuracy
        assert streamed.candidate_accuracy == whole.candidate_accuracy
        assert np.isclose(streamed.mean_abs_diff, whole.mean_abs_diff, rtol=1e-12)
    assert result.samples == 1600 and set(result.images_per_second()) == {*backends, *engines}


def test_a_failing_engine_is_left_out_from_then_on_and_named():
    calls = []

    def broken(x):
        calls.append(len(x))
        if len(calls) == 2:
            raise BridgeError("worker crashed", "")
        return {"logits": x}

    result = stream_parity(CountedSource(4), 8, {"pytorch": lambda x: {"logits": x}}, (("pytorch", "tensorrt"),),
                           {"tensorrt": broken}, progress=False)
    assert calls == [8, 8]  # not called again after its failure, on the two batches left
    assert result.comparisons == [] and result.failed == {"tensorrt": "worker crashed"}
    assert result.samples == 32


def test_a_regression_output_off_by_half_fails_although_its_cosine_is_one():
    """N x 1 outputs: a one-element vector has cosine 1 at any value of the right sign, so the norm ratio judges
    the size; within one output step still agrees."""
    reference = np.linspace(1, 2, 40, dtype=np.float32)[:, None]
    data = Dataset("d", np.zeros((40, 1)))
    half = compare(reference, reference * 1.5, data, "pytorch", "onnxruntime")
    measures = half.outputs["logits"]
    assert measures["kind"] == "generic" and measures["cosine_min"] == pytest.approx(1)
    assert measures["agreement"] == 0 and half.failures(0.995, 0.2)
    stepped = compare(reference, reference + 0.1, data, "pytorch", "onnxruntime",
                      judging=Judging(steps={"logits": 0.1}))
    assert stepped.outputs["logits"]["agreement"] == 1 and stepped.outputs["logits"]["within_one_step"] == 1


def test_the_percentile_is_exact_over_streamed_batches():
    """The 99.9th percentile of |diff| over 20 batches equals numpy's on all of them (nearest rank, upper)."""
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((2000, 3, 4, 4)).astype(np.float32)
    candidate = reference + rng.standard_normal(reference.shape).astype(np.float32) ** 3
    running = RunningComparison("d", "a", "b", samples=2000)
    for rows in np.array_split(np.arange(2000), 20):
        running.add({"logits": reference[rows]}, {"logits": candidate[rows]}, None)
    diff = np.abs(reference.astype(np.float64) - candidate)
    measures = running.result().outputs["logits"]
    assert measures["p999_diff"] == pytest.approx(np.quantile(diff, 0.999, method="higher"))
    assert measures["max_diff"] == pytest.approx(diff.max()) and measures["units"] == 2000 * 16


@pytest.mark.parametrize("labels, message", [
    (np.zeros((8, 5, 5), np.int64), r"the dataset's labels \(N x 5x5\) fit no output of this model \(out: N x "
                                    r"4x6x6\)"),
    (np.zeros((8, 3), np.int64), r"the dataset's labels \(N x 3\) fit no output of this model \(out: N x 4x6x6\)")])
def test_labels_that_fit_no_output_are_refused(labels, message):
    maps = np.zeros((8, 4, 6, 6), np.float32)
    with pytest.raises(BridgeError, match=message):
        compare({"out": maps}, {"out": maps}, Dataset("d", np.zeros((8, 1)), labels), "a", "b")


def test_an_unknown_output_in_task_is_refused_naming_the_outputs():
    with pytest.raises(BridgeError, match=r"--task names feature, not an output of this model \(its outputs: "
                                          r"logits\)"):
        compare(np.zeros((2, 3)), np.zeros((2, 3)), Dataset("d", np.zeros((2, 1))), "a", "b",
                judging=Judging(tasks={"feature": "generic"}))


# --- PyTorch's own spread: its second backend beside each candidate ----------------------------------------------

def _spread_run(candidate_rows: range, peer_rows: range, labelled: bool = False, samples: int = 1000):
    """stream_parity over a decisive classifier's logits (the label's logit 5, the others below 1), where ONNX
    Runtime (the candidate) and PyTorch's peer backend each put another class on top on their rows: the rows of
    the two differ, as two backends' rounding differs. Returns the candidate's Comparison."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 10, samples)
    logits = rng.uniform(0, 1, (samples, 10)).astype(np.float32)
    logits[np.arange(samples), labels] = 5

    def moving(rows: range):
        def run(x):
            index = x[:, 0].astype(int)
            out = logits[index].copy()
            moved = np.isin(index, list(rows))
            out[moved, (labels[index[moved]] + 1) % 10] = 6
            return {"logits": out}
        return run
    source = Dataset("d", np.arange(samples, dtype=np.float32)[:, None], labels if labelled else None)
    backends = {"pytorch": lambda x: {"logits": logits[x[:, 0].astype(int)]},
                "onnxruntime": moving(candidate_rows), "pytorch:onednn": moving(peer_rows)}
    run = stream_parity(source, 100, backends, (("pytorch", "onnxruntime"), ("pytorch", "pytorch:onednn")),
                        progress=False, spread=("pytorch", "pytorch:onednn"))
    return run.comparisons[0]


def test_a_candidate_as_far_from_pytorch_as_its_second_backend_passes_with_the_note():
    """Both move 3 % of the top-1s (97.00 % < 99 %), on different samples: 30 further, 30 nearer, p = 0.55."""
    comparison = _spread_run(range(0, 30), range(30, 60))
    assert comparison.agreement == 0.97 and comparison.spread["logits"]["peer_agreement"] == 0.97
    assert (comparison.spread["logits"]["worse"], comparison.spread["logits"]["better"]) == (30, 30)
    assert comparison.failures(0.99, 1.0) == []
    (note,) = comparison.spread_notes(0.99)
    assert note == ("pytorch vs onnxruntime on d: top-1 agreement 97.00% < 99.00%, and PyTorch's onednn backend "
                    "agrees with its pytorch reference on 97.00%: within PyTorch's own spread (30 samples further "
                    "from the reference than pytorch:onednn, 30 nearer; sign test p = 0.551 >= 0.05), passed")


@pytest.mark.parametrize("candidate_rows, peer_rows, why", [
    (range(0, 100), range(100, 130), "further than the peer: 100 samples against 30, p < 1e-9"),
    (range(0, 30), range(30, 35), "the peer meets the threshold (99.50 %): the threshold holds"),
])
def test_a_candidate_further_than_pytorchs_spread_fails(candidate_rows, peer_rows, why):
    comparison = _spread_run(candidate_rows, peer_rows)
    (failure,) = comparison.failures(0.99, 1.0)
    assert failure.startswith("pytorch vs onnxruntime on d: top-1 agreement") and not comparison.spread_notes(0.99)


def test_the_spread_never_excuses_a_significant_accuracy_loss():
    """As the passing case, with labels: the candidate's 30 moves each take a right answer away (30 lost, 0
    gained): agreement is within PyTorch's spread, the loss of 3 points is not."""
    comparison = _spread_run(range(0, 30), range(30, 60), labelled=True)
    (failure,) = comparison.failures(0.99, 1.0)
    assert failure.startswith("pytorch vs onnxruntime on d: accuracy loss 3.00 points > 1 (pytorch 100.00%, "
                              "onnxruntime 97.00%; 30 right in pytorch and wrong in onnxruntime, 0 the other way")
