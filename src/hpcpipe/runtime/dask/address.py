"""``address`` mode: connect to a scheduler someone else runs, and leave it running."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from hpcpipe.runtime.allocation import Allocation
from hpcpipe.runtime.dask.common import fail, log_dashboard
from hpcpipe.runtime.dask.settings import DaskSettings, refused

if TYPE_CHECKING:
    from distributed import Client


@contextlib.contextmanager
def address_client(alloc: Allocation, settings: DaskSettings) -> Iterator[Client]:
    """A client of the scheduler at ``dask.address`` or in ``dask.scheduler_file``."""
    from distributed import Client

    if not settings.address and not settings.scheduler_file:
        raise fail("address", "set dask.address or dask.scheduler_file (HPCPIPE_DASK_ADDRESS)")
    where = settings.address or f"scheduler file {settings.scheduler_file}"
    # A missing file would only show as a timeout: say so at once.
    if (
        settings.scheduler_file
        and not settings.address
        and not Path(settings.scheduler_file).exists()
    ):
        raise fail("address", f"scheduler file {settings.scheduler_file} does not exist")
    problem = refused(settings.address) if settings.address else None
    if problem:  # a refusal is final: do not wait the whole timeout for it
        raise fail("address", problem)
    try:
        client = Client(
            settings.address, scheduler_file=settings.scheduler_file, timeout=settings.timeout
        )
    except (OSError, TimeoutError, ValueError) as exc:
        raise fail(
            "address", f"no scheduler answered at {where} within {settings.timeout:g} s", exc
        ) from exc
    try:
        log_dashboard(client, "existing scheduler")
        yield client
    finally:
        client.close()  # the scheduler is someone else's: leave it running
