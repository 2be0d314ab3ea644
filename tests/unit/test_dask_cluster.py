"""The Dask runtime: every mode that runs on one machine, its errors, and out-of-core work.

Results must be identical (bitwise) to preprocess on in-memory NumPy arrays whatever the mode
(the canonical blocks fix the order of every sum), and equal, within float32 tolerances, to the
independent reference (testdata.reference_preprocess). SLURM modes: tests/slurm/test_dask_slurm.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from testdata import PREPROCESS_PARAMS as PARAMS
from testdata import assert_matches_reference, lazy_raw, make_raw, reference_preprocess

from hpcpipe import chunking
from hpcpipe import preprocess as pp
from hpcpipe.config import load_schema
from hpcpipe.runtime.allocation import Allocation
from hpcpipe.runtime.dask import (
    DaskClusterError,
    DaskSettings,
    JobqueueSettings,
    dask_runtime,
    serve_allocation_worker,
)
from hpcpipe.runtime.dask.jobqueue import slurm_cluster_kwargs
from hpcpipe.store import open_store, write_store

ALLOC = Allocation(cpus=2, memory_bytes=2 * 2**30, gpus=0, in_slurm=False)


@pytest.fixture(scope="module")
def raw_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dask") / "raw.zarr"
    write_store(make_raw(), path, {"time": 100})  # several chunks on disk
    return path


@pytest.fixture(scope="module")
def in_memory(raw_store: Path) -> xr.Dataset:
    """The preprocessing computed on NumPy arrays in memory, without any Dask."""
    out, _ = pp.preprocess(open_store(raw_store).load(), PARAMS)
    return out.load()


@pytest.fixture(scope="module")
def reference(raw_store: Path) -> xr.Dataset:
    """The default preprocessing (day of year, 31-day window) computed without hpcpipe."""
    return reference_preprocess(open_store(raw_store).load(), PARAMS)


def run_preprocess(raw_store: Path, out: Path) -> xr.Dataset:
    ds, _ = pp.preprocess(open_store(raw_store), PARAMS)
    write_store(ds, out, {"time": 128})
    return open_store(out).load()


@pytest.mark.parametrize("mode", ["threads", "synchronous", "local"])
def test_modes_give_the_in_memory_result(
    mode: str, raw_store: Path, in_memory: xr.Dataset, reference: xr.Dataset, tmp_path: Path
):
    with dask_runtime(ALLOC, mode) as client:
        assert (client is None) == (mode != "local")
        got = run_preprocess(raw_store, tmp_path / "out.zarr")
    xr.testing.assert_identical(got, in_memory)
    assert_matches_reference(got, reference, open_store(raw_store))


def test_in_memory_result_matches_the_independent_reference(
    raw_store: Path, in_memory: xr.Dataset, reference: xr.Dataset
):
    """The bitwise oracle of the modes is itself right: plain xarray groupby agrees with it."""
    assert_matches_reference(in_memory, reference, open_store(raw_store))


def test_address_mode_uses_a_running_scheduler(
    raw_store: Path, in_memory: xr.Dataset, reference: xr.Dataset, tmp_path: Path
):
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, dashboard_address=":0") as cluster:
        settings = DaskSettings(mode="address", address=cluster.scheduler_address, timeout=10)
        with dask_runtime(ALLOC, settings) as client:
            assert client.scheduler.address == cluster.scheduler_address
            got = run_preprocess(raw_store, tmp_path / "out.zarr")
        # the scheduler belongs to someone else: still running after the step
        assert cluster.status.name == "running"
    xr.testing.assert_identical(got, in_memory)
    assert_matches_reference(got, reference, open_store(raw_store))


def test_address_nobody_answers_names_mode_and_address():
    settings = DaskSettings(mode="address", address="tcp://127.0.0.1:9", timeout=2)
    match = r"mode 'address'.*tcp://127\.0\.0\.1:9"
    with pytest.raises(DaskClusterError, match=match), dask_runtime(ALLOC, settings):
        pass


def test_settings_from_config_and_environment():
    assert DaskSettings.from_config({}, environ={}).mode == "threads"
    env = {"HPCPIPE_DASK_MODE": "address", "HPCPIPE_DASK_ADDRESS": "tcp://h:1"}
    s = DaskSettings.from_config({"mode": "local", "jobqueue": {"max_jobs": "3"}}, environ=env)
    assert (s.mode, s.address, s.jobqueue.max_jobs) == ("address", "tcp://h:1", 3)
    with pytest.raises(DaskClusterError, match="unknown Dask mode 'mpi'"):
        DaskSettings.from_config({"mode": "mpi"}, environ={})
    with pytest.raises(DaskClusterError, match=r"'nodes'\] in dask\.jobqueue"):
        DaskSettings.from_config({"jobqueue": {"nodes": 2}}, environ={})


def test_schema_defaults_are_the_code_defaults():
    section = load_schema()["properties"]["dask"]["properties"]
    jq = section.pop("jobqueue")["properties"]
    assert {k: v["default"] for k, v in section.items()} == {
        k: getattr(DaskSettings(), k) for k in section
    }
    assert {k: v["default"] for k, v in jq.items()} == {
        k: getattr(JobqueueSettings(), k) for k in jq
    }


def test_jobqueue_job_script_follows_the_settings():
    from dask_jobqueue import SLURMCluster  # a hard dependency: its absence must fail here

    jq = JobqueueSettings(
        cores=2, memory="3GB", walltime="00:30:00", lifetime="25m", lifetime_stagger="2m",
        partition="cpu", account="proj1", job_name="hp-test",
        job_extra_directives=["--constraint=x86"],
    )  # fmt: skip
    with SLURMCluster(**slurm_cluster_kwargs(DaskSettings(mode="jobqueue", jobqueue=jq))) as c:
        script = c.job_script()
    for line in ("#SBATCH -J hp-test", "#SBATCH -p cpu", "#SBATCH -A proj1",
                 "#SBATCH --cpus-per-task=2", "#SBATCH -t 00:30:00", "#SBATCH --constraint=x86"):  # fmt: skip
        assert line in script, script
    assert "--lifetime 25m --lifetime-stagger 2m" in script
    assert "--nthreads 2" in script and "--memory-limit 2.79GiB" in script
    assert sys.executable in script


def test_jobqueue_without_slurm_names_the_mode(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    match = r"mode 'jobqueue'.*sbatch.*not found"
    with pytest.raises(DaskClusterError, match=match), dask_runtime(ALLOC, "jobqueue"):
        pass


def test_allocation_outside_srun_names_the_mode(monkeypatch: pytest.MonkeyPatch):
    for var in ("SLURM_PROCID", "RANK", "WORLD_SIZE", "SLURM_STEP_ID"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(DaskClusterError, match=r"mode 'allocation'.*srun -n"):
        serve_allocation_worker(DaskSettings(mode="allocation"), ALLOC)


def _boom(block: np.ndarray) -> np.ndarray:
    if block[0, 0, 0, 0] > -1e30:
        raise RuntimeError("worker task failed")
    return block


def test_failing_computation_leaves_no_store(raw_store: Path, tmp_path: Path):
    out = tmp_path / "out.zarr"
    with dask_runtime(ALLOC, "local"):
        ds, _ = pp.preprocess(open_store(raw_store), PARAMS)
        ds["anomaly"].data = ds["anomaly"].data.map_blocks(_boom, dtype=np.float32)
        with pytest.raises(RuntimeError, match="worker task failed"):
            write_store(ds, out, {"time": 128})
    assert not out.exists() and not list(tmp_path.iterdir())


def test_step_with_unreachable_cluster_fails_cleanly(raw_store: Path, tmp_path: Path):
    """`hpcpipe preprocess` in address mode with nobody answering: a plain error, no output."""
    out = tmp_path / "pre.zarr"
    env = {
        **os.environ,
        "HPCPIPE_DASK_MODE": "address",
        "HPCPIPE_DASK_ADDRESS": "tcp://127.0.0.1:9",
        "HPCPIPE_DASK_TIMEOUT": "2",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "hpcpipe.cli", "preprocess", "--input", str(raw_store),
         "--output", str(out), "--stats", str(tmp_path / "stats.json"),
         "--params", json.dumps(PARAMS), "--dask", json.dumps({"mode": "threads"})],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "dask mode 'address'" in proc.stderr and "tcp://127.0.0.1:9" in proc.stderr
    assert not out.exists() and not (tmp_path / "stats.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# --- out-of-core: a dataset several times larger than the workers' memory --------------------

WORKER_MEMORY = 300 * 2**20  # per worker; about 140 MB of it is the worker process itself
BLOCK_DAYS = 512  # 8 MB blocks: the canonical length for data of this size is 32 MB
N_DAYS = 128 * BLOCK_DAYS  # 1.07 GB: 3.4x one worker's limit, 1.7x both


def test_out_of_core_preprocess_stays_within_worker_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # Smaller canonical blocks than this data size gets, so that workers of 300 MB suffice
    # (32 MB blocks want about 400 MB per worker); the code path is the same.
    monkeypatch.setattr(chunking, "time_chunk_length", lambda n, step_bytes: BLOCK_DAYS)
    raw_path, out_path = tmp_path / "raw.zarr", tmp_path / "pre.zarr"
    write_store(lazy_raw(N_DAYS, chunk_days=BLOCK_DAYS), raw_path, {"time": BLOCK_DAYS})
    params = {**PARAMS, "climatology": "month", "split": _split(N_DAYS)}
    alloc = Allocation(cpus=2, memory_bytes=int(2 * WORKER_MEMORY / 0.8), gpus=0, in_slurm=False)
    with dask_runtime(alloc, "local") as client:
        pids = client.run(os.getpid)
        raw = open_store(raw_path)
        assert raw.nbytes > 3 * WORKER_MEMORY
        ds, stats = pp.preprocess(raw, params)
        write_store(ds, out_path, {"time": BLOCK_DAYS})
        assert client.run(os.getpid) == pids, "a worker was restarted"
        peaks = client.run(_peak_memory)
        spilled = client.run(_spilled_bytes)
    assert all(p < WORKER_MEMORY for p in peaks.values()), peaks
    assert sum(spilled.values()) < raw.nbytes / 4, spilled
    # The same numbers as the threaded scheduler gives (identical, not close).
    got = open_store(out_path)
    ref, ref_stats = pp.preprocess(open_store(raw_path), params)
    assert stats == ref_stats
    for t0 in (0, N_DAYS // 2, N_DAYS - 4 * BLOCK_DAYS):  # a few slabs: the rest is the same
        sl = slice(t0, t0 + 4 * BLOCK_DAYS)
        xr.testing.assert_identical(got["anomaly"][sl].load(), ref["anomaly"][sl].load())


def test_out_of_core_with_the_canonical_blocks_spills_no_block_and_matches_in_memory(
    tmp_path: Path,
):
    """The canonical 32 MB blocks (no smaller ones) on 300 MB workers: each block is read,
    used and dropped in one task, so nothing spills, and the store holds the same bytes as
    the one preprocessed in memory without Dask workers. The raw store in chunks of half a
    block (Dask merges two into each block, inside the task that uses it)."""
    n_days = 27 * 1024  # 0.45 GB: 14 canonical blocks, more than a worker's whole limit
    raw_path = tmp_path / "raw.zarr"
    write_store(lazy_raw(n_days, chunk_days=1024), raw_path, {"time": 1024})
    params = {**PARAMS, "climatology": "month", "split": _split(n_days)}
    alloc = Allocation(cpus=2, memory_bytes=int(2 * WORKER_MEMORY / 0.8), gpus=0, in_slurm=False)
    with dask_runtime(alloc, "local") as client:
        pids = client.run(os.getpid)
        raw = open_store(raw_path)
        assert chunking.time_chunk_length(n_days, 2 * 4 * 32 * 64) == 2048  # 32 MB
        ds, stats = pp.preprocess(raw, params)
        write_store(ds, tmp_path / "ooc.zarr", chunking.preprocessed_chunks(ds))
        assert client.run(os.getpid) == pids, "a worker was restarted"
        peaks, spilled = client.run(_peak_memory), client.run(_spilled_bytes)
    assert all(p < WORKER_MEMORY for p in peaks.values()), peaks
    # No block: at most some of the blocks' partial sums (under 1 MB each), as a worker this
    # small passes its spill threshold (70 %) while it computes, its own ~150 MB included.
    assert sum(spilled.values()) < raw.nbytes / 100, spilled
    ref, ref_stats = pp.preprocess(open_store(raw_path).load(), params)
    write_store(ref, tmp_path / "mem.zarr", chunking.preprocessed_chunks(ref))
    assert stats == ref_stats
    xr.testing.assert_identical(open_store(tmp_path / "ooc.zarr").load(), ref.load())
    files = sorted(f.relative_to(tmp_path / "mem.zarr") for f in (tmp_path / "mem.zarr").rglob("*"))
    for f in files:
        if (tmp_path / "mem.zarr" / f).is_file():
            assert (tmp_path / "ooc.zarr" / f).read_bytes() == (
                tmp_path / "mem.zarr" / f
            ).read_bytes(), f


def _peak_memory(dask_worker) -> float:
    return max(m for m in dask_worker.monitor.range_query(start=0)["memory"] if m is not None)


def _spilled_bytes(dask_worker) -> float:
    return sum(
        v for k, v in dask_worker.digests_total.items()
        if isinstance(k, tuple) and "disk-write" in k and k[-1] == "bytes"
    )  # fmt: skip


def _split(n_days: int) -> dict[str, list[str]]:
    import pandas as pd

    t = pd.date_range("1900-01-01", periods=n_days, freq="D")
    i, j = int(n_days * 0.7), int(n_days * 0.85)
    day = lambda k: str(t[k].date())  # noqa: E731
    return {
        "train": [day(0), day(i)],
        "val": [day(i + 1), day(j)],
        "test": [day(j + 1), day(n_days - 1)],
    }


def test_workers_too_small_to_run_fail_instead_of_pausing():
    """A worker limit near a worker's own footprint would pause for ever: fail, naming why."""
    tiny = Allocation(cpus=2, memory_bytes=300 * 2**20, gpus=0, in_slurm=False)
    few = DaskSettings(mode="jobqueue", jobqueue=JobqueueSettings(memory="600MB", processes=4))
    bad = DaskSettings(mode="jobqueue", jobqueue=JobqueueSettings(memory="lots"))
    for alloc, settings, match in [
        (tiny, "local", r"mode 'local'.*2 workers would get 120 MB"),
        (ALLOC, few, r"mode 'jobqueue'.*raise dask\.jobqueue\.memory"),
        (ALLOC, bad, r"dask\.jobqueue\.memory 'lots' is not a size"),
    ]:
        with pytest.raises(DaskClusterError, match=match), dask_runtime(alloc, settings):
            pass
