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
from pathlib import Path

import pytest
from slurmenv import sacct_megabytes, sacct_seconds, sacct_step, submitted_job_ids
from test_pipeline_slurm import slurm_profile
from workdir import make_workdir, snakemake

pytestmark = pytest.mark.slurm

RAW = "data/raw.zarr"
SIZING = "sizing={from_usage: true, headroom: 1.5, min_mem_mb: 100, mem_step_mb: 20}"
# The meter every step runs under (hpcpipe.usage.Meter), straight under sbatch (no Snakemake
# in the job: its tree is the batch step's), around a process and a child that hold their
# memory for 3 s while the child burns CPU: a peak that sacct's samples (every second here)
# see too, so the two measure the same thing.
METERED = """
import json, subprocess, sys, time
from hpcpipe.usage import Meter
meter = Meter().start()
held = bytearray(150 * 2**20)
held[::4096] = b"x" * len(held[::4096])  # touched: resident
child = ("b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096]); import time; "
         "t = time.process_time()\\nwhile time.process_time() - t < 3: pass")
subprocess.run([sys.executable, "-c", child], check=True)
json.dump(meter.stop(), open(sys.argv[1], "w"))
"""


def test_recorded_usage_agrees_with_sacct(slurm_cluster, tmp_path: Path) -> None:
    """Peak RSS within 15 % of sacct's MaxRSS, CPU time within 15 % of its TotalCPU."""
    (tmp_path / "metered.py").write_text(METERED)
    res = slurm_cluster.sbatch("-c2", "--mem=2000", "--export=ALL", "--acctg-freq=task=1",
                               script=f"python {tmp_path / 'metered.py'} {tmp_path / 'usage.json'}",
                               workdir=tmp_path, wait=True, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    job = res.stdout.strip().split(";")[0]
    usage = json.loads((tmp_path / "usage.json").read_text())
    acct = sacct_step(slurm_cluster, f"{job}.batch", ("MaxRSS", "TotalCPU"))
    max_rss, total_cpu = sacct_megabytes(acct["MaxRSS"]), sacct_seconds(acct["TotalCPU"])
    assert abs(usage["peak_rss_mb"] - max_rss) <= 0.15 * max_rss, (usage, max_rss)
    assert abs(usage["cpu_s"] - total_cpu) <= 0.15 * total_cpu, (usage, total_cpu)
    # a bound against a runaway sampler; its share is measured by scripts/bench usage
    assert usage["meter_cpu_s"] <= 0.05 * usage["wall_s"], usage


def _run(wd: Path, profile: Path, *args: str) -> tuple[list[str], str]:
    proc = snakemake(wd, "--profile", str(profile), RAW, *args, timeout=300, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return submitted_job_ids(out), out


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
