"""``allocation`` mode: scheduler and workers over the ranks of one multi-task srun step.

``srun -n N hpcpipe <step> ...``: rank 0 starts the scheduler and runs the step, ranks
1..N-1 are workers (:func:`serve_allocation_worker`). They meet through a scheduler file on
the shared filesystem, so one step can span several nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from hpcpipe.runtime.allocation import DASK_MEMORY_FRACTION, Allocation, memory_per_task
from hpcpipe.runtime.dask.common import (
    check_worker_memory,
    fail,
    log,
    log_dashboard,
    wait_for_workers,
    workers_info,
)
from hpcpipe.runtime.dask.settings import DaskSettings
from hpcpipe.runtime.environment import DistEnv, node_name, slurm_job

if TYPE_CHECKING:
    from distributed import Client

MODE = "allocation"


def scheduler_file_for(settings: DaskSettings, env: DistEnv) -> Path:
    """Where the ranks of one step meet: the configured file, or one unique to this job step.

    The default lives in the working directory (a shared filesystem under SLURM, as Snakemake
    needs) and is named after the step's rendezvous address and port, which differ between
    concurrent steps, so a stale file from an earlier step is never read.
    """
    if settings.scheduler_file:
        return Path(settings.scheduler_file)
    job = (slurm_job() or {}).get("job_id", "nojob")
    return Path(".hpcpipe-dask") / f"scheduler-{job}-{env.master_addr}-{env.master_port}.json"


def serve_allocation_worker(settings: DaskSettings, alloc: Allocation) -> bool:
    """On a worker rank of ``allocation`` mode: run a Dask worker until the step ends.

    Returns True on such a rank (the caller then skips the step's own code), False on rank 0
    and in every other mode.
    """
    if settings.mode != MODE:
        return False
    env = DistEnv.from_environ()
    if env.world_size < 2:
        raise fail(
            MODE,
            "not a multi-task srun step (run the step as `srun -n N hpcpipe ...` with N >= 2: "
            "rank 0 runs the scheduler and the step, ranks 1..N-1 the workers)",
        )
    if env.rank == 0:
        return False
    path = scheduler_file_for(settings, env)
    memory = int(memory_per_task(alloc) * DASK_MEMORY_FRACTION)
    check_worker_memory(
        MODE, memory, f"worker rank {env.rank}",
        "give the step more memory per task (its mem_mb or mem_mb_per_cpu)",
    )  # fmt: skip
    log.info(
        "dask: worker rank %d/%d, %d threads, %.1f GB, scheduler file %s",
        env.rank, env.world_size, alloc.cpus, memory / 1e9, path,
    )  # fmt: skip
    # Rank 0 may still be starting the scheduler.
    late = f"no scheduler file {path} appeared within {settings.timeout:g} s"
    _wait_for_file(path, settings.timeout, late)
    name = f"{node_name()}/rank{env.rank}"
    asyncio.run(_run_worker(path, name, alloc.cpus, memory, settings.timeout))
    return True


async def _run_worker(path: Path, name: str, nthreads: int, memory: int, timeout: float) -> None:
    from distributed import Worker

    local = tempfile.mkdtemp(prefix="hpcpipe-dask-worker-")
    try:
        # death_timeout: a worker whose scheduler is gone (rank 0 failed) exits instead of
        # keeping the step alive until its time limit.
        async with Worker(
            scheduler_file=str(path), name=name, nthreads=nthreads, memory_limit=memory,
            local_directory=local, death_timeout=timeout, dashboard=False,
        ) as worker:  # fmt: skip
            await worker.finished()
    finally:
        shutil.rmtree(local, ignore_errors=True)


def _wait_for_file(
    path: Path, timeout: float, late: str, died: Callable[[], str | None] = lambda: None
) -> None:
    """Wait for the scheduler file; ``died`` says why it never will come (None: keep waiting)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        why = died()
        if why is not None:
            raise fail(MODE, why)
        if time.monotonic() > deadline:
            raise fail(MODE, late)
        time.sleep(0.1)


@contextlib.contextmanager
def allocation_client(alloc: Allocation, settings: DaskSettings) -> Iterator[Client]:
    """On rank 0: the scheduler in a subprocess, and a client once every worker rank joined."""
    from distributed import Client

    env = DistEnv.from_environ()
    if env.world_size < 2 or env.rank != 0:
        raise fail(MODE, f"rank {env.rank} of {env.world_size} cannot run the step")
    path = scheduler_file_for(settings, env)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # a stale file would point the workers at a dead scheduler
    n_workers = env.world_size - 1
    scheduler = _start_scheduler(path)
    client = None
    try:
        late = f"the scheduler did not start in {settings.timeout:g} s"
        _wait_for_file(path, settings.timeout, late, lambda: _exited(scheduler))
        client = Client(scheduler_file=str(path), timeout=settings.timeout)
        why = functools.partial(_joined, client, n_workers, settings.timeout)
        wait_for_workers(client, n_workers, settings.timeout, MODE, why)
        log_dashboard(client, f"scheduler on rank 0 of {env.world_size}")
        _log_nodes(client)
        yield client
    finally:
        _shut_down(client, scheduler, path)


def _log_nodes(client: Client) -> None:
    """Which nodes the worker ranks run on (named "<node>/rank<r>" by their rank)."""
    workers = workers_info(client).values()
    nodes = Counter(str(w.get("name", "?")).partition("/")[0] for w in workers)
    log.info(
        "dask: worker ranks per node: %s", ", ".join(f"{n} {c}" for n, c in sorted(nodes.items()))
    )


def _start_scheduler(path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--scheduler-file", str(path),
         "--port", "0", "--dashboard-address", ":0", "--no-show"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _joined(client: Client, n_workers: int, timeout: float) -> str:
    have = len(client.scheduler_info().get("workers", {}))
    return f"{have} of {n_workers} worker ranks joined within {timeout:g} s"


def _exited(scheduler: subprocess.Popen[str]) -> str | None:
    if scheduler.poll() is None:
        return None
    stderr = scheduler.stderr.read() if scheduler.stderr else ""
    return f"the scheduler exited: {stderr[-2000:]}"


def _shut_down(client: Client | None, scheduler: subprocess.Popen[str], path: Path) -> None:
    if client is not None:
        # Shuts the scheduler and every worker down, so the worker ranks exit too.
        with contextlib.suppress(Exception):
            client.shutdown()
        client.close()
    try:
        scheduler.wait(timeout=10)
    except subprocess.TimeoutExpired:
        scheduler.kill()
        scheduler.wait()
    path.unlink(missing_ok=True)
