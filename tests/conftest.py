"""Fixtures shared by every test package; helpers live in tests/helpers."""
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers, from the test packages too

from helpers import ROOT  # noqa: E402

# Fixtures that train a model (or convert one through the CLI): whoever uses one is in the slow tier, which
# `pytest -m "not slow"` leaves out. Tests that train or convert in their own body are marked where they are.
TRAINING_FIXTURES = {"example_dir", "task", "family", "segmentation", "super_resolution", "embedding"}


def pytest_collection_modifyitems(items):
    for item in items:
        if TRAINING_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def example_dir(tmp_path_factory) -> Path:
    """The embedded example, trained once per session exactly as the README runs it (PTQ and QAT files)."""
    out = tmp_path_factory.mktemp("example")
    subprocess.run([sys.executable, str(ROOT / "examples" / "train_digits.py"), "--out", str(out)], check=True,
                   capture_output=True)
    return out


@pytest.fixture(scope="session")
def segmentation(tmp_path_factory) -> tuple[Path, Path]:
    """A segmentation model (qdq_bridge's DigitsSegNet, trained briefly, PTQ) saved as TorchScript as a user would,
    and its labelled test set (per-pixel labels) as .npz."""
    import numpy as np

    from qdq_bridge import save_torchscript
    from qdq_bridge.testing import zoo

    out = tmp_path_factory.mktemp("segmentation")
    model, test = zoo.segmentation_on_digits()
    save_torchscript(model, out / "segnet_q.pt", (1, 1, 32, 32), None)
    np.savez(out / "test.npz", x=test.x, y=test.y)
    return out / "segnet_q.pt", out / "test.npz"


@pytest.fixture(scope="session")
def super_resolution(tmp_path_factory) -> tuple[Path, Path]:
    """A super-resolution model (DigitsSuperRes: 16 x 16 digits to 32 x 32, trained briefly, PTQ) as TorchScript,
    and its test inputs as .npz (no labels)."""
    import numpy as np

    from qdq_bridge import save_torchscript
    from qdq_bridge.testing import zoo

    out = tmp_path_factory.mktemp("super_resolution")
    model, test = zoo.super_resolution_on_digits()
    save_torchscript(model, out / "superres_q.pt", (1, 1, 16, 16), None)
    np.savez(out / "test.npz", x=test.x)
    return out / "superres_q.pt", out / "test.npz"


@pytest.fixture(scope="session")
def embedding(tmp_path_factory) -> tuple[Path, Path]:
    """An embedding model (DigitsEmbedding: the example's ResNet, its 64 pooled features as output) as TorchScript,
    and the labelled test digits as .npz."""
    import numpy as np

    from qdq_bridge import save_torchscript
    from qdq_bridge.testing import zoo

    out = tmp_path_factory.mktemp("embedding")
    model, test = zoo.embedding_on_digits()
    save_torchscript(model, out / "embedding_q.pt", (1, 1, 32, 32), None)
    np.savez(out / "test.npz", x=test.x, y=test.y)
    return out / "embedding_q.pt", out / "test.npz"
