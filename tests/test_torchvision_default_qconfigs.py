"""Issue 21's acceptance on torchvision models, as users bring them, through the CLI: families quantized with
PyTorch's default x86/fbgemm qconfigs and saved as TorchScript, a state_dict of torchvision's own quantized
ResNet-50 structure loaded with --arch torchvision:resnet50, and a default-QAT state_dict. Each maps exactly
onto int8 (no activation re-quantized) and PASSes on a labelled set."""
import copy

import pytest
import torch
import torchvision.models.quantization as tvq
from torch.ao.quantization import get_default_qat_qconfig, get_default_qconfig

from qdq_bridge.pytorch import quantize
from qdq_bridge.pytorch.load import load_model, save_torchscript, torchvision_kwargs
from qdq_bridge.testing import zoo

from helpers import convert_cli, quantize_with, task_files

SHAPE = (1, 3, 64, 64)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return task_files(tmp_path_factory.mktemp("task"), SHAPE)


def assert_exact_and_pass(report: dict) -> None:
    assert report["ok"] and report["lint"] == []
    activations = report["activations"]
    assert activations["affine"] and activations["schemes"]["full_range"] == 0 and not activations["requantized"]
    (row,) = [r for r in report["parity"] if r["candidate"] == "onnxruntime" and r["reference_accuracy"] is not None]
    assert row["agreement"] >= 0.995, row
    assert row["lost"] == 0 and row["candidate_accuracy"] >= row["reference_accuracy"] - 0.005, row
    # a decisive model, far from chance (10 %), so the verdict means something: the briefly trained families reach
    # 0.785 (GoogLeNet on this project's AMD EPYC) to over 0.9 (every family on the Intel CPUs before it)
    assert row["reference_accuracy"] >= 0.75


@pytest.mark.parametrize("qconfig", ["x86", "fbgemm"])
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "googlenet"])
def test_default_qconfig_torchscript_family_converts_exactly(task, tmp_path, name, qconfig):
    dataset, calibration = task
    model = quantize_with(zoo.trained_torchvision(name, SHAPE), get_default_qconfig(qconfig), calibration)
    save_torchscript(model, tmp_path / "model.pt", SHAPE, "task")
    assert_exact_and_pass(convert_cli(tmp_path, tmp_path / "model.pt", dataset)[0])


def test_torchvision_quantized_resnet50_state_dict_converts_with_its_arch(task, tmp_path):
    """torchvision's recipe for its quantized models (--qconfig torchvision: MinMax quint8 0..127 activations,
    per-channel weights) on a trained ResNet-50, saved as a state_dict: the very keys torchvision's
    resnet50(quantize=True) has, loaded with --arch torchvision:resnet50 (class count read from the weights,
    input shape from the dataset)."""
    dataset, calibration = task
    model = quantize_with(zoo.trained_torchvision("resnet50", SHAPE), quantize.ptq_qconfig("torchvision"),
                          calibration)
    with quantize.quiet_torch_warnings():
        reference_keys = tvq.resnet50(weights=None, quantize=True, num_classes=10).state_dict().keys()
    assert model.state_dict().keys() == reference_keys
    torch.save(model.state_dict(), tmp_path / "resnet50_q.pth")
    report, _ = convert_cli(tmp_path, tmp_path / "resnet50_q.pth", dataset, "--arch", "torchvision:resnet50")
    assert_exact_and_pass(report)
    assert report["input_shape"] == list(SHAPE)


def test_default_qat_state_dict_converts_exactly(task, tmp_path):
    """A ResNet-18 fine-tuned with PyTorch's default x86 QAT qconfig (fused observer/fake-quant, reduce_range
    activations), saved as the state_dict a QAT script saves, converted with its torchvision arch."""
    dataset, _ = task
    model = zoo.trained_torchvision("resnet18", SHAPE)
    model.fuse_model(is_qat=True)
    model.qconfig = get_default_qat_qconfig("x86")
    torch.ao.quantization.prepare_qat(model.train(), inplace=True)
    zoo.train_on_task(model, SHAPE, steps=20, num_classes=10, seed=5, lr=1e-4)
    torch.save(model.state_dict(), tmp_path / "resnet18_qat.pth")
    # qdq_bridge's conversion of the state_dict has the very activation qparams of PyTorch's own convert
    users = quantize.convert(copy.deepcopy(model))
    loaded = load_model(tmp_path / "resnet18_qat.pth", arch="torchvision:resnet18").module
    qparams = lambda m: {name: (float(q.scale), int(q.zero_point)) for name, q in quantize.activation_quantizers(m)}
    assert qparams(loaded) == qparams(users) and len(qparams(users)) > 20
    report, _ = convert_cli(tmp_path, tmp_path / "resnet18_qat.pth", dataset, "--arch", "torchvision:resnet18")
    assert_exact_and_pass(report)
    assert any("QAT fake-quant modules converted" in note for note in report["notes"])
    assert any("QAT activation schemes" in note and "affine 0..127" in note for note in report["notes"])


@pytest.mark.slow
@pytest.mark.parametrize("name, aux", [("googlenet", False), ("googlenet", True), ("inception_v3", True),
                                       ("resnet18", None)])
def test_torchvision_arch_reads_class_count_and_aux_heads_from_the_state(name, aux):
    kwargs = {} if aux is None else {"aux_logits": aux, "init_weights": False}
    for quantized in (False, True):
        with quantize.quiet_torch_warnings():
            state = getattr(tvq, name)(weights=None, quantize=quantized, num_classes=7, **kwargs).state_dict()
        assert torchvision_kwargs(name, state) == {"num_classes": 7, **kwargs}
