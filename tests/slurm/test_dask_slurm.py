"""Dask across SLURM: one multi-task srun step (allocation) and worker jobs (jobqueue).

Both run the real preprocessing on the local cluster and must give exactly the in-memory
result, and the independent reference (testdata.reference_preprocess) within float32
tolerances. Needs `scripts/local-slurm start`; about 30 s.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
import uuid
from pathlib import Path

import pytest
import xarray as xr
from testdata import PREPROCESS_PARAMS as PARAMS
from testdata import assert_matches_reference, make_raw, reference_preprocess

from hpcpipe import preprocess as pp
from hpcpipe.runtime.allocation import Allocation
from hpcpipe.runtime.dask import DaskSettings, JobqueueSettings, dask_runtime
from hpcpipe.store import open_store, write_store

pytestmark = pytest.mark.slurm


@pytest.fixture
def raw_store(tmp_path: Path) -> Path:
    path = tmp_path / "raw.zarr"
    write_store(make_raw(), path, {"time": 100})
    return path


def in_memory(raw_store: Path) -> xr.Dataset:
    return pp.preprocess(open_store(raw_store).load(), PARAMS)[0].load()


def assert_right(got: xr.Dataset, raw_store: Path) -> None:
    """Bitwise the in-memory result, and that result the independent reference's."""
    xr.testing.assert_identical(got, in_memory(raw_store))
    raw = open_store(raw_store).load()
    assert_matches_reference(got, reference_preprocess(raw, PARAMS), raw)


def allocation_step(raw_store: Path, tmp_path: Path) -> list[str]:
    """The preprocess step in ``allocation`` mode, writing pre.zarr and its log in tmp_path."""
    return [
        sys.executable, "-m", "hpcpipe.cli", "preprocess", "--input", str(raw_store),
        "--output", str(tmp_path / "pre.zarr"), "--stats", str(tmp_path / "stats.json"),
        "--params", json.dumps(PARAMS), "--dask", json.dumps({"mode": "allocation"}),
        "--log", str(tmp_path / "preprocess.log"),
    ]  # fmt: skip


def test_allocation_mode_spans_the_ranks_of_one_srun_step(slurm_cluster, raw_store, tmp_path):
    out = tmp_path / "pre.zarr"
    step = allocation_step(raw_store, tmp_path)
    # Three ranks on a 2-CPU node (--overcommit): rank 0 scheduler and step, ranks 1-2 workers.
    result = slurm_cluster.sbatch(
        "--ntasks=3", "--overcommit", "--mem=3000", "--time=5",
        script=f"srun --ntasks=3 --overcommit {shlex.join(step)}",
        workdir=tmp_path, wait=True, timeout=180,
    )  # fmt: skip
    log = (tmp_path / "preprocess.log").read_text()
    assert result.returncode == 0, result.stderr + log
    assert "scheduler on rank 0 of 3" in log and "2 workers" in log and "dashboard" in log, log
    assert log.count("worker rank done") == 2, log
    assert_right(open_store(out).load(), raw_store)
    assert not list((tmp_path / ".hpcpipe-dask").glob("*.json"))  # scheduler file removed


def _jobs(slurm_cluster, name: str) -> dict[str, str]:
    result = slurm_cluster.run(
        ["squeue", "--noheader", "--states=all", f"--name={name}", "--format=%i %T"]
    )
    return dict(line.split() for line in result.stdout.splitlines() if line.strip())


def test_jobqueue_mode_runs_on_worker_jobs(slurm_cluster, raw_store, tmp_path):
    name = f"hpcpipe-dask-test-{uuid.uuid4().hex[:6]}"
    jq = JobqueueSettings(
        min_jobs=1, max_jobs=2, cores=1, memory="1GB", walltime="00:05:00",
        lifetime="4m", lifetime_stagger="10s", partition="cpu", job_name=name,
        log_directory=str(tmp_path / "worker-logs"),
    )  # fmt: skip
    alloc = Allocation(cpus=1, memory_bytes=2**30, gpus=0, in_slurm=False)
    try:
        with dask_runtime(alloc, DaskSettings(mode="jobqueue", timeout=120, jobqueue=jq)):
            running = _jobs(slurm_cluster, name)
            ds, _ = pp.preprocess(open_store(raw_store), PARAMS)
            write_store(ds, tmp_path / "pre.zarr", {"time": 128})
    finally:
        slurm_cluster.submitted += list(_jobs(slurm_cluster, name))  # cancelled at the end
    assert "RUNNING" in running.values(), running
    deadline = time.monotonic() + 60
    while not set(_jobs(slurm_cluster, name).values()) <= slurm_cluster.final_states:
        assert time.monotonic() < deadline, _jobs(slurm_cluster, name)
        time.sleep(0.5)
    assert set(running) <= set(_jobs(slurm_cluster, name))
    assert_right(open_store(tmp_path / "pre.zarr").load(), raw_store)
