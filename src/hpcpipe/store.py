"""Zarr stores: the one place that opens and writes them (format, codec, checksums, atomicity).

How large the chunks are is decided in :mod:`hpcpipe.chunking`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import time
import warnings
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr
from numcodecs import Blosc
from zarr.storage import LocalStore

from hpcpipe.atomic import atomic_path

# Zarr format 2: consolidated metadata and string coordinates are stable there, and every
# zarr-python (2 and 3) and xarray version reads it.
ZARR_FORMAT = 2
# Blosc lz4 with byte shuffle (zarr-python 2's default) for numeric arrays: on float32 fields it
# writes about 4x and reads about 1.5x faster than zarr 3's Zstd default, and compresses as well
# or better (scripts/bench dask measures the store's throughput).
COMPRESSOR = Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE)

# The zarrs codec pipeline (Rust, parallel over chunks and within them) writes the same bytes
# as zarr-python's own, faster on these stores (scripts/bench io); zarr-python's where zarrs is
# not installed (a conda env without it) and for what zarrs does not support (string arrays,
# which it hands back to zarr-python with a warning). Set in the environment too, so that Dask
# worker processes started from here use it as well.
CODEC_PIPELINE = (
    "zarrs.ZarrsCodecPipeline"
    if importlib.util.find_spec("zarrs") is not None
    else "zarr.core.codec_pipeline.BatchedCodecPipeline"
)
os.environ.setdefault("ZARR_CODEC_PIPELINE__PATH", CODEC_PIPELINE)
zarr.config.set({"codec_pipeline.path": os.environ["ZARR_CODEC_PIPELINE__PATH"]})
warnings.filterwarnings("ignore", message="Array is unsupported by ZarrsCodecPipeline")


def encoding(ds: xr.Dataset) -> dict[str, dict[str, Any]]:
    """The Zarr encoding of every numeric variable of ``ds`` (strings keep zarr's own)."""
    return {
        name: {"compressors": [COMPRESSOR]}
        for name, var in ds.variables.items()
        if var.dtype.kind in "biufc"
    }


class StoreError(RuntimeError):
    """A store is missing or unreadable; the message names the path."""


# Checksums of the stores this process wrote, by absolute path (hpcpipe.provenance reads them),
# and the seconds spent computing them (part of the cost of provenance).
WRITTEN: dict[str, str] = {}
CHECKSUM_SECONDS = [0.0]


def combine_checksums(crcs: Mapping[str, int]) -> str:
    """One checksum of a store from the CRC32 of each of its files (keys: relative paths)."""
    h = hashlib.sha256()
    for key in sorted(crcs):
        h.update(f"{key}:{crcs[key]:08x}\n".encode())
    return "dir-crc32-sha256:" + h.hexdigest()


class ChecksumStore(LocalStore):
    """A LocalStore that records the CRC32 of every chunk as it is written.

    The store's checksum thus costs no second read of the data (provenance manifests).
    """

    def __init__(
        self, root: Path | str, *, read_only: bool = False, crcs: dict[str, int] | None = None
    ) -> None:
        super().__init__(root, read_only=read_only)
        self.crcs: dict[str, int] = {} if crcs is None else crcs

    def with_read_only(self, read_only: bool = False) -> ChecksumStore:
        return type(self)(self.root, read_only=read_only, crcs=self.crcs)

    def _record(self, key: str, value: Any) -> None:
        t0 = time.perf_counter()
        self.crcs[key] = zlib.crc32(value.as_numpy_array())  # the buffer itself: no copy
        CHECKSUM_SECONDS[0] += time.perf_counter() - t0

    async def _set(self, key: str, value: Any, exclusive: bool = False) -> None:
        await super()._set(key, value, exclusive=exclusive)
        self._record(key, value)

    def set_sync(self, key: str, value: Any) -> None:
        super().set_sync(key, value)
        self._record(key, value)

    async def delete(self, key: str) -> None:
        await super().delete(key)
        self.crcs.pop(key, None)


def open_store(path: str | os.PathLike[str], what: str = "store") -> xr.Dataset:
    """Open a Zarr store lazily (Dask-backed), with an error that names the path."""
    p = Path(path)
    if not p.exists():
        raise StoreError(f"{what} not found: {p}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=RuntimeWarning)
            return xr.open_zarr(p, consolidated=None, chunks={})
    except Exception as exc:  # zarr raises many types for a damaged store
        raise StoreError(f"cannot read {what} {p}: {exc}") from exc


def write_store(ds: xr.Dataset, path: str | os.PathLike[str], chunks: dict[str, int]) -> None:
    """Write ``ds`` to ``path`` atomically with the given chunk lengths per dimension.

    The data stay lazy until Dask writes each chunk, so nothing is gathered into memory.
    """
    # Dims not named in ``chunks`` are stored whole; Dask chunks then match Zarr chunks,
    # which makes parallel writes safe.
    sizes = {d: max(1, min(chunks.get(d, n), n)) for d, n in ds.sizes.items()}
    lazy = any(var.chunks is not None for var in ds.variables.values())
    # All in memory: zarr chunks the arrays as it writes them (Dask would first hash and copy).
    ds = _chunked(ds, sizes) if lazy else ds.copy()
    enc = encoding(ds)
    for name, var in ds.variables.items():
        var.encoding = {}
        if not lazy and var.ndim:
            enc.setdefault(name, {})["chunks"] = tuple(sizes[d] for d in var.dims)
    with atomic_path(path) as tmp:
        store = ChecksumStore(tmp)
        ds.to_zarr(
            store, mode="w", consolidated=True, zarr_format=ZARR_FORMAT, compute=True, encoding=enc
        )
    WRITTEN[os.path.abspath(path)] = combine_checksums(store.crcs)


def _chunked(ds: xr.Dataset, sizes: dict[str, int]) -> xr.Dataset:
    """``ds.chunk(sizes)`` less its tokenizing of the index variables, which it never chunks:
    it pickles each to name it, about 1 s per 100,000 cftime dates (a time index of
    ``noleap`` or ``360_day`` model output)."""
    out = ds.copy(deep=False)
    for name, var in out.variables.items():
        if var.ndim and name not in ds.indexes:  # as chunk(): scalars stay as they are
            var.data = var.chunk({d: sizes[d] for d in var.dims}).data
    return out


def write_store_blocks(
    template: xr.Dataset,
    path: str | os.PathLike[str],
    dim: str,
    blocks: Iterable[xr.Dataset],
) -> None:
    """Write a store whose data variables arrive block by block along ``dim``, atomically.

    ``template``: the whole store's coordinates and attributes, its data variables lazy (Dask;
    never computed: only their shapes and dtypes are used). ``blocks``: consecutive slices of
    the data variables along ``dim``, each as long as the template's chunk along ``dim`` (the
    last may be shorter), so only one block is in memory at once (predictions made chunk by
    chunk). Everything else as :func:`write_store`.
    """
    names = list(template.data_vars)
    enc = encoding(template)
    for var in template.variables.values():
        var.encoding = {}
    with atomic_path(path) as tmp:
        store = ChecksumStore(tmp)
        template.to_zarr(
            store, mode="w", consolidated=True, zarr_format=ZARR_FORMAT, compute=False, encoding=enc
        )
        start = 0
        for block in blocks:
            n = block.sizes[dim]
            part = block[names].drop_vars(list(block[names].coords))
            part.to_zarr(store, region={dim: slice(start, start + n)}, zarr_format=ZARR_FORMAT)
            start += n
        if start != template.sizes[dim]:
            raise ValueError(f"{path}: blocks cover {start} of {template.sizes[dim]} along {dim}")
    WRITTEN[os.path.abspath(path)] = combine_checksums(store.crcs)


def decode_str(values: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(values).ravel()]
