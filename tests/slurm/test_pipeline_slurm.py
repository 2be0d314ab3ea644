"""The whole pipeline through profiles/slurm on the real local cluster.

Every step must run as a SLURM job, training on the GPU partition with a GPU request, and the
final metrics must equal the local run's for the same config and seed.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml
from workdir import make_workdir, snakemake

pytestmark = pytest.mark.slurm

# Test overrides of the site profile: the local cluster is idle and jobs are short, so the
# first status check can come early; outputs appear at once on a local disk.
FAST = {
    "hpcpipe-slurm-init-seconds-before-status-checks": 1,
    "hpcpipe-slurm-max-status-check-seconds": 1,
    "latency-wait": 5,
    "hpcpipe-slurm-keep-successful-logs": True,
}
STEP_LOGS = ["generate", "preprocess", "thresholds", "features", "summary"]
MODEL_LOGS = ["train/cnn/0", "train/unet/0", "evaluate/cnn/0", "evaluate/unet/0"]
PROFILE = Path(__file__).parents[2] / "profiles" / "slurm" / "config.yaml"
JOB_LINE = re.compile(r"\(SLURM job (\d+), partition (\w+), node \S+\)")


def slurm_profile(dest: Path, **overrides: object) -> Path:
    """profiles/slurm with the test overrides, as a profile directory of its own."""
    dest.mkdir(parents=True, exist_ok=True)
    cfg = yaml.safe_load(PROFILE.read_text())
    cfg.update(FAST, **overrides)
    (dest / "config.yaml").write_text(yaml.safe_dump(cfg))
    return dest


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    wd = make_workdir(tmp_path_factory.mktemp("slurm-pipeline"))
    profile = slurm_profile(wd / "test-profile")
    snakemake(wd, "--profile", str(profile), timeout=900)
    return wd


def jobs_in_logs(wd: Path) -> dict[str, tuple[str, str]]:
    found = {}
    for name in STEP_LOGS + MODEL_LOGS:
        m = JOB_LINE.search((wd / "logs" / f"{name}.log").read_text())
        assert m, f"logs/{name}.log does not say it ran in a SLURM job"
        found[name] = (m.group(1), m.group(2))
    return found


def test_every_step_ran_as_a_slurm_job(slurm_run: Path, slurm_cluster):
    jobs = jobs_in_logs(slurm_run)
    # Short array steps share one grouped job; each model trains and evaluates in a job of
    # its own; the summary is the last job.
    assert len({jobs[s][0] for s in ("generate", "preprocess", "thresholds", "features")}) == 1
    assert jobs["train/cnn/0"][0] == jobs["evaluate/cnn/0"][0] != jobs["train/unet/0"][0]
    assert len({j for j, _ in jobs.values()}) == 4
    for job_id, _ in jobs.values():
        assert slurm_cluster.show_job(job_id)["JobState"] == "COMPLETED"
    assert {p for _, p in jobs.values()} == {"cpu", "gpu"}
    # the model groups go out as job array tasks (profile: hpcpipe-slurm-array-jobs: model)
    for name in ("train/cnn/0", "train/unet/0"):
        assert slurm_cluster.show_job(jobs[name][0]).get("ArrayJobId"), name


def test_training_ran_on_the_gpu_partition_with_a_gpu(slurm_run: Path, slurm_cluster):
    jobs = jobs_in_logs(slurm_run)
    for name in ("train/cnn/0", "train/unet/0"):
        job_id, partition = jobs[name]
        info = slurm_cluster.show_job(job_id)
        assert partition == "gpu" and info["Partition"] == "gpu"
        # the GRES request as slurmctld holds it (AllocTRES lists gres only with accounting)
        assert info.get("TresPerJob") == "gres:gpu:1", info
        assert " 1 GPUs " in (slurm_run / "logs" / f"{name}.log").read_text()
    for name in ("generate", "summary"):
        assert jobs[name][1] == "cpu"


def test_steps_size_themselves_from_the_allocation(slurm_run: Path):
    # preprocess asked for 4000 MB (tier "array"): it must see that, not the host's memory.
    line = next(
        ln
        for ln in (slurm_run / "logs" / "preprocess.log").read_text().splitlines()
        if "GPUs" in ln
    )
    assert re.search(r": 2 CPUs, 4\.2 GB, 0 GPUs", line), line


def test_metrics_equal_the_local_run(slurm_run: Path, pipeline_run: Path):
    for model in ("cnn", "unet"):
        remote = json.loads(
            (slurm_run / "results" / "eval" / model / "0" / "metrics.json").read_text()
        )
        local = json.loads(
            (pipeline_run / "results" / "eval" / model / "0" / "metrics.json").read_text()
        )
        assert remote == local


def test_unknown_partition_fails_at_submission_with_slurms_message(slurm_cluster, tmp_path: Path):
    wd = make_workdir(tmp_path / "wd")
    cfg = yaml.safe_load(PROFILE.read_text())
    resources = {**cfg["default-resources"], "slurm_partition": "nosuchpartition"}
    profile = slurm_profile(tmp_path / "profile", **{"default-resources": resources, "retries": 0})
    start = time.monotonic()
    proc = snakemake(wd, "--profile", str(profile), timeout=300, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "invalid partition" in out.lower(), out[-3000:]  # sbatch's own words
    assert time.monotonic() - start < 120  # an error, not a hang
    assert not (wd / "data" / "raw.zarr").exists()
