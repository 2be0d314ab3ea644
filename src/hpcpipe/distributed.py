"""The torch.distributed environment: the one module that reads launcher variables.

``DistEnv.from_environ()`` maps what srun or torchrun put into the environment to rank, local
rank, world size and the rendezvous address; ``init()`` turns that into a process group (only
when there is more than one rank) and always tears it down. Other code asks :func:`is_main`,
:func:`all_reduce_mean` and :func:`barrier` and never reads SLURM or torchrun variables.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import os
import re
import socket
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist

Launcher = Literal["srun", "torchrun", "single"]

# Where each launcher keeps each field (first variable that is set wins), as in submitit.
VARIABLES: dict[str, dict[str, tuple[str, ...]]] = {
    "torchrun": {
        "rank": ("RANK",),
        "local_rank": ("LOCAL_RANK",),
        "world_size": ("WORLD_SIZE",),
        "local_world_size": ("LOCAL_WORLD_SIZE",),
        "master_addr": ("MASTER_ADDR",),
        "master_port": ("MASTER_PORT",),
    },
    "srun": {
        "rank": ("SLURM_PROCID",),
        "local_rank": ("SLURM_LOCALID",),
        # The step's task count; SLURM_NTASKS is the job's and may be larger than the step's.
        "world_size": ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS"),
        "nodelist": ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"),
        "job_id": ("SLURM_JOB_ID", "SLURM_JOBID"),
        "step_id": ("SLURM_STEP_ID", "SLURM_STEPID"),
        "master_addr": ("MASTER_ADDR",),
        "master_port": ("MASTER_PORT",),
    },
}
# Step ids of the batch script and the extern step: processes there were not started by srun.
_NOT_SRUN_STEPS = {"batch", "extern", "interactive", "4294967294", "4294967295", "4294967293"}
PORT_BASE, PORT_SPAN = 15000, 20000
DEFAULT_PORT = 29500


def _get(environ: Mapping[str, str], launcher: str, field: str) -> str | None:
    for name in VARIABLES[launcher][field]:
        value = environ.get(name, "").strip()
        if value:
            return value
    return None


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a SLURM host list such as ``"gpu[01-03,07],login1"`` into host names.

    Handles comma-separated groups, each with any number of bracketed ranges (zero padding
    kept). Raises ValueError on anything else, so the caller may ask ``scontrol``.
    """
    groups = re.findall(r"(?:[^,\[]+|\[[^\]]*\])+", nodelist.strip())
    if not groups or ",".join(groups) != nodelist.strip():
        raise ValueError(f"cannot parse SLURM node list {nodelist!r}")
    hosts: list[str] = []
    for group in groups:
        hosts.extend(_expand_group(group, nodelist))
    return hosts


def _expand_group(group: str, nodelist: str) -> list[str]:
    m = re.match(r"([^\[]*)\[([^\]]*)\](.*)$", group)
    if not m:
        if "[" in group or "]" in group:
            raise ValueError(f"cannot parse SLURM node list {nodelist!r}")
        return [group]
    prefix, ranges, rest = m.groups()
    names: list[str] = []
    for part in ranges.split(","):
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()) or (hi and int(hi) < int(lo)):
            raise ValueError(f"cannot parse SLURM node list {nodelist!r} (range {part!r})")
        width = len(lo)
        names += [f"{prefix}{i:0{width}d}" for i in range(int(lo), int(hi or lo) + 1)]
    tails = _expand_group(rest, nodelist) if rest else [""]
    return [n + t for n in names for t in tails]


def _first_host(nodelist: str) -> str:
    try:
        return expand_nodelist(nodelist)[0]
    except ValueError:
        # An exotic list: SLURM's own parser is authoritative.
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True
        )
        return out.stdout.split()[0]


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in a (possibly one-process) distributed run."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = DEFAULT_PORT
    launcher: Launcher = "single"
    # Ranks of this step on this node that share one CPU grant (torchrun, hpcpipe launch);
    # under srun every task has its own CPUs (SLURM_CPUS_PER_TASK), so it stays 1.
    local_world_size: int = 1

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> DistEnv:
        """Read the launcher's variables: torchrun first (it may run inside a SLURM job), then srun."""
        tr = functools.partial(_get, environ, "torchrun")
        if tr("rank") is not None and tr("world_size") is not None:
            world = int(tr("world_size") or 1)
            return cls(
                rank=int(tr("rank") or 0),
                local_rank=int(tr("local_rank") or 0),
                world_size=world,
                master_addr=tr("master_addr") or "127.0.0.1",
                master_port=int(tr("master_port") or DEFAULT_PORT),
                launcher="torchrun" if world > 1 else "single",
                local_world_size=int(tr("local_world_size") or 1),
            )
        sr = functools.partial(_get, environ, "srun")
        step, rank, world = sr("step_id"), sr("rank"), int(sr("world_size") or 1)
        # Only a multi-task srun step has ranks; the batch script of an -n 4 job (SLURM_NTASKS=4
        # but one process) must not wait for three peers that never come.
        if rank is None or world <= 1 or step is None or step.lower() in _NOT_SRUN_STEPS:
            return cls()
        nodelist = sr("nodelist")
        addr = sr("master_addr") or (_first_host(nodelist) if nodelist else "127.0.0.1")
        port = sr("master_port")
        if port is None:
            # The same on every rank without any exchange; concurrent steps of one job differ.
            step_n = int(step) if step.isdigit() else 0
            port = str(PORT_BASE + (int(sr("job_id") or 0) + 1009 * step_n) % PORT_SPAN)
        return cls(
            rank=int(rank),
            local_rank=int(sr("local_rank") or 0),
            world_size=world,
            master_addr=addr,
            master_port=int(port),
            launcher="srun",
        )


def threads_per_rank(env: DistEnv, cpus: int) -> int:
    """CPU threads for one rank, given the CPUs granted (per task under srun, per step otherwise)."""
    return max(1, cpus // max(1, env.local_world_size))


# The host-side (gloo) group for control messages, while a process group exists.
_CONTROL: dist.ProcessGroup | None = None


@contextlib.contextmanager
def init(
    env: DistEnv, device_type: str = "cpu", timeout_s: float = 600.0
) -> Iterator[torch.device]:
    """Set up this rank (device, process group when world_size > 1); yield its torch device.

    NCCL on CUDA, gloo on CPU. The process group is destroyed on exit, also on error, so a
    failed rank does not leave its peers' sockets or a later group in the same process broken.
    """
    global _CONTROL
    if device_type == "cuda":
        # Each rank binds one GPU; modulo because SLURM may already show each task only its own.
        device = torch.device("cuda", env.local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    else:
        device = torch.device(device_type)
    try:
        if env.world_size > 1:
            dist.init_process_group(
                backend="nccl" if device.type == "cuda" else "gloo",
                init_method=f"tcp://{env.master_addr}:{env.master_port}",
                rank=env.rank,
                world_size=env.world_size,
                timeout=dt.timedelta(seconds=timeout_s),
            )
            # Control messages (stop requests) go over gloo on the host: polling them never
            # waits for the GPU, and they never queue behind DDP's gradient all-reduces.
            _CONTROL = dist.new_group(backend="gloo")
            if device.type == "cuda":
                check_gpu_binding(all_gather_object((socket.gethostname(), _gpu_id(device))))
        yield device
    finally:
        _CONTROL = None
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _gpu_id(device: torch.device) -> str:
    props = torch.cuda.get_device_properties(device)
    return str(getattr(props, "uuid", None) or f"{props.pci_bus_id}")


def all_gather_object(obj: object) -> list[object]:
    """``obj`` of every rank, in rank order (``[obj]`` in a single process)."""
    if not _active():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj, group=_CONTROL)
    return out


def check_gpu_binding(bindings: list[object]) -> None:
    """Fail when two ranks on one host bound the same GPU: more ranks than GPUs granted."""
    seen: dict[object, int] = {}
    for rank_, key in enumerate(bindings):
        if key in seen:
            host = key[0] if isinstance(key, tuple) else "?"
            raise RuntimeError(
                f"ranks {seen[key]} and {rank_} on {host} share one GPU: more ranks were "
                "started than GPUs were granted. Set the train rule's `tasks` to at most its "
                "`gpu` in the profile (one rank per GPU)"
            )
        seen[key] = rank_


class AnyRank:
    """Whether any rank raised a flag (a stop request), agreed by all ranks.

    ``poll(flag)`` must be called once per step on every rank. It sends this rank's flag
    without waiting and returns the agreement on the flags of the previous call: the answer
    is one step late but identical on every rank, and the step never waits for the network
    or the GPU. In a single process the flag is returned at once.
    """

    def __init__(self) -> None:
        self._pending: tuple[dist.Work, torch.Tensor] | None = None

    def poll(self, flag: bool) -> bool:
        if _CONTROL is None:
            return flag
        agreed = False
        if self._pending is not None:
            work, value = self._pending
            work.wait()
            agreed = bool(value.item())
        value = torch.tensor([int(flag)], dtype=torch.int32)
        work = dist.all_reduce(value, op=dist.ReduceOp.MAX, group=_CONTROL, async_op=True)
        assert work is not None
        self._pending = (work, value)
        return agreed

    def close(self) -> None:
        """Finish the outstanding exchange (before the process group goes)."""
        if self._pending is not None:
            self._pending[0].wait()
            self._pending = None


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if _active() else 0


def world_size() -> int:
    return dist.get_world_size() if _active() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that writes outputs and logs."""
    return rank() == 0


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over all ranks (a new tensor; the input is left alone)."""
    out = tensor.detach().clone()
    if not out.is_floating_point():
        out = out.double()
    if _active() and dist.get_world_size() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= dist.get_world_size()
    return out


def barrier() -> None:
    """Wait for all ranks (no-op in a single process)."""
    if _active():
        dist.barrier()
