"""PT2E programs as a user makes them (qdq_bridge.pt2e.quantizer's docstring): export, prepare, calibrate or
train, convert, export again with a dynamic batch."""
from typing import Callable, Iterable

import torch
from torchao.quantization.pt2e import allow_exported_model_train_eval, move_exported_model_to_eval
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e

from qdq_bridge.pt2e.quantizer import TensorRTQuantizer

BATCH = {0: torch.export.Dim("batch", min=1, max=256)}


def quantize_pt2e(model: torch.nn.Module, example: torch.Tensor, batches: Iterable[torch.Tensor],
                  quantizer=None, placement: str = "fast",
                  train: Callable[[torch.nn.Module], None] | None = None) -> torch.export.ExportedProgram:
    """PTQ on `batches`, or QAT: `train` runs on the prepared graph, then `batches` calibrate in eval mode.
    `quantizer` defaults to TensorRTQuantizer(placement) (QAT: is_qat)."""
    qat = train is not None
    graph = torch.export.export(model.train(qat), (example,), dynamic_shapes=(BATCH,), strict=True).module()
    quantizer = quantizer or TensorRTQuantizer(placement, is_qat=qat)
    prepared = (prepare_qat_pt2e if qat else prepare_pt2e)(graph, quantizer)
    if qat:
        allow_exported_model_train_eval(prepared)  # training loops call model.train()
        train(prepared)
        move_exported_model_to_eval(prepared)
    with torch.no_grad():
        for batch in batches:
            prepared(batch)
    return torch.export.export(convert_pt2e(prepared), (example,), dynamic_shapes=(BATCH,))
