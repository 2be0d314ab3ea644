from __future__ import annotations

import pytest

from hpcpipe.runtime.allocation import allocation
from hpcpipe.runtime.slurm import memory_mb


def test_local_allocation_takes_snakemakes_thread_grant(monkeypatch: pytest.MonkeyPatch):
    for var in (
        "SLURM_JOB_ID",
        "SLURM_CPUS_PER_TASK",
        "SLURM_MEM_PER_NODE",
        "CUDA_VISIBLE_DEVICES",
    ):
        monkeypatch.delenv(var, raising=False)
    a = allocation(threads=1)
    assert a.cpus == 1 and not a.in_slurm and a.memory_bytes > 0


def test_slurm_variables_win_over_the_host(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "7")
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "3000")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    a = allocation(threads=1)
    assert (a.cpus, a.memory_bytes, a.gpus, a.in_slurm) == (7, 3000 * 2**20, 2, True)


def test_memory_per_cpu(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")
    monkeypatch.delenv("SLURM_MEM_PER_NODE", raising=False)
    monkeypatch.setenv("SLURM_MEM_PER_CPU", "1000")
    assert allocation().memory_bytes == 4000 * 2**20


@pytest.mark.parametrize(
    ("text", "mb"),
    [("4000M", 4000), ("2G", 2048), ("512K", 0), ("1.5G", 1536), ("100", 100), ("x", None)],
)
def test_slurm_memory_strings(text: str, mb: int | None):
    assert memory_mb(text) == mb
