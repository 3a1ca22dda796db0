"""`convert model.pt2` on PT2E programs as users make them: torchvision families trained briefly, quantized with
qdq_bridge's TensorRT quantizer (PTQ and QAT), saved with torch.export.save, converted through the CLI; and the
programs it refuses, each in one line."""

import pytest
import torch

pytest.importorskip("torchao")
pytest.importorskip("onnxscript")

from qdq_bridge.pt2e.quantizer import BATCH, quantize_pt2e  # noqa: E402
from qdq_bridge.testing import zoo  # noqa: E402

from helpers import convert_cli, run_cli, task_files  # noqa: E402

SHAPE = (1, 3, 64, 64)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    dataset, calibration = task_files(tmp_path_factory.mktemp("task"), SHAPE)
    return dataset, [torch.from_numpy(batch) for batch in calibration]


def convert_pt2(tmp_path, program: torch.export.ExportedProgram, dataset, *args) -> dict:
    torch.export.save(program, tmp_path / "model.pt2")
    report, printed = convert_cli(tmp_path, tmp_path / "model.pt2", dataset, *args)
    assert "PyTorch reference: the PT2E program" in printed
    return report


def assert_pass(report: dict) -> None:
    assert report["ok"] and report["lint"] == [] and report["kind"] == "pt2e"
    assert report["exporter"] == "torch.onnx dynamo (PT2E program)" and report["opset"] == 18
    (row,) = [r for r in report["parity"] if r["candidate"] == "onnxruntime" and r["reference_accuracy"] is not None]
    assert row["top1_agreement"] >= 0.995 and row["lost"] == 0, row
    assert row["reference_accuracy"] >= 0.75  # a decisive model (chance: 10 %)


@pytest.mark.slow
@pytest.mark.parametrize("placement", ["faithful", "fast"])
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_pt2e_ptq_program_converts_and_passes(task, tmp_path, name, placement):
    dataset, calibration = task
    program = quantize_pt2e(zoo.trained_torchvision(name, SHAPE).eval(), calibration[0], calibration,
                            placement=placement)
    report = convert_pt2(tmp_path, program, dataset, "--placement", placement)
    assert_pass(report)
    assert report["input_shape"] == list(SHAPE)


@pytest.mark.slow
def test_pt2e_qat_program_converts_and_passes(task, tmp_path):
    dataset, calibration = task
    program = quantize_pt2e(zoo.trained_torchvision("resnet18", SHAPE), calibration[0], calibration,
                            train=lambda m: zoo.train_on_task(m, SHAPE, steps=10, num_classes=10, seed=5, lr=1e-4))
    assert_pass(convert_pt2(tmp_path, program, dataset, "--placement", "fast"))


def tiny() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 6 * 6, 3)).eval()


@pytest.mark.parametrize("case, message", [
    ("float", "is a PT2E program without quantize ops (a float program): quantize it with prepare_pt2e"),
    ("static", "the program's batch dimension is fixed at 2: export it with dynamic_shapes="),
])
def test_programs_it_cannot_take_are_refused_in_one_line(tmp_path, case, message):
    example = torch.randn(2, 3, 8, 8)
    if case == "float":
        program = torch.export.export(tiny(), (example,), dynamic_shapes=(BATCH,))
    else:
        quantized = quantize_pt2e(tiny(), example, [example])
        program = torch.export.export(quantized.module(), (example,))
    torch.export.save(program, tmp_path / "model.pt2")
    result = run_cli("convert", str(tmp_path / "model.pt2"), "-o", str(tmp_path / "out"))
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "out").exists()
