"""Train the example CNN on scikit-learn's digits and quantize it for TensorRT, both ways (PTQ and QAT).

Writes into --out (default examples/out):
  digits_float.pth      float state_dict            (convert it with --arch qdq_bridge.pytorch.models:digits_resnet --calibrate digits)
  resnet_q.pt           PTQ model, TorchScript      (the reference workflow's file; `convert` needs no options)
  resnet_qat_q.pt       QAT model, TorchScript
  digits_qat_state.pth  QAT state_dict, fake-quant modules still in (convert with --arch ...)
  resnet_q_state.pth    PTQ quantized state_dict    (convert with --arch ...)
Runs on a CPU in about a minute.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from qdq_bridge import save_torchscript
from qdq_bridge.data.sources import digits_split
from qdq_bridge.pytorch import quantize
from qdq_bridge.pytorch.models import DigitsResNet


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, seed: int = 0,
          on_epoch=None) -> None:
    generator = torch.Generator().manual_seed(seed)
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, lr, total_steps=epochs * -(-len(x) // 64))
    for epoch in range(epochs):
        model.train()
        if on_epoch:
            on_epoch(model, epoch)
        for idx in torch.randperm(len(x), generator=generator).split(64):
            batch = x_t[idx]
            # small random shifts: the digits set is tiny and this keeps the test accuracy up
            shift = torch.randint(-2, 3, (2,), generator=generator).tolist()
            batch = torch.roll(batch, shifts=shift, dims=(2, 3))
            loss = nn.functional.cross_entropy(model(batch), y_t[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    with torch.no_grad(), quantize.quiet_torch_warnings():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def qat_schedule(model: nn.Module, epoch: int) -> None:
    """Standard QAT schedule: freeze observers after the first epoch, batch-norm statistics after the second."""
    if epoch >= 1:
        model.apply(torch.ao.quantization.disable_observer)
    if epoch >= 2:
        model.apply(torch.ao.nn.intrinsic.qat.freeze_bn_stats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="examples/out", type=Path)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--qat-epochs", type=int, default=3)
    parser.add_argument("--observer", default="histogram", choices=sorted(quantize.OBSERVERS))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    start = time.perf_counter()
    train_set, test_set = digits_split()
    shape = (1, *train_set.x.shape[1:])

    float_model = DigitsResNet()
    train(float_model, train_set.x, train_set.y, args.epochs, lr=1e-2)
    float_acc = accuracy(float_model, test_set.x, test_set.y)
    torch.save(float_model.state_dict(), args.out / "digits_float.pth")

    ptq = quantize.quantize_ptq(copy.deepcopy(float_model), train_set.batches(64), args.observer)
    save_torchscript(ptq, args.out / "resnet_q.pt", shape, "digits")
    torch.save(ptq.state_dict(), args.out / "resnet_q_state.pth")

    qat = quantize.prepare_qat(copy.deepcopy(float_model))
    train(qat, train_set.x, train_set.y, args.qat_epochs, lr=1e-3, seed=1, on_epoch=qat_schedule)
    torch.save(qat.state_dict(), args.out / "digits_qat_state.pth")
    qat = quantize.convert(qat)
    save_torchscript(qat, args.out / "resnet_qat_q.pt", shape, "digits")

    summary = {"float": float_acc, "ptq": accuracy(ptq, test_set.x, test_set.y),
               "qat": accuracy(qat, test_set.x, test_set.y), "test_samples": len(test_set),
               "seconds": round(time.perf_counter() - start, 1)}
    (args.out / "accuracy.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("digits test accuracy: " + ", ".join(f"{k} {v * 100:.2f}%" for k, v in summary.items() if k in
                                                ("float", "ptq", "qat")) + f" ({summary['seconds']} s)")
    print(f"wrote {', '.join(sorted(p.name for p in args.out.iterdir()))} to {args.out}")


if __name__ == "__main__":
    main()
