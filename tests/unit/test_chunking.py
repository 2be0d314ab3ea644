"""The chunk-size rules (bit-identity depends on them): sizes from the shape alone."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from hpcpipe import chunking as c

MiB = 2**20


@pytest.mark.parametrize(
    ("n", "per", "expected"),
    [
        (1096, 4 * 2 * 32 * 64, 1096),  # the default dataset (17 MB): one chunk
        (10, 10 * MiB, 3),  # 100 MB: at least 32 MB per chunk
        (100_000, 1 * MiB, 128),  # large: 128 MB chunks
        (5, 1000 * MiB, 1),  # one item over the target: one item per chunk
        (0, 4, 1),  # never below one
    ],
)
def test_chunk_length(n: int, per: int, expected: int):
    assert c.chunk_length(n, per) == expected


def test_mid_size_arrays_get_min_chunks_chunks():
    # 64 chunks of 64 MB for a 4 GB array: every worker has work.
    per = MiB
    n = 4096
    length = c.chunk_length(n, per)
    assert length * per == 64 * MiB
    assert -(-n // length) == c.MIN_CHUNKS


def test_chunk_length_is_bounded_by_the_targets():
    for n, per in [(10**6, 16_384), (777, 3 * MiB), (50_000, 123_456)]:
        length = c.chunk_length(n, per)
        assert 1 <= length <= n
        assert length * per <= c.TARGET_CHUNK_BYTES
        if length < n:
            assert length * per >= min(c.MIN_CHUNK_BYTES, c.TARGET_CHUNK_BYTES) - per


def test_store_chunks_follow_the_shape_only():
    ds = xr.Dataset(
        {v: (("time", "lat", "lon"), np.zeros((40_000, 64, 128), np.float32)) for v in "ab"},
    )
    chunks = c.raw_chunks(ds)
    assert chunks["lat"] == 64 and chunks["lon"] == 128
    step = c.bytes_per_step(2, 64, 128)
    assert step == 2 * 4 * 64 * 128
    assert chunks["time"] == c.chunk_length(40_000, step)
    assert c.generated_chunk_days(64, 128, 2, 32, n_days=40_000) % 32 == 0


def test_slices_and_threshold_rows_stay_small():
    assert c.slice_steps(1) * 8 <= c.SLICE_BYTES
    assert c.slice_steps(10**9) == 1
    rows = c.threshold_rows(1000, 2, 360)  # 2.9 MB per row
    assert rows == 23 and rows * 4 * 1000 * 2 * 360 <= c.THRESHOLD_CHUNK_BYTES
    assert c.threshold_rows(10**9, 10, 10**6) == 1  # at least one row
