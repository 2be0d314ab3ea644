"""The feature stores as tensors: opened and checked, in memory or read chunk by chunk.

Also the epoch's sample order (a function of seed and epoch only, the same on every rank) and
the loss weights of the mask.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
import zarr

from hpcpipe.contracts import check_features
from hpcpipe.grid import kind as grid_kind
from hpcpipe.runtime.allocation import IN_MEMORY_SHARE, ON_GPU_SHARE, Allocation, memory_per_task
from hpcpipe.store import decode_str, open_store
from hpcpipe.train.loader import Prefetcher, ReadAhead

log = logging.getLogger(__name__)

# NHWC: oneDNN's CPU convolutions are 25-35% faster on these shapes (and GPUs prefer it too).
MEMORY_FORMAT = torch.channels_last
# Batches prepared ahead of the step (in a thread) when they come from the host or the store.
PREFETCH_DEPTH = 2
# Store chunks read at once, ahead of the batches, by a GPU rank streaming its features: one
# thread per CPU of the rank up to this (each holds one chunk more). A CPU rank reads with one:
# its cores run the training step, which is slower than one reader (scripts/bench io).
MAX_READ_THREADS = 4


def read_threads(device: torch.device, cpus: int) -> int:
    """Threads that read store chunks ahead for a rank on ``device`` with ``cpus`` CPUs."""
    return max(1, min(MAX_READ_THREADS, cpus)) if device.type == "cuda" else 1


# glibc's malloc gives each thread that allocates its own arena (up to 8 per core), and the
# prefetch thread's, zarr's and OpenMP's freed chunks and batches then stay in theirs: about
# 200 MB more peak memory when streaming (scripts/bench io). Two arenas keep it in bounds.
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # glibc's mallopt parameter number


def bound_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Limit glibc's malloc arenas for the threads started from now on (False elsewhere)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to bound
        return False


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device`` in the training memory format (asynchronous from pinned memory)."""
    return t.to(device, non_blocking=True).contiguous(memory_format=MEMORY_FORMAT)


def _read(da: xr.DataArray, rows: slice | None = None) -> np.ndarray:
    # Synchronous: two trainings side by side must not each start a Dask thread pool. (Per
    # call, not dask.config.set: that is global, and several read threads may call this.)
    part = da if rows is None else da.isel(sample=rows)
    return np.asarray(part.compute(scheduler="synchronous").values, dtype=np.float32)


class TensorSource:
    """One split's samples as tensors: in memory, or read chunk by chunk from the store.

    Targets are kept flat, ``(sample, lead * variable, lat, lon)``, lead-major like the model
    output, so the loss needs no reshape.
    """

    def __init__(
        self, ds: xr.Dataset, in_memory: bool, device: torch.device, read_threads: int = 1
    ) -> None:
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
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._zarr: dict[str, zarr.Array] = {}
        self.read_threads = read_threads
        self._ahead: ReadAhead[int, tuple[np.ndarray, np.ndarray]] | None = None
        self.wait_s = 0.0  # time the training loop waited for prefetched batches
        if in_memory:
            self.block = self.n
            x, y = self._load()
            self.x, self.y = to_device(x, self.home), to_device(y, self.home)
        else:
            # Out of core: samples are shuffled within store chunks (see sample_order), so a
            # batch touches one or two chunks and each chunk is read about once per epoch.
            self.block = int(ds.chunks["sample"][0])
            for name in ("inputs", "targets"):  # opened before the read threads share them
                self._rows(name, slice(0, 0))

    def _load(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Both arrays whole, channels_last, filled chunk by chunk: the peak is the result
        plus one chunk (a whole read, then a layout copy, would be 2-3x the features)."""
        x = torch.empty(tuple(self._ds["inputs"].shape), memory_format=MEMORY_FORMAT)
        n, leads, nvars, lat, lon = self._ds["targets"].shape
        y = torch.empty((n, leads * nvars, lat, lon), memory_format=MEMORY_FORMAT)
        chunks = self._ds["inputs"].chunks
        step = int(chunks[0][0]) if chunks else self.n
        for s0 in range(0, self.n, step):
            rows = slice(s0, min(self.n, s0 + step))
            x[rows] = torch.from_numpy(self._rows("inputs", rows))
            y[rows] = torch.from_numpy(self._rows("targets", rows)).reshape(y[rows].shape)
        return x, y

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
            x, y = self._gather_chunks(idx)
        if self.device.type == "cuda" and x.device.type == "cpu":
            x, y = x.pin_memory(), y.pin_memory()  # so that the copy to the GPU is asynchronous
        return x, y

    def _gather_chunks(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # NumPy's take: a plain copy of whole samples on this thread (torch's indexing splits
        # it over the OpenMP pool, which the training step is using; 10-50x slower then).
        ix = idx.numpy()
        chunk = ix // self.block
        first = int(chunk[0])
        if (chunk == first).all():  # the usual case: samples are shuffled within chunks
            ((cx, cy),) = self._chunks([first])
            local = ix - first * self.block
            xs, ys = np.take(cx, local, axis=0), np.take(cy, local, axis=0)
        else:
            xs = ys = None
            used = np.unique(chunk).tolist()
            for c, (cx, cy) in zip(used, self._chunks(used), strict=True):
                sel = np.flatnonzero(chunk == c)
                if xs is None or ys is None:
                    xs = np.empty((len(ix), *cx.shape[1:]), cx.dtype)
                    ys = np.empty((len(ix), *cy.shape[1:]), cy.dtype)
                xs[sel], ys[sel] = cx[ix[sel] - c * self.block], cy[ix[sel] - c * self.block]
            assert xs is not None and ys is not None
        # The inputs were kept NHWC: the batch is channels_last, as the in-memory path's.
        return torch.from_numpy(xs).permute(0, 3, 1, 2), torch.from_numpy(ys)

    def to_device(self, xy: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """A gathered batch on the training device (as it is if already there)."""
        x, y = xy
        if x.device == self.device:
            return x, y
        return to_device(x, self.device), to_device(y, self.device)

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
        if self.x is None:  # streamed: the epoch's chunks, in the order its batches use them
            indices = list(indices)
            used = (i.numpy() // self.block for i in indices)
            self._ahead = ReadAhead(
                (int(c) for cs in used for c in cs), self._chunk, self.read_threads
            )
        try:
            with Prefetcher(indices, self.gather, depth=PREFETCH_DEPTH) as ahead:
                try:
                    for xy in ahead:
                        yield self.to_device(xy)
                finally:
                    self.wait_s += ahead.wait_s
        finally:
            if self._ahead is not None:
                self._ahead.close()
                self._ahead = None

    def _chunks(self, cs: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Chunks ``cs`` of the store: read ahead in an epoch, else read here (two kept)."""
        if self._ahead is not None:
            return self._ahead.get(cs)
        out = []
        for c in cs:
            if c not in self._cache:
                if len(self._cache) >= 2:  # a batch spans at most two chunks
                    self._cache.pop(next(iter(self._cache)))
                self._cache[c] = self._chunk(c)
            out.append(self._cache[c])
        return out

    def _chunk(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        """Chunk ``c``: inputs NHWC (as the in-memory samples), targets flat."""
        rows = slice(c * self.block, min(self.n, (c + 1) * self.block))
        x, y = self._rows("inputs", rows), self._rows("targets", rows)
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1)), y.reshape(len(y), *self._flat)

    def _rows(self, name: str, rows: slice) -> np.ndarray:
        """Rows of one array, read straight from the Zarr store (no Dask graph per read)."""
        source = self._ds.encoding.get("source")
        if source is None:  # not opened from a store
            return _read(self._ds[name], rows)
        if name not in self._zarr:  # opened once: each open reads the array's metadata
            arr = zarr.open_group(source, mode="r")[name]
            assert isinstance(arr, zarr.Array)
            self._zarr[name] = arr
        return np.asarray(self._zarr[name][rows], dtype=np.float32)


def sample_order(n: int, block: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's sample order: the same on every rank (a function of seed and epoch only).

    With ``block >= n`` a full permutation; otherwise blocks in random order, each shuffled.
    """
    rng = np.random.default_rng([seed, epoch])
    if block >= n:
        return rng.permutation(n)
    starts = rng.permutation(np.arange(0, n, block))
    return np.concatenate([s + rng.permutation(min(block, n - s)) for s in starts])


def masked_weights(mask: np.ndarray, n_leads: int, device: torch.device) -> torch.Tensor:
    """Per-point loss weights (1, lead*variable, lat, lon): mask / valid points per sample.

    ``(weights * err**2).sum() / batch`` is then the MSE over valid points only.
    """
    m = np.broadcast_to(mask.astype(np.float32), (n_leads, *mask.shape))
    m = m.reshape(1, -1, *mask.shape[-2:])
    valid = float(m.sum())
    if valid == 0:
        raise ValueError("the features' mask has no valid points; nothing to train on")
    return to_device(torch.from_numpy(m / valid), device)


@dataclass
class Features:
    """The training and validation stores with what the model is built from."""

    train: xr.Dataset
    val: xr.Dataset
    in_memory: bool  # whether both splits are loaded whole (else read chunk by chunk)
    variables: list[str]
    leads: list[int]
    channels: list[str]
    grid: tuple[int, int]
    periodic: bool = True  # a global grid (circular padding in longitude)

    @property
    def out_channels(self) -> int:
        """The model's flat output channels: every (lead, variable)."""
        return len(self.leads) * len(self.variables)

    def tensors(
        self, device: torch.device, cpus: int = 1
    ) -> tuple[TensorSource, TensorSource, torch.Tensor]:
        """Training and validation samples for a rank on ``device`` with ``cpus`` CPUs, and the
        loss weights of the mask."""
        data = TensorSource(self.train, self.in_memory, device, read_threads(device, cpus))
        val = TensorSource(self.val, self.in_memory, device)
        mask = np.asarray(self.train["mask"].values, bool)
        return data, val, masked_weights(mask, len(self.leads), device)

    def describe(self, n_train: int, n_val: int) -> str:
        return (
            f"{n_train} train / {n_val} val samples, {len(self.channels)} channels -> "
            f"{len(self.leads)} leads x {len(self.variables)} variables on {self.grid}"
        )

    def model_meta(self) -> dict[str, Any]:
        """What model.pt records of the features (docs/data-contracts.md)."""
        return {
            "in_channels": len(self.channels),
            "channels": self.channels,
            "variables": self.variables,
            "leads": self.leads,
            "grid": list(self.grid),
            "periodic": self.periodic,
        }


@dataclass(frozen=True)
class FeatureStores:
    """Where the training and validation feature stores are (the train rule names both)."""

    train: Path
    val: Path

    @classmethod
    def of(cls, features: FeatureStores | str | os.PathLike[str]) -> FeatureStores:
        """``features`` as stores: given as such, or a directory with train.zarr and val.zarr."""
        if isinstance(features, FeatureStores):
            return features
        return cls(Path(features) / "train.zarr", Path(features) / "val.zarr")

    def items(self) -> tuple[tuple[str, Path], ...]:
        return (("train", self.train), ("val", self.val))


def open_features(stores: FeatureStores, alloc: Allocation, main: bool) -> Features:
    """Open and check the feature stores; in memory if they fit the allocation."""
    train_ds = open_store(stores.train, what="training features")
    val_ds = open_store(stores.val, what="validation features")
    check_features(train_ds, val_ds, stores.train.parent)
    need = sum(int(ds[v].nbytes) for ds in (train_ds, val_ds) for v in ("inputs", "targets"))
    # Every rank holds its own copy: the budget is this task's share of the node's memory.
    budget = IN_MEMORY_SHARE * memory_per_task(alloc)
    in_memory = need <= budget
    if not in_memory:
        bound_malloc_arenas()  # before the prefetch and OpenMP threads start
    if main:
        log.info(
            "features: %.2f GB, budget %.2f GB (%.0f%% of this task's memory): %s",
            need / 1e9, budget / 1e9, 100 * IN_MEMORY_SHARE,
            "in memory" if in_memory else "streamed from the store chunk by chunk",
        )  # fmt: skip
    return Features(
        train=train_ds,
        val=val_ds,
        in_memory=in_memory,
        variables=decode_str(train_ds["variable"].values),
        leads=[int(v) for v in train_ds["lead"].values],
        channels=decode_str(train_ds["channel"].values),
        grid=(int(train_ds.sizes["lat"]), int(train_ds.sizes["lon"])),
        periodic=grid_kind(train_ds) == "global",
    )
