"""Switching the Dask mode reruns nothing: it is runtime, not science (config.schema.yaml).

A dry run of the finished tiny pipeline (conftest's ``pipeline_run``) under another mode, set
the three ways a user sets it, plans no job. The config ways are shown to reach the workflow:
the same way with an unknown mode stops the dry run (the schema's enum). The environment
variable is read by the steps only (runtime/dask/settings.py), never by the workflow: a dry run
plans no job only as long as no rule makes it part of its params.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from workdir import planned_jobs, snakemake

pytestmark = pytest.mark.workflow


def _overlay(workdir: Path, name: str, settings: dict) -> list[str]:
    path = workdir / f"overlay-dask-test-{name}.yaml"
    path.write_text(yaml.safe_dump(settings))
    return ["--configfile", "config/config.yaml", str(path)]


def test_a_config_overlay_with_another_dask_mode_plans_no_job(pipeline_run: Path):
    local = _overlay(pipeline_run, "local", {"dask": {"mode": "local"}})
    assert planned_jobs(pipeline_run, *local) == {}
    # the dry run does show jobs when a setting that matters changes ...
    title = _overlay(pipeline_run, "title", {"report": {"title": "x"}})
    assert planned_jobs(pipeline_run, *title) == {"summary": 1, "usage_table": 1, "all": 1}
    # ... and the overlay's dask section is read: an unknown mode is refused before any job
    bad = _overlay(pipeline_run, "bad", {"dask": {"mode": "mpi"}})
    proc = snakemake(pipeline_run, "-n", *bad, check=False)
    assert proc.returncode != 0 and "mpi" in proc.stdout + proc.stderr


def test_a_profile_style_config_option_with_another_dask_mode_plans_no_job(pipeline_run: Path):
    # what profiles/*.yaml do: config: ["dask={mode: local}"]
    assert planned_jobs(pipeline_run, "--config", "dask={mode: local}") == {}
    proc = snakemake(pipeline_run, "-n", "--config", "dask={mode: mpi}", check=False)
    assert proc.returncode != 0 and "mpi" in proc.stdout + proc.stderr


def test_the_dask_mode_from_the_environment_plans_no_job(
    pipeline_run: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("HPCPIPE_DASK_MODE", "synchronous")
    assert planned_jobs(pipeline_run) == {}
