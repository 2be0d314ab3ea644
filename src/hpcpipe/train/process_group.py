"""The torch.distributed process group of a training run, and the collectives it uses.

``init()`` turns a :class:`~hpcpipe.runtime.environment.DistEnv` (read from the launcher's
variables by hpcpipe.runtime) into a process group (only when there is more than one rank)
and always tears it down. Training asks :func:`is_main`, :func:`all_reduce_mean`,
:func:`barrier` and :class:`AnyRank`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
from collections.abc import Iterator

import torch
import torch.distributed as dist

from hpcpipe.runtime.environment import DistEnv

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
