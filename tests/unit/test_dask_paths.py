"""Dask paths the mode tests do not reach: workers that never join, and a step that fails.

- ``jobqueue`` with worker jobs that SLURM accepts but never starts (stand-in sbatch, squeue
  and scancel on PATH) and ``allocation`` with worker ranks that never come: a
  DaskClusterError naming the mode and the timeout, after the timeout and not much later, and
  nothing left behind (jobs cancelled, scheduler process and file gone).
- ``local`` with a step that raises: the step's own error, and no worker process, scheduler
  port or client left.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import threading
import time
from pathlib import Path

import dask
import psutil  # a dependency of distributed
import pytest

from hpcpipe.runtime.allocation import Allocation
from hpcpipe.runtime.dask import DaskClusterError, DaskSettings, JobqueueSettings, dask_runtime

ALLOC = Allocation(cpus=2, memory_bytes=2 * 2**30, gpus=0, in_slurm=False)
TIMEOUT = 5.0  # dask.timeout of these tests, seconds
# What starting and closing may add to the timeout: an in-process scheduler, a cluster's close
# (jobs cancelled, scheduler stopped): 0.5 s measured, 7x that for a loaded machine, and under
# TIMEOUT, so that waiting twice the timeout fails.
SLACK = 3.5


def _children() -> set[int]:
    """Live descendants of this process, less multiprocessing's own helpers."""
    out = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            if any(h in " ".join(p.cmdline()) for h in ("resource_tracker", "forkserver")):
                continue
        except psutil.NoSuchProcess:
            continue
        out.add(p.pid)
    return out


def _wait_gone(pids: set[int], seconds: float = 5.0) -> set[int]:
    """The pids still alive after up to ``seconds`` (processes take a moment to be reaped)."""
    deadline = time.monotonic() + seconds
    while pids and time.monotonic() < deadline:
        pids = {p for p in pids if _alive(p)}
        time.sleep(0.1)
    return pids


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _port_open(address: str) -> bool:
    host, port = re.fullmatch(r"tcp://(.+):(\d+)", address).groups()  # type: ignore[union-attr]
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


# --- workers that never join -------------------------------------------------------------------

FAKE_SLURM = {
    # accepts every job (ids from 4241 on) and logs the call; the jobs never start
    "sbatch": 'echo "sbatch $*" >> "$LOG"\n'
    'echo "Submitted batch job $(( $(grep -c "^sbatch" "$LOG") + 4240 ))"',
    # every job asked about is pending
    "squeue": 'echo "squeue $*" >> "$LOG"\n'
    'for a in "$@"; do case "$a" in --jobs=*) ids="${a#--jobs=}";; esac; done\n'
    'for j in ${ids//,/ }; do echo "$j:PENDING"; done',
    "scancel": 'echo "scancel $*" >> "$LOG"',
}


def _fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir, log = tmp_path / "bin", tmp_path / "slurm-calls.log"
    bin_dir.mkdir()
    log.touch()
    for name, body in FAKE_SLURM.items():
        path = bin_dir / name
        path.write_text(f'#!/bin/bash\nLOG="{log}"\n{body}\n')
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def test_jobqueue_workers_that_never_start_fail_after_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    log = _fake_slurm(tmp_path, monkeypatch)
    jq = JobqueueSettings(memory="1GB", job_name="never-starts", log_directory=str(tmp_path))
    settings = DaskSettings(mode="jobqueue", timeout=TIMEOUT, jobqueue=jq)
    match = (
        rf"dask mode 'jobqueue': no worker joined within {TIMEOUT:g} s; worker jobs 4241:PENDING"
    )
    start = time.monotonic()
    with pytest.raises(DaskClusterError, match=match), dask_runtime(ALLOC, settings):
        pytest.fail("the step ran without a worker")
    elapsed = time.monotonic() - start
    assert TIMEOUT <= elapsed <= TIMEOUT + SLACK, elapsed
    calls = log.read_text().splitlines()
    submitted = {str(4241 + i) for i, _ in enumerate(c for c in calls if c.startswith("sbatch"))}
    cancelled = {j for c in calls if c.startswith("scancel") for j in c.split()[1:]}
    assert submitted and submitted <= cancelled, calls  # every job it submitted, cancelled


def _clear_launchers(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in list(os.environ):
        if var.startswith("SLURM_") or var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            monkeypatch.delenv(var)


def test_allocation_worker_ranks_that_never_join_fail_after_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Rank 0 of three (torchrun's variables): the scheduler starts, the two workers never do."""
    _clear_launchers(monkeypatch)
    for var, value in {"RANK": "0", "WORLD_SIZE": "3", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "29731"}.items():  # fmt: skip
        monkeypatch.setenv(var, value)
    scheduler_file = tmp_path / "scheduler.json"
    settings = DaskSettings(mode="allocation", timeout=TIMEOUT, scheduler_file=str(scheduler_file))
    # The scheduler may take up to the timeout to start: time the wait for workers from the
    # moment its file appears.
    appeared: list[float] = []

    def watch() -> None:
        while not appeared and time.monotonic() < start + 3 * TIMEOUT:
            if scheduler_file.exists():
                appeared.append(time.monotonic())
            time.sleep(0.02)

    before = _children()
    start = time.monotonic()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    match = rf"dask mode 'allocation': 0 of 2 worker ranks joined within {TIMEOUT:g} s"
    with pytest.raises(DaskClusterError, match=match), dask_runtime(ALLOC, settings):
        pytest.fail("the step ran without a worker")
    end = time.monotonic()
    watcher.join()
    assert appeared, "the scheduler never wrote its file"
    assert TIMEOUT <= end - appeared[0] <= TIMEOUT + SLACK, (end - appeared[0], end - start)
    assert not scheduler_file.exists()
    assert not _wait_gone(_children() - before), "the scheduler process is still running"


# --- a step that fails -------------------------------------------------------------------------


def test_a_failing_step_in_local_mode_closes_its_cluster():
    before = _children()
    with (
        pytest.raises(RuntimeError, match="the step failed"),
        dask_runtime(ALLOC, "local") as client,
    ):
        workers = set(client.run(os.getpid).values())
        address = client.scheduler.address
        cluster = client.cluster
        # what the checks below look at is really there while the step runs
        assert len(workers) == ALLOC.cpus and workers <= _children() - before
        assert _port_open(address)
        assert dask.config.get("scheduler") is client
        raise RuntimeError("the step failed")
    assert not _wait_gone(workers), "worker processes left running"
    assert not _wait_gone(_children() - before), "other processes left running"
    assert not _port_open(address), f"the scheduler still listens at {address}"
    assert client.status == "closed" and cluster.status.name == "closed"
    assert dask.config.get("scheduler", None) is not client
