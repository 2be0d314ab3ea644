"""Fault injection on the real local SLURM cluster (marker ``faults``).

One pipeline is disturbed three ways and must end with exactly the metrics of an undisturbed
run, without ever recomputing a finished step or trusting a partial output:

1. ``scancel`` of the array-steps job while preprocessing writes its store (the job is not
   retried: it was cancelled);
2. SIGKILL of the training process after its first checkpoint (the job fails, not retried);
3. a training job that reaches its time-limit warning (the profile's ``--signal=USR1@300``): it
   checkpoints, requeues itself, resumes when it runs again and finishes, all inside one
   Snakemake run.

Every disturbance reaches the step at a known point, whatever the machine's speed or load: the
step runs through a pause-point wrapper (tests/pausepoints.py) and waits there until the test
has done its part (scancel, SIGKILL, SLURM's signal). Nothing is caught by polling a window.

After every disturbed run: no partial output exists under a final name (every output has a
manifest and matches the checksum it records; temporaries are counted as detected partial
outputs), and the next run leaves every finished step's outputs untouched. A job over its time
limit (TIMEOUT) is retried with the rule's runtime scaled by the attempt. The counts are printed
at the end of the test session (see ``pytest_terminal_summary`` in conftest.py).
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pausepoints
import pytest
from faultkit import (
    FAULT_CFG,
    METRICS,
    assert_untouched,
    count,
    finish,
    finished_outputs,
    log_text,
    partial_outputs,
    paused_env,
    run_in_background,
    wait_for,
)
from test_pipeline_slurm import slurm_profile
from workdir import make_workdir, snakemake

pytestmark = [pytest.mark.slurm, pytest.mark.faults]


@pytest.fixture(scope="module")
def disturbed(slurm_cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pipeline, disturbed by scancel, then SIGKILL, then rerun to the end."""
    wd = make_workdir(tmp_path_factory.mktemp("faults"), FAULT_CFG)
    profile = slurm_profile(wd / "test-profile")
    bin_dir, pauses = wd.parent / "bin", wd.parent / "pauses"

    # 1. scancel the array-steps job while preprocessing writes its store: the step waits
    # with the store complete under its temporary name, just before the rename.
    env = paused_env(bin_dir, pauses / "1", step="preprocess", output="preprocessed.zarr")
    proc = run_in_background(wd, profile, env)
    at = wait_for("preprocess to pause", lambda: pausepoints.marker(pauses / "1", "paused"), proc)
    assert at["job"], at
    slurm_cluster.submitted.append(at["job"])  # cancelled at the end, should the test fail
    assert Path(at["temporary"]).is_dir() and not Path(at["final"]).exists(), at
    slurm_cluster.run(["scancel", at["job"]])
    code, out = finish(proc)
    assert code != 0 and "Not retried: the job was cancelled" in out, out[-4000:]
    count("jobs killed")
    assert Path(at["temporary"]) in partial_outputs(wd), "the kill left no half-written store"
    done = finished_outputs(wd)
    assert "data/raw.zarr" in done and "results/preprocessed.zarr" not in done

    # 2. SIGKILL the cnn training right after its first checkpoint (it waits there).
    every = FAULT_CFG["train"]["checkpoint_every"]
    env = paused_env(bin_dir, pauses / "2", step="train", model="cnn", after_step=every)
    proc = run_in_background(wd, profile, env)
    at = wait_for("cnn to pause", lambda: pausepoints.marker(pauses / "2", "paused"), proc)
    slurm_cluster.submitted.append(at["job"])
    assert "checkpoint: " in log_text(wd, "train/cnn/0")
    os.kill(at["pid"], signal.SIGKILL)
    code, out = finish(proc)
    assert code != 0 and "Not retried" in out, out[-4000:]
    count("jobs killed")
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
    count("metrics files identical to the undisturbed run", len(METRICS))


def test_time_limit_warning_checkpoints_requeues_and_finishes(
    slurm_cluster, undisturbed: Path, tmp_path: Path
) -> None:
    """The training job, submitted as the shipped profile has it (``--signal=USR1@300``,
    ``--requeue``), gets SIGUSR1 from SLURM before its time limit, checkpoints, requeues itself
    and finishes in a later run of the same job, all in one Snakemake run; the model is the one
    the undisturbed run trained.

    Training waits after its first step until the signal came (a pause point), so the signal
    always finds it mid-training. The job's limit (the train, predict and evaluate tiers: 140 min)
    is then lowered to 5: 300 s or less are left, and SLURM sends the warning at its next
    time-limit check (every 30 s) instead of 300 s before the original end."""
    # cnn only: a model does not depend on the list of models, so the undisturbed run's cnn
    # (trained before this test, not beside it) is the reference.
    cfg = {**FAULT_CFG, "train": {**FAULT_CFG["train"], "models": ["cnn"]}}
    wd = make_workdir(tmp_path / "slurm", cfg)
    snakemake(wd, "--until", "features", timeout=300)
    profile = slurm_profile(tmp_path / "profile")  # the shipped train resources, unchanged
    pause = tmp_path / "pause"
    env = paused_env(tmp_path / "bin", pause, step="train", model="cnn", after_step=1)
    proc = run_in_background(wd, profile, env)
    at = wait_for("training to pause", lambda: pausepoints.marker(pause, "paused"), proc)
    slurm_cluster.submitted.append(at["job"])
    job = slurm_cluster.show_job(at["job"])
    # train, predict and evaluate share the job (group "model"): 120 + 10 + 10 minutes of
    # their tiers
    assert job["Requeue"] == "1" and job["TimeLimit"] == "02:20:00", job
    slurm_cluster.run(["scontrol", "update", f"JobId={at['job']}", "TimeLimit=5"])
    signalled = lambda: pausepoints.marker(pause, "signalled")  # noqa: E731
    got = wait_for("SLURM's warning", signalled, proc, timeout=120)
    assert got == {"signal": "SIGUSR1"}
    # The job's next run must not get the warning at once again: back to its limit.
    slurm_cluster.run(["scontrol", "update", f"JobId={at['job']}", "TimeLimit=140"])
    pausepoints.release(pause)
    code, out = finish(proc, timeout=600)
    assert code == 0, out[-4000:]
    log = log_text(wd, "train/cnn/0")  # the last run's: Snakemake clears the log per run
    m = re.search(r"SLURM job (\d+), restart (\d+)", log)
    assert m and m.group(1) == at["job"] and "resuming from" in log, log[-3000:]
    assert m.group(2) == "1" and slurm_cluster.show_job(at["job"])["Restarts"] == "1", log
    count("time-limit requeues", int(m.group(2)))
    got = json.loads((wd / METRICS[0]).read_text())
    assert got == json.loads((undisturbed / METRICS[0]).read_text())


# A rule over its time limit on attempt 1: it sleeps past the 1 minute the tier gives it,
# SLURM ends the job (TIMEOUT), the executor retries it, and attempt 2 gets runtime x 2
# (tier_resources in workflow/rules/common.smk) and finishes at once. A second attempt that
# did not get more time fails (exit 1) instead of timing out again.
OVER_TIME_SNAKEFILE = """
configfile: "config/config.yaml"


include: "workflow/rules/common.smk"


TIERS["over_time"] = {"mem_mb": 500, "runtime": 1, "threads": 1}


rule over_time:
    output:
        "over-time.txt",
    threads: tier_threads("over_time")
    resources:
        **tier_resources("over_time"),
    shell:
        "touch attempts.txt; n=$(wc -l < attempts.txt); "
        "echo $SLURM_JOB_ID {resources.runtime} >> attempts.txt; "
        "if [ $n -eq 0 ]; then sleep 600; fi; "
        "test {resources.runtime} -ge 2 && echo done > {output}"
"""


def test_job_over_its_time_limit_is_retried_with_more_time(slurm_cluster, tmp_path: Path) -> None:
    wd = make_workdir(tmp_path / "wd")
    (wd / "over-time.smk").write_text(OVER_TIME_SNAKEFILE)
    profile = slurm_profile(tmp_path / "profile")
    proc = snakemake(wd, "-s", "over-time.smk", "--profile", str(profile), timeout=400,
                     check=False)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    attempts = [ln.split() for ln in (wd / "attempts.txt").read_text().splitlines()]
    assert [runtime for _, runtime in attempts] == ["1", "2"], attempts
    (first, _), (second, _) = attempts
    assert slurm_cluster.state(first) == "TIMEOUT"
    assert slurm_cluster.show_job(first)["TimeLimit"] == "00:01:00"
    assert slurm_cluster.state(second) == "COMPLETED"
    assert slurm_cluster.show_job(second)["TimeLimit"] == "00:02:00"
    count("time-limit retries with more time")
