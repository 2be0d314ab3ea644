"""This process's memory cgroup and its limit (hpcpipe.runtime.cgroup), on made-up trees for
each layout, and on this machine's own cgroup v1 tree: a process placed in a cgroup with a
limit sees that limit as its allocation."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from hpcpipe.runtime.cgroup import job_cgroup, memory_cgroup, memory_limit_bytes

GB = 10**9
V1_ROOT = Path("/sys/fs/cgroup/memory")


def tree(tmp: Path, proc: str, limits: dict[str, str]) -> tuple[Path, Path]:
    """A /proc/self/cgroup text and a /sys/fs/cgroup with the given limit files."""
    (tmp / "proc").write_text(proc)
    sysfs = tmp / "sys"
    sysfs.mkdir()
    for rel, value in limits.items():
        (sysfs / rel).parent.mkdir(parents=True, exist_ok=True)
        (sysfs / rel).write_text(value + "\n")
    return tmp / "proc", sysfs


def test_v1_slurm_step_takes_the_job_limit_and_finds_the_job(tmp_path: Path):
    step = "memory/slurm/uid_0/job_7/step_0"
    proc, sysfs = tree(tmp_path, "9:cpu:/\n4:memory:/slurm/uid_0/job_7/step_0\n0::/\n", {
        "memory/memory.limit_in_bytes": "9223372036854771712",
        "memory/slurm/uid_0/job_7/memory.limit_in_bytes": str(GB),
        f"{step}/memory.limit_in_bytes": "9223372036854771712",
    })  # fmt: skip
    assert memory_cgroup(proc, sysfs) == sysfs / step
    assert job_cgroup(proc, sysfs) == sysfs / "memory/slurm/uid_0/job_7"
    assert memory_limit_bytes(proc, sysfs) == GB


def test_v2_tightest_limit_above_and_no_job(tmp_path: Path):
    proc, sysfs = tree(tmp_path, "0::/user.slice/app.scope\n", {
        "user.slice/memory.max": str(2 * GB),
        "user.slice/app.scope/memory.max": "max",
    })  # fmt: skip
    assert memory_limit_bytes(proc, sysfs) == 2 * GB
    assert job_cgroup(proc, sysfs) is None


def test_container_root_and_nothing(tmp_path: Path):
    proc, sysfs = tree(tmp_path, "0::/\n", {"memory.max": str(3 * GB)})
    assert memory_limit_bytes(proc, sysfs) == 3 * GB
    assert memory_limit_bytes(tmp_path / "absent", tmp_path / "none") is None


def test_a_process_in_a_limited_cgroup_gets_that_memory():
    """Real cgroup v1 (root, as on CI and the local cluster's nodes): the allocation outside
    SLURM is the cgroup's limit, not the host's memory."""
    if not os.access(V1_ROOT, os.W_OK):
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {V1_ROOT} is not writable (needs root, cgroup v1)")
        pytest.skip(f"{V1_ROOT} is not writable (needs root, cgroup v1)")
    where = V1_ROOT / f"hpcpipe-test-{uuid.uuid4().hex[:8]}"
    where.mkdir()
    limit = 700 * 2**20
    try:
        (where / "memory.limit_in_bytes").write_text(str(limit))
        code = (
            f"open({str(where / 'cgroup.procs')!r}, 'w').write(str(__import__('os').getpid()));"
            "from hpcpipe.runtime.allocation import allocation; print(allocation().memory_bytes)"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True)  # fmt: skip
        assert int(out.stdout) == limit
    finally:
        where.rmdir()
