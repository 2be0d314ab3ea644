"""Training of one model for one seed: single process, or DDP with one rank per GPU/task.

The global batch size, learning rate and sample order depend only on the config and the seed,
never on the number of ranks: every rank draws the same seeded permutation per epoch and
takes its own slice of each global batch; DDP averages the gradients. Rank 0 writes
``model.pt`` (the best epoch's weights) and ``history.csv``, both atomically.

With a checkpoint directory, the run checkpoints every ``train.checkpoint_every`` steps and
when SLURM (or anyone) sends SIGUSR1 or SIGTERM, and a rerun resumes from the newest
checkpoint with the same result as an uninterrupted run (bitwise on CPU with deterministic
settings); see :mod:`hpcpipe.checkpoint`. On SIGUSR1 inside a requeueable SLURM job the job
requeues itself and continues.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import io
import logging
import math
import os
import random
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import dask
import numpy as np
import torch
import xarray as xr
from torch import nn

from hpcpipe import process_group as distributed
from hpcpipe.atomic import atomic_path, write_text
from hpcpipe.checkpoint import CheckpointError, Checkpoints, StopRequest, TrainingStopped
from hpcpipe.contracts import check_features
from hpcpipe.loader import Prefetcher
from hpcpipe.logs import progress
from hpcpipe.models import build_model, checkpoint
from hpcpipe.runtime import environment
from hpcpipe.runtime.allocation import IN_MEMORY_SHARE, ON_GPU_SHARE, allocation, threads_per_rank
from hpcpipe.runtime.environment import DistEnv
from hpcpipe.runtime.slurm import requeue_job
from hpcpipe.store import decode_str, open_store

log = logging.getLogger("hpcpipe.train")

HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "lr", "seconds")
# Improvements smaller than this (relative) do not reset early stopping (as ReduceLROnPlateau).
MIN_REL_IMPROVEMENT = 1e-4
# NHWC: oneDNN's CPU convolutions are 25-35% faster on these shapes (and GPUs prefer it too).
MEMORY_FORMAT = torch.channels_last

# Batches prepared ahead of the step (in a thread) when they come from the host or the store.
PREFETCH_DEPTH = 2


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    return t.to(device, non_blocking=True).contiguous(memory_format=MEMORY_FORMAT)


def _read(da: xr.DataArray, rows: slice | None = None) -> np.ndarray:
    # Synchronous: two trainings side by side must not each start a Dask thread pool.
    with dask.config.set(scheduler="synchronous"):
        part = da if rows is None else da.isel(sample=rows)
        return np.asarray(part.values, dtype=np.float32)


class _Split:
    """One split's samples as tensors: in memory, or read chunk by chunk from the store.

    Targets are kept flat, ``(sample, lead * variable, lat, lon)``, lead-major like the model
    output, so the loss needs no reshape.
    """

    def __init__(self, ds: xr.Dataset, in_memory: bool, device: torch.device) -> None:
        self.n = int(ds.sizes["sample"])
        self.device = device
        # Where the in-memory samples live: on the GPU when they fit easily, else on the host.
        self.home = device
        if device.type == "cuda":
            nbytes = ds["inputs"].nbytes + ds["targets"].nbytes
            if nbytes > ON_GPU_SHARE * torch.cuda.get_device_properties(device).total_memory:
                self.home = torch.device("cpu")
        self._ds = ds
        self._flat = (-1, *ds["targets"].shape[-2:])
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.wait_s = 0.0  # time the training loop waited for prefetched batches
        if in_memory:
            self.block = self.n
            x = torch.from_numpy(_read(ds["inputs"]))
            y = torch.from_numpy(_read(ds["targets"]).reshape(self.n, *self._flat))
            self.x, self.y = _to(x, self.home), _to(y, self.home)
        else:
            # Out of core: samples are shuffled within store chunks (see _order), so a batch
            # touches one or two chunks and each chunk is read about once per epoch.
            self.block = int(ds.chunks["sample"][0])

    @property
    def index_device(self) -> torch.device:
        """Where sample indices should live: next to the data."""
        return self.home if self.x is not None else torch.device("cpu")

    @property
    def prefetch(self) -> bool:
        """Whether batches are worth preparing in a thread: read from the store, or copied
        from the host to the GPU. Data already on the training device are indexed in place."""
        return self.x is None or self.home != self.device

    def gather(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and flat targets of the samples ``idx`` where they live (pinned for a GPU)."""
        if self.x is not None and self.y is not None:
            x, y = self.x[idx], self.y[idx]  # advanced indexing keeps channels_last
        else:
            chunk = torch.div(idx, self.block, rounding_mode="floor")
            xs = ys = None
            for c in torch.unique(chunk).tolist():
                sel = (chunk == c).nonzero().squeeze(1)
                cx, cy = self._chunk(c)
                local = idx[sel] - c * self.block
                if xs is None or ys is None:
                    xs = cx.new_empty((len(idx), *cx.shape[1:]))
                    ys = cy.new_empty((len(idx), *cy.shape[1:]))
                xs[sel], ys[sel] = cx[local], cy[local]
            assert xs is not None and ys is not None
            x, y = xs, ys
        if self.device.type == "cuda" and x.device.type == "cpu":
            x, y = x.pin_memory(), y.pin_memory()  # so that the copy below is asynchronous
        return x, y

    def to_device(self, xy: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = xy
        return (x, y) if x.device == self.device else (_to(x, self.device), _to(y, self.device))

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and flat targets of the samples ``idx``, on the training device."""
        return self.to_device(self.gather(idx))

    def batches(
        self, indices: Iterable[torch.Tensor]
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of ``indices`` on the training device, prepared ahead where it helps."""
        if not self.prefetch:
            yield from map(self.batch, indices)
            return
        with Prefetcher(indices, self.gather, depth=PREFETCH_DEPTH) as ahead:
            try:
                for xy in ahead:
                    yield self.to_device(xy)
            finally:
                self.wait_s += ahead.wait_s

    def _chunk(self, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        if c not in self._cache:
            if len(self._cache) >= 2:  # a batch spans at most two chunks (one thread reads)
                self._cache.pop(next(iter(self._cache)))
            rows = slice(c * self.block, min(self.n, (c + 1) * self.block))
            x = _read(self._ds["inputs"], rows)
            y = _read(self._ds["targets"], rows)
            self._cache[c] = (torch.from_numpy(x), torch.from_numpy(y.reshape(len(y), *self._flat)))
        return self._cache[c]


def _order(n: int, block: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's sample order: the same on every rank (a function of seed and epoch only).

    With ``block >= n`` a full permutation; otherwise blocks in random order, each shuffled.
    """
    rng = np.random.default_rng([seed, epoch])
    if block >= n:
        return rng.permutation(n)
    starts = rng.permutation(np.arange(0, n, block))
    return np.concatenate([s + rng.permutation(min(block, n - s)) for s in starts])


@contextlib.contextmanager
def _torch_settings(
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


class _Schedule:
    """The LR schedule as two hooks (after each step; after each epoch, with the validation
    loss) and its state for checkpoints."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, kind: str, epochs: int, steps: int, patience: int
    ) -> None:
        self.kind = kind
        self.sched: Any = None
        if kind == "cosine":
            total = max(1, epochs * steps)  # per step: smooth even over few epochs
            self.sched = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda t: 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))
            )
        elif kind == "plateau":
            # Halve well before early stopping gives up, so the lower LR gets its chance.
            self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=0.5, patience=max(1, patience // 2)
            )
        elif kind != "constant":
            raise ValueError(f"train.lr_schedule must be cosine, plateau or constant, got {kind!r}")

    def after_step(self) -> None:
        if self.kind == "cosine":
            self.sched.step()

    def after_epoch(self, val_loss: float) -> None:
        if self.kind == "plateau":
            self.sched.step(val_loss)

    def state_dict(self) -> dict[str, Any]:
        return self.sched.state_dict() if self.sched is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.sched is not None:
            self.sched.load_state_dict(state)


def _open_features(features_dir: Path) -> tuple[xr.Dataset, xr.Dataset]:
    train_ds = open_store(features_dir / "train.zarr", what="training features")
    val_ds = open_store(features_dir / "val.zarr", what="validation features")
    check_features(train_ds, val_ds, features_dir)
    return train_ds, val_ds


def _masked_weights(mask: np.ndarray, n_leads: int, device: torch.device) -> torch.Tensor:
    """Per-point loss weights (1, lead*variable, lat, lon): mask / valid points per sample.

    ``(weights * err**2).sum() / batch`` is then the MSE over valid points only.
    """
    m = np.broadcast_to(mask.astype(np.float32), (n_leads, *mask.shape))
    m = m.reshape(1, -1, *mask.shape[-2:])
    valid = float(m.sum())
    if valid == 0:
        raise ValueError("the features' mask has no valid points; nothing to train on")
    return _to(torch.from_numpy(m / valid), device)


def _history_csv(rows: list[dict[str, float]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        # repr() round-trips floats exactly, so reruns can be compared bit for bit.
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def _rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from, in a form ``torch.load(weights_only=True)`` reads."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    cuda = state["cuda"]
    if cuda and torch.cuda.is_initialized() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _precision(train_cfg: dict[str, Any], device: torch.device) -> bool:
    """Whether to train under bf16 autocast: 'auto' means on GPUs that support it."""
    kind = str(train_cfg.get("precision", "auto"))
    if kind not in ("auto", "fp32", "bf16"):
        raise ValueError(f"train.precision must be auto, fp32 or bf16, got {kind!r}")
    if kind == "auto":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return kind == "bf16"


# Config keys that do not change what is computed: not part of a run's checkpoint identity.
RUNTIME_KEYS = ("checkpoint_every", "models", "seeds")


def run_identity(
    model_name: str, model_cfg: dict[str, Any], train_cfg: dict[str, Any], seed: int,
    features_dir: Path,
) -> dict[str, Any]:  # fmt: skip
    """What a checkpoint must match to be resumed: model, config, seed and the features."""
    from hpcpipe.provenance import recorded_checksum

    return {
        "model": model_name,
        "model_config": dict(model_cfg),
        "train": {k: v for k, v in train_cfg.items() if k not in RUNTIME_KEYS},
        "seed": seed,
        "features": {s: recorded_checksum(features_dir / f"{s}.zarr") for s in ("train", "val")},
    }


class _Loop:
    """One rank's share of the epochs: its slice of each global batch, its validation shard.

    ``on_step(epoch, steps_done, loss_total)`` runs after every optimizer step: the hook for
    checkpoints and stop requests.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        data: _Split,
        val: _Split,
        weights: torch.Tensor,
        env: DistEnv,
        global_batch: int,
        seed: int,
        bf16: bool = False,
    ) -> None:
        self.net, self.optimizer = net, optimizer
        self.after_step: Callable[[], None] = lambda: None  # the LR schedule's per-step hook
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
        order = torch.from_numpy(_order(data.n, data.block, self.seed, epoch))
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
        with torch.no_grad():
            for s in range(self.v0, self.v1, size):
                idx = torch.arange(s, min(s + size, self.v1), device=self.val.index_device)
                x, y = self.val.batch(idx)
                total[0] += self._loss_sum(x, y)
                total[1] += len(idx)
        total = distributed.all_reduce_mean(total)  # a ratio of means is the global mean
        return float(total[0] / total[1].clamp(min=1))


class _Run:
    """The state of a training run that is not the model: where it is, what it has seen.

    Together with model, optimizer and schedule this is a checkpoint's content.
    """

    def __init__(self) -> None:
        self.epoch, self.step = 1, 0  # the next step to run is ``step`` of ``epoch``
        self.partial: torch.Tensor | None = None  # loss sum of the epoch's steps so far
        self.epoch_lr: float | None = None
        self.epoch_seconds = 0.0
        self.history: list[dict[str, float]] = []
        self.best_loss, self.best_epoch, self.bad = math.inf, 0, 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in vars(self):
            setattr(self, k, state[k])


def train(
    model_name: str,
    model_cfg: dict[str, Any],
    train_cfg: dict[str, Any],
    seed: int,
    features_dir: str | Path,
    model_path: str | Path,
    history_path: str | Path,
    threads: int | None = None,
    checkpoint_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Train ``model_name`` on ``features_dir/{train,val}.zarr``; rank 0 writes the outputs.

    With ``checkpoint_dir``, checkpoints go there (see :mod:`hpcpipe.checkpoint`) and the run
    resumes from the newest one of the same identity. A stop request (SIGUSR1/SIGTERM) writes
    a checkpoint and raises :class:`~hpcpipe.checkpoint.TrainingStopped`.

    Returns a summary: model, seed, best_epoch, best_val_loss, epochs_run, stopped_early,
    seconds (wall, from the call), world_size, device, resumed_from (epoch, step or None),
    data_wait (share of the training time spent waiting for batches).
    """
    t_start = time.perf_counter()
    env = DistEnv.from_environ()
    alloc = allocation(threads)
    device_type = "cuda" if alloc.gpus > 0 and torch.cuda.is_available() else "cpu"
    deterministic = bool(train_cfg.get("deterministic", True))
    threads_here = threads_per_rank(env, alloc.cpus)
    main = env.rank == 0

    features_dir = Path(features_dir)
    train_ds, val_ds = _open_features(features_dir)
    need = sum(int(ds[v].nbytes) for ds in (train_ds, val_ds) for v in ("inputs", "targets"))
    in_memory = need <= IN_MEMORY_SHARE * alloc.memory_bytes
    if not in_memory and main:
        log.warning(
            "features need %.1f GB, more than %.0f%% of the allocation's %.1f GB: "
            "reading them chunk by chunk (slower; raise mem_mb of the train rule to avoid)",
            need / 1e9, 100 * IN_MEMORY_SHARE, alloc.memory_gb,
        )  # fmt: skip
    variables = decode_str(train_ds["variable"].values)
    leads = [int(v) for v in train_ds["lead"].values]
    channels = decode_str(train_ds["channel"].values)
    grid = (int(train_ds.sizes["lat"]), int(train_ds.sizes["lon"]))
    epochs, patience = int(train_cfg["epochs"]), int(train_cfg["patience"])
    batch_size = int(train_cfg["batch_size"])
    every = int(train_cfg.get("checkpoint_every", 0))
    if batch_size < env.world_size:
        raise ValueError(
            f"train.batch_size={batch_size} is smaller than the {env.world_size} ranks"
        )
    ckpts = None
    if checkpoint_dir is not None:
        identity = run_identity(model_name, model_cfg, train_cfg, seed, features_dir)
        ckpts = Checkpoints(checkpoint_dir, identity)

    with (
        _torch_settings(threads_here, seed, deterministic, device_type),
        distributed.init(env, device_type) as device,
        StopRequest() as stop,
    ):
        data, val = _Split(train_ds, in_memory, device), _Split(val_ds, in_memory, device)
        weights = _masked_weights(np.asarray(train_ds["mask"].values, bool), len(leads), device)

        torch.manual_seed(seed)  # identical initial weights on every rank and every rerun
        model = build_model(model_name, model_cfg, len(channels), len(leads) * len(variables), grid)
        model.output_shape = (len(leads), len(variables))
        model.to(device, memory_format=MEMORY_FORMAT)
        net: nn.Module = model
        if env.world_size > 1:
            ids = [device.index] if device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if train_cfg.get("compile", False):
            net = torch.compile(net)  # type: ignore[assignment]
        optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=float(train_cfg["lr"]),
            weight_decay=float(train_cfg.get("weight_decay", 0.0)),
        )
        bf16 = _precision(train_cfg, device)
        loop = _Loop(net, optimizer, data, val, weights, env, min(batch_size, data.n), seed, bf16)
        if main and loop.global_batch != batch_size:
            log.warning(
                "global batch %d instead of train.batch_size=%d (%d samples, %d ranks)",
                loop.global_batch, batch_size, data.n, env.world_size,
            )  # fmt: skip
        schedule = _Schedule(
            optimizer, str(train_cfg.get("lr_schedule", "cosine")), epochs, loop.steps, patience
        )
        loop.after_step = schedule.after_step
        run = _Run()
        steps_per_epoch = loop.steps
        resumed_from = None
        if ckpts is not None:
            resumed_from = _resume(ckpts, run, model, optimizer, schedule, device, main)
        if main:
            log.info(
                "%s seed %d: %d train / %d val samples, %d channels -> %d leads x %d variables "
                "on %s, %d parameters; %s x %d rank(s), %d thread(s); batch %d, %d steps/epoch; "
                "%s%s",
                model_name, seed, data.n, val.n, len(channels), len(leads), len(variables), grid,
                sum(p.numel() for p in model.parameters()), device, env.world_size,
                torch.get_num_threads(), loop.global_batch, loop.steps,
                "bf16 autocast" if bf16 else "fp32", ", compiled" if train_cfg.get("compile") else "",
            )  # fmt: skip

        def save(epoch: int, step: int, total: torch.Tensor) -> Path | None:
            """A checkpoint after ``step`` steps of ``epoch`` (collective; rank 0 writes)."""
            run.epoch, run.step = epoch, step
            run.partial = distributed.all_reduce_mean(total).cpu()
            run.epoch_seconds = time.perf_counter() - t_epoch
            if not main or ckpts is None:
                return None
            state = {
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "rng": _rng_state(),
                "run": run.state_dict(),
                "world_size": env.world_size,
            }
            path = ckpts.save(state, (epoch - 1) * steps_per_epoch + step)
            log.info("checkpoint: epoch %d step %d/%d -> %s", epoch, step, steps_per_epoch, path)
            return path

        agree = distributed.AnyRank()

        def on_step(epoch: int, step: int, total: torch.Tensor) -> None:
            stopping = agree.poll(stop.signum is not None)
            if stopping:
                signum = stop.signum or signal.SIGTERM  # a peer was asked; this rank was not
                path = save(epoch, step, total)
                requeued = (
                    main and signum == signal.SIGUSR1 and requeue_job(environment.slurm_job_id())
                )
                raise TrainingStopped(signum, path, requeued)
            if (
                ckpts is not None
                and every > 0
                and ((epoch - 1) * steps_per_epoch + step) % every == 0
            ):
                save(epoch, step, total)

        loop.on_step = on_step
        try:
            for epoch in range(run.epoch, epochs + 1):
                first, partial = (run.step, run.partial) if epoch == run.epoch else (0, None)
                t_epoch = time.perf_counter() - (run.epoch_seconds if first else 0.0)
                lr = (
                    run.epoch_lr
                    if first and run.epoch_lr is not None
                    else optimizer.param_groups[0]["lr"]
                )
                run.epoch, run.step, run.epoch_lr = epoch, 0, float(lr)
                wait0 = data.wait_s
                train_loss = loop.train_epoch(
                    epoch, f"{model_name} epoch {epoch}/{epochs} steps", first, partial
                )
                t_train = time.perf_counter() - t_epoch
                val_loss = loop.evaluate()
                schedule.after_epoch(val_loss)
                seconds = time.perf_counter() - t_epoch
                run.history.append(
                    dict(
                        zip(
                            HISTORY_COLUMNS,
                            (epoch, train_loss, val_loss, float(lr), seconds),
                            strict=True,
                        )
                    )
                )
                if not math.isfinite(val_loss):
                    raise FloatingPointError(
                        f"{model_name} seed {seed}: validation loss {val_loss} at epoch {epoch}; lower train.lr"
                    )
                improved = (
                    run.best_state is None
                    or val_loss < run.best_loss - MIN_REL_IMPROVEMENT * run.best_loss
                )
                if improved:
                    run.best_loss, run.best_epoch, run.bad = val_loss, epoch, 0
                    run.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    run.bad += 1
                run.epoch, run.step, run.partial, run.epoch_lr, run.epoch_seconds = (
                    epoch + 1,
                    0,
                    None,
                    None,
                    0.0,
                )
                if main:
                    log.info(
                        "%s seed %d epoch %d/%d: train %.5f val %.5f%s lr %.2e "
                        "(%.0f samples/s, data wait %.1f%%, %.2f s)",
                        model_name, seed, epoch, epochs, train_loss, val_loss, " *" if improved else "",
                        lr, (loop.steps - first) * loop.global_batch / max(t_train, 1e-9),
                        100 * (data.wait_s - wait0) / max(t_train, 1e-9), seconds,
                    )  # fmt: skip
                if run.bad >= patience:
                    if main:
                        log.info("early stop: no better validation loss for %d epochs", patience)
                    break
        finally:
            agree.close()
            # DDP's reducer must go before its process group, also when a stop request or an
            # error ends training: freed after it, gloo's destructor can wait for ever.
            loop.net = net = model
            gc.collect()

        assert run.best_state is not None
        model.load_state_dict(run.best_state)
        summary = {
            "model": model_name,
            "seed": seed,
            "best_epoch": run.best_epoch,
            "best_val_loss": run.best_loss,
            "epochs_run": len(run.history),
            "stopped_early": len(run.history) < epochs,
            "seconds": 0.0,
            "world_size": env.world_size,
            "device": str(device),
            "resumed_from": resumed_from,
            "data_wait": data.wait_s / max(time.perf_counter() - t_start, 1e-9),
        }
        if main:
            meta = {
                "in_channels": len(channels),
                "channels": channels,
                "variables": variables,
                "leads": leads,
                "grid": list(grid),
                "epoch": run.best_epoch,
                "val_loss": run.best_loss,
                "train_config": dict(train_cfg),
                "seed": seed,
            }
            write_text(history_path, _history_csv(run.history))
            # The model last: a model.pt always has its history beside it.
            with atomic_path(model_path) as tmp:
                torch.save(checkpoint(model, model_name, model_cfg, meta), tmp)
            if ckpts is not None:
                ckpts.clear()  # the outputs hold the result now
    summary["seconds"] = time.perf_counter() - t_start
    if main:
        log.info(
            "%s seed %d: best val %.5f at epoch %d of %d, %.1f s; wrote %s",
            model_name, seed, run.best_loss, run.best_epoch, len(run.history), summary["seconds"],
            model_path,
        )  # fmt: skip
    return summary


def _resume(
    ckpts: Checkpoints,
    run: _Run,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: _Schedule,
    device: torch.device,
    main: bool,
) -> tuple[int, int] | None:
    """Load the newest checkpoint of this run into everything; (epoch, step) or None."""
    found = ckpts.load_latest(map_location="cpu")
    if found is None:
        restarts = environment.restart_count()
        if restarts:
            raise CheckpointError(
                f"this SLURM job was requeued (restart {restarts}) to resume training, but "
                f"{ckpts.dir} holds no checkpoint: was it deleted, or is it on node-local "
                "storage? Keep .checkpoints on a filesystem all nodes share"
            )
        if main:
            others = ckpts.others()
            log.info(
                "no checkpoint of this run in %s: training from scratch%s",
                ckpts.dir,
                f" ({len(others)} other run(s) there, for other configs)" if others else "",
            )
        return None
    state, path = found
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    _set_rng_state(state["rng"])
    run.load_state_dict(state["run"])
    if run.best_state is not None:
        run.best_state = {k: v.to(device) for k, v in run.best_state.items()}
    if main:
        log.info(
            "resuming from %s: epoch %d, step %d (written with %d rank(s))",
            path, run.epoch, run.step, state["world_size"],
        )  # fmt: skip
    return run.epoch, run.step
