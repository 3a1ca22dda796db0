"""`convert model.pt2` on PT2E programs as users make them: torchvision families trained briefly, quantized with
qdq_bridge's TensorRT quantizer (PTQ and QAT) or by `convert --calibrate` from a float program, or by torchao's X86
quantizer, saved with torch.export.save and converted through the CLI, or converted in memory from Python; and the
programs it refuses, each in one line."""

import numpy as np
import pytest
import torch

pytest.importorskip("torchao")
pytest.importorskip("onnxscript")

from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e  # noqa: E402
from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86  # noqa: E402

from qdq_bridge import ConvertOptions, convert  # noqa: E402
from qdq_bridge.errors import BridgeError  # noqa: E402
from qdq_bridge.pt2e.quantizer import quantize_pt2e  # noqa: E402
from qdq_bridge.testing import zoo  # noqa: E402

from helpers import convert_cli, run_cli, task_files  # noqa: E402

SHAPE = (1, 3, 64, 64)
BATCH = {0: torch.export.Dim("batch")}  # a dynamic batch as users write it


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    dataset, calibration = task_files(tmp_path_factory.mktemp("task"), SHAPE)
    return dataset, [torch.from_numpy(batch) for batch in calibration]


def convert_pt2(tmp_path, program: torch.export.ExportedProgram, dataset, *args) -> dict:
    torch.export.save(program, tmp_path / "model.pt2")
    report, printed = convert_cli(tmp_path, tmp_path / "model.pt2", dataset, *args)
    assert "PyTorch reference: the PT2E program" in printed
    return report


def assert_pass(report: dict, kind: str = "pt2e") -> None:
    assert report["ok"] and report["lint"] == [] and report["kind"] == kind
    assert report["exporter"] == "torch.onnx dynamo (PT2E program)" and report["opset"] == 18
    (row,) = [r for r in report["parity"] if r["candidate"] == "onnxruntime" and r["reference_accuracy"] is not None]
    assert row["agreement"] >= 0.995 and row["lost"] == 0, row
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


@pytest.mark.slow
def test_float_program_is_quantized_by_convert_calibrate(task, tmp_path):
    """A float program (torch.export.save'd, batch dynamic) with --calibrate DATA: PTQ with the TensorRT
    quantizer in --placement's placement, then the same route."""
    dataset, calibration = task
    np.savez(tmp_path / "calibration.npz", x=torch.cat(calibration).numpy())
    model = zoo.trained_torchvision("resnet18", SHAPE).eval()
    program = torch.export.export(model, (calibration[0],), dynamic_shapes=(BATCH,), strict=True)
    report = convert_pt2(tmp_path, program, dataset, "--calibrate", str(tmp_path / "calibration.npz"),
                         "--placement", "fast")
    assert_pass(report, kind="pt2e+ptq")
    assert report["notes"][0] == ("quantized by qdq_bridge: PT2E PTQ with its TensorRT quantizer (fast placement), "
                                  "64 calibration samples of calibration")


@pytest.mark.slow
def test_program_in_memory_converts_from_python(task, tmp_path):
    dataset, calibration = task
    program = quantize_pt2e(zoo.trained_torchvision("resnet18", SHAPE).eval(), calibration[0], calibration)
    result = convert(program, tmp_path / "out", ConvertOptions(dataset=str(dataset), engine="off", placement="fast",
                                                               progress=False))
    assert_pass(result.report)
    assert result.onnx_path == tmp_path / "out" / "program.qdq.onnx"
    assert (result.report["model"], result.report["source"]) == ("program", "an ExportedProgram in memory")


def x86_program(model: torch.nn.Module, calibration: list[torch.Tensor]) -> torch.export.ExportedProgram:
    """torchao's X86 Inductor quantizer, default config: affine uint8 activations, symmetric int8 weights."""
    quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
    graph = torch.export.export(model.eval(), (calibration[0],), dynamic_shapes=(BATCH,), strict=True).module()
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for batch in calibration:
            prepared(batch)
    return torch.export.export(convert_pt2e(prepared), (calibration[0],), dynamic_shapes=(BATCH,))


@pytest.mark.slow
def test_x86_quantizer_program_is_refused_then_requantized_on_request(task, tmp_path):
    """Its ReLU outputs use the whole uint8 range (zero-point 0), which int8 at their scale cannot hold: refused
    as eager default qconfigs are, and with --requantize-activations converted with its parity measured."""
    dataset, calibration = task
    torch.export.save(x86_program(zoo.trained_torchvision("resnet18", SHAPE), calibration), tmp_path / "x86.pt2")
    refused = run_cli("convert", str(tmp_path / "x86.pt2"), "--dataset", str(dataset), "-o", str(tmp_path / "no"))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "is quantized affinely over the full uint8 range (zero_point=0" in refused.stderr
    assert refused.stderr.rstrip().endswith("or quantize the float program again with --calibrate DATA "
                                            "(qdq_bridge.pt2e.quantizer.TensorRTQuantizer)"), refused.stderr
    assert "pass --requantize-activations" in refused.stderr and "--qconfig" not in refused.stderr
    assert "(module" not in refused.stderr  # a PT2E program's nodes name no module
    report, _ = convert_cli(tmp_path, tmp_path / "x86.pt2", dataset, "--requantize-activations")
    assert report["lint"] == [] and report["activations"]["requantized"]
    (row,) = [r for r in report["parity"] if r["candidate"] == "onnxruntime" and r["reference_accuracy"] is not None]
    assert row["agreement"] >= 0.95, row


def tiny() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 6 * 6, 3)).eval()


def program_file(tmp_path, case: str, batch_limit: int | None = None) -> tuple:
    """A tiny program, `case`: float, quantized or static (quantized, batch fixed), saved as model.pt2 beside
    calibration.npz (40 samples); a float one's batch goes up to `batch_limit`."""
    example = torch.randn(2, 3, 8, 8)
    np.savez(tmp_path / "calibration.npz", x=torch.randn(40, 3, 8, 8).numpy())
    if case == "float":
        batch = {0: torch.export.Dim("batch", max=batch_limit)} if batch_limit else BATCH
        program = torch.export.export(tiny(), (example,), dynamic_shapes=(batch,))
    else:
        quantized = quantize_pt2e(tiny(), example, [example])
        program = quantized if case == "quantized" else torch.export.export(quantized.module(), (example,))
    torch.export.save(program, tmp_path / "model.pt2")
    return tmp_path / "model.pt2", str(tmp_path / "calibration.npz")


def test_a_float_program_is_refused_in_one_line_with_the_ways_to_quantize_it(tmp_path):
    model, _ = program_file(tmp_path, "float")
    result = run_cli("convert", str(model), "-o", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and not (tmp_path / "out").exists()
    assert "is a PT2E program without quantize ops (a float program): pass --calibrate DATA" in result.stderr


@pytest.mark.parametrize("case, calibrate, options, message", [
    ("static", False, {}, "the program's batch dimension is fixed at 2: export it with dynamic_shapes="),
    ("quantized", True, {}, "is a quantized PT2E program and --calibrate quantizes float ones: drop --calibrate"),
    ("float", True, {"qconfig": "x86"}, "is a PT2E program: --qconfig apply to eager models"),
])
def test_programs_it_cannot_take_are_refused(tmp_path, case, calibrate, options, message):
    """In this process (the CLI's one line and exit status: the test above)."""
    model, calibration = program_file(tmp_path, case)
    with pytest.raises(BridgeError) as refused:
        convert(model, tmp_path / "out", ConvertOptions(calibrate=calibration if calibrate else None, **options))
    assert message in str(refused.value) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("batch_limit", [1024, 16])
def test_a_float_program_with_a_bounded_batch_is_quantized_within_its_bound(tmp_path, batch_limit):
    """`Dim("batch", max=1024)`: the quantized program keeps the bound (a wider one was 88 lines of torch.export's
    ConstraintViolation); below the calibration batch (32), calibration runs batches the program takes."""
    model, calibration = program_file(tmp_path, "float", batch_limit)
    result = convert(model, tmp_path / "out", ConvertOptions(calibrate=calibration, dataset=calibration, engine="off",
                                                             batch_size=16, progress=False))
    assert result.report["kind"] == "pt2e+ptq" and result.report["ok"], result.report["failures"]


def test_a_batch_size_beyond_the_programs_bound_is_refused(tmp_path):
    model, calibration = program_file(tmp_path, "float", 16)
    result = run_cli("convert", str(model), "--calibrate", calibration, "--batch-size", "64", "-o", str(tmp_path / "o"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and not (tmp_path / "o").exists()
    assert "batch dimension of 'model.pt2' goes up to 16, and --batch-size is 64: pass --batch-size 16 or less" in \
        result.stderr, result.stderr
