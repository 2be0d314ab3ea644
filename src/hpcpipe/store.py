"""Zarr stores: the one place that opens and writes them (format, chunking, atomicity)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from hpcpipe.atomic import atomic_path

# Zarr format 2: consolidated metadata and string coordinates are stable there, and every
# zarr-python (2 and 3) and xarray version reads it.
ZARR_FORMAT = 2
TARGET_CHUNK_BYTES = 128 * 2**20


class StoreError(RuntimeError):
    """A store is missing or unreadable; the message names the path."""


def chunk_length(n: int, bytes_per_item: int, target_bytes: int = TARGET_CHUNK_BYTES) -> int:
    """How many items along one axis make a chunk of about ``target_bytes`` (at least 1, at most n)."""
    return int(max(1, min(n, target_bytes // max(1, bytes_per_item))))


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
    ds = ds.chunk({d: min(chunks.get(d, n), n) for d, n in ds.sizes.items()})
    for var in ds.variables.values():
        var.encoding = {}
    with atomic_path(path) as tmp:
        ds.to_zarr(tmp, mode="w", consolidated=True, zarr_format=ZARR_FORMAT, compute=True)


def decode_str(values: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(values).ravel()]
