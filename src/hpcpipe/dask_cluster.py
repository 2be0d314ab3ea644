"""The one module that owns Dask's runtime inside a step.

Modes: ``threads`` (the threaded scheduler, sized to the allocation: fastest for data that
fit in memory), ``synchronous`` (debugging), ``local`` (a distributed LocalCluster with a
memory limit per worker, for out-of-core work). The mode comes from HPCPIPE_DASK_MODE, which
profiles set; the cluster is always closed, also on error.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import dask

from hpcpipe.resources import Allocation

log = logging.getLogger("hpcpipe.dask")
MODES = ("threads", "synchronous", "local")


class DaskClusterError(RuntimeError):
    """The Dask runtime could not start; the message names the mode and the cause."""


@contextlib.contextmanager
def dask_runtime(alloc: Allocation, mode: str | None = None) -> Iterator[None]:
    mode = mode or os.environ.get("HPCPIPE_DASK_MODE", "threads")
    if mode not in MODES:
        raise DaskClusterError(
            f"unknown Dask mode {mode!r} (HPCPIPE_DASK_MODE); use one of {MODES}"
        )
    if mode == "threads":
        log.info("dask: threaded scheduler, %d workers", alloc.cpus)
        with dask.config.set(scheduler="threads", num_workers=alloc.cpus):
            yield
        return
    if mode == "synchronous":
        with dask.config.set(scheduler="synchronous"):
            yield
        return
    from distributed import Client, LocalCluster

    per_worker = int(alloc.memory_bytes * 0.8 / alloc.cpus)
    try:
        cluster = LocalCluster(
            n_workers=alloc.cpus, threads_per_worker=1, memory_limit=per_worker,
            dashboard_address=":0", processes=True,
        )  # fmt: skip
    except Exception as exc:
        raise DaskClusterError(f"dask mode 'local': LocalCluster did not start: {exc}") from exc
    try:
        with Client(cluster) as client:
            log.info(
                "dask: LocalCluster %d workers x %.1f GB, dashboard %s",
                alloc.cpus,
                per_worker / 1e9,
                client.dashboard_link,
            )
            yield
    finally:
        cluster.close()
