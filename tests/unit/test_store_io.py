"""The stores' bytes and values do not depend on the codec pipeline (zarrs or zarr-python)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from hpcpipe.store import CODEC_PIPELINE, WRITTEN, open_store, write_store

PIPELINES = ["zarr.core.codec_pipeline.BatchedCodecPipeline", "zarrs.ZarrsCodecPipeline"]


def files(root: Path) -> dict[str, bytes]:
    return {
        str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()
    }


def test_zarrs_is_the_pipeline_in_use():
    assert CODEC_PIPELINE == "zarrs.ZarrsCodecPipeline"
    assert zarr.config.get("codec_pipeline.path") == CODEC_PIPELINE


@pytest.mark.parametrize("lazy", [False, True])
def test_same_bytes_and_values_with_either_pipeline(tmp_path: Path, lazy: bool):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 3, 4, 5)).astype(np.float32)
    ds = xr.Dataset(
        {"inputs": (("sample", "channel", "lat", "lon"), x)},
        coords={"sample": np.arange(10), "channel": ["a", "bb", "ccc"]},
    )
    if lazy:
        ds = ds.chunk({"sample": 4})
    out = {}
    for pipeline in PIPELINES:
        path = tmp_path / f"{pipeline.split('.')[0]}.zarr"
        with zarr.config.set({"codec_pipeline.path": pipeline}):
            write_store(ds, path, {"sample": 4})
            back = open_store(path).load()
        np.testing.assert_array_equal(back["inputs"].values, x)
        assert list(back["channel"].values) == ["a", "bb", "ccc"]
        out[pipeline] = (files(path), WRITTEN[os.path.abspath(path)])
    (a, crc_a), (b, crc_b) = out.values()
    assert a.keys() == b.keys() and len(a) > 4
    assert [k for k in a if a[k] != b[k]] == []
    assert crc_a == crc_b


def _features(path: Path, n: int = 20) -> xr.Dataset:
    rng = np.random.default_rng(1)
    ds = xr.Dataset(
        {
            "inputs": (("sample", "channel", "lat", "lon"), rng.standard_normal((n, 3, 4, 6))),
            "targets": (
                ("sample", "lead", "variable", "lat", "lon"),
                rng.standard_normal((n, 2, 2, 4, 6)),
            ),
        },
        coords={"sample": np.arange(n)},
    ).astype(np.float32)
    write_store(ds, path, {"sample": 6})
    return open_store(path)


def test_streamed_batches_are_the_in_memory_batches(tmp_path: Path):
    import torch

    from hpcpipe.train.data import TensorSource, sample_order

    ds = _features(tmp_path / "f.zarr")
    cpu = torch.device("cpu")
    mem, disk = TensorSource(ds, True, cpu), TensorSource(ds, False, cpu)
    assert disk.block == 6 and mem.block == 20
    order = torch.from_numpy(sample_order(disk.n, disk.block, 0, 3))
    # batches within one chunk, across two, and an arbitrary set across all of them
    for idx in [*order.split(4), torch.tensor([19, 0, 7, 13, 1, 6])]:
        (xm, ym), (xd, yd) = mem.batch(idx), disk.batch(idx)
        assert torch.equal(xm, xd) and torch.equal(ym, yd)
        assert xd.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("threads", [1, 3])
def test_streamed_epochs_read_ahead_give_the_in_memory_batches(tmp_path: Path, threads: int):
    import torch

    from hpcpipe.train.data import TensorSource, sample_order

    ds = _features(tmp_path / "f.zarr", n=50)
    cpu = torch.device("cpu")
    mem, disk = TensorSource(ds, True, cpu), TensorSource(ds, False, cpu, read_threads=threads)
    order = torch.from_numpy(sample_order(disk.n, disk.block, 0, 1))
    # batches within a chunk and across two (4), and across several chunks (13 > 6)
    for size in (4, 13):
        got = list(disk.batches(order.split(size)))
        assert disk._ahead is None  # the epoch's read threads stopped with it
        want = [mem.batch(idx) for idx in order.split(size)]
        assert len(got) == len(want)
        for (xd, yd), (xm, ym) in zip(got, want, strict=True):
            assert torch.equal(xd, xm) and torch.equal(yd, ym)
            assert xd.is_contiguous(memory_format=torch.channels_last)


def test_read_ahead_reads_in_order_within_its_bound_and_raises_a_read_error():
    import threading

    from hpcpipe.train.loader import ReadAhead

    lock = threading.Lock()
    live: set[int] = set()
    started: list[int] = []
    peak = 0

    def read(k: int) -> int:
        nonlocal peak
        with lock:
            started.append(k)
            live.add(k)
            peak = max(peak, len(live))
        return k * 10

    order = [5, 5, 2, 9, 7, 1, 3]
    ahead = ReadAhead(order, read, threads=2)
    try:
        for keys in ([5], [5, 2], [2], [9], [7, 1], [3]):
            assert ahead.get(keys) == [k * 10 for k in keys]
            with lock:  # what is held: this request's keys and at most 2 ahead
                live &= set(ahead._futures)
                assert len(ahead._futures) <= len(keys) + 2, ahead._futures
        assert ahead.get([9]) == [90]  # released before, asked for again: read again
    finally:
        ahead.close()
    assert started[:6] == [5, 2, 9, 7, 1, 3] and started[6:] == [9]
    assert peak <= 4

    def fails(k: int) -> int:
        raise OSError(f"chunk {k} unreadable")

    broken = ReadAhead([0, 1], fails, threads=1)
    with pytest.raises(OSError, match="chunk 0 unreadable"):
        broken.get([0])
    broken.close()
