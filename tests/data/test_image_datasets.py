"""Image datasets on disk, streamed: the digits test split written as CIFAR-10 batches, MNIST idx files and an
image folder gives the very parity numbers of the same images as an .npz."""
import json

import numpy as np
import pytest
from PIL import Image

from qdq_bridge import ConvertOptions, convert, save_torchscript
from qdq_bridge.data.preprocessing import Preprocessing
from qdq_bridge.data.sources import digits_split, open_dataset
from qdq_bridge.pytorch.load import load_model

from helpers import run_cli
from helpers.datasets import write_cifar10, write_image_folder, write_mnist


@pytest.fixture(scope="module")
def digit_images(tmp_path_factory) -> dict:
    """The 450 test digits as 8-bit images in each format, and as .npz of what ToTensor makes of them, in the
    dataset's order and in ImageFolder's (by class folder, then file name)."""
    root = tmp_path_factory.mktemp("digit_images")
    test = digits_split()[1]
    pixels = np.rint(test.x[:, 0] * 255).astype(np.uint8)
    write_cifar10(root / "cifar", pixels, test.y)
    write_mnist(root / "mnist", pixels, test.y)
    write_image_folder(root / "folder", pixels, test.y)
    by_class = np.argsort(test.y, kind="stable")
    x = (pixels[:, None].astype(np.float32) / np.float32(255))
    np.savez(root / "digits.npz", x=x, y=test.y)
    np.savez(root / "digits_by_class.npz", x=x[by_class], y=test.y[by_class])
    return {"root": root, "cifar10": f"cifar10:{root / 'cifar'}", "mnist": f"mnist:{root / 'mnist'}",
            "imagefolder": f"imagefolder:{root / 'folder'}"}


def parity_rows(report: dict) -> list[dict]:
    """The labelled rows' numbers, without the dataset's name."""
    return [{k: v for k, v in row.items() if k != "dataset"} for row in report["parity"]]


def converted(model, tmp_path, name: str, **options) -> dict:
    return convert(model, tmp_path / name, ConvertOptions(random_inputs=0, engine="off", progress=False,
                                                          **options)).report


def test_cifar10_folder_gives_the_npz_numbers(example_dir, digit_images, tmp_path):
    """Through the CLI, as a user runs it: a seeded subset of the same 200 rows of either."""
    rows = {}
    for name, spec, extra in (("cifar", digit_images["cifar10"], ["--color", "gray"]),
                              ("npz", str(digit_images["root"] / "digits.npz"), [])):
        result = run_cli("convert", str(example_dir / "resnet_q.pt"), "--dataset", spec, "--limit", "200",
                         "--random-inputs", "0", "--engine", "off", *extra, "-o", str(tmp_path / name))
        assert result.returncode == 0, result.stderr
        rows[name] = parity_rows(json.loads((tmp_path / name / "report.json").read_text()))
    assert rows["cifar"] == rows["npz"]
    (row,) = [r for r in rows["cifar"] if r["candidate"] == "onnxruntime"]  # beside PyTorch's peer backend
    assert row["samples"] == 200 and row["agreement"] == 1.0 and row["reference_accuracy"] >= 0.95


def test_mnist_files_give_the_npz_numbers(example_dir, digit_images, tmp_path):
    model = example_dir / "resnet_q.pt"
    mnist = converted(model, tmp_path, "mnist", dataset=digit_images["mnist"], workers=0)
    npz = converted(model, tmp_path, "npz", dataset=str(digit_images["root"] / "digits.npz"))
    assert parity_rows(mnist) == parity_rows(npz) and mnist["parity"][0]["samples"] == 450
    assert mnist["datasets"][0]["preprocessing"] == {"color": "gray", "resize": 32, "crop": [32, 32], "mean": None,
                                                     "std": None}


def test_image_folder_with_preprocessing_from_the_model_file(example_dir, digit_images, tmp_path):
    """The model file names the folder and its preprocessing, so convert needs no options; normalization moves
    the inputs, and the npz normalized alike gives the same numbers."""
    path = tmp_path / "with_metadata.pt"
    mean, std = 0.25, 0.5
    save_torchscript(load_model(example_dir / "resnet_q.pt").module, path, (1, 1, 32, 32),
                     digit_images["imagefolder"], {"color": "gray", "mean": [mean], "std": [std]})
    folder = converted(path, tmp_path, "folder")
    twin = np.load(digit_images["root"] / "digits_by_class.npz")
    np.savez(tmp_path / "normalized.npz", x=(twin["x"] - np.float32(mean)) / np.float32(std), y=twin["y"])
    npz = converted(path, tmp_path, "npz", dataset=str(tmp_path / "normalized.npz"))
    assert parity_rows(folder) == parity_rows(npz)
    assert folder["datasets"][0]["name"] == "imagefolder:folder" and folder["datasets"][0]["classes"] == 10


def test_calibration_on_a_seeded_subset_of_an_image_folder(example_dir, digit_images, tmp_path):
    result = converted(example_dir / "digits_float.pth", tmp_path, "ptq", arch="qdq_bridge.pytorch.models:digits_resnet",
                       calibrate=digit_images["imagefolder"], calibration_samples=128, input_shape=(1, 1, 32, 32),
                       dataset=digit_images["mnist"], preprocess=Preprocessing(color="gray"))
    assert "128 calibration samples of imagefolder:folder[128 of 450]" in " ".join(result["notes"])
    assert result["ok"] and result["parity"][0]["reference_accuracy"] >= 0.95


def test_subsets_are_seeded_and_in_dataset_order(digit_images):
    source = open_dataset(digit_images["cifar10"], Preprocessing(color="gray"), workers=0)
    first, again, other = (source.subset(50, seed).fit((1, 1, 32, 32)) for seed in (0, 0, 1))
    assert np.array_equal(first.indices, again.indices) and not np.array_equal(first.indices, other.indices)
    assert np.all(np.diff(first.indices) > 0)
    x, y = next(first.labelled_batches(64))
    assert x.shape == (50, 1, 32, 32) and x.dtype == np.float32
    np.testing.assert_array_equal(y, digits_split()[1].y[first.indices])


def test_resize_and_crop_follow_torchvision(digit_images):
    """imagenet's preset at 24x24: shorter side to round(24 * 256 / 224) = 27, center crop 24, normalized."""
    source = open_dataset(digit_images["imagefolder"], Preprocessing(preset="imagenet"), workers=0).fit((1, 3, 24, 24))
    assert source.resolved() == {"color": "rgb", "resize": 27, "crop": [24, 24], "mean": [0.485, 0.456, 0.406],
                                 "std": [0.229, 0.224, 0.225], "preset": "imagenet"}
    x = source.head(1).x[0]
    image = Image.open(source.images.paths[0]).convert("RGB").resize((27, 27), Image.BILINEAR)
    crop = np.asarray(image, np.float32)[2:26, 2:26]  # torchvision rounds the offset 1.5 to 2
    expected = (crop / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(x, expected.transpose(2, 0, 1), atol=1e-5)
