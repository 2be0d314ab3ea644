"""``jobqueue`` mode: dask-jobqueue's SLURMCluster, worker jobs submitted with sbatch.

Jobs are scaled adaptively between ``jobqueue.min_jobs`` and ``jobqueue.max_jobs`` and
retire with ``--lifetime`` before their walltime.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from hpcpipe.runtime.allocation import DASK_MEMORY_FRACTION, Allocation
from hpcpipe.runtime.dask.common import (
    check_worker_memory,
    fail,
    log,
    log_dashboard,
    owned_cluster,
    wait_for_workers,
)
from hpcpipe.runtime.dask.settings import DaskSettings, JobqueueSettings

if TYPE_CHECKING:
    from dask_jobqueue import SLURMCluster
    from distributed import Client

MODE = "jobqueue"
# What the cluster runs to submit, watch and cancel its worker jobs.
JOB_COMMANDS = ("sbatch", "squeue", "scancel")


def slurm_cluster_kwargs(settings: DaskSettings) -> dict[str, Any]:
    """SLURMCluster's arguments from the settings (the job script follows from them)."""
    jq = settings.jobqueue
    return {
        "cores": jq.cores,
        "processes": jq.processes,
        "memory": jq.memory,
        "walltime": jq.walltime,
        "queue": jq.partition,
        "account": jq.account,
        "job_name": jq.job_name,
        "interface": jq.interface,
        "job_extra_directives": list(jq.job_extra_directives),
        # Workers retire (their data moved to others) before SLURM kills them at walltime;
        # the stagger keeps workers started together from leaving together.
        "worker_extra_args": ["--lifetime", jq.lifetime, "--lifetime-stagger", jq.lifetime_stagger]
        + list(jq.worker_extra_args),
        "python": sys.executable,
        "log_directory": jq.log_directory,
        "death_timeout": settings.timeout,
        "scheduler_options": {"dashboard_address": ":0"},
    }


def _check(jq: JobqueueSettings) -> None:
    """Fail before submitting anything: workers too small, no SLURM, impossible bounds."""
    try:
        from dask.utils import parse_bytes

        per_worker = parse_bytes(jq.memory) // max(jq.processes, 1)
    except ValueError:
        raise fail(MODE, f"dask.jobqueue.memory {jq.memory!r} is not a size") from None
    check_worker_memory(
        MODE, int(per_worker * DASK_MEMORY_FRACTION), f"{jq.processes} worker(s) per job",
        "raise dask.jobqueue.memory or lower dask.jobqueue.processes",
    )  # fmt: skip
    missing = [c for c in JOB_COMMANDS if shutil.which(c) is None]
    if missing:
        raise fail(MODE, f"SLURM command(s) {missing} not found on PATH (no SLURM here?)")
    if not 0 <= jq.min_jobs <= jq.max_jobs or jq.max_jobs < 1:
        raise fail(
            MODE, f"need 0 <= min_jobs <= max_jobs, max_jobs >= 1 (got {jq.min_jobs}, "
            f"{jq.max_jobs})",
        )  # fmt: skip


@contextlib.contextmanager
def jobqueue_client(alloc: Allocation, settings: DaskSettings) -> Iterator[Client]:
    """A SLURMCluster scaled adaptively, and a client once its first worker joined."""
    jq = settings.jobqueue
    _check(jq)
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    def start() -> SLURMCluster:
        return SLURMCluster(**slurm_cluster_kwargs(settings))

    with owned_cluster(MODE, "SLURMCluster", start) as cluster:
        log.debug("dask: worker job script:\n%s", cluster.job_script())
        cluster.adapt(minimum_jobs=jq.min_jobs, maximum_jobs=jq.max_jobs)
        with Client(cluster) as client:
            if jq.min_jobs == 0:  # at least one job: the step has work to do now
                cluster.scale(jobs=1)
            wait_for_workers(
                client, 1, settings.timeout, MODE, lambda: _no_worker(cluster, settings)
            )
            what = f"SLURMCluster ({jq.min_jobs}-{jq.max_jobs} jobs of {jq.cores} cores)"
            log_dashboard(client, what)
            yield client


def _no_worker(cluster: SLURMCluster, settings: DaskSettings) -> str:
    jq = settings.jobqueue
    logs = f" in {jq.log_directory}" if jq.log_directory else ""
    return (
        f"no worker joined within {settings.timeout:g} s; worker jobs {_job_states(cluster)} "
        f"(squeue -n {jq.job_name}): queued behind other jobs, or failing at start (see "
        f"their logs{logs})?"
    )


def _job_states(cluster: SLURMCluster) -> str:
    """The worker jobs' ids and SLURM states, for the error when none of them joined."""
    ids = [getattr(job, "job_id", None) for job in cluster.workers.values()]
    ids = [str(i) for i in ids if i]
    if not ids:
        return "(none submitted: sbatch failed?)"
    out = subprocess.run(
        ["squeue", "--noheader", "--states=all", "--format=%i:%T", f"--jobs={','.join(ids)}"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return " ".join(out.stdout.split()) or ",".join(ids)
