"""A sweep of 24 runs through profiles/slurm on the local cluster: job arrays, not 24 jobs.

The model groups (train, then evaluate, of one run) of the sweep must go out as one SLURM
job array (hpcpipe-slurm arrays groups): at most 3 sbatch calls per stage, tasks that sacct
lists as <array>_<task>, and metrics equal to a local run's of the same points.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from test_pipeline_slurm import slurm_profile
from workdir import make_workdir, snakemake

pytestmark = pytest.mark.slurm

LRS = [0.002, 0.004, 0.006, 0.008, 0.01, 0.02]
CHANNELS = [4, 6, 8, 12]
SWEEP = {
    "train": {"models": ["cnn"], "seeds": [0], "epochs": 1},
    "models": {"cnn": {"layers": 1}},
    "sweep": {"parameters": {"train.lr": LRS, "models.cnn.channels": CHANNELS}},
}


def _with_features_of(done: Path, wd: Path) -> Path:
    """``wd`` with the raw data, preprocessed store and features of the finished run ``done``
    (the same data config; copied with their manifests and mtimes): only the sweep runs."""
    shutil.copytree(done / "data", wd / "data")
    (wd / "results").mkdir(exist_ok=True)
    for made in (done / "results").iterdir():
        if made.name.startswith(("preprocessed", "stats", "thresholds", "features")):
            (shutil.copytree if made.is_dir() else shutil.copy2)(made, wd / "results" / made.name)
    return wd


def test_a_24_run_sweep_is_submitted_as_job_arrays(
    slurm_cluster, pipeline_run: Path, tmp_path: Path
):
    wd = _with_features_of(pipeline_run, make_workdir(tmp_path / "slurm", SWEEP))
    proc = snakemake(wd, "--profile", str(slurm_profile(wd / "test-profile")), timeout=900)
    out = proc.stdout + proc.stderr
    run_id = re.search(r"SLURM run ID: (\S+)", out).group(1)
    sacct = slurm_cluster.run(
        [
            "sacct",
            "-X",
            "-n",
            "-P",
            f"--name={run_id}",
            "--format=JobID,State,Partition",
            "-S",
            "now-2hours",
        ]
    ).stdout.split()
    jobs = [line.split("|") for line in sacct]
    assert all(state == "COMPLETED" for _, state, _ in jobs), jobs
    tasks = [j for j, _, p in jobs if "_" in j]
    arrays = {j.split("_")[0] for j in tasks}
    # 24 runs in arrays on the GPU partition; prepare, leaderboard and summary plain jobs
    assert len(tasks) == 24 and len(arrays) <= 3, jobs
    assert {p for j, _, p in jobs if "_" in j} == {"gpu"}
    sbatch_calls = len(arrays) + len([j for j, _, _ in jobs if "_" not in j])
    assert sbatch_calls <= 3 + 3, jobs  # prepare, model array(s), summary + leaderboard
    board = (wd / "results" / "leaderboard.csv").read_text().splitlines()
    assert len(board) == 25 and board[1].split(",")[-1] == "True"

    # The same points run locally give the same metrics (ids depend on the values only).
    local = make_workdir(tmp_path / "local", {**SWEEP, "sweep": {"parameters": {
        "train.lr": LRS[:1], "models.cnn.channels": CHANNELS[:2]}}})  # fmt: skip
    _with_features_of(pipeline_run, local)
    snakemake(local, "-c2", timeout=600)
    for log in ("generate", "preprocess"):  # the copies were taken, here and on SLURM
        assert (
            not (local / "logs" / f"{log}.log").exists()
            and not (wd / "logs" / f"{log}.log").exists()
        )
    compared = 0
    for path in (local / "results" / "eval" / "cnn").glob("0-*/metrics.json"):
        remote = wd / path.relative_to(local)
        assert json.loads(remote.read_text()) == json.loads(path.read_text())
        compared += 1
    assert compared == 2
