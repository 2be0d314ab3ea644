"""What this step was given, CPUs, memory and GPUs, and how it shares them out.

Inside a SLURM job the allocation is authoritative: SLURM_CPUS_PER_TASK and SLURM_MEM_PER_*
when set, else what slurmctld says of the job (`scontrol show job`), because the Snakemake
SLURM plugin strips those variables before it starts the step with `srun -n1`. GPUs are the
ones SLURM made visible. Outside SLURM: what Snakemake granted (``--threads``), the CPU
affinity mask and the cgroup memory limit. Never the host's size.

The shares below are the one place where a step decides how much of its allocation each
part may use (the rules' resource tiers decide the allocation itself).
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass

from hpcpipe.runtime import cgroup, environment, slurm
from hpcpipe.runtime.environment import DistEnv

# Share of a Dask worker's memory that Dask may fill; the rest is the process's own overhead
# and the client's share in local mode.
DASK_MEMORY_FRACTION = 0.8
# A Dask worker process uses about 140 MB of its own; below this limit it pauses at its
# threshold before holding any data and waits for ever instead of failing: refuse instead.
MIN_WORKER_MEMORY = 256 * 2**20
# Training keeps its features in memory when they take at most this share of the allocation.
IN_MEMORY_SHARE = 0.5
# On a GPU, in-memory features up to this share of its memory live there.
ON_GPU_SHARE = 0.25


@dataclass(frozen=True)
class Allocation:
    cpus: int
    memory_bytes: int
    gpus: int
    in_slurm: bool

    @property
    def memory_gb(self) -> float:
        return self.memory_bytes / 1e9


def _host_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 4 << 30


def allocation(threads: int | None = None) -> Allocation:
    """The resources this step may use. ``threads`` is Snakemake's grant on a laptop."""
    job_id = environment.slurm_job_id()
    in_slurm = job_id is not None
    cpus_var = environment.slurm_value("cpus_per_task")
    per_node = environment.slurm_value("mem_per_node")
    job = {}
    if job_id and not (cpus_var and per_node):
        job = slurm.job_resources(job_id)
    cpus = (cpus_var or job.get("cpus_per_task")) if in_slurm else None
    if cpus is None:
        affinity = (
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        )
        cpus = min(threads, affinity or 1) if threads else (affinity or 1)
    mem = None
    if in_slurm:
        per_cpu = environment.slurm_value("mem_per_cpu")
        if per_node:
            mem = per_node * 1024 * 1024
        elif per_cpu:
            mem = per_cpu * 1024 * 1024 * cpus
        elif "mem_mb" in job:
            mem = job["mem_mb"] * 1024 * 1024
    if mem is None:
        mem = cgroup.memory_limit_bytes() or _host_memory_bytes()
    return Allocation(cpus=max(1, cpus), memory_bytes=mem, gpus=visible_gpus(), in_slurm=in_slurm)


def visible_gpus() -> int:
    """GPUs this process may use: those SLURM/CUDA made visible, else the NVIDIA devices.

    Counted without importing torch (slow to import), so array steps start fast.
    """
    visible = environment.visible_devices()
    return len(visible) if visible is not None else len(glob.glob("/dev/nvidia[0-9]*"))


def memory_per_task(alloc: Allocation) -> int:
    """Bytes one task of a multi-task step may use: the node's memory shared by its tasks.

    With --mem-per-cpu the allocation is already per task (memory per CPU x CPUs per task).
    """
    if not alloc.in_slurm or environment.slurm_value("mem_per_cpu"):
        return alloc.memory_bytes
    return alloc.memory_bytes // max(1, environment.tasks_on_this_node())


def threads_per_rank(env: DistEnv, cpus: int) -> int:
    """CPU threads for one rank, given the CPUs granted (per task under srun, per step otherwise)."""
    return max(1, cpus // max(1, env.local_world_size))
