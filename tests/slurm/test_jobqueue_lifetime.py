"""jobqueue mode: worker jobs retire after their ``lifetime`` and are replaced, and the work
held on them survives.

On a real cluster the workers of a long step outlive their job's walltime; ``lifetime``
(``dask.jobqueue.lifetime``, passed as ``--lifetime``) makes each worker retire gracefully
before SLURM kills it, and the adaptive cluster submits a new job in its place. Here two worker
jobs with a 15 s lifetime hold the preprocessed data (persisted); the test waits, as an event,
until both have retired and two new workers have joined, then writes the store from the
persisted data: it must equal the in-memory result. The first jobs must have ended by
retiring (COMPLETED, "worker-lifetime-reached" in their logs), not by SLURM's walltime or a
cancel. Needs `scripts/local-slurm start`; about 40 s.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import xarray as xr
from distributed import wait
from testdata import PREPROCESS_PARAMS as PARAMS
from testdata import make_raw

from hpcpipe import preprocess as pp
from hpcpipe.runtime.allocation import Allocation
from hpcpipe.runtime.dask import DaskSettings, JobqueueSettings, dask_runtime
from hpcpipe.store import open_store, write_store

pytestmark = pytest.mark.slurm

LIFETIME_S = 15
# Two jobs, always (min = max): a worker that leaves can only have retired, never been scaled
# down by the adaptive cluster.
JOBS = 2


@pytest.fixture
def raw_store(tmp_path: Path) -> Path:
    path = tmp_path / "raw.zarr"
    write_store(make_raw(), path, {"time": 100})
    return path


def _jobs(slurm_cluster, name: str) -> dict[str, str]:
    """Job id -> state of the worker jobs named ``name``."""
    result = slurm_cluster.run(
        ["squeue", "--noheader", "--states=all", f"--name={name}", "--format=%i %T"]
    )
    return dict(line.split() for line in result.stdout.splitlines() if line.strip())


def _workers(client) -> set[str]:
    return set(client.scheduler_info(n_workers=-1)["workers"])


def test_workers_retire_after_their_lifetime_and_are_replaced(
    slurm_cluster, raw_store: Path, tmp_path: Path
) -> None:
    name = f"hpcpipe-dask-life-{uuid.uuid4().hex[:6]}"
    logs = tmp_path / "worker-logs"
    jq = JobqueueSettings(
        min_jobs=JOBS, max_jobs=JOBS, cores=1, memory="1GB", walltime="00:10:00",
        lifetime=f"{LIFETIME_S}s", lifetime_stagger="2s", partition="cpu", job_name=name,
        log_directory=str(logs),
    )  # fmt: skip
    alloc = Allocation(cpus=1, memory_bytes=2**30, gpus=0, in_slurm=False)
    try:
        with dask_runtime(alloc, DaskSettings(mode="jobqueue", timeout=120, jobqueue=jq)) as client:
            client.wait_for_workers(JOBS, timeout=120)
            first, first_jobs = _workers(client), set(_jobs(slurm_cluster, name))
            assert len(first) == JOBS and len(first_jobs) == JOBS, (first, first_jobs)
            ds = pp.preprocess(open_store(raw_store), PARAMS)[0].persist()
            wait(ds)  # the data now lives on the first workers
            # Until every first worker has gone and JOBS others are there (lifetime plus a
            # job start; the limit only stops a run in which workers never retire).
            deadline = time.monotonic() + LIFETIME_S + 120
            while (now := _workers(client)) & first or len(now) < JOBS:
                assert time.monotonic() < deadline, (first, now, _jobs(slurm_cluster, name))
                time.sleep(0.5)
            write_store(ds, tmp_path / "pre.zarr", {"time": 128})
            jobs = _jobs(slurm_cluster, name)
    finally:
        slurm_cluster.submitted += list(_jobs(slurm_cluster, name))  # cancelled at the end
    assert {jobs[j] for j in first_jobs} == {"COMPLETED"}, jobs
    assert {s for j, s in jobs.items() if j not in first_jobs} >= {"RUNNING"}, jobs
    retired = sum(p.read_text().count("worker-lifetime-reached") for p in logs.glob("*.err"))
    assert retired >= JOBS, sorted(p.name for p in logs.iterdir())
    in_memory = pp.preprocess(open_store(raw_store).load(), PARAMS)[0].load()
    xr.testing.assert_identical(open_store(tmp_path / "pre.zarr").load(), in_memory)
