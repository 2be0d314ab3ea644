"""Logging for steps: to the rule's log file and to stderr, plus a simple progress helper."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("hpcpipe")

_FORMAT = "%(asctime)s %(levelname)s [%(name)s] %(message)s"


def setup(log_file: str | Path | None, level: int = logging.INFO) -> None:
    """Send hpcpipe's log records to ``log_file`` (the rule's log:) and to stderr."""
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    log.setLevel(level)
    for h in list(log.handlers):
        log.removeHandler(h)
    fmt = logging.Formatter(_FORMAT, datefmt="%H:%M:%S")
    err = logging.StreamHandler(sys.stderr)
    err.setFormatter(fmt)
    log.addHandler(err)
    global _file_handler
    _file_handler = None
    if log_file:
        path = Path(log_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        _file_handler = logging.FileHandler(path, mode="a")
        _file_handler.setFormatter(fmt)
        log.addHandler(_file_handler)
    log.propagate = False


_file_handler: logging.FileHandler | None = None


def failure(step: str, exc: BaseException, expected: bool) -> None:
    """Tell the user what failed in one plain line; the traceback goes to the log file only.

    ``expected`` errors (bad input, named by the step) need no traceback at all.
    """
    log.error("%s failed: %s", step, exc)
    if not expected and _file_handler is not None:
        import traceback

        _file_handler.stream.write("".join(traceback.format_exception(exc)))
        _file_handler.flush()
        log.error("(an unexpected error: the traceback is in %s)", _file_handler.baseFilename)
    elif not expected:
        import traceback

        traceback.print_exception(exc)


def progress(items: Iterable[T], total: int | None, what: str, every_s: float = 5.0) -> Iterator[T]:
    """Yield ``items`` and log ``what: i/total (rate)`` at most every ``every_s`` seconds."""
    start = last = time.monotonic()
    i = 0
    for i, item in enumerate(items, 1):
        yield item
        now = time.monotonic()
        if now - last >= every_s or (total is not None and i == total):
            rate = i / max(now - start, 1e-9)
            of = f"/{total}" if total is not None else ""
            log.info("%s: %d%s (%.1f/s)", what, i, of, rate)
            last = now
