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


def _up(here: Path | None, sysfs: Path) -> list[Path]:
    """``here`` and the cgroups above it, up to its controller's root."""
    out: list[Path] = []
    while here is not None:
        out.append(here)
        if here in (sysfs, sysfs / "memory") or here == here.parent:
            break
        here = here.parent
    return out


def job_cgroup(proc: Path = PROC_CGROUP, sysfs: Path = SYS_CGROUP) -> Path | None:
    """The memory cgroup of this process's SLURM job (``.../job_<id>``), or None outside one."""
    jobs = [c for c in _up(memory_cgroup(proc, sysfs), sysfs) if c.name.startswith("job_")]
    return jobs[0] if jobs else None


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
    limits = [n for c in _up(memory_cgroup(proc, sysfs), sysfs) if (n := _limit(c)) is not None]
    if not limits:  # no readable cgroup of its own: a container's namespaced root
        limits = [n for c in (sysfs, sysfs / "memory") if (n := _limit(c)) is not None]
    return min(limits) if limits else None
