"""Datasets for calibration and parity: scikit-learn's bundled digits, or the user's own .npz file."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BridgeError

DIGITS_SIZE = 32  # the 8x8 digits are upsampled so the example CNN has room for two stride-2 stages


@dataclass
class Dataset:
    """Inputs (N, ...) float32 and optional integer labels (N,)."""

    name: str
    x: np.ndarray
    y: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.x)

    def batches(self, batch_size: int):
        for start in range(0, len(self.x), batch_size):
            yield self.x[start:start + batch_size]


def digits_split(size: int = DIGITS_SIZE, seed: int = 0) -> tuple[Dataset, Dataset]:
    """The 1,797 8x8 digits of scikit-learn as (train, test) = (75%, 25%), stratified, 1 x size x size in [0, 1]."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).numpy()
    x_tr, x_te, y_tr, y_te = train_test_split(images, digits.target.astype(np.int64), test_size=0.25,
                                              random_state=seed, stratify=digits.target)
    return Dataset("digits-train", x_tr, y_tr), Dataset("digits-test", x_te, y_te)


def load_dataset(spec: str) -> Dataset:
    """`digits` (the test split), `digits-train`, or a path to an .npz file holding `x` (and optionally `y`)."""
    if spec in ("digits", "digits-test"):
        return digits_split()[1]
    if spec == "digits-train":
        return digits_split()[0]
    path = Path(spec)
    if not path.is_file():
        raise BridgeError(f"dataset '{spec}' not found",
                          "use 'digits' or the path to an .npz file with an array 'x' (and optional labels 'y')")
    try:
        with np.load(path) as arrays:
            x = arrays["x"].astype(np.float32)
            y = arrays["y"].astype(np.int64) if "y" in arrays else None
    except (KeyError, ValueError, OSError) as exc:
        raise BridgeError(f"dataset '{spec}' is not a usable .npz file ({exc})",
                          "save it with numpy.savez(path, x=inputs, y=labels)") from None
    return Dataset(path.stem, x, y)


def random_inputs(shape: tuple[int, ...], count: int, seed: int = 0) -> Dataset:
    """Standard-normal inputs of the model's per-sample shape; no labels."""
    rng = np.random.default_rng(seed)
    return Dataset(f"random-normal x{count}", rng.standard_normal((count, *shape[1:]), dtype=np.float32))
