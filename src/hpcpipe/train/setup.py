"""Everything built before the first step: torch settings, precision, model, its wrapping for
the strategy (DDP or FSDP2, :mod:`~hpcpipe.train.strategy`), optimizer."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from hpcpipe.models.nets import build_model
from hpcpipe.runtime import environment
from hpcpipe.runtime.environment import DistEnv
from hpcpipe.train import strategy as strategies
from hpcpipe.train.data import MEMORY_FORMAT, Features


@contextlib.contextmanager
def torch_settings(
    threads: int, seed: int, deterministic: bool, device_type: str
) -> Iterator[None]:
    """Threads, seeds and determinism for this run; process-wide flags are restored after."""
    old_threads, old_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic and device_type == "cuda":
        # cuBLAS needs a fixed workspace for reproducible GEMMs; set before it starts.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)


def use_bf16(train_cfg: dict[str, Any], device: torch.device) -> bool:
    """Whether to train under bf16 autocast (``train.precision``): 'auto' means on GPUs that
    support it."""
    kind = str(train_cfg.get("precision", "auto"))
    if kind not in ("auto", "fp32", "bf16"):
        raise ValueError(f"train.precision must be auto, fp32 or bf16, got {kind!r}")
    if kind == "auto":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return kind == "bf16"


@dataclass
class Network:
    """The model, what runs it (``net``: DDP and/or compiled, or the model itself, sharded in
    place under FSDP2), its optimizer and precision."""

    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    bf16: bool
    compiled: bool
    strategy: str = strategies.DEFAULT
    placement: str = ""  # how the model is spread over the ranks, for the log

    @property
    def autocast(self) -> bool:
        """Whether the forward runs under bf16 autocast: FSDP2's mixed-precision policy
        casts a sharded model's parameters itself."""
        return self.bf16 and not strategies.is_sharded(self.model)

    def describe(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        precision = "fp32"
        if self.bf16:
            precision = "bf16 autocast" if self.autocast else "bf16 (FSDP2 mixed precision)"
        placement = f", {self.placement}" if self.placement else ""
        return f"{n} parameters, {precision}{', compiled' if self.compiled else ''}{placement}"

    def unwrap(self) -> None:
        """Drop DDP and compile wrappers: DDP's reducer must go before its process group."""
        self.net = self.model


def build_network(
    model_name: str,
    model_cfg: dict[str, Any],
    train_cfg: dict[str, Any],
    features: Features,
    seed: int,
    env: DistEnv,
    device: torch.device,
) -> Network:
    """The model of ``model_name`` for ``features`` on ``device``, wrapped for ``env`` and
    ``train.strategy``."""
    strategy = strategies.strategy_of(train_cfg)
    bf16 = use_bf16(train_cfg, device)
    torch.manual_seed(seed)  # identical initial weights on every rank and every rerun
    n_in, n_out = len(features.channels), features.out_channels
    model = build_model(model_name, model_cfg, n_in, n_out, features.grid, features.periodic)
    model.output_shape = (len(features.leads), len(features.variables))
    if strategy == strategies.DEFAULT:
        model.to(device, memory_format=MEMORY_FORMAT)
    else:
        # FSDP2 refuses channels-last parameters ("does not support non-contiguous
        # parameters"); contiguous on one rank too, so that runs resumed on another number
        # of ranks compute the same.
        model.to(device)
    net, placement = strategies.wrap(
        model, strategy, env, device, bf16, environment.ranks_per_node()
    )
    compiled = bool(train_cfg.get("compile", False))
    if compiled:
        net = torch.compile(net)  # type: ignore[assignment]
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=float(train_cfg["lr"]),
        weight_decay=float(train_cfg.get("weight_decay", 0.0)),
    )
    return Network(model, net, optimizer, bf16, compiled, strategy, placement)
