"""Samples in memory: `Dataset`, the arrays every dataset becomes for the checks (and what .npz files and the
digits are from the start), and the seeded subsets both arrays and streamed image sources take."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import BridgeError


def random_subset(total: int, count: int | None, seed: int) -> np.ndarray:
    """Positions of a seeded random subset of `count` of `total` samples, in dataset order; all when count is None
    or not smaller."""
    if count is None or count >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, count, replace=False))


@dataclass
class Dataset:
    """Inputs (N, ...) float32 and optional integer labels: one per sample (N,), or per position (N, ...) for a
    dense output."""

    name: str
    x: np.ndarray
    y: np.ndarray | None = None
    decode_seconds = None  # in memory: nothing to decode (an ImageSource counts its decoding time)

    def __len__(self) -> int:
        return len(self.x)

    def batches(self, batch_size: int):
        for start in range(0, len(self.x), batch_size):
            yield self.x[start:start + batch_size]

    def labelled_batches(self, batch_size: int):
        for start in range(0, len(self.x), batch_size):
            yield self.x[start:start + batch_size], None if self.y is None else self.y[start:start + batch_size]

    @property
    def classes(self) -> int | None:
        return int(self.y.max()) + 1 if self.y is not None and len(self.y) else None

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def head(self, count: int) -> Dataset:
        return Dataset(self.name, self.x[:count], None if self.y is None else self.y[:count])

    def subset(self, count: int | None, seed: int) -> Dataset:
        """A seeded random subset of `count` rows, in their order here (all rows when count is None or larger)."""
        if count is None or count >= len(self):
            return self
        rows = random_subset(len(self), count, seed)
        return Dataset(f"{self.name}[{count} of {len(self)}]", self.x[rows], None if self.y is None else self.y[rows])

    def fit(self, input_shape: tuple[int, ...] | None) -> Dataset:
        """Arrays are already preprocessed: they must have the model's per-sample shape."""
        if input_shape is not None and self.sample_shape != tuple(input_shape[1:]):
            raise BridgeError(f"dataset {self.name} has samples of shape {self.sample_shape}, the model takes "
                              f"{tuple(input_shape[1:])}", "pass a dataset that matches --input-shape")
        return self
