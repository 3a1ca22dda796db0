"""The PyTorch model run on numpy batches with a chosen quantized backend: the reference side of parity."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from ..data.arrays import Dataset
from ..outputs import Outputs, collect_logits, flatten_outputs
from .quantize import available_backends, quiet_torch_warnings, using_backend

def _numpy_outputs(value) -> Outputs:
    return {name: t.float().numpy() for name, t in
            flatten_outputs(value, lambda v: isinstance(v, torch.Tensor)).items()}


def torch_runner(module: nn.Module, backend: str | None = None) -> Callable[[np.ndarray], Outputs]:
    """A batch in, the model's outputs (float, by name) out, run with `backend`'s quantized kernels (default: the
    first of quantize.BACKEND_ORDER; use the backend the weights were packed for, as `LoadedModel.backend` says)."""
    backend = backend or available_backends()[0]

    def run(batch: np.ndarray) -> Outputs:
        with using_backend(backend), torch.no_grad(), quiet_torch_warnings():
            return _numpy_outputs(module(torch.from_numpy(batch)))
    return run


def run_torch(module: nn.Module, data: Dataset, batch_size: int = 64, backend: str | None = None,
              logits: str | None = None) -> np.ndarray:
    """The model's logits output (`logits`, or as outputs.logits_output chooses) on `data` (see `torch_runner`)."""
    return collect_logits(torch_runner(module, backend), data, batch_size, logits)
