"""Bad input: one line naming the problem and the fix, exit status 2, no half-written outputs."""
import json
import os
import re
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.ao.quantization import get_default_qconfig

from qdq_bridge import BridgeError, ConvertOptions
from qdq_bridge.data.sources import digits_split
from qdq_bridge.pytorch import quantize
from qdq_bridge.pytorch.load import save_torchscript
from qdq_bridge.pytorch.models import DigitsResNet
from qdq_bridge.trt.engine import BuildSettings

from helpers import quantize_with, run_cli
from helpers.datasets import write_cifar10, write_mnist, write_png_claiming

ARCH = "qdq_bridge.pytorch.models:digits_resnet"


def refused(tmp_path, *args) -> str:
    out = tmp_path / "out"
    result = run_cli("convert", *args, "-o", str(out))
    assert result.returncode == 2, result.stdout + result.stderr
    assert not out.exists(), "a refused conversion must not leave an output folder"
    message = result.stderr.strip()
    assert message.startswith("error: ") and "\n" not in message and "Traceback" not in message
    return message


def test_missing_file(tmp_path):
    assert refused(tmp_path, str(tmp_path / "nope.pt")) == \
        f"error: model file '{tmp_path / 'nope.pt'}' not found: check the path"


@pytest.mark.slow
def test_corrupt_file(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"\x80\x04 definitely not a model")
    assert "is damaged or not a PyTorch model file (UnpicklingError: " in refused(tmp_path, str(path))


@pytest.mark.slow
def test_text_file_named_pt(tmp_path):
    path = tmp_path / "model.pt"
    path.write_text("these are release notes, not weights\n" * 20)
    message = refused(tmp_path, str(path))
    assert message.startswith(f"error: '{path}' is damaged or not a PyTorch model file (")
    assert message.endswith("pass a TorchScript .pt, a torch.save'd module or a state_dict")


@pytest.fixture(scope="module")
def model_files(example_dir, tmp_path_factory) -> dict:
    """The example in each file format: TorchScript, state_dict, pickled module."""
    from qdq_bridge.pytorch.load import load_model
    pickled = tmp_path_factory.mktemp("pickled") / "whole.pth"
    torch.save(load_model(example_dir / "resnet_q_state.pth", arch=ARCH).module, pickled)
    return {"torchscript": example_dir / "resnet_q.pt", "state_dict": example_dir / "resnet_q_state.pth",
            "pickled": pickled}


FORMAT_ARGS = ["--arch", "qdq_bridge.pytorch.models:digits_resnet", "--trust-pickle"]


@pytest.mark.parametrize("fmt", ["torchscript", "state_dict", "pickled"])
@pytest.mark.parametrize("damage,expected", [
    ("empty", "is empty (0 bytes): pass a TorchScript .pt"),
    ("truncated", "is damaged or not a PyTorch model file ("),
    ("corrupt", "is a damaged zip archive ("),
])
def test_damaged_model_files(tmp_path, model_files, fmt, damage, expected):
    data = bytearray(model_files[fmt].read_bytes())
    if damage == "empty":
        data = b""
    elif damage == "truncated":
        data = data[:len(data) // 2]
    else:  # flip bytes across the archive, its central directory included
        for i in range(len(data) // 3, len(data), 97):
            data[i] ^= 0x5A
    path = tmp_path / f"damaged{model_files[fmt].suffix}"
    path.write_bytes(bytes(data))
    message = refused(tmp_path, str(path), *FORMAT_ARGS)
    assert message.startswith(f"error: '{path}' ") and expected in message


@pytest.mark.slow
def test_float_model_without_quantization(tmp_path):
    path = tmp_path / "float.pth"
    torch.save(DigitsResNet().state_dict(), path)
    message = refused(tmp_path, str(path), "--arch", "qdq_bridge.pytorch.models:digits_resnet")
    assert "float model with no quantization: pass --calibrate" in message


@pytest.mark.slow
@pytest.mark.parametrize("calibrate", [[], ["--calibrate", "digits"]])
def test_float_torchscript_model_is_refused_at_once(tmp_path, calibrate):
    path = tmp_path / "float.pt"
    torch.jit.save(torch.jit.script(DigitsResNet().eval()), str(path))
    message = refused(tmp_path, str(path), "--input-shape", "1,1,32,32", *calibrate)
    assert message == ("error: the TorchScript model is a float model with no quantization, and TorchScript cannot be "
                       "quantized in eager mode: save the float model's state_dict and pass it with --arch and "
                       "--calibrate DATA, or quantize it before scripting")


@pytest.mark.slow
def test_state_dict_without_arch(tmp_path):
    path = tmp_path / "float.pth"
    torch.save(DigitsResNet().state_dict(), path)
    assert "holds weights but no architecture: pass --arch" in refused(tmp_path, str(path))


def _digits_model(qconfig) -> torch.nn.Module:
    return quantize_with(DigitsResNet(), qconfig, [digits_split()[0].x[:64]])


@pytest.mark.slow
def test_full_range_affine_activations_are_refused_naming_the_tensor_and_both_ways_out(tmp_path):
    """qnnpack's default qconfig: quint8 over 0..255, which int8 at the same scale cannot hold."""
    path = tmp_path / "qnnpack.pt"
    save_torchscript(_digits_model(get_default_qconfig("qnnpack")), path, (1, 1, 32, 32), "digits")
    message = refused(tmp_path, str(path))
    assert re.fullmatch(r"error: activation '\S+' \(module \S+\) is quantized affinely over the full uint8 range "
                        r"\(zero_point=\d+, scale=[\d.e-]+, qnnpack-style\): .*: pass --requantize-activations \(.*\), "
                        r"or quantize the float model again with --qconfig tensorrt", message), message


@pytest.mark.slow
def test_affine_qint8_activations_are_refused_naming_the_module(tmp_path):
    qconfig = torch.ao.quantization.QConfig(
        activation=torch.ao.quantization.MinMaxObserver.with_args(dtype=torch.qint8), weight=quantize.trt_qconfig().weight)
    path = tmp_path / "qint8_affine.pt"
    save_torchscript(_digits_model(qconfig), path, (1, 1, 32, 32))
    message = refused(tmp_path, str(path))
    assert "module 'quant' (Quantize) quantizes activations affinely (qint8, zero_point=" in message
    assert "qdq_bridge.pytorch.quantize.trt_qconfig()" in message


@pytest.mark.slow
@pytest.mark.parametrize("saved", ["pickled", "torchscript"])
def test_dynamic_quantization_is_refused(tmp_path, saved):
    """quantize_dynamic's modules, pickled or scripted (the TorchScript file once got torch.onnx's message about
    quantized::linear_dynamic instead)."""
    model = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(8, 4)), {torch.nn.Linear})
    path = tmp_path / "dynamic.pt"
    if saved == "pickled":
        torch.save(model, path)
    else:
        torch.jit.save(torch.jit.script(model), path)
    message = refused(tmp_path, str(path), "--trust-pickle", "--input-shape", "1,8")
    name = "DynamicQuantizedLinear" if saved == "pickled" else "Linear"
    assert f"dynamically quantized module '0' ({name})" in message
    assert "use static quantization" in message


def test_wrong_input_shape(tmp_path, example_dir):
    """torch said "Input channel size of weight and bias must match"."""
    message = refused(tmp_path, str(example_dir / "resnet_q.pt"), "--input-shape", "1,3,32,32")
    assert message == "error: input shape (1, 3, 32, 32) has 3 channels, and the model's first convolution takes " \
                      "1-channel inputs: pass --input-shape N,1,H,W"


def test_calibration_data_of_another_channel_count_is_named_so(tmp_path, example_dir):
    np.savez(tmp_path / "rgb.npz", x=np.zeros((4, 3, 32, 32), np.float32))
    message = refused(tmp_path, str(example_dir / "digits_float.pth"), "--arch", ARCH, "--calibrate",
                      str(tmp_path / "rgb.npz"))
    assert message == "error: the calibration data has 3-channel samples, and the model's first convolution takes " \
                      "1-channel inputs: pass 1-channel data (images: --color gray)"


@pytest.mark.parametrize("below", [False, True])
def test_output_folder_that_is_a_file(tmp_path, example_dir, below):
    blocker = tmp_path / "a_file"
    blocker.write_text("mine")
    out = blocker / "out" if below else blocker
    result = run_cli("convert", str(example_dir / "resnet_q.pt"), "-o", str(out))
    assert result.returncode == 2
    assert result.stderr == (f"error: output folder '{out}' cannot be made: '{blocker}' is a file: pass --output-dir "
                             "with a folder path, not a file's\n")
    assert blocker.read_text() == "mine"


def test_unwritable_output_folder(tmp_path, example_dir):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):
        pytest.skip("running as a user who may write anywhere (root)")
    result = run_cli("convert", str(example_dir / "resnet_q.pt"), "-o", str(locked / "out"))
    assert result.returncode == 2
    assert f"error: output folder '{locked / 'out'}' is not writable" in result.stderr


def test_malformed_input_shape_is_a_usage_error(tmp_path, example_dir):
    result = run_cli("convert", str(example_dir / "resnet_q.pt"), "--input-shape", "1,x,y")
    assert result.returncode == 2 and "'1,x,y' is not a shape like 1,3,224,224" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("spec,text", [("nonexistent_pkg:make", "cannot import architecture"),
                                       ("torchvision:alexnet", "torchvision has no quantizable model 'alexnet'"),
                                       ("no_colon", "is not of the form 'module:factory'")])
def test_bad_arch(tmp_path, spec, text):
    path = tmp_path / "float.pth"
    torch.save(DigitsResNet().state_dict(), path)
    assert text in refused(tmp_path, str(path), "--arch", spec)


# --- datasets: one line each, before anything is written ---------------------------------------------------------

def _image_folder(root, classes: int = 2, per_class: int = 2, mode: str = "L"):
    for label in range(classes):
        (root / f"class{label}").mkdir(parents=True)
        for index in range(per_class):
            Image.new(mode, (32, 32), 40 * index).save(root / f"class{label}" / f"{index}.png")
    return root


@pytest.mark.parametrize("case, expected", [
    ("missing", "error: dataset folder '{root}/nope' not found: imagefolder:PATH takes an existing folder"),
    ("no classes", "error: folder '{root}' has no class sub-folders: imagefolder:PATH takes a folder with one "
                   "sub-folder of images per class"),
    ("empty class", "error: class folder '{root}/class2' has no images (.jpg, "),
    ("unreadable", "error: image '{root}/class1/broken.jpg' cannot be read (cannot identify image file"),
    ("more classes than outputs", "error: dataset imagefolder:{name} has 11 classes, the model 10 outputs: pass the "
                                  "dataset the model was trained on"),
    ("color", "error: dataset imagefolder:{name} gives 3-channel images, the model takes 1-channel inputs: pass "
              "--color gray to decode the images as gray"),
], ids=lambda value: value if " " not in value or len(value) < 30 else "")
def test_bad_image_folders(tmp_path, example_dir, case, expected):
    root = tmp_path / "images"
    spec, color = f"imagefolder:{root}", ["--color", "gray"]
    if case == "missing":
        spec = f"imagefolder:{root}/nope"
        root.mkdir()
    elif case == "no classes":
        root.mkdir()
        Image.new("L", (32, 32)).save(root / "loose.png")
    elif case == "empty class":
        _image_folder(root)
        (root / "class2").mkdir()
    elif case == "unreadable":
        _image_folder(root)
        (root / "class1" / "broken.jpg").write_bytes(b"not a jpeg at all")
    elif case == "more classes than outputs":
        _image_folder(root, classes=11, per_class=1)
    else:
        _image_folder(root, mode="RGB")
        color = []
    message = refused(tmp_path, str(example_dir / "resnet_q.pt"), "--dataset", spec, "--random-inputs", "0",
                      "--engine", "off", *color)
    assert message.startswith(expected.format(root=root, name=root.name)), message


@pytest.mark.parametrize("spec, expected", [
    ("cifar10:{root}", "error: CIFAR-10 file '{root}/cifar-10-batches-py/test_batch' not found: cifar10:ROOT takes "
                       "the folder holding cifar-10-batches-py/"),
    ("mnist:{root}", "error: MNIST files not found in '{root}/MNIST/raw': mnist:ROOT takes the folder holding "
                     "MNIST/raw/t10k-images-idx3-ubyte"),
    ("digits --resize 40", "error: dataset 'digits' holds arrays, which are preprocessed already: leave out "
                           "--preprocess"),
], ids=["cifar10", "mnist", "preprocessing arrays"])
def test_bad_dataset_specs(tmp_path, example_dir, spec, expected):
    message = refused(tmp_path, str(example_dir / "resnet_q.pt"), "--dataset", *spec.format(root=tmp_path).split())
    assert message.startswith(expected.format(root=tmp_path)), message


def _damaged_dataset(root: Path, case: str) -> str:
    """The dataset spec of `case`: a standard dataset's files damaged as downloads and hand-made copies are."""
    pixels, labels = np.zeros((4, 28, 28), np.uint8), np.array([0, 1, 2, 3])
    if case.startswith("cifar10"):
        write_cifar10(root, np.zeros((4, 32, 32), np.uint8), np.array([0, 1, 2, 99]))
        return f"cifar10:{root}"
    if case.startswith("image"):
        _image_folder(root)
        write_png_claiming(root / "class1" / "bomb.png", 50_000, 50_000)
        return f"imagefolder:{root}"
    write_mnist(root, pixels, np.array([0, 1, 2, 99]) if case == "mnist labels" else labels)
    raw = root / "MNIST" / "raw"
    if case == "mnist garbage":
        (raw / "t10k-images-idx3-ubyte").write_bytes(np.random.default_rng(0).bytes(3000))
    elif case == "mnist truncated":
        (raw / "t10k-images-idx3-ubyte").write_bytes((raw / "t10k-images-idx3-ubyte").read_bytes()[:500])
    elif case == "mnist counts":
        (raw / "t10k-labels-idx1-ubyte").write_bytes(np.array([0x801, 3], ">i4").tobytes() + bytes(3))
    return f"mnist:{root}"


@pytest.mark.parametrize("case, expected", [
    ("cifar10 labels", "error: '{root}/cifar-10-batches-py/test_batch' has labels from 0 to 99, and CIFAR-10 has 10 "
                       "classes (0 to 9): replace it with the file from CIFAR-10"),
    ("mnist labels", "error: '{root}/MNIST/raw/t10k-labels-idx1-ubyte' has labels from 0 to 99, and MNIST has 10 "
                     "classes (0 to 9)"),
    ("mnist garbage", "error: '{root}/MNIST/raw/t10k-images-idx3-ubyte' is not an MNIST images file in IDX format "
                      "(AssertionError): replace it with the uncompressed file from MNIST"),
    ("mnist truncated", "error: '{root}/MNIST/raw/t10k-images-idx3-ubyte' is not an MNIST images file in IDX format "
                        "(RuntimeError: shape '[4, 28, 28]' is invalid for input of size 484)"),
    ("mnist counts", "error: '{root}/MNIST/raw/t10k-labels-idx1-ubyte' has 3 labels for 4 images: replace the MNIST "
                     "files with a matching pair"),
    ("image bomb", "error: image '{root}/class1/bomb.png' cannot be read (Image size (2500000000 pixels) exceeds limit "
                   "of 178956970 pixels, could be decompression bomb DOS attack.): remove or replace the file"),
], ids=lambda value: value if value.count(" ") < 2 else "")
def test_damaged_standard_datasets_are_refused_naming_the_file(tmp_path, example_dir, case, expected):
    root = tmp_path / "data"
    spec = _damaged_dataset(root, case)
    message = refused(tmp_path, str(example_dir / "resnet_q.pt"), "--dataset", spec, "--random-inputs", "0",
                      "--engine", "off", "--color", "gray")
    assert message.startswith(expected.format(root=root)), message


def test_cifar10_batch_that_would_run_code_is_refused(tmp_path, example_dir):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({"data": os.system}))
    message = refused(tmp_path, str(example_dir / "resnet_q.pt"), "--dataset", f"cifar10:{tmp_path}")
    assert message.startswith(f"error: '{folder / 'test_batch'}' is not a CIFAR-10 batch (UnpicklingError: the file "
                              "refers to 'posix.system')"), message


@pytest.mark.parametrize("model, extra, message", [
    ("digits_float.pth", ["--calibrate", "digits-train"], "the model has no submodule 'stage9' to keep float"),
    ("resnet_q.pt", [], "--keep-float applies when qdq_bridge quantizes a float model"),
])
def test_keep_float_names_what_it_cannot_do(example_dir, tmp_path, model, extra, message):
    arch = ["--arch", ARCH] if model.endswith(".pth") else []
    result = run_cli("convert", str(example_dir / model), *arch, *extra, "--keep-float", "stage9",
                     "-o", str(tmp_path / "o"))
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


# Issue 24's adverse cases: each is bad input (exit 2, one line, nothing written), none passes unchecked.

@pytest.mark.parametrize("args, expected", [
    (["--batch-size", "-4"], "error: --batch-size -4 is not a whole number at least 1"),
    (["--batch-size", "0"], "error: --batch-size 0 is not a whole number at least 1"),
    (["--random-inputs", "-1"], "error: --random-inputs -1 is not a whole number at least 0"),
    (["--opset", "99"], "error: --opset 99 is not a whole number at least 13 and at most "),
    (["--seed", "-1", "--limit", "10"], "error: --seed -1 is not a whole number at least 0"),
    (["--min-agreement", "nan"], "error: --min-agreement nan is not a number at least 0 and at most 1"),
    (["--min-agreement", "-3"], "error: --min-agreement -3.0 is not a number at least 0 and at most 1"),
    (["--min-agreement", "1.5"], "error: --min-agreement 1.5 is not a number at least 0 and at most 1"),
    (["--max-accuracy-gap", "-1"], "error: --max-accuracy-gap -1.0 is not a number at least 0 and at most 100"),
    (["--significance", "0"], "error: --significance 0.0 is not a number above 0 and at most 1"),
    (["--trt-timeout", "-5"], "error: --trt-timeout -5.0 is not a number above 0"),
    (["--input-shape", "1,32,32"], "error: input shape (1, 32, 32) does not fit the model (ValueError: Input shape "
                                   "must be `(N, C, H, W)`!): pass the right --input-shape N,C,H,W"),
    (["--input-shape", "1024,3,32,32"], "error: input shape (1024, 3, 32, 32) has 3 channels, and the model's first "
                                        "convolution takes 1-channel inputs: pass --input-shape N,1,H,W"),
    (["--no-such-option"], "error: unrecognized arguments: --no-such-option: see 'python -m qdq_bridge --help'"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else "")
def test_options_out_of_range_are_refused_on_parse(tmp_path, example_dir, args, expected):
    message = refused(tmp_path, str(example_dir / "resnet_q.pt"), *args)
    assert message.startswith(expected), message


@pytest.fixture(scope="module")
def bad_arrays(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("arrays")
    test = digits_split()[1]
    np.savez(folder / "mismatch.npz", x=test.x, y=test.y[:-3])
    np.savez(folder / "empty.npz", x=test.x[:0], y=test.y[:0])
    x = test.x.copy()
    x[5, 0, 3, 3] = np.nan
    x[9, 0, 0, 0] = np.inf
    np.savez(folder / "nan.npz", x=x, y=test.y)
    return folder


@pytest.mark.parametrize("name, expected", [
    ("mismatch", "has 450 inputs but labels of shape (447,): save it with numpy.savez(path, x=inputs, y=labels), one "
                 "label (or one label map) per input"),
    ("empty", "has no samples (x has shape (0, 1, 32, 32)): save it with numpy.savez(path, x=inputs, y=labels), one "
              "label (or one label map) per input"),
    ("nan", "has 2 non-finite values (NaN or infinity) in x: replace or drop those samples")])
@pytest.mark.parametrize("option", ["--dataset", "--calibrate"])
def test_arrays_no_verdict_can_rest_on_are_refused(tmp_path, example_dir, bad_arrays, name, expected, option):
    spec = str(bad_arrays / f"{name}.npz")
    model = ["--dataset", spec] if option == "--dataset" else [
        str(example_dir / "digits_float.pth"), "--arch", ARCH, "--input-shape", "1,1,32,32", "--calibrate", spec]
    args = [str(example_dir / "resnet_q.pt"), *model] if option == "--dataset" else model
    assert refused(tmp_path, *args) == f"error: dataset '{spec}' {expected}"


def test_paths_that_are_no_file_say_what_they_are(tmp_path):
    (tmp_path / "loop_a").symlink_to(tmp_path / "loop_b")
    (tmp_path / "loop_b").symlink_to(tmp_path / "loop_a")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone.pt")
    assert refused(tmp_path, str(tmp_path)) == f"error: model file '{tmp_path}' is a folder, not a file: pass the " \
                                                "file itself"
    assert refused(tmp_path, str(tmp_path / "loop_a")).startswith(f"error: model file '{tmp_path / 'loop_a'}' is a "
                                                                  "symbolic link loop")
    assert refused(tmp_path, str(tmp_path / "dangling")).startswith(f"error: model file '{tmp_path / 'dangling'}' is "
                                                                    "a symbolic link to a missing file")


@pytest.mark.slow
def test_a_dict_of_numbers_is_not_called_a_state_dict(tmp_path):
    torch.save({"lr": 0.1, "epochs": 40}, tmp_path / "settings.pth")
    assert refused(tmp_path, str(tmp_path / "settings.pth")) == (
        f"error: '{tmp_path / 'settings.pth'}' holds a dict of float, int, not a state_dict (which maps names to "
        "tensors): pass a TorchScript .pt, a torch.save'd module or a model's state_dict with --arch")


def test_lint_of_an_empty_file_is_bad_input(tmp_path):
    (tmp_path / "empty.onnx").touch()
    result = run_cli("lint", str(tmp_path / "empty.onnx"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: ONNX file '{tmp_path / 'empty.onnx'}' is empty (0 bytes): pass an .onnx " \
                                    "model file"


def test_a_failed_run_leaves_no_folder_it_made(tmp_path, example_dir, bad_arrays):
    """-o a/b/out, all three made by the run: a refused run removes them again."""
    result = run_cli("convert", str(example_dir / "resnet_q.pt"), "--dataset", str(bad_arrays / "empty.npz"),
                     "-o", str(tmp_path / "a" / "b" / "out"))
    assert result.returncode == 2 and not (tmp_path / "a").exists()


def test_too_few_samples_make_no_verdict(tmp_path, example_dir):
    """Ten labelled digits and no random inputs: the report is written, the verdict is FAIL and says why."""
    test = digits_split()[1]
    np.savez(tmp_path / "ten.npz", x=test.x[:10], y=test.y[:10])
    result = run_cli("convert", str(example_dir / "resnet_q.pt"), "--dataset", str(tmp_path / "ten.npz"),
                     "--random-inputs", "0", "-o", str(tmp_path / "o"))
    assert result.returncode == 1
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["failed"] == ["only 10 samples were compared; a verdict needs at least 32 (pass a larger --dataset, "
                                "or --random-inputs N)"]


def test_unreadable_model_files_say_permission_denied(tmp_path, example_dir):
    """A file without read permission, and one in a folder that cannot be searched (not 'a damaged zip')."""
    unreadable = tmp_path / "unreadable.pt"
    shutil.copy(example_dir / "resnet_q.pt", unreadable)
    unreadable.chmod(0)
    closed = tmp_path / "closed"
    closed.mkdir()
    shutil.copy(example_dir / "resnet_q.pt", closed / "model.pt")
    closed.chmod(0)
    if os.access(unreadable, os.R_OK):
        pytest.skip("running as a user who may read anything (root)")
    assert refused(tmp_path, str(unreadable)) == f"error: model file '{unreadable}' cannot be read (permission " \
                                                  "denied): make it readable (chmod) or copy it somewhere you can read"
    assert refused(tmp_path, str(closed / "model.pt")).startswith(
        f"error: model file '{closed / 'model.pt'}' cannot be read (Permission denied)")
    closed.chmod(0o700)


@pytest.mark.parametrize("option, what", [("--batch-size", "one batch's inputs alone"),
                                          ("--random-inputs", "the random inputs")])
def test_a_batch_that_would_exhaust_memory_is_refused_with_its_estimate(tmp_path, example_dir, option, what):
    """32x32 digits: 2**26 of them take 256 GiB as float32, more than any machine here has."""
    message = refused(tmp_path, str(example_dir / "resnet_q.pt"), option, str(2 ** 26))
    assert message.startswith(f"error: {option} {2 ** 26} needs 256.0 GiB for {what}, and ")
    assert f" GiB of memory is available: pass {option} " in message


@pytest.mark.parametrize("options, message", [
    ({"placement": "fsat"}, "--placement 'fsat' is not one of faithful, fast"),
    ({"qconfig": "x68"}, "--qconfig 'x68' is not one of tensorrt, x86, fbgemm, qnnpack, torchvision"),
    ({"engine": "yes"}, "--engine 'yes' is not one of auto, off, require"),
    ({"trt": BuildSettings(optimization_level=7)}, "--builder-optimization-level 7 is not a whole number at least 0 "
                                                    "and at most 5"),
])
def test_library_options_out_of_their_choices_are_refused_on_construction(options, message):
    """ConvertOptions, as a library user builds it, names the option and its choices (the CLI's argparse does)."""
    with pytest.raises(BridgeError) as refused:
        ConvertOptions(**options)
    assert str(refused.value).startswith(message)


def test_the_old_spelling_of_torch_backends_still_works_and_warns(example_dir, tmp_path):
    result = run_cli("convert", str(example_dir / "resnet_q.pt"), "--torch-engines", "qnnpack", "--engine", "off",
                     "--random-inputs", "32", "-o", str(tmp_path / "o"))
    assert result.returncode == 0, result.stderr
    assert "warning: --torch-engines is now --torch-backends" in result.stderr
    assert json.loads((tmp_path / "o" / "report.json").read_text())["pytorch_reference"]["backend"] == "qnnpack"


def test_a_torch_without_eager_quantization_is_one_line_naming_the_way_out(example_dir, tmp_path):
    """As on a future PyTorch that removed torch.ao.quantization: the import fails, the CLI says so in one line."""
    program = ("import sys, torch; sys.modules['torch.ao.quantization'] = None; from qdq_bridge.cli import main; "
               f"sys.exit(main(['convert', {str(example_dir / 'resnet_q.pt')!r}, '-o', {str(tmp_path / 'o')!r}]))")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "has no eager-mode quantization" in result.stderr
    assert "torch 2.11 to 2.15" in result.stderr and "PT2E" in result.stderr and not (tmp_path / "o").exists()


class Recurrent(torch.nn.Module):
    """Conv1d -> LSTM -> Linear, as keyword-spotting models are; `float_lstm` keeps the LSTM float between stubs."""

    def __init__(self, float_lstm: bool = False):
        super().__init__()
        stubs = torch.ao.quantization
        self.quant, self.dequant = stubs.QuantStub(), stubs.DeQuantStub()
        self.into_lstm, self.out_of_lstm = (stubs.DeQuantStub(), stubs.QuantStub()) if float_lstm else \
            (torch.nn.Identity(), torch.nn.Identity())
        self.conv, self.lstm, self.fc = torch.nn.Conv1d(4, 8, 3, padding=1), torch.nn.LSTM(8, 16, batch_first=True), \
            torch.nn.Linear(16, 5)
        if float_lstm:
            self.lstm.qconfig = None

    def forward(self, x):
        y, _ = self.lstm(self.into_lstm(self.conv(self.quant(x))).permute(0, 2, 1))
        return self.dequant(self.fc(self.out_of_lstm(y[:, -1])))

    def fuse_model(self):
        pass


@pytest.mark.slow
def test_a_quantized_lstm_is_refused_naming_the_way_out_which_converts(tmp_path):
    """torch.ao.nn.quantized.LSTM (eager mode's custom-module route) is refused in one line; the way it names, the
    LSTM left float between stubs, converts (torch.onnx exports the float LSTM) and passes."""
    x = np.random.default_rng(0).standard_normal((64, 4, 20)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    lstms = {torch.nn.LSTM: torch.ao.nn.quantizable.LSTM, torch.ao.nn.quantizable.LSTM: torch.ao.nn.quantized.LSTM}
    model = Recurrent().eval()
    model.qconfig = quantize.trt_qconfig()
    with quantize.using_backend("qnnpack"), quantize.quiet_torch_warnings():
        torch.ao.quantization.prepare(model, inplace=True, prepare_custom_config_dict={
            "float_to_observed_custom_module_class": {torch.nn.LSTM: lstms[torch.nn.LSTM]}})
        model(torch.from_numpy(x))
        torch.ao.quantization.convert(model, inplace=True, convert_custom_config_dict={
            "observed_to_quantized_custom_module_class": {lstms[torch.nn.LSTM]: torch.ao.nn.quantized.LSTM}})
    save_torchscript(model, tmp_path / "lstm.pt", (1, 4, 20))
    message = refused(tmp_path, str(tmp_path / "lstm.pt"), "--dataset", str(tmp_path / "x.npz"))
    assert message.startswith("error: quantized module 'lstm' (LSTM) runs a time loop or attention of its own")
    assert message.endswith("leave it float: qconfig None on it, a DeQuantStub before it and a QuantStub after its "
                            "output tensor")
    save_torchscript(quantize.quantize_ptq(Recurrent(float_lstm=True).eval(), [x]), tmp_path / "float_lstm.pt",
                     (1, 4, 20))
    result = run_cli("convert", str(tmp_path / "float_lstm.pt"), "--dataset", str(tmp_path / "x.npz"), "--engine",
                     "off", "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads((tmp_path / "out" / "report.json").read_text())["exporter"].startswith("torch.onnx")


@pytest.mark.parametrize("args, message", [
    (["--calibrate", "digits"], "error: --calibrate quantizes a float model, and this one is already quantized (or "
                                "QAT): drop --calibrate (and --calibration-samples)"),
    (["--calibration-samples", "10"], "error: --calibration-samples applies to --calibrate's data, and no "
                                      "--calibrate was given: drop --calibration-samples, or pass --calibrate DATA "
                                      "with it")])
def test_options_that_would_do_nothing_are_refused(example_dir, tmp_path, args, message):
    """Round two: both were once ignored without a word."""
    assert refused(tmp_path, str(example_dir / "resnet_q.pt"), *args) == message


def test_a_plain_npy_dataset_is_refused_in_one_line(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((4, 1, 32, 32), np.float32))
    from qdq_bridge.data.sources import load_dataset
    with pytest.raises(BridgeError, match=r"is a single array \(\.npy\), not an \.npz of arrays x and y: save it "
                                          r"with numpy\.savez"):
        load_dataset(str(tmp_path / "x.npy"))


def test_a_trt_log_in_a_missing_folder_is_refused_and_no_empty_log_is_left(tmp_path):
    """Round two: a traceback for the missing folder; with TensorRT missing (exit 2) a 0-byte log stayed."""
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"not read before the checks")
    result = run_cli("build", str(onnx_file), "--trt-log", str(tmp_path / "new" / "log.txt"))
    assert result.returncode == 2 and result.stderr.strip() == (
        f"error: --trt-log {tmp_path / 'new' / 'log.txt'}: folder '{tmp_path / 'new'}' does not exist: create it, "
        "or pass a file in an existing folder")
    env_python = "/nonexistent/python"
    result = run_cli("build", str(onnx_file), "--trt-log", str(tmp_path / "log.txt"), "--trt-python", env_python)
    assert result.returncode == 2 and not (tmp_path / "log.txt").exists()


def test_uint8_arrays_are_used_as_given_with_a_warning(tmp_path, caplog):
    """Round two: uint8 pixels in an .npz went in unscaled without a word (13.78 % accuracy)."""
    from qdq_bridge.data.sources import load_dataset
    np.savez(tmp_path / "u8.npz", x=np.full((4, 1, 2, 2), 255, np.uint8))
    with caplog.at_level("WARNING", logger="qdq_bridge"):
        data = load_dataset(str(tmp_path / "u8.npz"))
    assert data.x.max() == 255 and "holds uint8 inputs (0-255), fed to the model as they are" in caplog.text


@pytest.mark.parametrize("labels, found", [(-1, "has labels from -1 to -1"), (99, "has 100 classes")])
def test_array_labels_the_model_does_not_have_are_refused(example_dir, tmp_path, labels, found):
    """Round two: y = -1 (or a class past the model's outputs) passed with 0.00 % accuracy."""
    test = digits_split()[1]
    np.savez(tmp_path / "bad.npz", x=test.x[:64], y=np.full(64, labels, np.int64))
    message = refused(tmp_path, str(example_dir / "resnet_q.pt"), "--dataset", str(tmp_path / "bad.npz"))
    assert message == (f"error: dataset bad {found}, the model 10 outputs: pass the dataset the model was trained on "
                       "(labels are 0 to 9)")


def test_an_output_folder_inside_the_image_folder_is_no_class(tmp_path):
    """Round two: `-o` set to the image folder being read made the run's own scratch folder an empty class."""
    from qdq_bridge.data.images import open_images
    from qdq_bridge.data.preprocessing import Preprocessing
    root = _image_folder(tmp_path / "images")
    (root / ".partial-abc123").mkdir()
    source = open_images(f"imagefolder:{root}", Preprocessing(), 0)
    assert source.classes == 2 and len(source) == 4


@pytest.mark.slow
def test_a_state_dict_resaved_as_a_plain_dict_converts(example_dir, tmp_path):
    """Round two: `torch.save({k: v for k, v in sd.items()})` loses PyTorch's module versions (a traceback,
    KeyError 'fc.weight'); the architecture's own versions are put back."""
    state = torch.load(example_dir / "resnet_q_state.pth", weights_only=False)
    torch.save(dict(state.items()), tmp_path / "plain.pth")
    result = run_cli("convert", str(tmp_path / "plain.pth"), "--arch", "qdq_bridge.pytorch.models:digits_resnet",
                     "--dataset", "digits", "--engine", "off", "--random-inputs", "0", "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads((tmp_path / "out" / "report.json").read_text())["ok"]


def test_a_full_disk_is_one_line_and_leaves_no_files(tmp_path, example_dir):
    """Files over 60 kB cannot be written (RLIMIT_FSIZE, which needs no root: a full 60 kB tmpfs gave ENOSPC and
    the same line, checked by hand): the ONNX's write fails, and the run says so and removes its scratch."""
    import resource

    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "qdq_bridge", "convert", str(example_dir / "resnet_q.pt"), "-o",
                             str(out), "--engine", "off", "--random-inputs", "0"], capture_output=True, text=True,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000)))
    assert result.returncode == 2 and not out.exists(), result.stderr
    assert result.stderr == f"error: the run's files could not be written to '{out}' (File too large): free space " \
                            "there (or raise the file-size limit, ulimit -f), or pass an --output-dir on a disk " \
                            "with room\n"
