"""Training checkpoints and stop requests: the one module that writes, finds and loads them.

A checkpoint holds everything a training run needs to continue exactly where it stopped:
model, optimizer and LR-schedule state, RNG states, the position in the sample order (epoch
and step), the history and the early-stopping state. It also holds the run's *identity* (model,
config, seed, features), so a checkpoint is never resumed by a different run.

Layout: ``DIR/<key>/step-000001234.pt`` where DIR is given by the rule (outside the rule's
outputs, so Snakemake's clean-up of a failed job never deletes it) and ``key`` is a hash of the
identity: a changed config trains from scratch in its own directory and the old checkpoints
stay where they are (change the config back and the old run resumes). Files are written to a
temporary name, fsync'ed and renamed; the newest :data:`KEEP` are kept, so a corrupt newest
file falls back to the one before.

:class:`StopRequest` turns SIGUSR1 (SLURM's ``--signal`` before the time limit) and SIGTERM
(scancel, preemption, the time limit itself) into a flag that the training loop polls between
steps; the loop then checkpoints and stops cleanly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import uuid
from pathlib import Path
from types import FrameType
from typing import Any

import torch

log = logging.getLogger("hpcpipe.checkpoint")

FORMAT = 1
KEEP = 2  # the newest and one fallback
_NAME = re.compile(r"step-(\d{9})\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message says which file and what to do."""


def identity_key(identity: dict[str, Any]) -> str:
    """A short stable hash of a run's identity (canonical JSON)."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _differences(saved: dict[str, Any], wanted: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ, with both values: what a user needs to see."""
    out = []
    for k in sorted(set(saved) | set(wanted)):
        a, b = saved.get(k, "<absent>"), wanted.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} in the checkpoint, {b!r} now")
    return out


class Checkpoints:
    """The checkpoints of one run (one identity) under ``root``."""

    def __init__(self, root: str | os.PathLike[str], identity: dict[str, Any]) -> None:
        self.root = Path(root)
        self.identity = identity
        self.key = identity_key(identity)
        self.dir = self.root / self.key

    def files(self) -> list[Path]:
        """This run's checkpoint files, newest first."""
        if not self.dir.is_dir():
            return []
        found = [p for p in self.dir.iterdir() if _NAME.match(p.name)]
        return sorted(found, key=lambda p: p.name, reverse=True)

    def others(self) -> list[Path]:
        """Checkpoint directories of other runs (other configs) under the same root."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and p != self.dir)

    def save(self, state: dict[str, Any], step: int) -> Path:
        """Write ``state`` as the checkpoint of global step ``step``; prune old ones."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"step-{step:09d}.pt"
        tmp = self.dir / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        payload = {"format": FORMAT, "identity": self.identity, "key": self.key, **state}
        try:
            with open(tmp, "wb") as f:
                torch.save(payload, f)
                f.flush()
                # A node that dies after the rename must not leave a renamed empty file.
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(self.dir)
        for old in self.files()[KEEP:]:
            old.unlink(missing_ok=True)
        return path

    def load_latest(self, map_location: str | torch.device = "cpu") -> tuple[dict, Path] | None:
        """The newest readable checkpoint of this run, or None if there is none.

        An unreadable file (truncated, corrupt) is skipped with a warning in favour of the one
        before; a file from a different run raises :class:`CheckpointError` naming what differs.
        """
        bad = []
        for path in self.files():
            try:
                state = torch.load(path, map_location=map_location, weights_only=True)
                if not isinstance(state, dict) or state.get("format") != FORMAT:
                    raise ValueError(f"not a format-{FORMAT} hpcpipe checkpoint")
            except Exception as exc:
                log.warning("checkpoint %s is unreadable (%s); trying the one before", path, exc)
                bad.append(f"{path.name} ({type(exc).__name__})")
                continue
            if state.get("identity") != self.identity:
                diff = _differences(state.get("identity") or {}, self.identity)
                raise CheckpointError(
                    f"checkpoint {path} belongs to a different run ("
                    + "; ".join(diff[:6])
                    + "). It was copied or moved here by hand: move it back, or delete "
                    f"{self.dir} to train from scratch"
                )
            if bad:
                log.warning("resuming from the older checkpoint %s", path.name)
            return state, path
        if bad:
            raise CheckpointError(
                f"every checkpoint in {self.dir} is unreadable: {', '.join(bad)}. "
                f"Delete {self.dir} to train from scratch"
            )
        return None

    def clear(self) -> None:
        """Remove this run's checkpoints (the run finished; its outputs hold the result)."""
        for p in self.files():
            p.unlink(missing_ok=True)
        for p in self.dir.glob(".step-*.tmp-*") if self.dir.is_dir() else []:
            p.unlink(missing_ok=True)
        try:
            self.dir.rmdir()
            self.root.rmdir()  # only if no other run's checkpoints are left
        except OSError:
            pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
