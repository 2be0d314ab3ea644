"""What every backend shares: the error, the worker-memory floor, owned clusters, the log line."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from hpcpipe.runtime.allocation import MIN_WORKER_MEMORY

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger("hpcpipe.dask")
Cluster = TypeVar("Cluster")


class DaskClusterError(RuntimeError):
    """The Dask runtime could not start; the message names the mode and the cause."""


def fail(mode: str, cause: str, exc: BaseException | None = None) -> DaskClusterError:
    """The error to raise: the mode, the cause and, if any, the exception behind it."""
    detail = f": {type(exc).__name__}: {exc}" if exc is not None else ""
    return DaskClusterError(f"dask mode {mode!r}: {cause}{detail}")


def check_worker_memory(mode: str, per_worker: int, workers: str, fix: str) -> None:
    """Refuse workers so small that they would pause for ever instead of failing."""
    if per_worker < MIN_WORKER_MEMORY:
        raise fail(
            mode,
            f"{workers} would get {per_worker / 2**20:.0f} MB each, under the "
            f"{MIN_WORKER_MEMORY / 2**20:.0f} MB a Dask worker needs for itself; {fix}",
        )


@contextlib.contextmanager
def owned_cluster(mode: str, name: str, start: Callable[[], Cluster]) -> Iterator[Cluster]:
    """A cluster the step starts itself: closed when the step ends, also on error."""
    try:
        cluster = start()
    except Exception as exc:
        raise fail(mode, f"{name} did not start", exc) from exc
    try:
        yield cluster
    finally:
        cluster.close()  # type: ignore[attr-defined]


def wait_for_workers(
    client: Client, n: int, timeout: float, mode: str, why: Callable[[], str]
) -> None:
    """Wait for ``n`` workers; ``why`` says, once the time is up, what is known of the others."""
    try:
        client.wait_for_workers(n, timeout=timeout)
    except TimeoutError as exc:
        raise fail(mode, why()) from exc


def workers_info(client: Client) -> dict[str, dict[str, Any]]:
    """The scheduler's record of every worker, by address."""
    try:
        info: dict[str, Any] = client.scheduler_info(n_workers=-1)  # all, not the first five
    except TypeError:  # distributed before 2025.4 lists all of them anyway
        info = client.scheduler_info()
    return info.get("workers", {})


def log_dashboard(client: Client, what: str) -> None:
    """Log where the scheduler and its dashboard are, and what the workers have in all."""
    workers = workers_info(client)
    threads = sum(w.get("nthreads", 0) for w in workers.values())
    memory = sum(w.get("memory_limit", 0) or 0 for w in workers.values())
    log.info(
        "dask: %s at %s, %d workers, %d threads, %.1f GB; dashboard %s",
        what, client.scheduler.address, len(workers), threads, memory / 1e9,
        client.dashboard_link,
    )  # fmt: skip
