"""Engines of 8-bit pixels (--engine-input uint8-nchw|uint8-nhwc, issue 36): the engine ONNX with the
preprocessing inside computes, on ONNX Runtime, the very values the float route computes from torchvision's
preprocessing of the same images; parity feeds the engine the pixels of each batch, checked to be pixels."""
import json

import numpy as np
import onnx
import pytest
import torch

from qdq_bridge import BridgeError, ConvertOptions
from qdq_bridge.data.sources import digits_split
from qdq_bridge.graph.image_input import PixelInput
from qdq_bridge.graph.runtime import onnxruntime_runner
from qdq_bridge.data.arrays import Dataset
from qdq_bridge.pytorch.runner import run_torch

from helpers import FAKE_TRT, run_cli
from helpers.datasets import write_image_folder

MNIST = ((0.1307,), (0.3081,))


def torchvision_preprocessing(pixels: np.ndarray, mean, std) -> np.ndarray:
    """What ToTensor and Normalize make of N x C x H x W uint8 pixels."""
    x = torch.from_numpy(pixels).float().div(255)
    if mean:
        x = x.sub(torch.tensor(mean).view(-1, 1, 1)).div(torch.tensor(std).view(-1, 1, 1))
    return x.numpy()


@pytest.fixture(scope="module")
def digits_qdq(example_dir, tmp_path_factory) -> onnx.ModelProto:
    out = tmp_path_factory.mktemp("qdq") / "o"
    result = run_cli("convert", str(example_dir / "resnet_q.pt"), "-o", str(out), "--engine", "off",
                     "--random-inputs", "0")
    assert result.returncode == 0, result.stderr
    return onnx.load(str(out / "resnet_q.qdq.onnx"))


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("mean, std", [(None, None), MNIST], ids=["x/255", "mnist normalization"])
def test_the_pixel_engine_onnx_computes_what_the_float_route_computes(digits_qdq, example_dir, layout, mean, std):
    pixels = np.rint(digits_split()[1].x * 255).astype(np.uint8)  # the 450 test digits as 8-bit images
    pixel_input = PixelInput(layout, mean, std)
    x = torchvision_preprocessing(pixels, mean, std)
    fed = pixel_input.pixels(x)
    np.testing.assert_array_equal(fed, pixels.transpose(0, 2, 3, 1) if layout == "nhwc" else pixels)
    engine_onnx = pixel_input.model(digits_qdq)
    (image,) = engine_onnx.graph.input
    assert image.name == "input" and image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    logits = onnxruntime_runner(engine_onnx)(fed)["logits"]
    np.testing.assert_array_equal(logits, onnxruntime_runner(digits_qdq)(x)["logits"])  # bit for bit
    if mean is None:  # the model was trained on x/255: PyTorch's own top-1 on the same images
        reference = run_torch(torch.jit.load(str(example_dir / "resnet_q.pt")), Dataset("d", x), 64, "qnnpack")
        assert (reference.argmax(1) == logits.argmax(1)).mean() == 1.0


def test_data_that_are_no_pixels_are_refused():
    with pytest.raises(BridgeError, match="--engine-input uint8 needs 8-bit images"):
        PixelInput("nchw").pixels(np.random.default_rng(0).standard_normal((2, 1, 4, 4)).astype(np.float32))


def test_an_engine_input_without_an_engine_is_refused():
    with pytest.raises(BridgeError, match="--engine-input uint8-nhwc is what an engine takes, and --engine off"):
        ConvertOptions(engine="off", engine_input="uint8-nhwc")


def test_convert_builds_the_engine_of_pixels_and_feeds_it_the_images(example_dir, tmp_path, monkeypatch):
    """Through the CLI with the stand-in TensorRT, on a folder of PNGs: the engine is built from the pixel ONNX
    (uint8 N x H x W x C), each batch reaches it as the images' pixels, and the report says what it takes."""
    test = digits_split()[1]
    write_image_folder(tmp_path / "images", np.rint(test.x[:, 0] * 255).astype(np.uint8), test.y)
    monkeypatch.setenv("PYTHONPATH", str(FAKE_TRT))
    monkeypatch.setenv("QDQ_BRIDGE_TRT_CUDA", "fake_cuda:Cuda")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "o"
    run_cli("convert", str(example_dir / "resnet_q.pt"), "--dataset", f"imagefolder:{tmp_path / 'images'}",
            "--color", "gray", "--engine", "require", "--engine-input", "uint8-nhwc", "--random-inputs", "16",
            "-o", str(out))
    report = json.loads((out / "report.json").read_text())
    trt = report["tensorrt"]
    assert "failed" not in trt, trt.get("failed")
    assert trt["engine_input"] == {"dtype": "uint8", "layout": "NHWC", "mean": None, "std": None,
                                   "preprocessing": "x / 255", "onnx": "resnet_q.qdq.uint8-nhwc.onnx"}
    built = onnx.load(str(out / "resnet_q.qdq.uint8-nhwc.onnx")).graph.input[0]
    assert [d.dim_value or d.dim_param for d in built.type.tensor_type.shape.dim][1:] == [32, 32, 1]
    # the stand-in engine's outputs are each sample's sum of what it was fed: of 32 x 32 values in [0, 1] at most
    # 1,024; of the pixels, whole levels up to 255, tens of thousands
    rows = {(r["dataset"], r["candidate"]): r for r in report["parity"]}
    for dataset, samples in (("imagefolder:images", 450), ("random images x16", 16)):
        assert rows[(dataset, "tensorrt")]["samples"] == samples and rows[(dataset, "tensorrt")]["mean_abs_diff"] > 2048
