"""Fault injection on the real local SLURM cluster (marker ``faults``).

One pipeline is disturbed three ways and must end with exactly the metrics of an undisturbed
run, without ever recomputing a finished step or trusting a partial output:

1. ``scancel`` of the array-steps job while it runs (the job is not retried: it was cancelled);
2. SIGKILL of the training process after its first checkpoint (the job fails, not retried);
3. a training job that reaches its time-limit warning (``--signal=USR1``): it checkpoints,
   requeues itself, resumes when it runs again and finishes, all inside one Snakemake run.

After every disturbed run: no partial output exists under a final name (every output with a
manifest matches its checksum; temporaries are counted as detected partial outputs), and the
next run leaves every finished step's outputs untouched. The counts are printed at the end of
the test session (see ``pytest_terminal_summary`` in conftest.py).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from test_pipeline_slurm import slurm_profile
from workdir import make_workdir, snakemake

from hpcpipe.atomic import stale_temporaries
from hpcpipe.provenance import SUFFIX, checksum

pytestmark = [pytest.mark.slurm, pytest.mark.faults]

# Enough training to be interrupted mid-way (about 5 s per model here), checkpoints often.
FAULT_CFG = {"train": {"epochs": 80, "patience": 80, "checkpoint_every": 20}}
METRICS = ("results/eval/cnn/0/metrics.json", "results/eval/unet/0/metrics.json")
COUNTS: dict[str, int] = {}  # what the session summary reports


def _count(key: str, n: int = 1) -> None:
    COUNTS[key] = COUNTS.get(key, 0) + n


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wd = make_workdir(tmp_path_factory.mktemp("undisturbed"), FAULT_CFG)
    snakemake(wd, timeout=600)
    return wd


def finished_outputs(wd: Path) -> dict[str, str]:
    """Every output of a finished step (it has a manifest), with its checksum now.

    Fails if an output under its final name does not match the checksum its step recorded:
    that would be a partial output taken for a finished one.
    """
    found = {}
    for manifest in sorted([*wd.glob("data/**/*" + SUFFIX), *wd.glob("results/**/*" + SUFFIX)]):
        out = manifest.with_name(manifest.name.removesuffix(SUFFIX))
        record = json.loads(manifest.read_text())
        recorded = next(v for k, v in record["outputs"].items() if Path(k).name == out.name)
        assert out.exists(), f"{manifest} describes {out}, which is missing"
        now = checksum(out)
        assert now == recorded, f"{out} differs from what its step wrote: a partial output"
        found[str(out.relative_to(wd))] = now
    return found


def partial_outputs(wd: Path) -> list[Path]:
    """Temporaries of killed writers: partial outputs, never under a final name."""
    found = stale_temporaries(wd / "data") + stale_temporaries(wd / "results")
    _count("partial outputs found", len(found))
    _count("partial outputs taken for finished", 0)
    return found


def run_in_background(wd: Path, profile: Path) -> subprocess.Popen:
    return subprocess.Popen(
        ["snakemake", "--profile", str(profile)],
        cwd=wd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def wait_for(what: str, condition, proc: subprocess.Popen, timeout: float = 300, poll: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"snakemake ended before {what}:\n{out[-4000:]}")
        time.sleep(poll)
    proc.kill()
    raise AssertionError(f"timed out waiting for {what}")


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise
    return proc.returncode, out


def log_text(wd: Path, name: str) -> str:
    path = wd / "logs" / f"{name}.log"
    return path.read_text() if path.exists() else ""


def our_jobs(wd: Path, slurm_cluster) -> list[tuple[str, str]]:
    """(job id, state) of this workflow's jobs, from squeue (only ours: by working dir)."""
    out = slurm_cluster.run(["squeue", "--noheader", "--states=all", "--format=%i %T %Z"]).stdout
    return [(i, s) for i, s, d in (ln.split() for ln in out.splitlines()) if Path(d) == wd]


def training_process(wd: Path, model: str) -> psutil.Process | None:
    """The rank process training ``model`` in ``wd`` (not its srun or launcher)."""
    for p in psutil.process_iter(["cmdline", "name", "cwd"]):
        cmd = p.info["cmdline"] or []
        if (
            p.info["name"] != "srun"
            and "train" in cmd
            and f"results/models/{model}/0/model.pt" in cmd
            and p.info["cwd"] == str(wd)
            and "launch" not in cmd
        ):
            return p
    return None


def assert_untouched(before: dict[str, str], wd: Path) -> None:
    """Finished steps were not recomputed: their outputs are the very same files."""
    after = finished_outputs(wd)
    recomputed = [k for k, v in before.items() if after.get(k) != v]
    _count("finished outputs checked", len(before))
    _count("finished outputs recomputed", len(recomputed))
    assert not recomputed, f"finished outputs were recomputed: {recomputed}"


@pytest.fixture(scope="module")
def disturbed(slurm_cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pipeline, disturbed by scancel, then SIGKILL, then rerun to the end."""
    wd = make_workdir(tmp_path_factory.mktemp("faults"), FAULT_CFG)
    profile = slurm_profile(wd / "test-profile")

    # 1. scancel the array-steps job while preprocessing writes its store.
    proc = run_in_background(wd, profile)
    job = wait_for("the array job", lambda: our_jobs(wd, slurm_cluster), proc)[0][0]
    wait_for("a half-written store", lambda: stale_temporaries(wd / "results"), proc, poll=0.005)
    slurm_cluster.run(["scancel", job])
    code, out = finish(proc)
    assert code != 0 and "Not retried: the job was cancelled" in out, out[-4000:]
    _count("jobs killed")
    assert partial_outputs(wd), "the kill left no half-written store (too late?)"
    done = finished_outputs(wd)
    assert "data/raw.zarr" in done and "results/models/cnn/0/model.pt" not in done

    # 2. SIGKILL the cnn training after its first checkpoint.
    proc = run_in_background(wd, profile)
    wait_for("a cnn checkpoint", lambda: "checkpoint: " in log_text(wd, "train/cnn/0"), proc)
    victim = wait_for("the cnn rank", lambda: training_process(wd, "cnn"), proc)
    victim.send_signal(signal.SIGKILL)
    code, out = finish(proc)
    assert code != 0 and "Not retried" in out, out[-4000:]
    _count("jobs killed")
    assert list((wd / ".checkpoints" / "cnn" / "0").glob("*/step-*.pt"))
    partial_outputs(wd)
    assert_untouched(done, wd)
    done = finished_outputs(wd)
    assert "results/models/cnn/0/model.pt" not in done
    assert "results/models/unet/0/model.pt" in done  # keep-going: the other model finished

    # 3. The rerun finishes, resuming the training.
    snakemake(wd, "--profile", str(profile), timeout=600)
    assert_untouched(done, wd)
    assert "resuming from" in log_text(wd, "train/cnn/0"), log_text(wd, "train/cnn/0")
    assert partial_outputs(wd) == []  # the rerun cleaned what the killed steps left
    return wd


def test_disturbed_pipeline_ends_with_the_undisturbed_metrics(
    disturbed: Path, undisturbed: Path
) -> None:
    for rel in METRICS:
        assert json.loads((disturbed / rel).read_text()) == json.loads(
            (undisturbed / rel).read_text()
        ), rel
    _count("metrics files identical to the undisturbed run", len(METRICS))


# Training that outlasts the first time-limit warning also on a fast, quiet machine (about
# 60-100 s on the 2-core test machines).
LONG_TRAINING = {
    "train": {"models": ["cnn"], "epochs": 120, "patience": 120, "checkpoint_every": 50},
    "models": {"cnn": {"channels": 48, "layers": 3}},
}


def test_time_limit_warning_checkpoints_requeues_and_finishes(
    slurm_cluster,
    tmp_path: Path,
) -> None:
    """The training job gets SIGUSR1 before its time limit, checkpoints, requeues itself and
    finishes in a later run of the same job, all in one Snakemake run; the model is the one
    an undisturbed local run trains."""
    wd = make_workdir(tmp_path / "slurm", LONG_TRAINING)
    snakemake(wd, "--until", "features", timeout=300)
    local = tmp_path / "local"
    subprocess.run(["cp", "-a", str(wd), str(local)], check=True)
    reference = subprocess.Popen(["snakemake", "-c1"], cwd=local, stdout=subprocess.DEVNULL)
    # The model job (train + evaluate) gets 3 minutes and the warning 135 s before the end:
    # SLURM sends it up to 30 s early (its event resolution), so 15-45 s into the job, once
    # training runs and before it can end.
    profile = slurm_profile(
        tmp_path / "profile",
        **{
            "set-resources": {
                "train": {"slurm_partition": "gpu", "gpu": 1, "tasks": 1, "cpus_per_gpu": 1,
                          "runtime": 2, "slurm_extra": "'--signal=USR1@135'"},
                "evaluate": {"slurm_partition": "gpu", "runtime": 1},
            }
        },
    )  # fmt: skip
    proc = run_in_background(wd, profile)
    try:
        wait_for("the requeue", lambda: "requeued SLURM job" in log_text(wd, "train/cnn/0"), proc)
        job = re.search(r"requeued SLURM job (\d+)", log_text(wd, "train/cnn/0")).group(1)
        # One requeue proves the point: give the job's next run time to finish.
        slurm_cluster.run(["scontrol", "update", f"JobId={job}", "TimeLimit=30"])
        code, out = finish(proc, timeout=900)
        assert code == 0, out[-4000:]
        assert reference.wait(timeout=600) == 0
    finally:
        for p in (proc, reference):
            if p.poll() is None:
                p.kill()
    log = log_text(wd, "train/cnn/0")  # the last run's: Snakemake clears the log per run
    m = re.search(r"SLURM job (\d+), restart (\d+)", log)
    assert m and "resuming from" in log, log[-3000:]
    assert slurm_cluster.show_job(m.group(1))["Restarts"] == m.group(2)
    _count("time-limit requeues", int(m.group(2)))
    got = json.loads((wd / METRICS[0]).read_text())
    assert got == json.loads((local / METRICS[0]).read_text())
