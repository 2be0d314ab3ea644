"""What this step was given: CPUs, memory and GPUs, from the allocation, never the host.

Inside a SLURM job the allocation is authoritative: SLURM_CPUS_PER_TASK and SLURM_MEM_PER_*
when set, else what slurmctld says of the job (`scontrol show job`), because the Snakemake
SLURM plugin strips those variables before it starts the step with `srun -n1`. GPUs are the
ones SLURM made visible. Outside SLURM: what Snakemake granted (``--threads``), the CPU
affinity mask and the cgroup memory limit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


def _int_env(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    # SLURM writes e.g. "4(x2)" for per-node lists; the first number is ours.
    head = value.split("(")[0].split(",")[0]
    return int(head) if head.isdigit() else None


def _host_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 4 << 30


def _cgroup_memory_bytes() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                raw = f.read().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < (1 << 60):
            return int(raw)
    return None


@dataclass(frozen=True)
class Allocation:
    cpus: int
    memory_bytes: int
    gpus: int
    in_slurm: bool

    @property
    def memory_gb(self) -> float:
        return self.memory_bytes / 1e9


# What a record of the job keeps (provenance manifests, log lines), named without "SLURM_".
SLURM_JOB_VARIABLES = (
    "SLURM_JOB_ID", "SLURM_JOB_PARTITION", "SLURM_JOB_NODELIST", "SLURM_CPUS_PER_TASK",
    "SLURM_MEM_PER_NODE", "SLURM_NTASKS", "CUDA_VISIBLE_DEVICES", "SLURM_RESTART_COUNT",
)  # fmt: skip


def slurm_job() -> dict[str, str] | None:
    """The SLURM job this step runs in (id, partition, nodes, ...), or None outside SLURM."""
    if "SLURM_JOB_ID" not in os.environ:
        return None
    return {
        k.removeprefix("SLURM_").lower(): os.environ[k]
        for k in SLURM_JOB_VARIABLES
        if k in os.environ
    }


def launcher_rank() -> int:
    """This process's rank as torchrun or srun numbered it (0 alone), without importing torch.

    hpcpipe.distributed maps the full launcher environment; this is for steps that only need
    to know whether they are rank 0.
    """
    rank = _int_env("RANK")  # torchrun's wins: it may run inside a SLURM step
    return rank if rank is not None else (_int_env("SLURM_PROCID") or 0)


def in_job_step() -> bool:
    """True inside a job step started by srun; False in a batch script or outside SLURM."""
    return bool(os.environ.get("SLURM_STEP_ID") or os.environ.get("SLURM_STEPID"))


def _memory_mb(text: str) -> int | None:
    units = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
    text = text.strip()
    if text and text[-1].upper() in units and text[:-1].replace(".", "", 1).isdigit():
        return int(float(text[:-1]) * units[text[-1].upper()])
    return int(text) if text.isdigit() else None


def slurm_job_resources(job_id: str) -> dict[str, int]:
    """CPUs per task and memory (MB) of a SLURM job, as slurmctld records them."""
    import subprocess

    try:
        out = subprocess.run(
            ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
    res: dict[str, int] = {}
    if fields.get("CPUs/Task", "").isdigit():
        res["cpus_per_task"] = int(fields["CPUs/Task"])
    tres = dict(t.split("=", 1) for t in fields.get("TRES", "").split(",") if "=" in t)
    mem = _memory_mb(tres.get("mem", "")) or _memory_mb(fields.get("MinMemoryNode", ""))
    if mem:
        res["mem_mb"] = mem
    return res


def allocation(threads: int | None = None) -> Allocation:
    """The resources this step may use. ``threads`` is Snakemake's grant on a laptop."""
    in_slurm = "SLURM_JOB_ID" in os.environ
    job = {}
    if in_slurm and not (
        os.environ.get("SLURM_CPUS_PER_TASK") and os.environ.get("SLURM_MEM_PER_NODE")
    ):
        job = slurm_job_resources(os.environ["SLURM_JOB_ID"])
    cpus = (_int_env("SLURM_CPUS_PER_TASK") or job.get("cpus_per_task")) if in_slurm else None
    if cpus is None:
        affinity = (
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        )
        cpus = min(threads, affinity or 1) if threads else (affinity or 1)
    mem = None
    if in_slurm:
        per_node = _int_env("SLURM_MEM_PER_NODE")
        per_cpu = _int_env("SLURM_MEM_PER_CPU")
        if per_node:
            mem = per_node * 1024 * 1024
        elif per_cpu:
            mem = per_cpu * 1024 * 1024 * cpus
        elif "mem_mb" in job:
            mem = job["mem_mb"] * 1024 * 1024
    if mem is None:
        mem = _cgroup_memory_bytes() or _host_memory_bytes()
    return Allocation(cpus=max(1, cpus), memory_bytes=mem, gpus=visible_gpus(), in_slurm=in_slurm)


def visible_gpus() -> int:
    """GPUs this process may use: those SLURM/CUDA made visible, else the NVIDIA devices.

    Counted without importing torch (slow to import), so array steps start fast.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v for v in visible.split(",") if v.strip() not in ("", "-1", "NoDevFiles")]
        return len(ids)
    import glob

    return len(glob.glob("/dev/nvidia[0-9]*"))


def slurm_restart_count() -> int:
    """How often SLURM has requeued this job (0 outside SLURM and on the first run)."""
    return _int_env("SLURM_RESTART_COUNT") or 0


def requeue_job() -> bool:
    """Ask SLURM to requeue this job: it is stopped now and runs its batch script again.

    True if SLURM accepted (the job must be requeueable: sbatch --requeue, or JobRequeue=1 in
    slurm.conf); False outside SLURM or when SLURM refused, with its reason in the log.
    """
    import logging
    import subprocess

    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id:
        return False
    log = logging.getLogger("hpcpipe.resources")
    try:
        proc = subprocess.run(
            ["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("could not requeue SLURM job %s: %s", job_id, exc)
        return False
    if proc.returncode != 0:
        log.warning("SLURM refused to requeue job %s: %s", job_id, proc.stderr.strip())
        return False
    log.info("requeued SLURM job %s: it will resume from the checkpoint", job_id)
    return True


def _tasks_on_this_node() -> int:
    """Tasks of this srun step on this node, from SLURM's "2(x3),1" per-node list."""
    spec = os.environ.get("SLURM_STEP_TASKS_PER_NODE") or os.environ.get("SLURM_TASKS_PER_NODE", "")
    counts: list[int] = []
    for part in spec.split(","):
        num, _, rep = part.partition("(x")
        if num.strip().isdigit():
            counts += [int(num)] * (int(rep.rstrip(")")) if rep.rstrip(")").isdigit() else 1)
    node = _int_env("SLURM_NODEID") or 0
    return counts[node] if node < len(counts) else 1


def memory_per_task(alloc: Allocation) -> int:
    """Bytes one task of a multi-task step may use: the node's memory shared by its tasks.

    With --mem-per-cpu the allocation is already per task (memory per CPU x CPUs per task).
    """
    if not alloc.in_slurm or _int_env("SLURM_MEM_PER_CPU"):
        return alloc.memory_bytes
    return alloc.memory_bytes // max(1, _tasks_on_this_node())
