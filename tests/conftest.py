"""Shared fixtures: small gridded datasets (see testdata.py)."""

from __future__ import annotations

import pytest
import xarray as xr
from testdata import SPLIT, make_raw


@pytest.fixture
def raw() -> xr.Dataset:
    return make_raw()


@pytest.fixture
def split() -> dict:
    return {k: list(v) for k, v in SPLIT.items()}
