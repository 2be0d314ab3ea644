"""Training of one model for one seed: single process, or DDP with one rank per GPU/task.

The global batch size, learning rate and sample order depend only on the config and the seed,
never on the number of ranks: every rank draws the same seeded permutation per epoch and
takes its own slice of each global batch; DDP averages the gradients. Rank 0 writes
``model.pt`` (the best epoch's weights) and ``history.csv``, both atomically.
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
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dask
import numpy as np
import torch
import xarray as xr
from torch import nn

from hpcpipe import distributed
from hpcpipe.atomic import atomic_path, write_text
from hpcpipe.logs import progress
from hpcpipe.models import build_model, checkpoint
from hpcpipe.resources import allocation
from hpcpipe.store import decode_str, open_store

log = logging.getLogger("hpcpipe.train")

HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "lr", "seconds")
# Improvements smaller than this (relative) do not reset early stopping (as ReduceLROnPlateau).
MIN_REL_IMPROVEMENT = 1e-4
# Load the features into memory when they take at most this share of the allocation.
IN_MEMORY_SHARE = 0.5
# NHWC: oneDNN's CPU convolutions are 25-35% faster on these shapes (and GPUs prefer it too).
MEMORY_FORMAT = torch.channels_last


# On a GPU, features up to this share of its memory live there (no host-device copies).
ON_GPU_SHARE = 0.25


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

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and flat targets of the samples ``idx``, on the training device."""
        if self.x is not None and self.y is not None:
            x, y = self.x[idx], self.y[idx]  # advanced indexing keeps channels_last
            return (
                (x, y) if self.home == self.device else (_to(x, self.device), _to(y, self.device))
            )
        chunk = torch.div(idx, self.block, rounding_mode="floor")
        x = y = None
        for c in torch.unique(chunk).tolist():
            sel = (chunk == c).nonzero().squeeze(1)
            cx, cy = self._chunk(c)
            local = idx[sel] - c * self.block
            if x is None or y is None:
                x = cx.new_empty((len(idx), *cx.shape[1:]))
                y = cy.new_empty((len(idx), *cy.shape[1:]))
            x[sel], y[sel] = cx[local], cy[local]
        assert x is not None and y is not None
        return _to(x, self.device), _to(y, self.device)

    def _chunk(self, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        if c not in self._cache:
            if len(self._cache) >= 2:  # a batch spans at most two chunks
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


def _scheduler(
    optimizer: torch.optim.Optimizer, kind: str, epochs: int, steps_per_epoch: int, patience: int
) -> tuple[Callable[[], None], Callable[[float], None]]:
    """The LR schedule as two hooks: after each step, and after each epoch (with val loss)."""
    if kind == "cosine":
        total = max(1, epochs * steps_per_epoch)  # per step: smooth even over few epochs
        sched = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda t: 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))
        )
        return sched.step, lambda _val: None
    if kind == "plateau":
        # Halve well before early stopping gives up, so the lower LR gets its chance.
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=0.5, patience=max(1, patience // 2)
        )
        return lambda: None, plateau.step
    if kind == "constant":
        return lambda: None, lambda _val: None
    raise ValueError(f"train.lr_schedule must be cosine, plateau or constant, got {kind!r}")


def _open_features(features_dir: Path) -> tuple[xr.Dataset, xr.Dataset]:
    train_ds = open_store(features_dir / "train.zarr", what="training features")
    val_ds = open_store(features_dir / "val.zarr", what="validation features")
    for name in ("inputs", "targets", "mask"):
        if name not in train_ds or name not in val_ds:
            raise ValueError(f"features in {features_dir} lack {name!r} (docs/data-contracts.md)")
    for coord in ("channel", "lead", "variable"):
        if decode_str(train_ds[coord].values) != decode_str(val_ds[coord].values):
            raise ValueError(f"{features_dir}: train.zarr and val.zarr differ in {coord!r}")
    if train_ds["inputs"].shape[-2:] != val_ds["inputs"].shape[-2:]:
        raise ValueError(f"{features_dir}: train.zarr and val.zarr have different grids")
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


class _Loop:
    """One rank's share of the epochs: its slice of each global batch, its validation shard."""

    def __init__(
        self,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        data: _Split,
        val: _Split,
        weights: torch.Tensor,
        env: distributed.DistEnv,
        global_batch: int,
        seed: int,
    ) -> None:
        self.net, self.optimizer = net, optimizer
        self.after_step: Callable[[], None] = lambda: None  # the LR schedule's per-step hook
        self.data, self.val, self.weights = data, val, weights
        self.rank, self.world = env.rank, env.world_size
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
        # Masked MSE summed over the batch. A bf16 torch.autocast would wrap this forward.
        return ((self.net(x) - y).square() * self.weights).sum()

    def train_epoch(self, epoch: int, what: str) -> float:
        """One epoch of optimisation; returns the mean training loss over all ranks."""
        data = self.data
        order = torch.from_numpy(_order(data.n, data.block, self.seed, epoch))
        order = order.to(data.index_device)
        self.net.train()
        total = torch.zeros((), dtype=torch.float64, device=data.device)
        steps: Iterator[int] = iter(range(self.steps))
        if self.rank == 0:
            steps = progress(steps, None, what, every_s=30)  # speaks only during long epochs
        for step in steps:
            start = step * self.global_batch + self.rank * self.local_batch
            x, y = data.batch(order[start : start + self.local_batch])
            loss = self._loss_sum(x, y) / len(x)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.after_step()
            total += loss.detach()  # stays on the device: no host sync per step
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


def train(
    model_name: str,
    model_cfg: dict[str, Any],
    train_cfg: dict[str, Any],
    seed: int,
    features_dir: str | Path,
    model_path: str | Path,
    history_path: str | Path,
    threads: int | None = None,
) -> dict[str, Any]:
    """Train ``model_name`` on ``features_dir/{train,val}.zarr``; rank 0 writes the outputs.

    Returns a summary: model, seed, best_epoch, best_val_loss, epochs_run, stopped_early,
    seconds (wall, from the call), world_size, device.
    """
    t_start = time.perf_counter()
    env = distributed.DistEnv.from_environ()
    alloc = allocation(threads)
    device_type = "cuda" if alloc.gpus > 0 and torch.cuda.is_available() else "cpu"
    deterministic = bool(train_cfg.get("deterministic", True))
    threads_here = distributed.threads_per_rank(env, alloc.cpus)
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
    if batch_size < env.world_size:
        raise ValueError(
            f"train.batch_size={batch_size} is smaller than the {env.world_size} ranks"
        )

    with (
        _torch_settings(threads_here, seed, deterministic, device_type),
        distributed.init(env, device_type) as device,
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
        optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=float(train_cfg["lr"]),
            weight_decay=float(train_cfg.get("weight_decay", 0.0)),
        )
        loop = _Loop(net, optimizer, data, val, weights, env, min(batch_size, data.n), seed)
        if main and loop.global_batch != batch_size:
            log.warning(
                "global batch %d instead of train.batch_size=%d (%d samples, %d ranks)",
                loop.global_batch, batch_size, data.n, env.world_size,
            )  # fmt: skip
        schedule = str(train_cfg.get("lr_schedule", "cosine"))
        loop.after_step, after_epoch = _scheduler(optimizer, schedule, epochs, loop.steps, patience)
        if main:
            log.info(
                "%s seed %d: %d train / %d val samples, %d channels -> %d leads x %d variables "
                "on %s, %d parameters; %s x %d rank(s), %d thread(s); batch %d, %d steps/epoch",
                model_name, seed, data.n, val.n, len(channels), len(leads), len(variables), grid,
                sum(p.numel() for p in model.parameters()), device, env.world_size,
                torch.get_num_threads(), loop.global_batch, loop.steps,
            )  # fmt: skip

        history: list[dict[str, float]] = []
        best_loss, best_epoch, best_state, bad = math.inf, 0, None, 0
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            lr = float(optimizer.param_groups[0]["lr"])
            train_loss = loop.train_epoch(epoch, f"{model_name} epoch {epoch}/{epochs} steps")
            t_train = time.perf_counter() - t0
            val_loss = loop.evaluate()
            after_epoch(val_loss)
            seconds = time.perf_counter() - t0
            history.append(
                dict(zip(HISTORY_COLUMNS, (epoch, train_loss, val_loss, lr, seconds), strict=True))
            )
            if not math.isfinite(val_loss):
                raise FloatingPointError(
                    f"{model_name} seed {seed}: validation loss {val_loss} at epoch {epoch}; lower train.lr"
                )
            improved = best_state is None or val_loss < best_loss - MIN_REL_IMPROVEMENT * best_loss
            if improved:
                best_loss, best_epoch, bad = val_loss, epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad += 1
            if main:
                log.info(
                    "%s seed %d epoch %d/%d: train %.5f val %.5f%s lr %.2e (%.0f samples/s, %.2f s)",
                    model_name, seed, epoch, epochs, train_loss, val_loss, " *" if improved else "",
                    lr, loop.steps * loop.global_batch / max(t_train, 1e-9), seconds,
                )  # fmt: skip
            if bad >= patience:
                if main:
                    log.info("early stop: no better validation loss for %d epochs", patience)
                break

        assert best_state is not None
        model.load_state_dict(best_state)
        summary = {
            "model": model_name,
            "seed": seed,
            "best_epoch": best_epoch,
            "best_val_loss": best_loss,
            "epochs_run": len(history),
            "stopped_early": len(history) < epochs,
            "seconds": 0.0,
            "world_size": env.world_size,
            "device": str(device),
        }
        if main:
            meta = {
                "in_channels": len(channels),
                "channels": channels,
                "variables": variables,
                "leads": leads,
                "grid": list(grid),
                "epoch": best_epoch,
                "val_loss": best_loss,
                "train_config": dict(train_cfg),
                "seed": seed,
            }
            write_text(history_path, _history_csv(history))
            # The model last: a model.pt always has its history beside it.
            with atomic_path(model_path) as tmp:
                torch.save(checkpoint(model, model_name, model_cfg, meta), tmp)
        # DDP's reducer must go before its process group: freed after it, gloo's destructor
        # can wait for ever on its worker threads (seen with 2 CPU ranks under load).
        del loop, net
        gc.collect()
    summary["seconds"] = time.perf_counter() - t_start
    if main:
        log.info(
            "%s seed %d: best val %.5f at epoch %d of %d, %.1f s; wrote %s",
            model_name, seed, best_loss, best_epoch, len(history), summary["seconds"], model_path,
        )  # fmt: skip
    return summary
