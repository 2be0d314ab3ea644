"""Dask's runtime inside a step: one module per backend, as dask-jobqueue has one per scheduler.

Modes (``dask.mode`` in the config's runtime section, or HPCPIPE_DASK_MODE, which wins):

- ``threads``: the threaded scheduler sized to the CPUs the step was given; fastest for data
  that fit in memory (the default).
- ``synchronous``: one thread, for debugging.
- ``local`` (:mod:`.local`): a distributed LocalCluster, one single-threaded worker process
  per CPU given, with a memory limit per worker so that data larger than memory spill
  instead of being killed.
- ``allocation`` (:mod:`.allocation`): scheduler and workers over the ranks of a multi-task
  SLURM step (``srun -n N hpcpipe <step> ...``): rank 0 starts the scheduler and runs the
  step, every other rank is a worker; they meet through a scheduler file on the shared
  filesystem, so one step can span several nodes.
- ``jobqueue`` (:mod:`.jobqueue`): dask-jobqueue's SLURMCluster; worker jobs are submitted
  with ``sbatch`` and scaled adaptively between ``jobqueue.min_jobs`` and
  ``jobqueue.max_jobs``, and retire with ``--lifetime`` before their walltime.
- ``address`` (:mod:`.address`): connect to a scheduler that is already running (``address``
  or ``scheduler_file``); it is left running afterwards.

The other modules: :mod:`.settings`, the ``dask:`` section and the HPCPIPE_DASK* variables
(:func:`settings_for_step` is what a step runs under); :mod:`.common`, what the backends
share (the error, the worker-memory floor, the dashboard log line).

The dashboard address is logged; whatever the step started is closed, also on error. A
cluster that cannot start raises :class:`DaskClusterError` naming the mode and the cause.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from hpcpipe.runtime.allocation import Allocation
from hpcpipe.runtime.dask.address import address_client
from hpcpipe.runtime.dask.allocation import allocation_client, serve_allocation_worker
from hpcpipe.runtime.dask.common import DaskClusterError, log
from hpcpipe.runtime.dask.jobqueue import jobqueue_client
from hpcpipe.runtime.dask.local import local_client
from hpcpipe.runtime.dask.settings import DaskSettings, JobqueueSettings, settings_for_step

if TYPE_CHECKING:
    from distributed import Client

__all__ = [
    "DaskClusterError",
    "DaskSettings",
    "JobqueueSettings",
    "dask_runtime",
    "serve_allocation_worker",
    "settings_for_step",
]

# The modes with a distributed client: each starts (or finds) a cluster and closes what it started.
BACKENDS: dict[str, Callable[[Allocation, DaskSettings], AbstractContextManager[Client]]] = {
    "local": local_client,
    "allocation": allocation_client,
    "jobqueue": jobqueue_client,
    "address": address_client,
}


@contextlib.contextmanager
def dask_runtime(
    alloc: Allocation, settings: DaskSettings | str | None = None
) -> Iterator[Client | None]:
    """Run the body under the configured Dask runtime; yield the distributed Client or None.

    ``settings`` may be a mode name (tests, benchmarks). In ``allocation`` mode only rank 0
    gets here: the other ranks are workers (:func:`serve_allocation_worker`).
    """
    # imported here: the workflow imports the settings when it parses, dask costs 0.3 s
    import dask

    if settings is None or isinstance(settings, str):
        settings = DaskSettings.from_config({"mode": settings} if settings else None)
    if settings.mode == "threads":
        log.info("dask: threaded scheduler, %d workers", alloc.cpus)
        with dask.config.set(scheduler="threads", num_workers=alloc.cpus):
            yield None
    elif settings.mode == "synchronous":
        log.info("dask: synchronous scheduler")
        with dask.config.set(scheduler="synchronous"):
            yield None
    else:
        # The client is the default scheduler once made; dask.config says so explicitly too.
        with BACKENDS[settings.mode](alloc, settings) as client, dask.config.set(scheduler=client):
            yield client
