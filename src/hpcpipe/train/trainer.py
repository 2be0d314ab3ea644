"""``train()``: one model for one seed, from the feature stores to ``model.pt`` and
``history.csv`` (see :mod:`hpcpipe.train`)."""

from __future__ import annotations

import gc
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hpcpipe.atomic import atomic_path, write_text
from hpcpipe.models.files import model_file
from hpcpipe.runtime.allocation import allocation, threads_per_rank
from hpcpipe.runtime.environment import DistEnv
from hpcpipe.train import process_group as distributed
from hpcpipe.train.checkpoint import Checkpointer, Checkpoints, Resumable, run_identity
from hpcpipe.train.data import Features, FeatureStores, open_features
from hpcpipe.train.loop import Loop
from hpcpipe.train.schedule import Schedule
from hpcpipe.train.setup import Network, build_network, torch_settings
from hpcpipe.train.state import RunState
from hpcpipe.train.stop import StopRequest
from hpcpipe.train.strategy import full_state_dict, state_bytes, strategy_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Job:
    """What is trained: a model with its config, a training config, a seed."""

    model_name: str
    model_cfg: dict[str, Any]
    train_cfg: dict[str, Any]
    seed: int

    @property
    def label(self) -> str:
        return f"{self.model_name} seed {self.seed}"

    @property
    def epochs(self) -> int:
        return int(self.train_cfg["epochs"])


@dataclass
class _Parts:
    """The components of a run, built once the device is known."""

    network: Network
    loop: Loop
    schedule: Schedule
    run: RunState
    checkpointer: Checkpointer

    def close(self) -> None:
        """Release what must go before the process group, also after a stop or an error."""
        self.checkpointer.close()
        # DDP's reducer must go before its process group: freed after it, gloo's destructor
        # can wait for ever.
        self.network.unwrap()
        self.loop.net = self.network.model
        gc.collect()


def train(
    model_name: str,
    model_cfg: dict[str, Any],
    train_cfg: dict[str, Any],
    seed: int,
    features: FeatureStores | str | Path,
    model_path: str | Path,
    history_path: str | Path,
    threads: int | None = None,
    checkpoint_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Train ``model_name`` on the feature stores; rank 0 writes the outputs.

    ``features``: the training and validation stores, or a directory with train.zarr and
    val.zarr.

    With ``checkpoint_dir``, checkpoints go there (see :mod:`hpcpipe.train.checkpoint`) and
    the run resumes from the newest one of the same identity. A stop request (SIGUSR1/SIGTERM)
    writes a checkpoint and raises :class:`~hpcpipe.train.stop.TrainingStopped`.

    Returns a summary: model, seed, best_epoch, best_val_loss, epochs_run, stopped_early,
    seconds (wall, from the call), world_size, device, resumed_from (epoch, step or None),
    data_wait (share of the training time spent waiting for batches), state_bytes (this rank's
    parameter, gradient and optimizer bytes: its shards under fsdp and hybrid).
    """
    t_start = time.perf_counter()
    job = _Job(model_name, model_cfg, train_cfg, seed)
    sharded = strategy_of(train_cfg) != "ddp"  # a bad train.strategy fails before any work
    env = DistEnv.from_environ()
    main = env.rank == 0
    alloc = allocation(threads)
    device_type = "cuda" if alloc.gpus > 0 and torch.cuda.is_available() else "cpu"
    deterministic = bool(train_cfg.get("deterministic", True))
    stores = FeatureStores.of(features)
    data = open_features(stores, alloc, main)
    _check_batch_size(train_cfg, env)
    files = _checkpoint_files(job, stores, checkpoint_dir)
    cpus = threads_per_rank(env, alloc.cpus)  # this rank's: its torch threads and readers

    with (
        torch_settings(cpus, seed, deterministic, device_type),
        distributed.init(env, device_type) as device,
        StopRequest() as stop,
    ):
        p = _assemble(job, data, env, device, files, stop, cpus)
        resumed_from = p.checkpointer.resume(device)
        if main:
            _log_start(job, data, env, device, p)
        try:
            _epochs(job, p, main)
            held = state_bytes(p.network.model, p.network.optimizer)  # gradients still there
        finally:
            p.close()
        assert p.schedule.best_state is not None
        p.network.model.load_state_dict(p.schedule.best_state)
        # Gathered by every rank when sharded; otherwise only rank 0 needs the weights.
        weights = full_state_dict(p.network.model) if main or sharded else {}
        summary = _summary(job, p, env, device, resumed_from)
        summary["data_wait"] = p.loop.data.wait_s / max(time.perf_counter() - t_start, 1e-9)
        summary["state_bytes"] = held
        if main:
            log.info(
                "rank 0 holds %d bytes: parameters %d, gradients %d, optimizer state %d",
                held["total"], held["parameters"], held["gradients"], held["optimizer"],
            )  # fmt: skip
            _write_outputs(job, data, p, weights, Path(model_path), Path(history_path))
            p.checkpointer.finish()  # the outputs hold the result now
    summary["seconds"] = time.perf_counter() - t_start
    if main:
        log.info(
            "%s: best val %.5f at epoch %d of %d, %.1f s; wrote %s",
            job.label, summary["best_val_loss"], summary["best_epoch"], summary["epochs_run"],
            summary["seconds"], model_path,
        )  # fmt: skip
    return summary


def _check_batch_size(train_cfg: dict[str, Any], env: DistEnv) -> None:
    batch_size = int(train_cfg["batch_size"])
    if batch_size < env.world_size:
        raise ValueError(
            f"train.batch_size={batch_size} is smaller than the {env.world_size} ranks"
        )


def _checkpoint_files(
    job: _Job, stores: FeatureStores, checkpoint_dir: str | Path | None
) -> Checkpoints | None:
    """This run's checkpoints under ``checkpoint_dir`` (None: the run keeps none)."""
    if checkpoint_dir is None:
        return None
    identity = run_identity(job.model_name, job.model_cfg, job.train_cfg, job.seed, stores)
    return Checkpoints(checkpoint_dir, identity)


def _assemble(
    job: _Job,
    features: Features,
    env: DistEnv,
    device: torch.device,
    files: Checkpoints | None,
    stop: StopRequest,
    cpus: int,
) -> _Parts:
    """Data, model, loop, schedule, run state and checkpointer, wired together (``cpus``:
    this rank's)."""
    data, val, weights = features.tensors(device, cpus)
    network = build_network(
        job.model_name, job.model_cfg, job.train_cfg, features, job.seed, env, device
    )
    batch_size = int(job.train_cfg["batch_size"])
    loop = Loop(
        network.net, network.optimizer, data, val, weights, env,
        min(batch_size, data.n), job.seed, network.autocast,
    )  # fmt: skip
    if env.rank == 0 and loop.global_batch != batch_size:
        log.warning(
            "global batch %d instead of train.batch_size=%d (%d samples, %d ranks)",
            loop.global_batch, batch_size, data.n, env.world_size,
        )  # fmt: skip
    schedule = Schedule(network.optimizer, job.train_cfg, loop.steps)
    run = RunState()
    sharded = network.strategy != "ddp"
    what = Resumable(network.model, network.optimizer, schedule, run, sharded)
    checkpointer = Checkpointer(files, job.train_cfg, env, stop, what, loop.steps)
    loop.after_step, loop.on_step = schedule.after_step, checkpointer.on_step
    return _Parts(network, loop, schedule, run, checkpointer)


def _log_start(
    job: _Job, features: Features, env: DistEnv, device: torch.device, p: _Parts
) -> None:
    log.info(
        "%s: %s; %s; %s x %d rank(s), %d thread(s); %s",
        job.label, features.describe(p.loop.data.n, p.loop.val.n), p.network.describe(),
        device, env.world_size, torch.get_num_threads(), p.loop.describe(),
    )  # fmt: skip


def _epochs(job: _Job, p: _Parts, main: bool) -> None:
    """The epochs from where the run stands to the last, or until early stopping."""
    for epoch in range(p.run.epoch, job.epochs + 1):
        _run_epoch(job, epoch, p, main)
        if p.schedule.exhausted:
            if main:
                log.info("early stop: no better validation loss for %d epochs", p.schedule.patience)
            return


def _run_epoch(job: _Job, epoch: int, p: _Parts, main: bool) -> None:
    """One epoch (or the rest of it, after a resume): steps, validation, schedule, history."""
    first, partial, lr = p.run.begin_epoch(epoch, p.network.optimizer.param_groups[0]["lr"])
    wait0 = p.loop.data.wait_s
    what = f"{job.model_name} epoch {epoch}/{job.epochs} steps"
    train_loss = p.loop.train_epoch(epoch, what, first, partial)
    t_train = p.run.elapsed()
    val_loss = p.loop.evaluate()
    if not math.isfinite(val_loss):
        raise FloatingPointError(
            f"{job.label}: validation loss {val_loss} at epoch {epoch}; lower train.lr"
        )
    improved = p.schedule.after_epoch(epoch, val_loss, p.network.model)
    seconds = p.run.elapsed()
    p.run.end_epoch(epoch, train_loss, val_loss, lr, seconds)
    if main:
        log.info(
            "%s epoch %d/%d: train %.5f val %.5f%s lr %.2e "
            "(%.0f samples/s, data wait %.1f%%, %.2f s)",
            job.label, epoch, job.epochs, train_loss, val_loss, " *" if improved else "", lr,
            (p.loop.steps - first) * p.loop.global_batch / max(t_train, 1e-9),
            100 * (p.loop.data.wait_s - wait0) / max(t_train, 1e-9), seconds,
        )  # fmt: skip


def _write_outputs(
    job: _Job,
    features: Features,
    p: _Parts,
    weights: dict[str, torch.Tensor],
    model_path: Path,
    history_path: Path,
) -> None:
    """history.csv, then model.pt (the best epoch's weights), both atomically."""
    meta = features.model_meta() | {
        "epoch": p.schedule.best_epoch,
        "val_loss": p.schedule.best_loss,
        "train_config": dict(job.train_cfg),
        "seed": job.seed,
    }
    write_text(history_path, p.run.history_csv())
    # The model last: a model.pt always has its history beside it.
    with atomic_path(model_path) as tmp:
        torch.save(model_file(p.network.model, job.model_name, job.model_cfg, meta, weights), tmp)


def _summary(
    job: _Job,
    p: _Parts,
    env: DistEnv,
    device: torch.device,
    resumed_from: tuple[int, int] | None,
) -> dict[str, Any]:
    return {
        "model": job.model_name,
        "seed": job.seed,
        "best_epoch": p.schedule.best_epoch,
        "best_val_loss": p.schedule.best_loss,
        "epochs_run": len(p.run.history),
        "stopped_early": len(p.run.history) < job.epochs,
        "seconds": 0.0,  # set at the very end
        "world_size": env.world_size,
        "device": str(device),
        "resumed_from": resumed_from,
    }
