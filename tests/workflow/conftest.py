"""The whole pipeline, run once per session, for the workflow tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from workdir import make_workdir, snakemake


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole pipeline, run once for the module's tests."""
    wd = make_workdir(tmp_path_factory.mktemp("pipeline"))
    snakemake(wd)
    return wd
