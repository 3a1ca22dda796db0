"""The PyTorch reference: exact integer semantics, the backend chosen before anything is packed, the cross-check
that replaces a deviating backend, and the fallback past qnnpack's Add limits.

PyTorch's fbgemm kernels saturate (int16 pair sums of u8 x s8 products) on CPUs without AVX-512 VNNI. FBGEMM
reads FBGEMM_ENABLE_INSTRUCTIONS=AVX2 and then runs its AVX2 kernels on any x86 CPU, so the tests that need a
deviating backend set it for a subprocess of their own: what CI's CPU has does not decide what they see."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from qdq_bridge import save_torchscript
from qdq_bridge.pytorch import quantize
from qdq_bridge.pytorch.reference import exact_quantized_linear, probe_exactness, runnable_reference

from helpers import ROOT, run_cli

ARCH = "qdq_bridge.pytorch.models:digits_resnet"
SATURATING = {**os.environ, "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2"}
needs_fbgemm = pytest.mark.skipif("fbgemm" not in torch.backends.quantized.supported_engines,
                                  reason="no fbgemm backend (not an x86 build of PyTorch)")


def test_exact_semantics_by_hand():
    # x - 128 = (2, -2); acc = 2*3 + (-2)*1 = 4; 4 * 0.5 * 0.25 / 0.25 = 2 -> 130
    assert exact_quantized_linear(np.array([[130, 126]]), 128, 0.5, np.array([[3, 1]]), 0.25, 0.25, 128).tolist() \
        == [[130]]
    # ties round to even: acc 5 * 0.5 = 2.5 -> 2, acc 7 * 0.5 = 3.5 -> 4
    assert exact_quantized_linear(np.array([[133], [135]]), 128, 1.0, np.array([[1]]), 0.5, 1.0, 0).tolist() \
        == [[2], [4]]
    # int32 accumulation: 256 products of 127 * 127 (4,129,024) would overflow int16 pair sums, not this
    assert exact_quantized_linear(np.full((1, 256), 255), 128, 1.0, np.full((1, 256), 127), 1.0, 32768.0, 0) \
        .tolist() == [[126]]


def _cpu_has_vnni() -> bool | None:
    """Whether the x86 CPU has VNNI (int8 dot products accumulated in int32); None where /proc/cpuinfo is not."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return None
    return "avx512_vnni" in flags or "avx_vnni" in flags


@pytest.mark.skipif("qnnpack" not in torch.backends.quantized.supported_engines, reason="no qnnpack backend")
def test_qnnpack_the_default_reference_is_exact_on_full_range_layers():
    assert probe_exactness("qnnpack") <= 1  # float32 requantization may round one step the other way


@pytest.mark.skipif("onednn" not in torch.backends.quantized.supported_engines or _cpu_has_vnni() is None,
                    reason="no onednn backend, or no /proc/cpuinfo to read VNNI from")
def test_onednn_is_exact_on_full_range_layers_exactly_where_the_cpu_has_vnni():
    """Without VNNI (AVX2 only: this project's 2-core AMD EPYC) onednn sums pairs of u8 x s8 products in int16 and
    saturates (26 steps off there), as fbgemm does; the probe is how the reference finds out."""
    assert (probe_exactness("onednn") <= 1) == _cpu_has_vnni()


@pytest.mark.slow
@needs_fbgemm
def test_probe_catches_saturating_kernels():
    probe = "from qdq_bridge.pytorch.reference import probe_exactness; print(probe_exactness('fbgemm'))"
    steps = int(subprocess.run([sys.executable, "-c", probe], env=SATURATING, capture_output=True, text=True,
                               check=True).stdout)
    assert steps >= 10


@needs_fbgemm
def test_the_process_backend_never_decides_the_reference(example_dir, tmp_path):
    """A user's process that set fbgemm (saturating here) converts every file format with the reference packed
    by qnnpack, and keeps its own backend setting afterwards."""
    script = textwrap.dedent(f"""
        import json, sys, torch
        from qdq_bridge import ConvertOptions, convert
        torch.backends.quantized.engine = "fbgemm"
        ex, out, arch = {str(example_dir)!r}, {str(tmp_path)!r}, {ARCH!r}
        cases = {{"torchscript": ("resnet_q.pt", {{}}),
                 "state_dict": ("resnet_q_state.pth", dict(arch=arch, dataset="digits", input_shape=(1, 1, 32, 32))),
                 "qat": ("digits_qat_state.pth", dict(arch=arch, dataset="digits", input_shape=(1, 1, 32, 32))),
                 "ptq": ("digits_float.pth", dict(arch=arch, dataset="digits", input_shape=(1, 1, 32, 32),
                                                  calibrate="digits-train"))}}
        found = {{}}
        for case, (name, extra) in cases.items():
            report = convert(f"{{ex}}/{{name}}", f"{{out}}/{{case}}",
                             ConvertOptions(random_inputs=0, engine="off", **extra)).report
            found[case] = {{"reference": report["pytorch_reference"], "row": report["parity"][0]}}
        found["engine_after"] = torch.backends.quantized.engine
        print(json.dumps(found))
    """)
    done = subprocess.run([sys.executable, "-c", script], env=SATURATING, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found.pop("engine_after") == "fbgemm"
    for case, result in found.items():
        assert result["reference"]["backend"] == result["reference"]["packed_by"] == "qnnpack", case
        row = result["row"]
        assert row["agreement"] >= 0.995 and row["reference_accuracy"] >= 0.95, (case, row)
        assert row["reference_accuracy"] == row["candidate_accuracy"], case


def convert_saturating(example_dir, tmp_path, backends: str) -> tuple[subprocess.CompletedProcess, dict]:
    """`convert` of the example with fbgemm's saturating AVX2 kernels and these --torch-backends: (run, report)."""
    done = subprocess.run([sys.executable, "-m", "qdq_bridge", "convert", str(example_dir / "resnet_q.pt"),
                           "--torch-backends", backends, "--engine", "off", "-o", str(tmp_path / "o")],
                          env=SATURATING, capture_output=True, text=True, cwd=ROOT)
    report_path = tmp_path / "o" / "report.json"
    assert report_path.exists(), done.stdout + done.stderr
    return done, json.loads(report_path.read_text())


@needs_fbgemm
def test_a_deviating_backend_is_named_and_replaced(example_dir, tmp_path):
    done, report = convert_saturating(example_dir, tmp_path, "fbgemm,qnnpack")
    assert done.returncode == 0, done.stdout + done.stderr
    reference = report["pytorch_reference"]
    assert (reference["packed_by"], reference["backend"], reference["deviating_backend"]) == \
        ("fbgemm", "qnnpack", "fbgemm")
    backends = reference["cross_check"]["backends"]
    assert backends["fbgemm"]["mean_steps"] > 10 and backends["qnnpack"]["mean_steps"] < 0.5
    assert reference["cross_check"]["exactness_probe_steps"]["fbgemm"] >= 10
    assert any(n.startswith("PyTorch's fbgemm backend deviates from the model's exact integer semantics")
               and n.endswith("the reference runs on qnnpack") for n in report["notes"])
    digits = report["parity"][0]
    assert digits["agreement"] == 1.0 and digits["reference_accuracy"] == digits["candidate_accuracy"]


@needs_fbgemm
def test_an_unchecked_deviating_backend_fails_naming_the_criteria(example_dir, tmp_path):
    done, report = convert_saturating(example_dir, tmp_path, "fbgemm")
    assert done.returncode == 1, done.stdout + done.stderr
    assert not report["ok"] and len(report["failed"]) == 1
    (agreement,) = report["failed"]
    assert agreement.startswith("pytorch vs onnxruntime on digits-test: top-1 agreement ") and \
        agreement.endswith("% < 99.50%")
    # the exact candidate is far more accurate than the saturating reference: a gain, which is no accuracy failure
    row = next(r for r in report["parity"] if r["judged"])
    assert row["gained"] > 100 and row["lost"] < 5 and row["accuracy_verdict"].startswith("gain ")
    assert "FAIL: pytorch vs onnxruntime on digits-test: top-1 agreement" in " ".join(done.stdout.split())
    markdown = (tmp_path / "o" / "report.md").read_text()
    assert f"  - failed: {agreement}" in markdown and f"digits-test: {row['accuracy_verdict']}" in markdown
    assert any("fbgemm's kernels are" in n and "off exact int32 accumulation" in n for n in report["notes"])


class AddNet(nn.Module):
    """conv(x) + x with a quantized add whose output scale the test sets, flattened to (N, 32) logits."""

    def __init__(self):
        super().__init__()
        self.quant, self.dequant = torch.ao.quantization.QuantStub(), torch.ao.quantization.DeQuantStub()
        self.conv = nn.Conv2d(2, 2, 1)
        self.add = torch.ao.nn.quantized.FloatFunctional()

    def forward(self, x):
        x = self.quant(x)
        return self.dequant(self.add.add(self.conv(x), x)).flatten(1)


@pytest.mark.slow
@pytest.mark.skipif("onednn" not in torch.backends.quantized.supported_engines, reason="no onednn backend")
def test_qnnpack_add_limit_falls_back_to_the_next_backend(tmp_path):
    model = quantize.prepare_ptq(AddNet().eval(), "minmax")
    model(torch.randn(16, 2, 4, 4) * 100)
    quantize.convert(model, "qnnpack")
    model.add.scale = float(model.quant.scale) / 300  # qnnpack refuses input/output scale ratios >= 256
    reference = runnable_reference(model, "qnnpack", (1, 2, 4, 4))
    assert (reference.backend, reference.packed_by) == ("onednn", "qnnpack")
    assert reference.notes == ["PyTorch's qnnpack backend cannot run this model (failed to create QNNPACK Add "
                               "operator): the reference runs on onednn, the weights repacked for it"]
    path = tmp_path / "addnet.pt"
    save_torchscript(model, path, (1, 2, 4, 4))
    result = run_cli("convert", str(path), "--engine", "off", "-o", str(tmp_path / "o"))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["pytorch_reference"]["backend"] == "onednn"
    assert report["parity"][0]["agreement"] == 1.0
