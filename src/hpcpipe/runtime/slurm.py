"""The SLURM commands a running step uses: what slurmctld recorded of its job, requeue."""

from __future__ import annotations

import logging
import subprocess

log = logging.getLogger("hpcpipe.slurm")


def memory_mb(text: str) -> int | None:
    """SLURM's memory notation ("4000", "4000M", "3.5G", ...) in MB, or None."""
    units = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
    text = text.strip()
    if text and text[-1].upper() in units and text[:-1].replace(".", "", 1).isdigit():
        return int(float(text[:-1]) * units[text[-1].upper()])
    return int(text) if text.isdigit() else None


def job_resources(job_id: str) -> dict[str, int]:
    """CPUs per task and memory (MB) of a SLURM job, as slurmctld records them."""
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
    mem = memory_mb(tres.get("mem", "")) or memory_mb(fields.get("MinMemoryNode", ""))
    if mem:
        res["mem_mb"] = mem
    return res


def requeue_job(job_id: str | None) -> bool:
    """Ask SLURM to requeue job ``job_id``: it is stopped now and runs its batch script again.

    True if SLURM accepted (the job must be requeueable: sbatch --requeue, or JobRequeue=1 in
    slurm.conf); False outside SLURM (no job id) or when SLURM refused, with its reason logged.
    """
    if not job_id:
        return False
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
