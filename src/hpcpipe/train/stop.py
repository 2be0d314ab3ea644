"""Stop requests: SIGUSR1/SIGTERM turn into a flag the training loop polls between steps.

SIGUSR1 is SLURM's ``--signal`` before the time limit; SIGTERM comes from scancel, preemption
and the time limit itself. The loop then checkpoints and raises :class:`TrainingStopped`.
Torch-free: the step runner imports this module for every step, array steps included.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from pathlib import Path
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)


class TrainingStopped(Exception):
    """Training stopped on a signal after writing a checkpoint; a rerun resumes from it."""

    def __init__(self, signum: int, checkpoint: Path | None, requeued: bool = False) -> None:
        self.signum, self.checkpoint, self.requeued = signum, checkpoint, requeued
        name = signal.Signals(signum).name
        where = f"checkpoint {checkpoint}" if checkpoint else "no checkpoint (not rank 0)"
        then = "the job was requeued and will resume" if requeued else "rerun to resume"
        super().__init__(f"training stopped by {name}: wrote {where}; {then}")


class StopRequest:
    """SIGUSR1/SIGTERM set a flag instead of killing the process (installed while in use).

    The handlers only record the signal: checkpointing inside a signal handler could
    interrupt a half-done optimizer step.
    """

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is None:
            log.warning("received %s: checkpointing at the next step", signal.Signals(signum).name)
        self.signum = self.signum or signum

    def __enter__(self) -> StopRequest:
        for s in self.SIGNALS:
            # Only the main thread may set handlers; elsewhere the run cannot be signalled.
            with contextlib.suppress(ValueError):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()
