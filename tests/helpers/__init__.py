"""What the tests share: paths, the CLI as a user runs it, and eager-mode PTQ as a user's script does it. Hand-built
Q/DQ graphs live in `helpers.graphs`, small quantized modules in `helpers.quantized_modules`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from qdq_bridge.pytorch import quantize
from qdq_bridge.testing import zoo

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
FAKE_TRT = TESTS / "fake_trt"  # a stand-in tensorrt (and CUDA) for the worker, for runs without a GPU
TRT_API = TESTS / "trt_api"  # the names each real TensorRT binding exports


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m qdq_bridge ARGS` as a user runs it."""
    return subprocess.run([sys.executable, "-m", "qdq_bridge", *args], capture_output=True, text=True, cwd=cwd)


def convert_cli(tmp_path: Path, model_file: Path, dataset: Path, *args: str) -> tuple[dict, str]:
    """`convert MODEL --dataset DATA -o out --engine off ARGS` in `tmp_path`, which must exit 0: report.json, and
    what the CLI printed."""
    result = run_cli("convert", str(model_file), "--dataset", str(dataset), "-o", "out", "--engine", "off", *args,
                     cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads((tmp_path / "out" / "report.json").read_text()), result.stdout


def symmetric_qconfig(activation_dtype: torch.dtype) -> torch.ao.quantization.QConfig:
    """Per-tensor symmetric activations of the given dtype (qint8: the reference workflow's recipe; quint8:
    qdq_bridge's), per-channel symmetric int8 weights."""
    observer = torch.ao.quantization.HistogramObserver.with_args(dtype=activation_dtype,
                                                                 qscheme=torch.per_tensor_symmetric)
    return torch.ao.quantization.QConfig(activation=observer, weight=quantize.trt_qconfig().weight)


def quantize_with(model: torch.nn.Module, qconfig, batches) -> torch.nn.Module:
    """Eager-mode PTQ with any qconfig, as a user's own script does it (fuse, prepare, calibrate, convert), the
    weights packed for the backend qdq_bridge's reference runs (set for the duration only: the test process's
    backend stays PyTorch's default, as in a user's process)."""
    model.eval()
    model.fuse_model()
    model.qconfig = qconfig
    with quantize.using_backend(quantize.backend_for(model)), quantize.quiet_torch_warnings(), torch.no_grad():
        torch.ao.quantization.prepare(model, inplace=True)
        for batch in batches:
            model(torch.as_tensor(batch))
        torch.ao.quantization.convert(model, inplace=True)
    return model


def task_files(folder: Path, shape: tuple[int, ...]) -> tuple[Path, list[np.ndarray]]:
    """The labelled test set (200 template-task images) as `folder`/test.npz, and calibration batches (4 of 16)
    from another seed."""
    test = zoo.template_task(shape, 200, seed=99)
    np.savez(folder / "test.npz", x=test.x, y=test.y)
    return folder / "test.npz", list(zoo.template_task(shape, 64, seed=1).batches(16))
