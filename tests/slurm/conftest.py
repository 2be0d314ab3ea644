"""Fixtures for tests against the local SLURM cluster (scripts/local-slurm).

The cluster is real: slurmctld and slurmd on this machine, two partitions (cpu, gpu) and two
GPUs declared on /dev/tty0-1. Tests that need it take the ``slurm_cluster`` fixture. Without a
running cluster they are skipped, except under CI=true, where a missing cluster is a failure:
CI must never pass by skipping the tests it exists to run.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from slurmenv import LOCAL_SLURM, in_ci

# Every SLURM command gets a timeout: a dead controller makes clients block for MessageTimeout
# and retry, and a hung test run tells nobody anything.
COMMAND_TIMEOUT = 30
# States after which a job never changes again.
FINAL_STATES = frozenset(
    {
        "COMPLETED",
        "CANCELLED",
        "FAILED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
    }
)


def run(
    args: Sequence[str], timeout: float = COMMAND_TIMEOUT, **kwargs
) -> subprocess.CompletedProcess:
    """Run a command, capture text output, never hang."""
    return subprocess.run(
        list(args), capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )


@dataclass
class SlurmCluster:
    """Helpers to submit jobs to the local cluster; cancels what it submitted at the end."""

    submitted: list[str] = field(default_factory=list)
    final_states: frozenset[str] = FINAL_STATES

    @staticmethod
    def run(args: Sequence[str], timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess:
        return run(args, timeout=timeout)

    def sbatch(
        self, *options: str, script: str, workdir: Path, wait: bool = False, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        """sbatch --parsable with a wrapped script; with wait=True, return when the job ended."""
        args = [
            "sbatch",
            "--parsable",
            "--job-name=hpcpipe-test",
            f"--chdir={workdir}",
            f"--output={workdir}/slurm-%j.out",
            *options,
        ]
        if wait:
            args.append("--wait")
        args.append(f"--wrap={script}")
        try:
            result = run(args, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            # --parsable printed the id before --wait timed out: remember it for cancelling.
            self._remember(exc.stdout)
            raise
        self._remember(result.stdout)
        return result

    def _remember(self, stdout: str | bytes | None) -> None:
        if isinstance(stdout, bytes):
            stdout = stdout.decode(errors="replace")
        job_id = (stdout or "").strip().split(";")[0]  # "<id>;<cluster>" on federations
        if job_id.isdigit():
            self.submitted.append(job_id)

    def state(self, job_id: str) -> str:
        """The job's state as squeue reports it (finished jobs stay for MinJobAge=300 s)."""
        result = run(["squeue", "--noheader", "--states=all", f"--jobs={job_id}", "--format=%T"])
        return result.stdout.strip()

    def wait_for_state(
        self, job_id: str, states: frozenset[str] | set[str], timeout: float = 30
    ) -> str:
        """Poll until the job reaches one of ``states``; return that state."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.state(job_id)
            if state in states:
                return state
            time.sleep(0.25)
        raise AssertionError(
            f"job {job_id} not in {sorted(states)} after {timeout}s (last: {state!r})"
        )

    def show_job(self, job_id: str) -> dict[str, str]:
        """scontrol show job, as key=value pairs."""
        result = run(["scontrol", "show", "job", job_id, "--oneliner"])
        assert result.returncode == 0, result.stderr
        pairs = {}
        for token in result.stdout.split():
            key, sep, value = token.partition("=")
            if sep:
                pairs.setdefault(key, value)
        return pairs

    def cancel_all(self) -> None:
        if self.submitted:
            run(["scancel", *self.submitted])


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """The running local cluster, or a skip (a failure under CI=true) naming how to start it."""
    try:
        status = run([str(LOCAL_SLURM), "status"], timeout=60)
        problem = None if status.returncode == 0 else (status.stdout + status.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        problem = f"{LOCAL_SLURM} status did not answer: {exc}"
    if problem is not None:
        message = (
            "the local SLURM cluster is not running; start it with `scripts/local-slurm start` "
            f"(as root).\n{problem}"
        )
        if in_ci():
            pytest.fail(f"CI=true: {message}", pytrace=False)
        pytest.skip(message)
    cluster = SlurmCluster()
    yield cluster
    cluster.cancel_all()


MULTINODE_NODES = 3  # what `scripts/local-slurm start` gives by default


@pytest.fixture(autouse=True)
def _enough_nodes(request: pytest.FixtureRequest) -> None:
    """Tests marked ``multinode`` need the full cluster, not the quick path (--nodes 1)."""
    if request.node.get_closest_marker("multinode") is None:
        return
    request.getfixturevalue("slurm_cluster")
    nodes = set(run(["sinfo", "--noheader", "--Node", "--format=%N"]).stdout.split())
    if len(nodes) < MULTINODE_NODES:
        message = (
            f"needs {MULTINODE_NODES} nodes, the cluster has {len(nodes)}: start it with "
            "`scripts/local-slurm start` (without --nodes 1)"
        )
        if in_ci():
            pytest.fail(f"CI=true: {message}", pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope="session")
def undisturbed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fault suite's pipeline, run locally and left alone: the reference of every fault."""
    from faultkit import FAULT_CFG
    from workdir import make_workdir, snakemake

    wd = make_workdir(tmp_path_factory.mktemp("undisturbed"), FAULT_CFG)
    snakemake(wd, timeout=600)
    return wd


@pytest.fixture(autouse=True)
def kill_leftover_runs() -> Iterator[None]:
    """A failed test must not leave its background Snakemake running (blocked on its pipe)."""
    yield
    faults = sys.modules.get("faultkit")
    while faults is not None and faults.STARTED:
        if (proc := faults.STARTED.pop()).poll() is None:
            proc.kill()
            proc.wait()


def pytest_terminal_summary(terminalreporter) -> None:
    """The fault suite's counts (tests/slurm/faultkit.py), when it ran."""
    faults = sys.modules.get("faultkit")
    if faults is not None and faults.COUNTS:
        terminalreporter.section("fault injection")
        for key, value in faults.COUNTS.items():
            terminalreporter.write_line(f"{key}: {value}")
