"""profiles/slurm as shipped: what a training job is submitted with, on the local cluster.

The profile gives training SLURM's time-limit warning, ``--signal=USR1@300`` (the train rule's
``slurm_extra``), and every job ``--requeue`` (``hpcpipe-slurm-requeue``). Here one training
job of the local pipeline's workdir is submitted with the profile unchanged but for the
status-check timing (``FAST``): the sbatch call the plugin makes carries both, and slurmctld
holds the job as the profile and the train tier ask (Requeue=1 alone would prove little: the
local cluster's JobRequeue=1 makes every batch job requeueable, many sites' do not). ``scontrol show job`` has no field for
``--signal`` (and there is no ``sacct`` here), hence the sbatch call from ``--verbose``; that
SLURM then delivers the signal is shown by tests/slurm/test_faults.py, which lets the same
settings requeue a training job. About 20 s (with the local pipeline run, which other tests
share).
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
from test_pipeline_slurm import JOB_LINE, slurm_profile
from workdir import snakemake

pytestmark = pytest.mark.slurm


def test_train_job_carries_the_shipped_signal_and_requeue(
    slurm_cluster, pipeline_run: Path, tmp_path: Path
) -> None:
    wd = tmp_path / "wd"
    subprocess.run(["cp", "-a", str(pipeline_run), str(wd)], check=True)
    profile = slurm_profile(tmp_path / "profile")
    proc = snakemake(
        wd, "--profile", str(profile), "--verbose", "--forcerun", "train",
        "--", "results/models/cnn/0/model.pt", timeout=300,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    calls = [ln for ln in out.splitlines() if "sbatch call:" in ln]
    assert len(calls) == 1, calls or out[-3000:]
    options = shlex.split(calls[0].split("sbatch call:", 1)[1])
    assert options[options.index("--comment") + 1] == "rule_model_train", options  # group model
    assert "--signal=USR1@300" in options and "--requeue" in options, options

    m = JOB_LINE.search((wd / "logs" / "train" / "cnn" / "0.log").read_text())
    assert m, "the training log names no SLURM job"
    job = slurm_cluster.show_job(m.group(1))
    assert job["JobState"] == "COMPLETED" and job["Requeue"] == "1", job
    assert job["Partition"] == "gpu" and job["TresPerJob"] == "gres:gpu:1", job
    assert job["TimeLimit"] == "02:00:00", job  # the train tier's 120 minutes, attempt 1
