"""Training-feature samples as tensors: calibration, fine-tuning and distillation data."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from hpcpipe.store import open_store
from hpcpipe.train.data import _read, masked_weights


@dataclass(frozen=True)
class Samples:
    """Inputs ``(N, C, lat, lon)``, flat targets ``(N, lead*variable, lat, lon)`` and the
    mask's loss weights ``(1, lead*variable, lat, lon)`` (masked MSE = sum(w*err**2)/N)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    weights: torch.Tensor

    def __len__(self) -> int:
        return int(self.inputs.shape[0])


def load_samples(path: str | os.PathLike[str], limit: int | None = None) -> Samples:
    """Up to ``limit`` samples of the training feature store at ``path``, spread evenly."""
    ds = open_store(path, "training features")
    n = int(ds.sizes["sample"])
    if n == 0:
        raise ValueError(f"training features {path} have no samples to calibrate or tune on")
    if limit is not None and limit < n:
        ds = ds.isel(sample=np.linspace(0, n - 1, int(limit)).round().astype(int))
    x = _read(ds["inputs"])
    y = _read(ds["targets"])
    y = y.reshape(y.shape[0], -1, *y.shape[-2:])
    mask = np.asarray(ds["mask"].values, bool)
    w = masked_weights(mask, int(ds.sizes["lead"]), torch.device("cpu"))
    return Samples(torch.from_numpy(x), torch.from_numpy(y), w.contiguous())


def masked_mse(out: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The training loss: MSE over the valid points, averaged over the batch."""
    return ((out - target).square() * weights).sum() / out.shape[0]


def tune(
    model: torch.nn.Module,
    samples: Samples,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int = 0,
    teacher_out: torch.Tensor | None = None,
    alpha: float = 0.0,
) -> list[float]:
    """A short AdamW run on ``samples`` (pruning's fine-tune, distillation); returns losses.

    With ``teacher_out`` (the teacher's outputs for every sample, in order) the loss is
    ``alpha * mse(out, teacher) + (1 - alpha) * mse(out, target)``.
    """
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    gen = torch.Generator().manual_seed(seed)
    n, losses = len(samples), []
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
        x, y = samples.inputs[idx], samples.targets[idx]
        out = model(x)
        loss = masked_mse(out, y, samples.weights)
        if teacher_out is not None:
            soft = masked_mse(out, teacher_out[idx], samples.weights)
            loss = alpha * soft + (1 - alpha) * loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses
