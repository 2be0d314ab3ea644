"""Chunk sizes: every rule that decides how large a chunk (or a slice of one) is.

Every size is set by the array's shape alone, never by the machine, so chunk boundaries, and
with them the order of floating-point sums, are the same on a laptop and on a cluster: results
are bit-identical whatever the number of workers. Stores are chunked along time (samples for
features) and hold whole fields per chunk.
"""

from __future__ import annotations

from typing import Any

MiB = 2**20
# Time chunks of the raw and preprocessed stores (and the generator's blocks).
TARGET_CHUNK_BYTES = 128 * MiB
# Mid-size arrays (up to MIN_CHUNKS x TARGET_CHUNK_BYTES) get smaller chunks, down to
# MIN_CHUNK_BYTES, so that there are about MIN_CHUNKS of them: every worker has work, and one
# chunk (with the few temporaries a task makes of it) stays small next to a worker's memory.
# Small arrays (under MIN_CHUNK_BYTES, like the default dataset) stay one chunk.
MIN_CHUNK_BYTES = 32 * MiB
MIN_CHUNKS = 64
# Feature stores: training reads a random mini-batch from one or two sample chunks.
FEATURE_CHUNK_BYTES = 64 * MiB
# Thresholds: the quantile needs a point's whole time series, so chunks are rows of latitude.
THRESHOLD_CHUNK_BYTES = 64 * MiB
# Float64 temporaries inside one task are made slice by slice of time steps of this size.
SLICE_BYTES = 8 * MiB
FLOAT32 = 4


def chunk_length(n: int, bytes_per_item: int, target_bytes: int = TARGET_CHUNK_BYTES) -> int:
    """How many items along one axis make a chunk of about ``target_bytes`` (at least 1, at most n).

    Arrays of up to ``MIN_CHUNKS`` x ``target_bytes`` get ``MIN_CHUNKS`` chunks of at least
    ``MIN_CHUNK_BYTES``.
    """
    per = max(1, bytes_per_item)
    target = max(min(target_bytes, MIN_CHUNK_BYTES), min(target_bytes, n * per // MIN_CHUNKS))
    return int(max(1, min(n, target // per)))


def bytes_per_step(n_vars: int, n_lat: int, n_lon: int) -> int:
    """Bytes of one time step of all variables on the grid, in float32 (as stored)."""
    return FLOAT32 * max(1, n_vars) * n_lat * n_lon


def time_chunk_length(n_time: int, step_bytes: int) -> int:
    """Time steps per chunk of a (time, ...) store whose time step takes ``step_bytes``."""
    return chunk_length(n_time, step_bytes)


def raw_chunks(ds: Any) -> dict[str, int]:
    """Chunks of an ingested raw store (time, lat, lon): time chunks of whole fields."""
    step = bytes_per_step(len(ds.data_vars), ds.sizes["lat"], ds.sizes["lon"])
    return {
        "time": time_chunk_length(ds.sizes["time"], step),
        "lat": ds.sizes["lat"],
        "lon": ds.sizes["lon"],
    }


def generated_chunk_days(
    n_lat: int,
    n_lon: int,
    n_vars: int,
    block_days: int,
    target_bytes: int = TARGET_CHUNK_BYTES,
    n_days: int | None = None,
) -> int:
    """Days per time chunk of the built-in dataset, so that one chunk is ~``target_bytes``.

    Rounded down to whole generation blocks of ``block_days`` when a chunk holds more than
    one (so no block is computed twice), and never more than ``n_days``.
    """
    per_day = bytes_per_step(n_vars, n_lat, n_lon)
    days = chunk_length(n_days if n_days is not None else 2**62, per_day, target_bytes)
    if days >= block_days and (n_days is None or days < n_days):
        days -= days % block_days
    return int(days)


def axis_chunks(n: int, length: int) -> tuple[int, ...]:
    """Dask chunks along an axis of ``n`` items: chunks of ``length`` (at most n), the rest last."""
    length = min(int(length), n)
    full, rest = divmod(n, length)
    return (length,) * full + ((rest,) if rest else ())


def preprocessed_chunks(ds: Any) -> dict[str, int]:
    """Chunks of the preprocessed store: the canonical time blocks of its anomaly."""
    _, n_vars, n_lat, n_lon = ds["anomaly"].shape
    return {"time": time_chunk_length(ds.sizes["time"], bytes_per_step(n_vars, n_lat, n_lon))}


def feature_chunks(ds: Any) -> dict[str, int]:
    """Chunks of a feature store: along samples only, so a batch is a contiguous slice."""
    per_sample = int(ds["inputs"][0].nbytes + ds["targets"][0].nbytes)
    return {"sample": chunk_length(ds.sizes["sample"], per_sample, FEATURE_CHUNK_BYTES)}


def threshold_rows(n_time: int, n_vars: int, n_lon: int) -> int:
    """Latitude rows per chunk of the thresholds' input: whole time series, ~64 MB."""
    return max(1, int(THRESHOLD_CHUNK_BYTES // max(1, FLOAT32 * n_time * n_vars * n_lon)))


def threshold_chunks(ds: Any) -> dict[str, int]:
    """Chunks of the thresholds store (variable, lat, lon): one chunk."""
    return {"lat": ds.sizes["lat"]}


def slice_steps(step_items: int) -> int:
    """Time steps per slice when a task makes float64 temporaries of steps of ``step_items``."""
    return max(1, SLICE_BYTES // max(1, 8 * step_items))
