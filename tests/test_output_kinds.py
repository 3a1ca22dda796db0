"""Parity on any output through the CLI (issue 33): a segmentation model judged per position, with pixel accuracy,
mean IoU and a sign test over images; a candidate that loses on dense labels fails; an output the judge cannot
measure fails with the reason; no rate in any report exceeds 1."""
import json
import os

import numpy as np
import pytest
import torch
from torch import nn
from torch.ao.quantization import DeQuantStub, QuantStub

from qdq_bridge import save_torchscript
from qdq_bridge.data.arrays import Dataset
from qdq_bridge.pytorch import quantize
from qdq_bridge.trt.trt_protocol import CUDA_ENV
from qdq_bridge.verify import run_onnxruntime

from helpers import FAKE_TRT, run_cli

RATES = ("agreement", "reference_accuracy", "candidate_accuracy", "reference_miou", "candidate_miou",
         "within_one_step")


def rates(report: dict) -> list[float]:
    """Every rate in report.json: the parity rows' and each output's."""
    found = []
    for row in report["parity"]:
        for measures in (row, *row["outputs"].values()):
            found += [measures[key] for key in RATES if measures.get(key) is not None]
    return found


def convert(tmp_path, model, dataset, *args):
    result = run_cli("convert", str(model), "--dataset", str(dataset), "-o", str(tmp_path / "out"), *args)
    report = json.loads((tmp_path / "out" / "report.json").read_text()) if result.returncode in (0, 1) else None
    return result, report


def test_an_exact_segmentation_model_passes_per_position_with_pixel_accuracy_and_mean_iou(segmentation, tmp_path):
    model, dataset = segmentation
    result, report = convert(tmp_path, model, dataset, "--engine", "off")
    assert result.returncode == 0, result.stdout + result.stderr
    labelled = report["parity"][0]
    measures = labelled["outputs"]["logits"]
    assert measures["kind"] == "dense" and measures["measure"] == "per-position argmax"
    assert measures["units"] == 200 * 32 * 32 and measures["agreement"] >= 0.99
    assert labelled["accuracy_of"] == "logits" and labelled["lost"] is not None
    assert 0 < measures["reference_miou"] <= 1 and measures["reference_accuracy"] == labelled["reference_accuracy"]
    assert measures["unit"] == "steps" and measures["within_one_step"] > 0.999
    assert all(0 <= rate <= 1 for rate in rates(report))
    assert "logits dense (per-position argmax)" in result.stdout
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "| logits | Nx11x32x32 | dense (shape Nx11x32x32, classes on axis 1) | per-position argmax |" in markdown
    assert "sign test p" in markdown


@pytest.fixture
def damaged_engine(monkeypatch, segmentation, tmp_path):
    """The stand-in TensorRT serving ONNX Runtime's class maps of the test set with the digit of the first
    `images` images erased (their ink predicted as background): a real loss of pixel accuracy."""
    model, dataset = segmentation
    cpu = tmp_path / "cpu"
    assert run_cli("convert", str(model), "--dataset", str(dataset), "--engine", "off", "--random-inputs", "0",
                   "-o", str(cpu)).returncode == 0
    with np.load(dataset) as arrays:
        x, y = arrays["x"], arrays["y"]
    maps = run_onnxruntime(str(cpu / "segnet_q.qdq.onnx"), Dataset("test", x))

    def use(images: int) -> None:
        damaged = maps.copy()
        ink = (y[:images] > 0)[:, None]  # every class map of those images says background where the ink is
        damaged[:images] = np.where(ink, -10.0, damaged[:images])
        damaged[:images, 0] = np.where(ink[:, 0], 10.0, damaged[:images, 0])
        np.save(tmp_path / "engine_maps.npy", damaged.astype(np.float32))
        monkeypatch.setenv("PYTHONPATH", str(FAKE_TRT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        monkeypatch.setenv("FAKE_TRT_LOGITS", str(tmp_path / "engine_maps.npy"))
        monkeypatch.setenv(CUDA_ENV, "fake_cuda:Cuda")
    return use


def test_a_candidate_that_loses_on_dense_labels_fails_by_the_sign_test_over_images(segmentation, damaged_engine,
                                                                                   tmp_path):
    model, dataset = segmentation
    damaged_engine(20)
    result, report = convert(tmp_path, model, dataset, "--engine", "require", "--random-inputs", "0",
                             "--min-position-agreement", "0")  # the accuracy test alone decides
    assert result.returncode == 1, result.stdout + result.stderr
    (row,) = [r for r in report["parity"] if (r["reference"], r["candidate"]) == ("pytorch", "tensorrt")]
    assert row["lost"] >= 10 and row["gained"] == 0 and row["loss_test"]["p_value"] < 1e-3
    assert row["outputs"]["logits"]["candidate_miou"] < row["outputs"]["logits"]["reference_miou"]
    (failure,) = report["failed"]
    assert failure.startswith("pytorch vs tensorrt on test: mean IoU loss") and "images of lower pixel accuracy in " \
        "tensorrt than in pytorch" in failure and "sign test p =" in failure
    assert all(0 <= rate <= 1 for rate in rates(report))


def test_an_output_the_judge_cannot_measure_fails_with_the_reason(segmentation, tmp_path):
    model, dataset = segmentation
    with np.load(dataset) as arrays:  # unlabelled: per-pixel labels fit no classification output (exit 2)
        np.savez(tmp_path / "images.npz", x=arrays["x"])
    result, report = convert(tmp_path, model, tmp_path / "images.npz", "--engine", "off", "--task",
                             "logits=classification")
    assert result.returncode == 1, result.stdout + result.stderr
    assert report["failed"][0].endswith("output logits (classification) cannot be measured: classification needs "
                                        "N x C and it is Nx11x32x32; pass --task logits=dense for per-position "
                                        "classes or --task logits=generic")
    assert "FAIL" in result.stdout and report["parity"][0]["outputs"]["logits"]["kind_source"] == "--task"


def test_a_super_resolution_model_is_judged_as_an_image_per_sample(super_resolution, tmp_path):
    """N x 1 x 32 x 32 (PixelShuffle's output): generic, every sample within one output step or at cosine and norm
    ratio >= 0.99, differences in the output's steps."""
    model, dataset = super_resolution
    result, report = convert(tmp_path, model, dataset, "--engine", "off")
    assert result.returncode == 0, result.stdout + result.stderr
    measures = report["parity"][0]["outputs"]["logits"]
    assert measures["kind"] == "generic" and measures["units"] == 450 and measures["agreement"] == 1
    assert measures["unit"] == "steps" and measures["max_diff"] <= 1 + 1e-3 and measures["cosine_min"] > 0.999
    assert report["exporter"] == "structural (TorchScript graph)" and "DepthToSpace" in report["op_counts"]
    assert all(0 <= rate <= 1 for rate in rates(report))


def test_an_embedding_model_is_judged_generic_and_its_labels_are_noted_unjudged(embedding, tmp_path):
    """N x 64 features look like logits by shape: --task generic judges them per sample; the test set's class
    labels then fit no output, which the report notes instead of judging an accuracy that is not there."""
    model, dataset = embedding
    result, report = convert(tmp_path, model, dataset, "--engine", "off", "--task", "generic")
    assert result.returncode == 0, result.stdout + result.stderr
    labelled = report["parity"][0]
    measures = labelled["outputs"]["logits"]
    assert measures["kind"] == "generic" and measures["units"] == 450 and measures["agreement"] == 1
    assert measures["unit"] == "steps" and measures["within_one_step"] > 0.999 and measures["cosine_min"] > 0.999
    assert labelled["reference_accuracy"] is None and labelled["judged"]
    assert any(note.startswith("dataset test has labels, and every output is generic: they were not judged")
               for note in report["notes"])


class FeatureExtractor(nn.Module):
    """A Conv1d feature extractor (N x 16 x 64): the last dimension equals the parity batch of 64 rows, where the
    old top-1 code reported 51,783 % agreement and PASS."""

    def __init__(self):
        super().__init__()
        self.quant, self.dequant = QuantStub(), DeQuantStub()
        self.conv, self.relu = nn.Conv1d(4, 16, 3, padding=1), nn.ReLU()

    def forward(self, x):
        return self.dequant(self.relu(self.conv(self.quant(x))))

    def fuse_model(self, is_qat=False):
        torch.ao.quantization.fuse_modules(self, [["conv", "relu"]], inplace=True)


@pytest.mark.slow
def test_a_feature_map_whose_last_dimension_is_the_batch_gets_rates_of_at_most_one(tmp_path):
    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((256, 4, 64)).astype(np.float32)
    model = quantize.quantize_ptq(FeatureExtractor(), [x[:64]])
    save_torchscript(model, tmp_path / "conv1d.pt", (1, 4, 64))
    np.savez(tmp_path / "features.npz", x=x)
    result, report = convert(tmp_path, tmp_path / "conv1d.pt", tmp_path / "features.npz", "--engine", "off")
    assert result.returncode == 0, result.stdout + result.stderr
    assert report["parity"][0]["outputs"]["logits"]["kind"] == "dense"
    assert report["parity"][0]["outputs"]["logits"]["units"] == 256 * 64
    assert all(0 <= rate <= 1 for rate in rates(report))
    generic = tmp_path / "generic"
    generic.mkdir()
    result, report = convert(generic, tmp_path / "conv1d.pt", tmp_path / "features.npz", "--engine", "off", "--task",
                             "generic")
    measures = report["parity"][0]["outputs"]["logits"]
    assert result.returncode == 0 and measures["kind"] == "generic" and measures["units"] == 256
    assert measures["cosine_min"] > 0.999 and measures["agreement"] == 1
