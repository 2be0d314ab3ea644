"""The torch.distributed environment: launcher variables, node lists, a real gloo group."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hpcpipe.runtime.allocation import threads_per_rank
from hpcpipe.runtime.environment import DistEnv, expand_nodelist
from hpcpipe.train import process_group


@pytest.mark.parametrize(
    ("nodelist", "hosts"),
    [
        ("node07", ["node07"]),
        ("node[01-04,07]", ["node01", "node02", "node03", "node04", "node07"]),
        ("a1,b[8-10],c", ["a1", "b8", "b9", "b10", "c"]),
        ("gpu[1-2]-ib[0-1]", ["gpu1-ib0", "gpu1-ib1", "gpu2-ib0", "gpu2-ib1"]),
        ("n[009-011]", ["n009", "n010", "n011"]),
    ],
)
def test_expand_nodelist(nodelist: str, hosts: list[str]) -> None:
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("bad", ["node[01-", "node[a-b]", "node[3-1]", "x]y", ""])
def test_expand_nodelist_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        expand_nodelist(bad)


SRUN = {
    "SLURM_JOB_ID": "12345",
    "SLURM_STEP_ID": "0",
    "SLURM_PROCID": "3",
    "SLURM_LOCALID": "1",
    "SLURM_NTASKS": "4",
    "SLURM_STEP_NUM_TASKS": "4",
    "SLURM_JOB_NODELIST": "gpu[01-08]",
    "SLURM_STEP_NODELIST": "gpu[07-08]",
    "SLURM_CPUS_PER_TASK": "8",
}


def test_srun_step() -> None:
    env = DistEnv.from_environ(SRUN)
    assert env == DistEnv(
        rank=3,
        local_rank=1,
        world_size=4,
        master_addr="gpu07",
        master_port=15000 + 12345 % 20000,
        launcher="srun",
    )


def test_srun_port_override_and_job_nodelist() -> None:
    environ = {k: v for k, v in SRUN.items() if k != "SLURM_STEP_NODELIST"} | {
        "MASTER_PORT": "29999"
    }
    env = DistEnv.from_environ(environ)
    assert (env.master_addr, env.master_port) == ("gpu01", 29999)


def test_srun_steps_of_one_job_get_different_ports() -> None:
    ports = {DistEnv.from_environ(SRUN | {"SLURM_STEP_ID": str(s)}).master_port for s in range(8)}
    assert len(ports) == 8 and all(15000 <= p < 35000 for p in ports)


@pytest.mark.parametrize(
    "environ",
    [
        # A plain one-task batch job.
        {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_JOB_NODELIST": "n1"},
        # The batch script of an -n 4 job: one process, even though SLURM_NTASKS says 4.
        {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_PROCID": "0", "SLURM_JOB_NODELIST": "n1"},
        {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_STEP_ID": "batch", "SLURM_PROCID": "0"},
        # srun -n1 (how the SLURM executor runs a step without mpi).
        SRUN | {"SLURM_NTASKS": "1", "SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0"},
        {},
    ],
)
def test_single(environ: dict[str, str]) -> None:
    assert DistEnv.from_environ(environ) == DistEnv()
    assert DistEnv().launcher == "single" and DistEnv().world_size == 1


def test_torchrun_wins_inside_a_slurm_job() -> None:
    environ = SRUN | {
        "RANK": "5",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "8",
        "LOCAL_WORLD_SIZE": "4",
        "MASTER_ADDR": "10.0.0.2",
        "MASTER_PORT": "29400",
    }
    env = DistEnv.from_environ(environ)
    assert env == DistEnv(5, 1, 8, "10.0.0.2", 29400, "torchrun", local_world_size=4)
    assert threads_per_rank(env, 16) == 4
    assert threads_per_rank(DistEnv.from_environ(SRUN), 8) == 8


def test_helpers_without_a_group() -> None:
    assert process_group.is_main()
    t = torch.tensor([1.0, 2.0])
    torch.testing.assert_close(process_group.all_reduce_mean(t), t)
    process_group.barrier()
    with process_group.init(DistEnv(), "cpu") as device:
        assert device == torch.device("cpu")
        assert not dist.is_initialized()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, out: str) -> None:
    environ = {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    env = DistEnv.from_environ(environ)
    with process_group.init(env, "cpu", timeout_s=60):
        assert dist.is_initialized() and dist.get_backend() == "gloo"
        mean = process_group.all_reduce_mean(torch.tensor([rank + 1.0, 10.0 * rank]))
        ints = process_group.all_reduce_mean(torch.tensor([rank * 3]))
        main = process_group.is_main()
        process_group.barrier()
    assert not dist.is_initialized()
    # The group is torn down on error too, so the process can start another.
    with pytest.raises(RuntimeError, match="boom"), process_group.init(env, "cpu", timeout_s=60):
        raise RuntimeError("boom")
    assert not dist.is_initialized()
    Path(out, f"rank{rank}.txt").write_text(f"{mean.tolist()} {ints.tolist()} {main}")


def test_two_process_gloo_group(tmp_path: Path) -> None:
    world = 2
    mp.spawn(_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True)
    assert (tmp_path / "rank0.txt").read_text() == "[1.5, 5.0] [1.5] True"
    assert (tmp_path / "rank1.txt").read_text() == "[1.5, 5.0] [1.5] False"
