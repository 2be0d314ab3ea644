"""This process's memory cgroup: where it is, and the limit it sets (cgroup v1 and v2).

The one place that reads ``/proc/self/cgroup``: :mod:`hpcpipe.runtime.allocation` takes the
memory limit from here outside SLURM, :mod:`hpcpipe.usage` the SLURM job's cgroup (to sum the
RSS of every process of the job on this node).
"""

from __future__ import annotations

from pathlib import Path

PROC_CGROUP = Path("/proc/self/cgroup")
SYS_CGROUP = Path("/sys/fs/cgroup")
# What the kernel writes for "no limit" in v1 (a page-rounded 2**63 - 1); v2 writes "max".
UNLIMITED = 1 << 60


def memory_cgroup(proc: Path = PROC_CGROUP, sysfs: Path = SYS_CGROUP) -> Path | None:
    """The directory of this process's memory cgroup, or None where there is none."""
    try:
        lines = proc.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        hierarchy, controllers, path = line.split(":", 2)
        rel = path.strip("/")
        if "memory" in controllers.split(","):  # cgroup v1
            where = sysfs / "memory" / rel
        elif hierarchy == "0" and not controllers:  # cgroup v2: one unified tree
            where = sysfs / rel
        else:
            continue
        if where.is_dir():
            return where
    return None


def job_cgroup(proc: Path = PROC_CGROUP, sysfs: Path = SYS_CGROUP) -> Path | None:
    """The memory cgroup of this process's SLURM job (``.../job_<id>``), or None outside one."""
    here = memory_cgroup(proc, sysfs)
    while here is not None and here != here.parent:
        if here.name.startswith("job_"):
            return here
        if here in (sysfs, sysfs / "memory"):
            return None
        here = here.parent
    return None


def _limit(where: Path) -> int | None:
    for name in ("memory.max", "memory.limit_in_bytes"):  # v2, v1
        try:
            raw = (where / name).read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < UNLIMITED:
            return int(raw)
    return None


def memory_limit_bytes(proc: Path = PROC_CGROUP, sysfs: Path = SYS_CGROUP) -> int | None:
    """The tightest memory limit over this process's cgroup and its ancestors (a limit set
    above it, as a SLURM job's over its steps, holds it too); None if nothing limits it."""
    here = memory_cgroup(proc, sysfs)
    limits = []
    while here is not None:
        if (found := _limit(here)) is not None:
            limits.append(found)
        if here in (sysfs, sysfs / "memory") or here == here.parent:
            break
        here = here.parent
    if not limits:  # no readable cgroup of its own: a container's namespaced root
        for root in (sysfs, sysfs / "memory"):
            if (found := _limit(root)) is not None:
                limits.append(found)
    return min(limits) if limits else None
