"""The state of a training run that is not the model: where it is, what it has seen; and the
RNG states. Both go into every resume checkpoint.
"""

from __future__ import annotations

import csv
import io
import random
import time
from typing import Any

import numpy as np
import torch

HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "lr", "seconds")


class RunState:
    """Where the run is (the next step to run is ``step`` of ``epoch``) and its history.

    Also the clock of the current epoch, so a resumed epoch counts the seconds before the stop.
    """

    # What a checkpoint holds, in the order checkpoints have always had it.
    SAVED = ("epoch", "step", "partial", "epoch_lr", "epoch_seconds", "history")

    def __init__(self) -> None:
        self.epoch, self.step = 1, 0
        self.partial: torch.Tensor | None = None  # loss sum of the epoch's steps so far
        self.epoch_lr: float | None = None
        self.epoch_seconds = 0.0
        self.history: list[dict[str, float]] = []
        self._started = time.perf_counter()  # the epoch's start, less its seconds before a stop

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.SAVED}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in self.SAVED:
            setattr(self, k, state[k])

    def begin_epoch(self, epoch: int, lr: float) -> tuple[int, torch.Tensor | None, float]:
        """Start ``epoch`` at the optimizer's ``lr``, or continue it after a resume.

        Returns the first step to run, the loss sum of the steps before it (on resume) and
        the epoch's LR: a resumed epoch reports the LR it started with, as an uninterrupted
        run does.
        """
        first, partial = self.step, self.partial
        self._started = time.perf_counter() - (self.epoch_seconds if first else 0.0)
        lr = self.epoch_lr if first and self.epoch_lr is not None else lr
        self.epoch, self.step, self.epoch_lr = epoch, 0, float(lr)
        return first, partial, float(lr)

    def elapsed(self) -> float:
        """Seconds spent in the current epoch (also those before a stop)."""
        return time.perf_counter() - self._started

    def at_step(self, epoch: int, step: int, partial: torch.Tensor) -> None:
        """Record the position after ``step`` steps of ``epoch``: what a checkpoint holds."""
        self.epoch, self.step, self.partial = epoch, step, partial
        self.epoch_seconds = self.elapsed()

    def end_epoch(
        self, epoch: int, train_loss: float, val_loss: float, lr: float, seconds: float
    ) -> None:
        """Append the epoch's history row; the run continues with the next epoch."""
        row = (epoch, train_loss, val_loss, lr, seconds)
        self.history.append(dict(zip(HISTORY_COLUMNS, row, strict=True)))
        self.epoch, self.step, self.partial, self.epoch_lr, self.epoch_seconds = (
            epoch + 1, 0, None, None, 0.0,
        )  # fmt: skip

    def history_csv(self) -> str:
        """The history as history.csv's text."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in self.history:
            # repr() round-trips floats exactly, so reruns can be compared bit for bit.
            writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
        return buf.getvalue()


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from, in a form ``torch.load(weights_only=True)`` reads."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (CUDA only on the same number of devices)."""
    random.setstate(state["python"])
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    cuda = state["cuda"]
    if cuda and torch.cuda.is_initialized() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
