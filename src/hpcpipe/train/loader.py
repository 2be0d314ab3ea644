"""A prefetching batch loader: the next batches are prepared in a thread while a step runs.

Gathering a batch from host memory or reading it from the Zarr store (NumPy and zarr release
the GIL) overlaps the training step. On CUDA the host batches are pinned, so the copy to the
GPU is asynchronous (``non_blocking``) and the step loop never waits for it on the host.
``wait_s`` counts the time the training loop spent waiting for data: the data-wait share of
the step time.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
_DONE = object()


class Prefetcher(Generic[T]):
    """Iterate ``items`` through ``produce`` in a background thread, ``depth`` items ahead.

    Order is preserved; an exception in the thread is raised in the consumer. Use as a
    context manager (or call ``close``) so that the thread stops when the consumer stops
    early (a stop request, an error).
    """

    def __init__(
        self, items: Iterable[object], produce: Callable[[object], T], depth: int = 2
    ) -> None:
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self.wait_s = 0.0
        self._thread = threading.Thread(
            target=self._run, args=(iter(items), produce), name="hpcpipe-prefetch", daemon=True
        )
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, items: Iterator[object], produce: Callable[[object], T]) -> None:
        try:
            for item in items:
                if self._stop.is_set() or not self._put(produce(item)):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(_Failure(exc))
            return
        self._put(_DONE)

    def __iter__(self) -> Iterator[T]:
        while True:
            t0 = time.perf_counter()
            item = self._queue.get()
            self.wait_s += time.perf_counter() - t0
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item  # type: ignore[misc]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
