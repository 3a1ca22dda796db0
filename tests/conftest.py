import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qdq_bridge.pytorch import quantize

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # tests/graphs.py


@pytest.fixture(scope="session")
def example_dir(tmp_path_factory) -> Path:
    """The embedded example, trained once per session exactly as the README runs it (PTQ and QAT files)."""
    out = tmp_path_factory.mktemp("example")
    subprocess.run([sys.executable, str(ROOT / "examples" / "train_digits.py"), "--out", str(out)], check=True,
                   capture_output=True)
    return out


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m qdq_bridge ARGS` as a user runs it."""
    return subprocess.run([sys.executable, "-m", "qdq_bridge", *args], capture_output=True, text=True, cwd=cwd)


def symmetric_qconfig(activation_dtype: torch.dtype) -> torch.ao.quantization.QConfig:
    """Per-tensor symmetric activations of the given dtype (qint8: the reference workflow's recipe; quint8:
    qdq_bridge's), per-channel symmetric int8 weights."""
    observer = torch.ao.quantization.HistogramObserver.with_args(dtype=activation_dtype,
                                                                 qscheme=torch.per_tensor_symmetric)
    return torch.ao.quantization.QConfig(activation=observer, weight=quantize.trt_qconfig().weight)


def quantize_with(model: torch.nn.Module, qconfig, batches) -> torch.nn.Module:
    """Eager-mode PTQ with any qconfig, as a user's own script does it (fuse, prepare, calibrate, convert), the
    weights packed for the engine qdq_bridge's reference runs (set for the duration only: the test process's
    engine stays PyTorch's default, as in a user's process)."""
    model.eval()
    model.fuse_model()
    model.qconfig = qconfig
    with quantize.using_engine(quantize.engine_for(model)), quantize.quiet_torch_warnings(), torch.no_grad():
        torch.ao.quantization.prepare(model, inplace=True)
        for batch in batches:
            model(torch.as_tensor(batch))
        torch.ao.quantization.convert(model, inplace=True)
    return model
