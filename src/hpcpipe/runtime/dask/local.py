"""``local`` mode: a distributed LocalCluster on the step's own CPUs and memory."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from hpcpipe.runtime.allocation import DASK_MEMORY_FRACTION, Allocation
from hpcpipe.runtime.dask.common import check_worker_memory, log_dashboard, owned_cluster
from hpcpipe.runtime.dask.settings import DaskSettings

if TYPE_CHECKING:
    from distributed import Client


@contextlib.contextmanager
def local_client(alloc: Allocation, settings: DaskSettings) -> Iterator[Client]:
    """One single-threaded worker process per CPU, each with its share of the memory.

    Processes, not threads: a memory limit per worker makes data larger than memory spill
    to disk instead of the step being killed.
    """
    from distributed import Client, LocalCluster

    per_worker = int(alloc.memory_bytes * DASK_MEMORY_FRACTION / alloc.cpus)
    check_worker_memory(
        "local", per_worker, f"{alloc.cpus} workers",
        "give the step more memory (its mem_mb) or fewer CPUs",
    )  # fmt: skip

    def start() -> LocalCluster:
        return LocalCluster(
            n_workers=alloc.cpus, threads_per_worker=1, memory_limit=per_worker,
            dashboard_address=":0", processes=True,
        )  # fmt: skip

    with owned_cluster("local", "LocalCluster", start) as cluster, Client(cluster) as client:
        log_dashboard(client, "LocalCluster")
        yield client
