"""The PyTorch model run on numpy batches with a chosen quantized backend: the reference side of parity."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from ..data.arrays import Dataset
from ..outputs import Outputs, collect_logits, flatten_outputs
from .quantize import available_engines, quiet_torch_warnings, using_engine

def _numpy_outputs(value) -> Outputs:
    return {name: t.float().numpy() for name, t in
            flatten_outputs(value, lambda v: isinstance(v, torch.Tensor)).items()}


def torch_runner(module: nn.Module, engine: str | None = None) -> Callable[[np.ndarray], Outputs]:
    """A batch in, the model's outputs (float, by name) out, run with `engine`'s quantized kernels (default: the
    first of quantize.ENGINE_ORDER; use the engine the weights were packed for, as `LoadedModel.engine` says)."""
    engine = engine or available_engines()[0]

    def run(batch: np.ndarray) -> Outputs:
        with using_engine(engine), torch.no_grad(), quiet_torch_warnings():
            return _numpy_outputs(module(torch.from_numpy(batch)))
    return run


def run_torch(module: nn.Module, data: Dataset, batch_size: int = 64, engine: str | None = None,
              logits: str | None = None) -> np.ndarray:
    """The model's logits output (`logits`, or as outputs.logits_output chooses) on `data` (see `torch_runner`)."""
    return collect_logits(torch_runner(module, engine), data, batch_size, logits)
