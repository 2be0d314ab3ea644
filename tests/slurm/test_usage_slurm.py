"""Usage recorded inside SLURM jobs, against sacct, and rules sized from it on the local cluster.

The cluster enforces memory (cgroups: a job over its --mem ends OUT_OF_MEMORY) and keeps
accounting (sacct). One tiny workflow (the built-in dataset's generate step, tier `array`:
4000 MB) runs four times in a row: with no history (its tier), sized from the first run's
usage (far less), sized too small by a history edited to 3/4 of the truth (killed,
retried with twice as much), and once more (sized from the retry's record: enough at once).
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest
from slurmenv import sacct_megabytes
from test_pipeline_slurm import slurm_profile
from workdir import make_workdir, snakemake

pytestmark = pytest.mark.slurm

RAW = "data/raw.zarr"
SIZING = "sizing={from_usage: true, headroom: 1.5, min_mem_mb: 100, mem_step_mb: 20}"
# A step run straight under sbatch (no Snakemake in the job): its tree is the batch step.
DIRECT = (
    "#!/bin/bash\nexec hpcpipe generate --params '{params}' --output {out} --threads 2 "
    "--log {log} --rule generate --wildcards= --mem-mb 2000 --runtime 10\n"
)
BIG = {"builtin": {"n_days": 3000, "n_lat": 64, "n_lon": 128, "seed": 1, "start": "2000-01-01"},
       "variables": ["t2m", "z500"]}  # fmt: skip


def _job_ids(out: str) -> list[str]:
    return re.findall(r"has been submitted with SLURM jobid (\d+)", out)


def _sacct(slurm_cluster, step: str) -> tuple[float, float]:
    """(MaxRSS in MB, TotalCPU in s) of a job step; sacct has them once the job is stored."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        out = slurm_cluster.run(["sacct", "-n", "-P", "-j", step, "-o", "MaxRSS,TotalCPU"])
        rss, _, cpu = out.stdout.strip().partition("|")
        if rss and rss[-1] in "KMG" and cpu:
            return sacct_megabytes(rss), _seconds(cpu)
        time.sleep(1)
    raise AssertionError(f"sacct has no MaxRSS/TotalCPU for {step}")


def _seconds(text: str) -> float:
    """sacct's [DD-[HH:]]MM:SS[.mmm] in seconds."""
    days, _, rest = text.rpartition("-")
    parts = [float(p) for p in rest.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0.0)
    return int(days or 0) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]


def test_recorded_usage_agrees_with_sacct(slurm_cluster, tmp_path: Path) -> None:
    """Peak RSS within 15 % of sacct's MaxRSS, CPU time within 15 % of its TotalCPU."""
    script = DIRECT.format(params=json.dumps(BIG), out=tmp_path / "raw.zarr",
                           log=tmp_path / "generate.log")  # fmt: skip
    (tmp_path / "job.sh").write_text(script)
    res = slurm_cluster.sbatch("-c2", "--mem=2000", "--export=ALL",
                               script=f"bash {tmp_path / 'job.sh'}", workdir=tmp_path,
                               wait=True, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    job = res.stdout.strip().split(";")[0]
    usage = json.loads((tmp_path / "raw.zarr.manifest.json").read_text())["usage"]
    max_rss, total_cpu = _sacct(slurm_cluster, f"{job}.batch")
    assert abs(usage["peak_rss_mb"] - max_rss) <= 0.15 * max_rss, (usage, max_rss)
    assert abs(usage["cpu_s"] - total_cpu) <= 0.15 * total_cpu, (usage, total_cpu)
    assert usage["meter_cpu_s"] <= 0.01 * usage["wall_s"], usage


def _run(wd: Path, profile: Path, *args: str) -> tuple[list[str], str]:
    proc = snakemake(wd, "--profile", str(profile), RAW, *args, timeout=300, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return _job_ids(out), out


def _mem(slurm_cluster, job: str) -> int:
    """The job's memory as slurmctld records it (MB)."""
    return int(slurm_cluster.show_job(job)["MinMemoryNode"].rstrip("M"))


def _recorded(wd: Path) -> dict:
    return json.loads((wd / f"{RAW}.manifest.json").read_text())


def test_rules_are_sized_from_recorded_usage(slurm_cluster, tmp_path: Path) -> None:
    profile = slurm_profile(tmp_path / "profile", retries=2, config=[SIZING])
    wd = make_workdir(tmp_path / "wd")
    # 1. No history: the tier's 4000 MB.
    (job,), _ = _run(wd, profile)
    assert _mem(slurm_cluster, job) == 4000
    first = _recorded(wd)["usage"]
    need = first["job_peak_rss_mb"]
    assert first["peak_rss_mb"] <= need < 600, first

    # 2. Sized from it: at most 600 MB, and it fits.
    (job,), _ = _run(wd, profile, "--forcerun", "generate")
    asked = _mem(slurm_cluster, job)
    assert asked == max(100, math.ceil(need * 1.5 / 20) * 20) and asked <= 600, (need, asked)
    assert slurm_cluster.state(job) == "COMPLETED"
    assert _recorded(wd)["requested"]["mem_mb"] == asked

    # 3. A history that says too little: killed, retried with twice as much.
    need = _recorded(wd)["usage"]["job_peak_rss_mb"]
    small = math.floor(need * 0.75 / 20) * 20  # what the job will ask for at first
    assert 2 * small > 1.2 * need, (need, small)
    manifest = wd / f"{RAW}.manifest.json"
    edited = _recorded(wd)
    edited["usage"].update(peak_rss_mb=small / 1.5 - 1, job_peak_rss_mb=small / 1.5 - 1)
    manifest.write_text(json.dumps(edited))
    jobs, out = _run(wd, profile, "--forcerun", "generate")
    assert len(jobs) == 2, out[-4000:]
    assert slurm_cluster.state(jobs[0]) == "OUT_OF_MEMORY", (need, small)
    assert [_mem(slurm_cluster, j) for j in jobs] == [small, 2 * small]
    assert "Retried (attempt 2 of 3)" in out

    # 4. The run after sizes from the retry's record: enough at the first attempt.
    (job,), _ = _run(wd, profile, "--forcerun", "generate")
    assert slurm_cluster.state(job) == "COMPLETED"
    assert _mem(slurm_cluster, job) >= _recorded(wd)["usage"]["job_peak_rss_mb"]
