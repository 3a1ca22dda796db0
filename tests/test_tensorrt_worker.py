"""The TensorRT worker protocol and its error paths, on CPU with a stand-in `tensorrt` package."""
import json
import os
import sys
from pathlib import Path

import pytest

from qdq_bridge.engine import TensorRTUnavailable, TensorRTWorker, summarize_layers
from qdq_bridge.errors import BridgeError

from conftest import run_cli

FAKE = Path(__file__).parent / "fake_trt"


@pytest.fixture
def fake_trt(monkeypatch):
    def use(mode: str) -> TensorRTWorker:
        monkeypatch.setenv("PYTHONPATH", str(FAKE) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        monkeypatch.setenv("FAKE_TRT_MODE", mode)
        return TensorRTWorker(sys.executable, timeout_s=5)
    return use


def test_probe_round_trip(fake_trt):
    result = fake_trt("ok").probe()
    assert result["fast_int8"] is True
    assert result["features"] == {"version": "0.0-fake", "explicit_batch_flag": True, "strongly_typed": False,
                                  "int8_flag": True, "fp16_flag": True, "execute_v3": True,
                                  "engine_inspector": False}


def test_missing_tensorrt_says_how_to_enable_it():
    with pytest.raises(TensorRTUnavailable, match=r"no TensorRT under .*No module named 'tensorrt'.*"
                                                  r"set QDQ_BRIDGE_TRT_PYTHON \(or --trt-python\)"):
        TensorRTWorker(sys.executable).probe()


def test_missing_interpreter():
    with pytest.raises(TensorRTUnavailable, match="TensorRT interpreter '/nonexistent/python' does not exist"):
        TensorRTWorker("/nonexistent/python").probe()


def test_worker_crash_is_an_error_not_a_dead_main_process(fake_trt):
    with pytest.raises(BridgeError, match=r"TensorRT worker 'probe' crashed with signal 11"):
        fake_trt("crash").probe()


def test_worker_hang_times_out(fake_trt):
    worker = fake_trt("hang")
    worker.timeout_s = 1
    with pytest.raises(BridgeError, match=r"TensorRT worker 'probe' timed out after 1 s.*raise --trt-timeout"):
        worker.probe()


def test_convert_without_tensorrt_finishes_cpu_stages_and_says_how(example_dir, tmp_path):
    result = run_cli("convert", str(example_dir / "resnet_q.pt"), "--random-inputs", "0", "-o", str(tmp_path / "o"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["tensorrt"] == {} and report["ok"]
    assert any("no TensorRT engine built" in n and "QDQ_BRIDGE_TRT_PYTHON" in n for n in report["notes"])
    assert "No engine was built (see the notes)." in (tmp_path / "o" / "report.md").read_text()


def test_convert_with_engine_required_fails_cleanly(example_dir, tmp_path):
    result = run_cli("convert", str(example_dir / "resnet_q.pt"), "--engine", "require", "-o", str(tmp_path / "o"))
    assert result.returncode == 2 and "error: no TensorRT under" in result.stderr
    assert not (tmp_path / "o").exists()


def test_layer_summary_counts_precisions_and_fusions():
    report = {"Layers": [
        {"Name": "conv1 + relu", "LayerType": "CaskConvolution",
         "Inputs": [{"Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}]},
        {"Name": "fc", "LayerType": "CaskGemmConvolution", "Inputs": [{"Format/Datatype": "Row major linear FP32"}]},
        {"Name": "conv2", "LayerType": "CaskConvolution", "Inputs": [{"Format/Datatype": "N/A due to dynamic shapes"}],
         "TacticName": "sm80_xmma_fprop_implicit_gemm_interleaved_i8i8_i8i32_f32_nchw_vect_c_32kcrs_vect_c_32"},
        {"Name": "PWN(/stage1/Add, /stage1/Relu)", "LayerType": "PointWiseV2", "Inputs": []},
        {"Name": "/stage2/conv2/Conv + /stage2/Add_1 + /stage2/Relu", "LayerType": "CaskConvolution",
         "Inputs": [{"Format/Datatype": "Int8"}]},
        {"Name": "PWN(/head/Mul)", "LayerType": "PointWiseV2", "Inputs": []},
        {"Name": "/conv1/Conv + /conv1/Relu + /maxpool/MaxPool", "LayerType": "CaskConvActPool",
         "ConvWeights": {"Type": "Int8", "Count": 9408}, "Inputs": [{"Format/Datatype": "N/A due to dynamic shapes"}]},
        {"Name": "/fc/Gemm", "LayerType": "CaskConvolution", "Inputs": [],  # int8 in, float out
         "TacticName": "sm90_xmma_fprop_implicit_gemm_i8f32_i8i32_f32_nchw"},
        {"Name": "reformat", "LayerType": "Reformat", "Inputs": []},
    ]}
    summary = summarize_layers(report)
    assert summary["conv_gemm_layers"] == 6 and summary["conv_gemm_not_int8"] == ["fc"]
    assert summary["pointwise_layers"] == ["PWN(/stage1/Add, /stage1/Relu)", "PWN(/head/Mul)"]
    assert summary["reformat_layers"] == ["reformat"]
    assert summary["standalone_add_layers"] == ["PWN(/stage1/Add, /stage1/Relu)"]  # the fused one is not
