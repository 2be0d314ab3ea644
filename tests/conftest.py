"""Shared fixtures: small gridded datasets (testdata.py) and one local pipeline run (workdir.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import xarray as xr
from testdata import SPLIT, make_raw
from workdir import make_workdir, snakemake


@pytest.fixture
def raw() -> xr.Dataset:
    return make_raw()


@pytest.fixture
def split() -> dict:
    return {k: list(v) for k, v in SPLIT.items()}


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole pipeline, run once for the module's tests."""
    wd = make_workdir(tmp_path_factory.mktemp("pipeline"))
    snakemake(wd)
    return wd
