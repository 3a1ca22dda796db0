import subprocess
import sys
from pathlib import Path

import pytest

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
