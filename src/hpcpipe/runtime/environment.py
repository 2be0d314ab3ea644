"""The launcher's environment: the one module that reads SLURM and torchrun variables.

Like submitit's job environment and Lightning's ``ClusterEnvironment``: one table says where
each launcher keeps each field; everything else asks this module (rank, world, master, the
SLURM job) and never reads the variables itself. No torch here: array steps import it too.
"""

from __future__ import annotations

import functools
import os
import re
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Launcher = Literal["srun", "torchrun", "single"]

# Where each launcher keeps each field (the first variable that is set wins), as in submitit.
LAUNCHER_VARIABLES: dict[str, dict[str, tuple[str, ...]]] = {
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
        "node_id": ("SLURM_NODEID",),
        "tasks_per_node": ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"),
    },
}
# What SLURM says a job was given, and how often it was requeued.
SLURM_ALLOCATION = {
    "cpus_per_task": "SLURM_CPUS_PER_TASK",
    "mem_per_node": "SLURM_MEM_PER_NODE",
    "mem_per_cpu": "SLURM_MEM_PER_CPU",
    "restart_count": "SLURM_RESTART_COUNT",
}
# The GPUs SLURM (or the user) made visible.
VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"
# What a record of the job keeps (provenance manifests, log lines), named without "SLURM_".
SLURM_JOB_VARIABLES = (
    "SLURM_JOB_ID", "SLURM_JOB_PARTITION", "SLURM_JOB_NODELIST", "SLURM_CPUS_PER_TASK",
    "SLURM_MEM_PER_NODE", "SLURM_NTASKS", VISIBLE_DEVICES, "SLURM_RESTART_COUNT",
)  # fmt: skip
# Step ids of the batch script and the extern step: processes there were not started by srun.
_NOT_SRUN_STEPS = {"batch", "extern", "interactive", "4294967294", "4294967295", "4294967293"}
PORT_BASE, PORT_SPAN = 15000, 20000
DEFAULT_PORT = 29500


def _get(environ: Mapping[str, str], launcher: str, field: str) -> str | None:
    for name in LAUNCHER_VARIABLES[launcher][field]:
        value = environ.get(name, "").strip()
        if value:
            return value
    return None


def int_value(text: str | None) -> int | None:
    """The integer a SLURM variable holds; "4(x2)" and "4,2" per-node lists give the first."""
    value = (text or "").strip()
    if not value:
        return None
    head = value.split("(")[0].split(",")[0]
    return int(head) if head.isdigit() else None


def slurm_value(field: str, environ: Mapping[str, str] = os.environ) -> int | None:
    """An allocation field of :data:`SLURM_ALLOCATION` as an integer (None when unset)."""
    return int_value(environ.get(SLURM_ALLOCATION[field]))


def slurm_job_id(environ: Mapping[str, str] = os.environ) -> str | None:
    return _get(environ, "srun", "job_id")


def slurm_job(environ: Mapping[str, str] = os.environ) -> dict[str, str] | None:
    """The SLURM job this step runs in (id, partition, nodes, ...), or None outside SLURM."""
    if "SLURM_JOB_ID" not in environ:
        return None
    return {
        k.removeprefix("SLURM_").lower(): environ[k] for k in SLURM_JOB_VARIABLES if k in environ
    }


def node_name(environ: Mapping[str, str] = os.environ) -> str:
    """The SLURM node this process runs on (several slurmd may share one host), else the host."""
    return environ.get("SLURMD_NODENAME", "").strip() or socket.gethostname().split(".")[0]


def restart_count(environ: Mapping[str, str] = os.environ) -> int:
    """How often SLURM has requeued this job (0 outside SLURM and on the first run)."""
    return slurm_value("restart_count", environ) or 0


def launcher_rank(environ: Mapping[str, str] = os.environ) -> int:
    """This process's rank as torchrun or srun numbered it (0 alone).

    For steps that only need to know whether they are rank 0 (they write the outputs).
    """
    rank = int_value(_get(environ, "torchrun", "rank"))  # torchrun's wins inside SLURM
    return rank if rank is not None else (int_value(_get(environ, "srun", "rank")) or 0)


def in_job_step(environ: Mapping[str, str] = os.environ) -> bool:
    """True inside a job step started by srun; False in a batch script or outside SLURM."""
    return _get(environ, "srun", "step_id") is not None


def tasks_on_this_node(environ: Mapping[str, str] = os.environ) -> int:
    """Tasks of this srun step on this node, from SLURM's "2(x3),1" per-node list."""
    counts: list[int] = []
    for part in (_get(environ, "srun", "tasks_per_node") or "").split(","):
        num, _, rep = part.partition("(x")
        if num.strip().isdigit():
            counts += [int(num)] * (int(rep.rstrip(")")) if rep.rstrip(")").isdigit() else 1)
    node = int_value(_get(environ, "srun", "node_id")) or 0
    return counts[node] if node < len(counts) else 1


def ranks_per_node(environ: Mapping[str, str] = os.environ) -> int | None:
    """Ranks on each node of this run, when every node has the same number; None otherwise.

    torchrun's ``LOCAL_WORLD_SIZE`` (its ``--nproc-per-node``) first, then SLURM's per-node
    task list ("2(x3)"; uneven lists such as "2(x3),1" give None). Nothing set: None. Hybrid
    sharding derives its 2-D mesh from this (nodes x ranks per node).
    """
    local = int_value(_get(environ, "torchrun", "local_world_size"))
    if local is not None and _get(environ, "torchrun", "rank") is not None:
        return local
    counts: set[int] = set()
    for part in (_get(environ, "srun", "tasks_per_node") or "").split(","):
        num = part.partition("(x")[0].strip()
        if num.isdigit():
            counts.add(int(num))
    return counts.pop() if len(counts) == 1 else None


def visible_devices(environ: Mapping[str, str] = os.environ) -> list[str] | None:
    """The GPU ids made visible to this process, or None when nobody restricted them."""
    visible = environ.get(VISIBLE_DEVICES)
    if visible is None:
        return None
    return [v for v in visible.split(",") if v.strip() not in ("", "-1", "NoDevFiles")]


def torchrun_environ(rank: int, world_size: int, port: int) -> dict[str, str]:
    """The variables torchrun gives rank ``rank`` of a one-node run (hpcpipe launch sets them)."""
    tr = LAUNCHER_VARIABLES["torchrun"]
    values = {"rank": rank, "local_rank": rank, "world_size": world_size,
              "local_world_size": world_size, "master_addr": "127.0.0.1", "master_port": port}  # fmt: skip
    return {tr[field][0]: str(value) for field, value in values.items()}


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
