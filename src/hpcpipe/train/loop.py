"""The step loop: one rank's share of an epoch's steps, and the validation loss."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from hpcpipe.logs import progress
from hpcpipe.runtime.environment import DistEnv
from hpcpipe.train import process_group as distributed
from hpcpipe.train.data import TensorSource, sample_order


class Loop:
    """One rank's share of the epochs: its slice of each global batch, its validation shard.

    Two hooks run after every optimizer step: ``after_step()`` (the LR schedule) and
    ``on_step(epoch, steps_done, loss_total)`` (checkpoints and stop requests).
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        data: TensorSource,
        val: TensorSource,
        weights: torch.Tensor,
        env: DistEnv,
        global_batch: int,
        seed: int,
        bf16: bool = False,
    ) -> None:
        self.net, self.optimizer = net, optimizer
        self.after_step: Callable[[], None] = lambda: None
        self.on_step: Callable[[int, int, torch.Tensor], None] = lambda _e, _s, _t: None
        self.data, self.val, self.weights = data, val, weights
        self.rank, self.world = env.rank, env.world_size
        self.bf16 = bf16
        self.local_batch = global_batch // self.world
        if self.local_batch < 1:
            raise ValueError(f"{data.n} training samples cannot be split over {self.world} ranks")
        self.global_batch = self.local_batch * self.world
        # The last partial batch is dropped: all batches are equal (and differ per epoch).
        self.steps = max(1, data.n // self.global_batch)
        self.seed = seed
        # Contiguous validation shards, so every sample is counted exactly once.
        self.v0, self.v1 = self.rank * val.n // self.world, (self.rank + 1) * val.n // self.world

    def describe(self) -> str:
        return f"batch {self.global_batch}, {self.steps} steps/epoch"

    def _loss_sum(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Masked squared error summed over the batch; the forward in bf16 if asked, the
        loss always in float32."""
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.net(x)
        return ((out.float() - y).square() * self.weights).sum()

    def _indices(self, order: torch.Tensor, first: int) -> Iterator[torch.Tensor]:
        for step in range(first, self.steps):
            start = step * self.global_batch + self.rank * self.local_batch
            yield order[start : start + self.local_batch]

    def train_epoch(
        self, epoch: int, what: str, first_step: int = 0, total: torch.Tensor | None = None
    ) -> float:
        """Steps ``first_step..`` of one epoch; returns the epoch's mean training loss over all
        ranks. ``total`` is the loss sum of the steps before ``first_step`` (on resume)."""
        data = self.data
        order = torch.from_numpy(sample_order(data.n, data.block, self.seed, epoch))
        order = order.to(data.index_device)
        self.net.train()
        device = data.device
        total = (
            torch.zeros((), dtype=torch.float64, device=device)
            if total is None
            else total.to(device, torch.float64)
        )
        steps: Iterator[int] = iter(range(first_step, self.steps))
        if self.rank == 0:
            steps = progress(steps, None, what, every_s=30)  # speaks only during long epochs
        batches = data.batches(self._indices(order, first_step))
        try:
            for step, (x, y) in zip(steps, batches, strict=False):
                loss = self._loss_sum(x, y) / len(x)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.after_step()
                total += loss.detach()  # stays on the device: no host sync per step
                self.on_step(epoch, step + 1, total)
        finally:
            batches.close()  # stops the prefetch thread also when a stop request ends the epoch
        return float(distributed.all_reduce_mean(total)) / self.steps

    def evaluate(self) -> float:
        """The masked MSE over the whole validation split (all ranks' shards)."""
        self.net.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.val.device)  # [loss sum, count]
        size = 2 * self.local_batch  # no activations kept: twice the training batch fits
        device = self.val.index_device
        indices = (
            torch.arange(s, min(s + size, self.v1), device=device)
            for s in range(self.v0, self.v1, size)
        )
        batches = self.val.batches(indices)  # prepared ahead, as training's (streamed: read ahead)
        try:
            with torch.no_grad():
                for x, y in batches:
                    total[0] += self._loss_sum(x, y)
                    total[1] += len(x)
        finally:
            batches.close()
        total = distributed.all_reduce_mean(total)  # a ratio of means is the global mean
        return float(total[0] / total[1].clamp(min=1))
