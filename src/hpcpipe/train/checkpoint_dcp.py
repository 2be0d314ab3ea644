"""Sharded resume checkpoints (``train.strategy`` fsdp or hybrid) with torch.distributed.checkpoint.

Such a checkpoint is a directory ``step-000001234.dcp`` where a DDP run has the single file
``step-000001234.pt`` (:mod:`~hpcpipe.train.checkpoint`). Every rank writes its shards of the
model, the optimizer state and early stopping's best weights (DCP's ``*.distcp`` files and
``.metadata``); rank 0 adds :data:`STATE`, the rest of the checkpoint (format, identity,
schedule, RNG, run state) in the dict a single-file checkpoint has, less those tensors, so the
identity checks read it as they read a single file. The directory is written under a
temporary name and renamed once complete: a directory with ``state.pt`` is whole.

Loading reshards: DCP reads into this run's own layout whatever the layout was at save time,
so a checkpoint of 2 ranks resumes on 1 (unsharded tensors) or on 4.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from hpcpipe.atomic import fsync_dir
from hpcpipe.train import process_group as distributed

STATE = "state.pt"
SUFFIX = ".dcp"


def tensors(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    best: dict[str, torch.Tensor] | None,
) -> dict[str, Any]:
    """What DCP saves: this rank's view (shards, or whole tensors on one rank)."""
    out: dict[str, Any] = {
        "model": get_model_state_dict(model),
        "optimizer": get_optimizer_state_dict(model, optimizer),
    }
    if best is not None:
        out["best"] = best
    return out


def save(directory: Path, name: str, parts: dict[str, Any], state: dict[str, Any]) -> Path:
    """Write the checkpoint ``directory/name`` (collective: every rank calls it)."""
    final, tmp = directory / name, directory / f".{name}.tmp"
    main = distributed.is_main()
    if main:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # a rank killed while writing left it
    distributed.barrier()
    # Each rank writes its own files (fsync'ed by DCP's writer); rank 0 the metadata, last.
    with _single_process() as single, _plain_errors():
        dcp.save(parts, checkpoint_id=tmp, no_dist=single)
    if main:
        with open(tmp / STATE, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        shutil.rmtree(final, ignore_errors=True)  # the same step again, after a resume
        os.replace(tmp, final)
        fsync_dir(directory)
    distributed.barrier()  # the checkpoint is complete on every rank's return
    return final


def load(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    has_best: bool,
) -> dict[str, torch.Tensor] | None:
    """Load ``path`` into ``model`` and ``optimizer`` (collective); early stopping's best
    weights, in this run's layout, or None when the checkpoint has none."""
    model_sd = get_model_state_dict(model)
    parts: dict[str, Any] = {
        "model": model_sd,
        # Creates the optimizer's state first (a step at LR 0), which the load then fills.
        "optimizer": get_optimizer_state_dict(model, optimizer),
    }
    if has_best:
        # Copies: the model's state dict shares the parameters' storage.
        parts["best"] = {k: v.detach().clone() for k, v in model_sd.items()}
    with _single_process() as single, _plain_errors():
        dcp.load(parts, checkpoint_id=path, no_dist=single)
    set_model_state_dict(model, parts["model"])
    set_optimizer_state_dict(model, optimizer, parts["optimizer"])
    return parts.get("best")


@contextlib.contextmanager
def _plain_errors() -> Iterator[None]:
    """DCP's CheckpointException (a BaseException, raised on every rank) as a RuntimeError
    naming each rank's error, so that the step's error handling sees it."""
    try:
        yield
    except CheckpointException as exc:
        errors = "; ".join(
            f"rank {rank}: {type(err).__name__}: {err}".rstrip(": ")
            for rank, (err, _trace) in sorted(exc.failures.items())
        )
        raise RuntimeError(errors) from exc


@contextlib.contextmanager
def _single_process() -> Iterator[bool]:
    """Whether DCP runs without a process group (one rank), quietly: it warns on every call."""
    single = distributed.world_size() == 1
    with warnings.catch_warnings():
        if single:
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield single
