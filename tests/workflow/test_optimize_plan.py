"""optimize: off plans no optimize job; on (tests/configs/optimize.yaml) plans only them.

Dry runs of the finished tiny pipeline (conftest's ``pipeline_run``): turning `optimize:` on
must not retrain or re-evaluate anything (its keys are in no other step's params).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from workdir import planned_jobs

pytestmark = pytest.mark.workflow

OVERLAY = Path(__file__).resolve().parents[1] / "configs" / "optimize.yaml"


def test_optimize_on_plans_only_the_optimize_jobs(pipeline_run: Path):
    assert planned_jobs(pipeline_run) == {}  # off by default: nothing to do
    jobs = planned_jobs(pipeline_run, "--configfile", "config/config.yaml", str(OVERLAY))
    runs = 2  # cnn and unet, one seed
    assert jobs == {
        "optimize_variant": 3 * runs,
        "optimize_score": 3 * runs,
        "optimize_distill": 1,
        "optimize_score_student": 1,
        "optimize_summary": 1,
        "all": 1,
    }, jobs
