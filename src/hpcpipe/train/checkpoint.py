"""Resume checkpoints: the files (write, find, load) and the checkpointer that decides when.

A checkpoint holds everything a training run needs to continue exactly where it stopped:
model, optimizer and LR-schedule state, RNG states, the position in the sample order (epoch
and step), the history and the early-stopping state. It also holds the run's *identity* (model,
config, seed, features), so a checkpoint is never resumed by a different run.

Layout: ``DIR/<key>/step-000001234.pt`` (a directory ``step-000001234.dcp`` under the sharded
strategies, :mod:`~hpcpipe.train.checkpoint_dcp`) where DIR is given by the rule (outside the
rule's outputs, so Snakemake's clean-up of a failed job never deletes it) and ``key`` is a hash
of the identity: a changed config trains from scratch in its own directory and the old checkpoints
stay where they are (change the config back and the old run resumes). Files are written to a
temporary name, fsync'ed and renamed; the newest :data:`KEEP` are kept, so a corrupt newest
file falls back to the one before. (A sharded checkpoint with a corrupt shard does not: loading
fails naming the directory to delete, and the next run resumes from the one before.)

:class:`Checkpointer` writes one every ``train.checkpoint_every`` steps and when a stop request
(:mod:`hpcpipe.train.stop`) arrives, and resumes a run from the newest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import signal
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpcpipe.atomic import fsync_dir, remove
from hpcpipe.runtime import environment
from hpcpipe.runtime.environment import DistEnv
from hpcpipe.runtime.slurm import requeue_job
from hpcpipe.train import checkpoint_dcp
from hpcpipe.train import process_group as distributed
from hpcpipe.train.data import FeatureStores
from hpcpipe.train.schedule import Schedule
from hpcpipe.train.state import RunState, rng_state, set_rng_state
from hpcpipe.train.stop import StopRequest, TrainingStopped

log = logging.getLogger(__name__)

FORMAT = 1
KEEP = 2  # the newest and one fallback
_NAME = re.compile(r"step-(\d{9})\.(pt|dcp)$")


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
        fsync_dir(self.dir)
        self.prune()
        return path

    def save_sharded(self, parts: dict[str, Any], state: dict[str, Any], step: int) -> Path:
        """Write a sharded checkpoint of global step ``step`` (collective); prune old ones."""
        payload = {"format": FORMAT, "identity": self.identity, "key": self.key, **state}
        name = f"step-{step:09d}{checkpoint_dcp.SUFFIX}"
        path = checkpoint_dcp.save(self.dir, name, parts, payload)
        if distributed.is_main():
            self.prune()
        return path

    def prune(self) -> None:
        """Keep the newest :data:`KEEP` checkpoints."""
        for old in self.files()[KEEP:]:
            remove(old)

    def load_latest(self, map_location: str | torch.device = "cpu") -> tuple[dict, Path] | None:
        """The newest readable checkpoint of this run, or None if there is none.

        An unreadable file (truncated, corrupt) is skipped with a warning in favour of the one
        before; a file from a different run raises :class:`CheckpointError` naming what differs.
        """
        bad = []
        for path in self.files():
            try:
                # A sharded checkpoint's state.pt is the dict a single file holds, less the
                # tensors DCP keeps beside it.
                what = path / checkpoint_dcp.STATE if path.is_dir() else path
                state = torch.load(what, map_location=map_location, weights_only=True)
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
            remove(p)
        for p in self.dir.glob(".step-*.tmp*") if self.dir.is_dir() else []:
            remove(p)
        try:
            self.dir.rmdir()
            self.root.rmdir()  # only if no other run's checkpoints are left
        except OSError:
            pass


def _agree(found: tuple[dict, Path] | None, files: Checkpoints) -> None:
    """Every rank loads its shards of one checkpoint: they must all have found the same."""
    seen = distributed.all_gather_object(found[1].name if found else None)
    if len(set(seen)) > 1:
        raise CheckpointError(
            f"the ranks found different newest checkpoints in {files.dir} (rank by rank: "
            f"{seen}): keep .checkpoints on a filesystem all nodes share"
        )


# Config keys that do not change what is computed: not part of a run's checkpoint identity.
RUNTIME_KEYS = ("checkpoint_every", "models", "seeds")


def run_identity(
    model_name: str, model_cfg: dict[str, Any], train_cfg: dict[str, Any], seed: int,
    features: FeatureStores | str | os.PathLike[str],
) -> dict[str, Any]:  # fmt: skip
    """What a checkpoint must match to be resumed: model, config, seed and the features."""
    from hpcpipe.provenance import recorded_checksum

    train = {k: v for k, v in train_cfg.items() if k not in RUNTIME_KEYS}
    if train.get("strategy") == "ddp":
        # The default, and what every checkpoint written before train.strategy existed is:
        # those keep their key and resume.
        del train["strategy"]
    return {
        "model": model_name,
        "model_config": dict(model_cfg),
        "train": train,
        "seed": seed,
        "features": {s: recorded_checksum(p) for s, p in FeatureStores.of(features).items()},
    }


@dataclass
class Resumable:
    """What a checkpoint restores besides the RNG states."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    run: RunState
    # fsdp and hybrid: sharded checkpoints (torch.distributed.checkpoint), on every rank.
    sharded: bool = False


class Checkpointer:
    """When to checkpoint (every ``train.checkpoint_every`` steps; on a stop request), what
    goes in, and resuming from the newest checkpoint of this run.

    Without ``files`` (no checkpoint directory) only stop requests are handled. Call
    :meth:`on_step` after every optimizer step on every rank, and :meth:`close` at the end.
    """

    def __init__(
        self,
        files: Checkpoints | None,
        train_cfg: dict[str, Any],
        env: DistEnv,
        stop: StopRequest,
        what: Resumable,
        steps_per_epoch: int,
    ) -> None:
        self.files, self.stop, self.what = files, stop, what
        self.every = int(train_cfg.get("checkpoint_every", 0))
        self.main, self.world_size = env.rank == 0, env.world_size
        self.steps_per_epoch = steps_per_epoch
        self._agree = distributed.AnyRank()

    def on_step(self, epoch: int, step: int, total: torch.Tensor) -> None:
        """After ``step`` steps of ``epoch``: stop if any rank was asked to, else checkpoint
        when the interval is due. ``total`` is the epoch's loss sum so far."""
        if self._agree.poll(self.stop.signum is not None):
            signum = self.stop.signum or signal.SIGTERM  # a peer was asked; this rank was not
            path = self.save(epoch, step, total)
            requeued = (
                self.main and signum == signal.SIGUSR1 and requeue_job(environment.slurm_job_id())
            )
            raise TrainingStopped(signum, path, requeued)
        global_step = (epoch - 1) * self.steps_per_epoch + step
        if self.files is not None and self.every > 0 and global_step % self.every == 0:
            self.save(epoch, step, total)

    def save(self, epoch: int, step: int, total: torch.Tensor) -> Path | None:
        """A checkpoint after ``step`` steps of ``epoch`` (collective; rank 0 writes, or
        every rank its shards)."""
        w = self.what
        w.run.at_step(epoch, step, distributed.all_reduce_mean(total).cpu())
        if w.sharded and self.files is not None:
            return self._save_sharded(epoch, step)
        if not self.main or self.files is None:
            return None
        state = {
            "model": {k: v.detach().cpu() for k, v in w.model.state_dict().items()},
            "optimizer": w.optimizer.state_dict(),
            "schedule": w.schedule.state_dict(),
            "rng": rng_state(),
            # Early stopping's state goes with the run's, in one entry (format 1).
            "run": w.run.state_dict() | w.schedule.stopping_state_dict(),
            "world_size": self.world_size,
        }
        path = self.files.save(state, (epoch - 1) * self.steps_per_epoch + step)
        log.info("checkpoint: epoch %d step %d/%d -> %s", epoch, step, self.steps_per_epoch, path)
        return path

    def _save_sharded(self, epoch: int, step: int) -> Path:
        assert self.files is not None
        w = self.what
        best = w.schedule.best_state
        parts = checkpoint_dcp.tensors(w.model, w.optimizer, best)
        stopping = w.schedule.stopping_state_dict() | {"best_state": None}  # in ``parts``
        state = {
            "schedule": w.schedule.state_dict(),
            "rng": rng_state(),
            "run": w.run.state_dict() | stopping,
            "has_best": best is not None,
            "world_size": self.world_size,
        }
        path = self.files.save_sharded(parts, state, (epoch - 1) * self.steps_per_epoch + step)
        if self.main:
            log.info(
                "checkpoint: epoch %d step %d/%d -> %s (sharded, %d rank(s))",
                epoch, step, self.steps_per_epoch, path, self.world_size,
            )  # fmt: skip
        return path

    def resume(self, device: torch.device) -> tuple[int, int] | None:
        """Load the newest checkpoint of this run into everything; (epoch, step) or None."""
        if self.files is None:
            return None
        found = self.files.load_latest(map_location="cpu")
        if self.what.sharded:
            _agree(found, self.files)
        if found is None:
            self._from_scratch(self.files)
            return None
        state, path = found
        w = self.what
        best = None
        if w.sharded:
            best = self._load_sharded(state, path)
        else:
            w.model.load_state_dict(state["model"])
            w.optimizer.load_state_dict(state["optimizer"])
        w.schedule.load_state_dict(state["schedule"])
        set_rng_state(state["rng"])
        w.run.load_state_dict(state["run"])
        w.schedule.load_stopping_state_dict(state["run"], device)
        if w.sharded:
            w.schedule.best_state = best
        if self.main:
            log.info(
                "resuming from %s: epoch %d, step %d (written with %d rank(s))",
                path, w.run.epoch, w.run.step, state["world_size"],
            )  # fmt: skip
        return w.run.epoch, w.run.step

    def _load_sharded(self, state: dict[str, Any], path: Path) -> dict[str, torch.Tensor] | None:
        """The shards of ``path`` into the model and optimizer; early stopping's best weights."""
        if not path.is_dir():
            raise CheckpointError(f"{path} is not a sharded checkpoint (a .dcp directory)")
        w = self.what
        try:
            return checkpoint_dcp.load(path, w.model, w.optimizer, bool(state["has_best"]))
        except Exception as exc:  # DCP raises its CheckpointException on every rank
            raise CheckpointError(
                f"cannot read the sharded checkpoint {path}: {type(exc).__name__}: {exc}. "
                f"Delete {path} to resume from the one before"
            ) from exc

    def _from_scratch(self, files: Checkpoints) -> None:
        restarts = environment.restart_count()
        if restarts:
            raise CheckpointError(
                f"this SLURM job was requeued (restart {restarts}) to resume training, but "
                f"{files.dir} holds no checkpoint: was it deleted, or is it on node-local "
                "storage? Keep .checkpoints on a filesystem all nodes share"
            )
        if self.main:
            others = files.others()
            log.info(
                "no checkpoint of this run in %s: training from scratch%s",
                files.dir,
                f" ({len(others)} other run(s) there, for other configs)" if others else "",
            )

    def finish(self) -> None:
        """Remove this run's checkpoints on rank 0: the outputs hold the result now."""
        if self.main and self.files is not None:
            self.files.clear()

    def close(self) -> None:
        """Finish the outstanding stop-request exchange (before the process group goes)."""
        self._agree.close()
