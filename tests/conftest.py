"""Fixtures shared by every test package; helpers live in tests/helpers."""
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers, from the test packages too

from helpers import ROOT  # noqa: E402


@pytest.fixture(scope="session")
def example_dir(tmp_path_factory) -> Path:
    """The embedded example, trained once per session exactly as the README runs it (PTQ and QAT files)."""
    out = tmp_path_factory.mktemp("example")
    subprocess.run([sys.executable, str(ROOT / "examples" / "train_digits.py"), "--out", str(out)], check=True,
                   capture_output=True)
    return out
