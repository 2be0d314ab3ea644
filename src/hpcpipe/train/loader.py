"""A prefetching batch loader: the next batches are prepared in a thread while a step runs,
and the store chunks they come from are read ahead by a pool of threads.

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
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")
K = TypeVar("K")
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


class ReadAhead(Generic[K, T]):
    """The values of keys used in a known order (an epoch's store chunks), each read by
    ``read`` in a pool of ``threads`` threads, up to ``threads`` keys ahead of the last one
    asked for.

    One chunk read decodes on one core (about 0.75 GB/s of lz4 here): reading the next chunks
    while this one is used, several at once, is what lets a GPU rank's cores keep up with it.
    Memory: the keys of the current request plus ``threads`` read ahead; a key planned before
    the current request's is released (asked for again, it is read again).
    """

    def __init__(self, order: Iterable[K], read: Callable[[K], T], threads: int) -> None:
        self._order = list(dict.fromkeys(order))
        self._pos = {k: i for i, k in enumerate(self._order)}
        self._read = read
        self._ahead = max(1, threads)
        self._pool = ThreadPoolExecutor(self._ahead, thread_name_prefix="hpcpipe-read")
        self._futures: dict[K, Future[T]] = {}
        self._submitted = 0  # keys of the order handed to the pool so far

    def get(self, keys: Sequence[K]) -> list[T]:
        """The values of ``keys`` (one batch's chunks, all in the order), read ahead."""
        pos = [self._pos[k] for k in keys]
        for k in [k for k in self._futures if self._pos[k] < min(pos)]:
            del self._futures[k]  # used up: the order has moved past it
        last = min(len(self._order), max(pos) + 1 + self._ahead)
        while self._submitted < last:
            k = self._order[self._submitted]
            self._futures[k] = self._pool.submit(self._read, k)
            self._submitted += 1
        for k in keys:
            if k not in self._futures:  # released already: out of the planned order
                self._futures[k] = self._pool.submit(self._read, k)
        return [self._futures[k].result() for k in keys]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._futures.clear()
