"""What happens between steps and between epochs: the LR schedule and early stopping."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

# Improvements smaller than this (relative) do not reset early stopping (as ReduceLROnPlateau).
MIN_REL_IMPROVEMENT = 1e-4
STOPPING_KEYS = ("best_loss", "best_epoch", "bad", "best_state")


class Schedule:
    """``train.lr_schedule`` (cosine per step, plateau per epoch, constant) and early stopping
    after ``train.patience`` epochs without a better validation loss; the best epoch's weights.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, train_cfg: dict[str, Any], steps: int
    ) -> None:
        self.kind = str(train_cfg.get("lr_schedule", "cosine"))
        epochs, self.patience = int(train_cfg["epochs"]), int(train_cfg["patience"])
        self.sched: Any = None
        if self.kind == "cosine":
            total = max(1, epochs * steps)  # per step: smooth even over few epochs
            self.sched = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda t: 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))
            )
        elif self.kind == "plateau":
            # Halve well before early stopping gives up, so the lower LR gets its chance.
            self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=0.5, patience=max(1, self.patience // 2)
            )
        elif self.kind != "constant":
            raise ValueError(
                f"train.lr_schedule must be cosine, plateau or constant, got {self.kind!r}"
            )
        self.best_loss, self.best_epoch, self.bad = math.inf, 0, 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def after_step(self) -> None:
        if self.kind == "cosine":
            self.sched.step()

    def after_epoch(self, epoch: int, val_loss: float, model: nn.Module) -> bool:
        """Step the plateau LR and keep ``model``'s weights if they are the best so far
        (returned)."""
        if self.kind == "plateau":
            self.sched.step(val_loss)
        improved = (
            self.best_state is None
            or val_loss < self.best_loss - MIN_REL_IMPROVEMENT * self.best_loss
        )
        if improved:
            self.best_loss, self.best_epoch, self.bad = val_loss, epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.bad += 1
        return improved

    @property
    def exhausted(self) -> bool:
        """Whether early stopping ends the run: ``patience`` epochs without improvement."""
        return self.bad >= self.patience

    def state_dict(self) -> dict[str, Any]:
        """The LR schedule's state (early stopping's is :meth:`stopping_state_dict`)."""
        return self.sched.state_dict() if self.sched is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.sched is not None:
            self.sched.load_state_dict(state)

    def stopping_state_dict(self) -> dict[str, Any]:
        """Early stopping's state: the best epoch, its loss and weights, the epochs since."""
        return {k: getattr(self, k) for k in STOPPING_KEYS}

    def load_stopping_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        for k in STOPPING_KEYS:
            setattr(self, k, state[k])
        if self.best_state is not None:
            self.best_state = {k: v.to(device) for k, v in self.best_state.items()}
