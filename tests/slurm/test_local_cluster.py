"""The local SLURM cluster does what the workflow relies on: nodes, partitions, GPUs, tasks,
limits (time, and memory enforced by cgroups) and accounting (sacct).

Needs `scripts/local-slurm start`. Each test submits real jobs; the whole module takes about
1.5 minutes: a real time limit takes 60-90 s (minute granularity), the other tests about 15 s
because the cluster schedules at once (batch_sched_delay=0) and `sbatch --wait` returns as
soon as the job ends.
"""

from __future__ import annotations

import time

import pytest
from slurmenv import LOCAL_SLURM, sacct_megabytes, sacct_step

pytestmark = pytest.mark.slurm


@pytest.mark.multinode
def test_cluster_has_three_nodes_with_partitions_and_gpus(slurm_cluster):
    result = slurm_cluster.run(["sinfo", "--noheader", "--Node", "--format=%N %P %a %G %T"])
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    nodes = {name for name, *_ in rows}
    # cpu (the default, the asterisk) spans every node, gpu the nodes with two GPUs each.
    assert nodes == {"node1", "node2", "node3"}, rows
    by_partition: dict[str, set[str]] = {}
    for name, partition, avail, gres, state in rows:
        by_partition.setdefault(partition, set()).add(name)
        assert avail == "up" and state in ("idle", "mixed", "allocated", "completing"), rows
        assert (gres == "gpu:2") == (name != "node1"), rows  # node1 is the CPU-only node
    assert by_partition == {"cpu*": nodes, "gpu": {"node2", "node3"}}, rows


@pytest.mark.multinode
def test_node_names_resolve_for_the_ranks(slurm_cluster, tmp_path):
    """A job's node list gives its ranks their master address: the names must resolve."""
    result = slurm_cluster.sbatch(
        "--nodes=2", "--ntasks-per-node=1", "--time=1",
        script=f"srun bash -c 'echo $SLURMD_NODENAME $(getent hosts node1)' > {tmp_path}/ranks.txt",
        workdir=tmp_path, wait=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "ranks.txt").read_text().splitlines()
    assert len(lines) == 2 and {line.split()[1] for line in lines} == {"127.0.0.1"}, lines
    assert len({line.split()[0] for line in lines}) == 2, lines  # two different nodes


# Touches every page of {mb} MB, so that all of it is resident, then waits {sleep} s.
ALLOCATE = (
    "python3 -c 'a = bytearray({mb} << 20)\nfor i in range(0, len(a), 4096): a[i] = 1\n"
    "import time; time.sleep({sleep})'"
)


def test_job_over_its_memory_is_killed_out_of_memory(slurm_cluster, tmp_path):
    """cgroups enforce --mem: the job ends OUT_OF_MEMORY, as on a real site."""
    result = slurm_cluster.sbatch(
        "--mem=150", "--time=1", script=ALLOCATE.format(mb=400, sleep=0),
        workdir=tmp_path, wait=True,
    )  # fmt: skip
    job_id = result.stdout.strip().split(";")[0]
    assert slurm_cluster.state(job_id) == "OUT_OF_MEMORY", slurm_cluster.show_job(job_id)
    assert "oom-kill" in (tmp_path / f"slurm-{job_id}.out").read_text()


def test_sacct_reports_max_rss_and_cpu_time(slurm_cluster, tmp_path):
    """Accounting (slurmdbd): sacct answers, with the step's peak memory and CPU time."""
    result = slurm_cluster.sbatch(
        "--mem=1000", "--time=1", script=ALLOCATE.format(mb=300, sleep=5),
        workdir=tmp_path, wait=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip().split(";")[0]
    fields = sacct_step(slurm_cluster, f"{job_id}.batch", ("State", "MaxRSS", "TotalCPU"))
    assert fields.get("State") == "COMPLETED", fields
    max_rss_mb = sacct_megabytes(fields["MaxRSS"])
    assert 280 <= max_rss_mb <= 400, fields  # 300 MB touched, plus the interpreter
    assert fields["TotalCPU"] not in ("", "00:00:00"), fields


def test_cpu_job_runs_and_writes_its_job_id(slurm_cluster, tmp_path):
    result = slurm_cluster.sbatch(
        "--partition=cpu",
        "--time=1",
        script=f'echo "$SLURM_JOB_ID $SLURM_JOB_PARTITION" > {tmp_path}/job.txt',
        workdir=tmp_path,
        wait=True,
    )
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    assert (tmp_path / "job.txt").read_text().split() == [job_id, "cpu"]
    assert slurm_cluster.state(job_id) == "COMPLETED"


def test_default_partition_is_cpu(slurm_cluster, tmp_path):
    result = slurm_cluster.sbatch("--time=1", script="true", workdir=tmp_path, wait=True)
    assert result.returncode == 0, result.stderr
    assert slurm_cluster.show_job(result.stdout.strip())["Partition"] == "cpu"


def test_gpu_job_sees_its_gpu(slurm_cluster, tmp_path):
    result = slurm_cluster.sbatch(
        "--partition=gpu",
        "--gres=gpu:1",
        "--time=1",
        script=(
            f'echo "SLURM_JOB_GPUS=$SLURM_JOB_GPUS" > {tmp_path}/env.txt; '
            f'echo "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES" >> {tmp_path}/env.txt'
        ),
        workdir=tmp_path,
        wait=True,
    )
    assert result.returncode == 0, result.stderr
    env = dict(line.split("=", 1) for line in (tmp_path / "env.txt").read_text().splitlines())
    # File-based gres: SLURM numbers the granted device (one of /dev/tty0-1) and exports it.
    assert env["SLURM_JOB_GPUS"] in ("0", "1"), env
    assert env["CUDA_VISIBLE_DEVICES"] in ("0", "1"), env


def test_more_gpus_than_the_node_has_are_rejected(slurm_cluster, tmp_path):
    result = slurm_cluster.sbatch(
        "--partition=gpu", "--gres=gpu:3", "--time=1", script="true", workdir=tmp_path
    )
    assert result.returncode != 0
    assert "Requested node configuration is not available" in result.stderr


def test_two_task_job_runs_both_srun_steps(slurm_cluster, tmp_path):
    result = slurm_cluster.sbatch(
        "--ntasks=2",
        "--time=1",
        script=(
            "srun --ntasks=2 bash -c "
            f"'echo $SLURM_PROCID/$SLURM_NTASKS $(hostname -s)' > {tmp_path}/ranks.txt"
        ),
        workdir=tmp_path,
        wait=True,
    )
    assert result.returncode == 0, result.stderr
    lines = sorted((tmp_path / "ranks.txt").read_text().splitlines())
    assert [line.split()[0] for line in lines] == ["0/2", "1/2"], lines
    hostname = slurm_cluster.run(["hostname", "-s"]).stdout.strip()
    assert {line.split()[1] for line in lines} == {hostname}


def test_invalid_partition_is_rejected(slurm_cluster, tmp_path):
    result = slurm_cluster.sbatch(
        "--partition=no-such-partition", "--time=1", script="true", workdir=tmp_path
    )
    assert result.returncode != 0
    assert "invalid partition specified: no-such-partition" in result.stderr


@pytest.mark.multinode
def test_start_is_idempotent_and_status_names_every_daemon(slurm_cluster):
    t0 = time.monotonic()
    started = slurm_cluster.run([str(LOCAL_SLURM), "start"], timeout=120)
    assert started.returncode == 0 and "already running" in started.stderr, started.stderr
    assert time.monotonic() - t0 < 10  # nothing restarted
    status = slurm_cluster.run([str(LOCAL_SLURM), "status"])
    assert status.returncode == 0, status.stderr
    daemons = ["munged", "mariadbd", "slurmdbd", "slurmctld"] + [
        f"slurmd-node{i}" for i in (1, 2, 3)
    ]
    for daemon in daemons:
        assert f"running: {daemon} (pid " in status.stdout, status.stdout
    assert "== sacct" in status.stdout
