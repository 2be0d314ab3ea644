"""Faults only a site-like cluster can show (markers ``faults``, ``multinode``): a node that fails
under a running job, a real out-of-memory kill, a controller restart, a full disk.

Each run must end with the results of an undisturbed run and never leave a partial output under
a final name. The counts join the fault summary printed at the end of the session.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pausepoints
import pytest
from faultkit import (
    FAULT_CFG,
    METRICS,
    count,
    finish,
    finished_outputs,
    log_text,
    partial_outputs,
    paused_env,
    run_in_background,
    taken_for_finished,
    wait_for,
)
from slurmenv import LOCAL_SLURM, in_ci, sacct_megabytes, sacct_step, submitted_job_ids
from test_pipeline_slurm import slurm_profile
from workdir import make_workdir, snakemake

pytestmark = [pytest.mark.slurm, pytest.mark.faults]

CNN_ONLY = {**FAULT_CFG, "train": {**FAULT_CFG["train"], "models": ["cnn"]}}
PREPARED = ("data/raw.zarr", "results/preprocessed.zarr", "results/features/train.zarr")


def _alive(pid: int) -> bool:
    """The process runs (a zombie, killed but not yet reaped, does not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def _crash_node(node: str) -> None:
    """What a node's crash does to SLURM: its slurmd and every process of its jobs die at
    once (SIGKILL; slurmstepd sits in the node's freezer cgroup, the tasks in its memory one
    too), so nothing reports the jobs as ended. SLURM would find out after SlurmdTimeout;
    the admin's "down" tells it now."""
    os.kill(int(Path(f"/run/slurmd-{node}.pid").read_text()), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while pids := _job_processes(node):
        assert time.monotonic() < deadline, f"processes of {node} survive SIGKILL: {pids}"
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    subprocess.run(["scontrol", "update", f"NodeName={node}", "State=DOWN",
                    "Reason=hpcpipe-test-crash"], check=True, timeout=30)  # fmt: skip


def _job_processes(node: str) -> set[int]:
    pids: set[int] = set()
    for controller in ("freezer", "memory"):
        for procs in Path(f"/sys/fs/cgroup/{controller}/slurm_{node}").rglob("cgroup.procs"):
            pids |= {int(pid) for pid in procs.read_text().split()}
    return {pid for pid in pids if _alive(pid)}


@pytest.fixture
def node_back_up(slurm_cluster) -> Iterator[list[str]]:
    """The nodes a test crashes, brought back afterwards whatever happened: once their killed
    slurmd is gone, `local-slurm start` starts it again and resumes the node."""
    crashed: list[str] = []
    yield crashed
    for node in crashed:
        pid = int(Path(f"/run/slurmd-{node}.pid").read_text())
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    if crashed:
        started = slurm_cluster.run([str(LOCAL_SLURM), "start"], timeout=180)
        assert started.returncode == 0, started.stderr[-3000:]


@pytest.mark.multinode
def test_node_failure_under_training_resumes_on_another_node(
    slurm_cluster, undisturbed: Path, node_back_up: list[str], tmp_path: Path
) -> None:
    """The node of a running training job crashes: the job is requeued by SLURM (the
    profile's --requeue) or retried by hpcpipe-slurm, runs on another GPU node (the crashed one
    is down), resumes from its checkpoint and ends with the undisturbed run's metrics."""
    wd = make_workdir(tmp_path / "wd", CNN_ONLY)
    snakemake(wd, "--until", "features", timeout=300)
    profile = slurm_profile(tmp_path / "profile")
    pause = tmp_path / "pause"
    every = CNN_ONLY["train"]["checkpoint_every"]
    env = paused_env(tmp_path / "bin", pause, step="train", model="cnn", after_step=every)
    proc = run_in_background(wd, profile, env)
    at = wait_for("training to pause", lambda: pausepoints.marker(pause, "paused"), proc)
    slurm_cluster.submitted.append(at["job"])
    failed = slurm_cluster.show_job(at["job"])["NodeList"]
    node_back_up.append(failed)
    _crash_node(failed)
    # Nothing of the first run goes on (the killed process is gone once init reaps it).
    wait_for("the crashed run to end", lambda: not _alive(at["pid"]), proc, timeout=30)
    pausepoints.release(pause)  # the rerun resumes after the pause point, never waits there
    code, out = finish(proc, timeout=600)
    assert code == 0, out[-4000:]
    log = log_text(wd, "train/cnn/0")
    # The last run's log: "(SLURM job <id>, restart 1, partition gpu, node <node>)" if SLURM
    # requeued it, without "restart" if hpcpipe-slurm submitted a new job.
    m = re.search(r"\(SLURM job (\d+)[^)]*, node (\S+)\)", log)
    assert m and "resuming from" in log, log[-3000:]
    assert m.group(2) != failed, (failed, m.group(0))
    got = json.loads((wd / METRICS[0]).read_text())
    assert got == json.loads((undisturbed / METRICS[0]).read_text())
    assert partial_outputs(wd) == []
    count("node failures survived")


def _max_rss_mb(slurm_cluster, job_id: str) -> float:
    """The batch step's peak memory as sacct records it (sampled every 2 s)."""
    return sacct_megabytes(sacct_step(slurm_cluster, f"{job_id}.batch", ("MaxRSS",))["MaxRSS"])


def test_out_of_memory_kill_is_retried_with_more_memory(
    slurm_cluster, undisturbed: Path, tmp_path: Path
) -> None:
    """The array steps' job, given 60% of what it was measured to need (sacct), is killed
    OUT_OF_MEMORY by the cgroup, retried with mem_mb x attempt, and finishes with the
    undisturbed outputs; Snakemake's log says why it retried."""
    profile = slurm_profile(tmp_path / "profile", retries=4)
    measured = make_workdir(tmp_path / "measured", CNN_ONLY)
    proc = snakemake(measured, "--profile", str(profile), "--until", "features", timeout=400)
    (job,) = submitted_job_ids(proc.stdout + proc.stderr)
    need = _max_rss_mb(slurm_cluster, job)

    wd = make_workdir(tmp_path / "wd", CNN_ONLY)
    first = math.ceil(0.6 * need)
    (wd / "oom.smk").write_text(f'include: "Snakefile"\n\n\nTIERS["array"]["mem_mb"] = {first}\n')
    proc = snakemake(wd, "-s", "oom.smk", "--profile", str(profile), "--until", "features",
                     timeout=600, check=False)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    jobs = submitted_job_ids(out)
    assert len(jobs) >= 2, out[-4000:]
    assert slurm_cluster.state(jobs[0]) == "OUT_OF_MEMORY", (need, first, jobs)
    assert slurm_cluster.show_job(jobs[0])["MinMemoryNode"] == f"{first}M"
    assert slurm_cluster.show_job(jobs[-1])["MinMemoryNode"] == f"{first * len(jobs)}M"
    assert "SLURM status is: 'OUT_OF_MEMORY'" in out and "Retried (attempt 2 of 5)" in out
    assert "ran out of memory" in out, out[-4000:]
    got, want = finished_outputs(wd), finished_outputs(undisturbed)
    for rel in PREPARED:
        assert got[rel] == want[rel], rel
    assert partial_outputs(wd) == []
    count("out-of-memory retries", len(jobs) - 1)


# A rule whose job waits until the test lets it finish; the next rule needs its output.
WAITING_SNAKEFILE = """
rule all:
    input:
        "second.txt",


rule first:
    output:
        "first.txt",
    resources:
        mem_mb=200,
        runtime=5,
    shell:
        "echo $SLURM_JOB_ID > started; while [ ! -e go ]; do sleep 0.2; done; echo done > {output}"


rule second:
    input:
        "first.txt",
    output:
        "second.txt",
    resources:
        mem_mb=200,
        runtime=5,
    shell:
        "cp {input} {output}"
"""


def _restart_controller(slurm_cluster, down_s: float) -> None:
    pid = int(Path("/run/slurmctld.pid").read_text())
    os.kill(pid, 15)
    deadline = time.monotonic() + 30
    while _alive(pid):
        assert time.monotonic() < deadline, "slurmctld did not stop"
        time.sleep(0.1)
    time.sleep(down_s)  # status checks fail meanwhile: they must ride it out
    subprocess.run(["slurmctld"], check=True, timeout=30)
    deadline = time.monotonic() + 30
    while slurm_cluster.run(["sinfo", "-h", "-o", "%P"]).returncode != 0:
        assert time.monotonic() < deadline, "slurmctld did not come back"
        time.sleep(0.5)


# squeue is the profile's default (sites without slurmdbd) and asks slurmctld; sacct asks
# slurmdbd, which stays up: with it, the run must not even notice.
@pytest.mark.parametrize("status_command", ["squeue", "sacct"])
def test_controller_restart_mid_run_is_ridden_through(
    slurm_cluster, status_command: str, tmp_path: Path
) -> None:
    """slurmctld stops for 5 s and starts again while a job runs: the job keeps running, the
    failed status checks are retried (the profile's status attempts) and the run finishes."""
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "Snakefile").write_text(WAITING_SNAKEFILE)
    profile = slurm_profile(
        tmp_path / "profile", **{"hpcpipe-slurm-status-command": status_command}
    )
    proc = run_in_background(wd, profile)
    job = wait_for("the first job to start", lambda: _read(wd / "started"), proc, timeout=120)
    slurm_cluster.submitted.append(job)
    try:
        # Longer than the status checks' interval (1 s in the test profile): several fail.
        _restart_controller(slurm_cluster, down_s=5)
    finally:  # never leave the later tests without a controller
        started = slurm_cluster.run([str(LOCAL_SLURM), "start"], timeout=180)
        assert started.returncode == 0, started.stderr[-3000:]
    assert slurm_cluster.state(job) == "RUNNING"  # the job kept running
    (wd / "go").touch()
    code, out = finish(proc, timeout=300)
    assert code == 0, out[-4000:]
    assert (wd / "second.txt").read_text() == "done\n"
    job_info = slurm_cluster.show_job(job)
    assert job_info["JobState"] == "COMPLETED" and job_info["Restarts"] == "0", job_info
    count("controller restarts survived")


def _read(path: Path) -> str | None:
    return path.read_text().strip() or None if path.exists() else None


@pytest.fixture
def small_results(tmp_path: Path) -> Iterator[Path]:
    """A work directory whose results/ is a filesystem of its own (tmpfs), too small."""
    wd = make_workdir(tmp_path / "wd", CNN_ONLY)
    results = wd / "results"
    results.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(results)],
                           capture_output=True, text=True, check=False)  # fmt: skip
    if mount.returncode != 0:
        message = f"cannot mount a tmpfs (root needed): {mount.stderr.strip()}"
        if in_ci():
            pytest.fail(f"CI=true: {message}")
        pytest.skip(message)
    yield wd
    subprocess.run(["umount", "-l", str(results)], check=False)


def test_full_disk_fails_clean_and_the_rerun_finishes(
    small_results: Path, undisturbed: Path
) -> None:
    """A step that cannot write names the path and "no space left", leaves nothing partial under
    a final name, and the rerun after space is freed ends with the undisturbed metrics."""
    wd = small_results
    proc = snakemake(wd, "--cores", "2", timeout=600, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    logs = "\n".join(p.read_text() for p in (wd / "logs").rglob("*.log"))
    line = next((ln for ln in logs.splitlines() if "no space left" in ln), None)
    assert line and "no space left on the device of results/" in line, logs[-3000:]
    assert taken_for_finished(wd) == []
    subprocess.run(["mount", "-o", "remount,size=512m", str(wd / "results")], check=True)
    snakemake(wd, "--cores", "2", timeout=600)
    assert taken_for_finished(wd) == [] and partial_outputs(wd) == []
    got = json.loads((wd / METRICS[0]).read_text())
    assert got == json.loads((undisturbed / METRICS[0]).read_text())
    count("disk-full failures left clean")
